"""The transport under four real ASGI servers, each a subprocess on 127.0.0.1: uvicorn,
hypercorn, granian and daphne serve ``tests._servers_app:app`` and a real HTTP client
(httpx) checks what arrives -- order, headers, errors, disconnects, pings and HEAD."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from streamflow import Delta, Done, Error, Event, SSEDecoder, StepEnd, StepStart, hide_exception, parse_event
from tests import _servers_app as app
from tests.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv the tests run in (.venv/bin)
APP = "tests._servers_app:app"
SERVERS = ["uvicorn", "hypercorn", "granian", "daphne"]
START_TIMEOUT = 15.0
CANCEL_WITHIN = 1.0  # seconds from the client's close to the source's `finally`


def command(server: str, port: int) -> list[str]:
    """The command line that serves :data:`APP` on 127.0.0.1:``port`` with ``server``."""
    executable = BIN / server
    if not executable.exists():
        pytest.fail(f"{executable} is missing: install the test extra (pip install -e '.[test]')")
    commands = {
        "uvicorn": [APP, "--host", "127.0.0.1", "--port", str(port)],
        "hypercorn": ["--bind", f"127.0.0.1:{port}", APP],
        "granian": ["--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), APP],
        "daphne": ["-b", "127.0.0.1", "-p", str(port), APP],
    }
    return [str(executable), *commands[server]]


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What the server has written so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")


def wait_until_ready(server: Server) -> None:
    """Poll the app's /health until it answers; fail with the server's output after
    :data:`START_TIMEOUT` seconds or if the server exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.process.poll() is not None:
            pytest.fail(
                f"{server.name} exited with {server.process.returncode} before serving:\n{server.output()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{server.name} did not serve within {START_TIMEOUT} s:\n{server.output()}")
        time.sleep(0.1)


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    name: str = request.param
    port = free_port()
    log = tmp_path_factory.mktemp(name) / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as output:
        process = subprocess.Popen(
            command(name, port), cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    running = Server(name, port, process, log)
    try:
        wait_until_ready(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def events_of(body: bytes) -> list[Event]:
    """The typed events of a whole SSE body (every one a default ``message`` event)."""
    frames = SSEDecoder().feed(body)
    assert {sse.event for sse in frames} <= {"message"}
    return [parse_event(sse.data) for sse in frames]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module (making one costs ~50 ms), a new connection per request."""
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        yield client


def fetch(http: httpx.Client, url: str, **params: str) -> tuple[httpx.Response, list[tuple[float, bytes]]]:
    """GET ``url`` as a stream; the response and its body's chunks with their arrival times
    (seconds since the request was sent)."""
    chunks: list[tuple[float, bytes]] = []
    start = time.monotonic()
    with http.stream("GET", url, params=params) as response:
        try:
            for chunk in response.iter_raw():
                chunks.append((time.monotonic() - start, chunk))
        except httpx.RemoteProtocolError as exc:
            received = b"".join(chunk for _, chunk in chunks)
            raise AssertionError(f"the server cut the stream ({exc}) after {received!r}") from exc
    return response, chunks


def arrival(chunks: list[tuple[float, bytes]], offset: int) -> float:
    """When the byte at ``offset`` of the body arrived."""
    end = 0
    for at, chunk in chunks:
        end += len(chunk)
        if offset < end:
            return at
    raise AssertionError(f"the body has no byte {offset}")


def test_order_and_headers(server: Server, http: httpx.Client) -> None:
    response, chunks = fetch(http, f"{server.url}/ordered")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    deltas: list[Event] = [Delta(value=f"delta {n} ", step=app.STEP) for n in range(app.DELTAS)]
    assert events_of(b"".join(chunk for _, chunk in chunks)) == [
        StepStart(step=app.STEP),
        *deltas,
        StepEnd(step=app.STEP, output={"deltas": app.DELTAS}),
        Done(),
    ]


def test_line_breaks_in_payloads_arrive_intact(server: Server, http: httpx.Client) -> None:
    response, chunks = fetch(http, f"{server.url}/tricky")
    assert response.status_code == 200
    deltas: list[Event] = [Delta(value=value) for value in app.TRICKY]
    assert events_of(b"".join(chunk for _, chunk in chunks)) == [*deltas, Done()]


def test_streams_arrive_whole_request_after_request(server: Server, http: httpx.Client) -> None:
    """Twenty short streams in a row, each on a new connection, all complete: a stream cut
    by a disconnect that never happened shows here, even when it strikes one time in two."""
    for _ in range(20):
        response, chunks = fetch(http, f"{server.url}/tricky")
        assert response.status_code == 200
        events = events_of(b"".join(chunk for _, chunk in chunks))
        assert events[-1:] == [Done()], events


def test_error_then_done_without_leaking_the_exception(server: Server, http: httpx.Client) -> None:
    response, chunks = fetch(http, f"{server.url}/failing")
    assert response.status_code == 200
    body = b"".join(chunk for _, chunk in chunks)
    assert app.SECRET.encode() not in body
    deltas: list[Event] = [Delta(value=value) for value in app.FAILING_DELTAS]
    generic = hide_exception(RuntimeError(app.SECRET)).message
    assert app.SECRET not in generic
    assert events_of(body) == [*deltas, Error(message=generic, code="internal_error"), Done()]


def test_disconnect_cancels_the_source(server: Server, http: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "finally"
    with http.stream("GET", f"{server.url}/endless", params={"marker": str(marker)}) as response:
        assert response.status_code == 200
        decoder = SSEDecoder()
        events: list[Event] = []
        received = b""
        raw = response.iter_raw()
        try:
            while len(events) < 3:
                chunk = next(raw)
                received += chunk
                events += [parse_event(sse.data) for sse in decoder.feed(chunk)]
        except httpx.RemoteProtocolError as exc:
            raise AssertionError(f"the server cut the stream ({exc}) after {received!r}") from exc
        assert events[:3] == [Delta(value="tick 1"), Delta(value="tick 2"), Delta(value="tick 3")]
        assert not marker.exists(), "the source ended while the client was still reading"
        closed_at = time.monotonic()
        response.close()  # an unfinished body: httpx closes the connection now
    deadline = closed_at + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), (
        f"under {server.name}, the source's finally had not run 5 s after the client went away "
        f"(the disconnect was not detected):\n{server.output()}"
    )
    delay = float(marker.read_text()) - closed_at
    assert delay <= CANCEL_WITHIN, (
        f"under {server.name}, the source was cancelled {delay:.2f} s after the close"
    )


def test_pings_while_the_source_is_silent(server: Server, http: httpx.Client) -> None:
    response, chunks = fetch(http, f"{server.url}/pings")
    assert response.status_code == 200
    body = b"".join(chunk for _, chunk in chunks)
    assert events_of(body) == [Delta(value="first"), Delta(value="second"), Done()]
    first, second = body.index(b'"first"'), body.index(b'"second"')
    between = body[first:second].split(b"\n")
    assert between.count(b": ping") >= 2, body  # about four in the second of silence
    # Streamed as they are written, not held back until the next event or the end.
    first_ping = body.index(b": ping\n", first) + len(b": ping\n")
    assert arrival(chunks, first) < arrival(chunks, second) - 0.5, chunks
    assert arrival(chunks, first_ping) < arrival(chunks, second) - 0.3, chunks


def raw_head(port: int, path: str) -> bytes:
    """A HEAD request on a raw socket (``Connection: close``): every byte the server sends."""
    request = f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_head_gets_headers_and_no_body(server: Server, http: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    response = http.head(f"{server.url}/started", params={"marker": str(marker)})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content == b""
    # What httpx would not show: the server sent no body bytes at all after the headers.
    head, _, body = raw_head(server.port, f"/started?marker={marker}").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"\r\ncontent-type: text/event-stream; charset=utf-8" in head.lower(), head
    assert body == b"", body
    time.sleep(0.3)  # a source started anyway would have written its marker by now
    assert not marker.exists(), f"under {server.name}, HEAD started the source"
    # The marker works: the same route's GET starts the source.
    response, chunks = fetch(http, f"{server.url}/started", marker=str(marker))
    assert events_of(b"".join(chunk for _, chunk in chunks)) == [Delta(value="started"), Done()]
    assert marker.exists()
