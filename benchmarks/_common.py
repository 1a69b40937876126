"""Shared pieces of the benchmarks: the token corpus, the contenders, the uvicorn
subprocess, a minimal HTTP/1.1 client and the result tables.

Nothing here is timed by itself; the scripts (``encode.py``, ``stream.py``,
``memory.py``) import it. It only uses the standard library so that the client side
of a benchmark never pays for importing a web framework.
"""

from __future__ import annotations

import os
import platform
import random
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
HOST: Final = "127.0.0.1"


# --------------------------------------------------------------------------- corpus

_WORDS: Final = (
    # Mostly short English words, as LLM output is, plus what makes JSON string
    # escaping work: quotes, backslashes, non-ASCII text and emoji.
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "you",
    "this", "be", "are", "or", "model", "answer", "stream", "token", "server", "event", "agent",
    "tool", "result", "value", "step", "data", "quick", "brown", "fox", "jumps", "over", "lazy",
    "dog", "Python", "async", "await", "yield", "response", "1", "2", "42", "3.14", "2024",
    "100%", "x=1;", "(see", "above)", "[1]", "e.g.", "i.e.",
    '"quoted"', "it's", "“smart quotes”", "C:\\temp\\file", "{json}", "<b>bold</b>",
    "café", "naïve", "über", "mañana", "日本語", "テキスト", "привет", "😀", "→",
)  # fmt: skip


def make_tokens(count: int, *, seed: int = 20240501) -> list[str]:
    """``count`` deterministic LLM-like tokens of 1 to 8 words.

    About one in ten ends a line or a paragraph (``\\n`` / ``\\n\\n``), so the corpus
    exercises every escaping path of every encoder.
    """
    rng = random.Random(seed)
    tokens: list[str] = []
    for _ in range(count):
        text = " " + " ".join(rng.choices(_WORDS, k=rng.randint(1, 8)))
        roll = rng.random()
        if roll < 0.07:
            text += "\n"
        elif roll < 0.10:
            text += ".\n\n"
        tokens.append(text)
    return tokens


# ----------------------------------------------------------------------- contenders


@dataclass(frozen=True)
class Contender:
    """One way of serving SSE from a Starlette/FastAPI app."""

    key: str  # the name the server subprocess takes on its command line
    label: str  # the name in the tables
    delimiter: bytes  # what ends one event on the wire
    extra_events: int = 0  # events sent besides the deltas (streamflow's final Done)


HAND_ROLLED: Final = Contender("hand", "hand-rolled StreamingResponse", b"\n\n")
STREAMFLOW: Final = Contender("streamflow", "streamflow EventStreamResponse", b"\n\n", extra_events=1)
SSE_STARLETTE: Final = Contender("sse-starlette", "sse-starlette EventSourceResponse", b"\r\n\r\n")
FASTAPI: Final = Contender("fastapi", "fastapi.sse (typed item)", b"\n\n")
FASTAPI_DICT: Final = Contender("fastapi-dict", "fastapi.sse (untyped dict)", b"\n\n")

CONTENDERS: Final = (HAND_ROLLED, STREAMFLOW, SSE_STARLETTE, FASTAPI, FASTAPI_DICT)
BY_KEY: Final = {contender.key: contender for contender in CONTENDERS}


# ------------------------------------------------------------------------ processes


def raise_open_files_limit(wanted: int = 8192) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted``; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used (``/proc/PID/stat``, 10 ms steps)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class Server:
    """A running benchmark server (see ``_server.py``)."""

    contender: Contender
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


@contextmanager
def serve(contender: Contender, *, startup_timeout: float = 30.0) -> Iterator[Server]:
    """Run ``contender``'s app under uvicorn in a subprocess on 127.0.0.1; stop it on exit."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_server.py"), contender.key],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        port = _read_port(process, startup_timeout)
        _wait_healthy(port, process, startup_timeout)
        yield Server(contender, process, port)
    finally:
        _stop(process)


def _read_port(process: subprocess.Popen[bytes], timeout: float) -> int:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"the server did not report its port within {timeout}s")
    line = process.stdout.readline().decode()
    if not line.startswith("PORT "):
        raise RuntimeError(f"the server failed to start (exit code {process.poll()}): {line!r}")
    return int(line.split()[1])


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with http_get(port, "/health", timeout=2.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the server was not healthy within {timeout}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


# ---------------------------------------------------------------------- HTTP client


@dataclass
class Response:
    """An HTTP/1.1 response whose head has been read; the body is still on ``sock``."""

    sock: socket.socket
    status: int
    headers: dict[str, str]
    body_start: bytes  # body bytes that arrived with the head

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_for_redis(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Wait until the ``redis-server`` ``process`` answers ``PING`` on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)


def request(port: int, path: str, *, timeout: float) -> socket.socket:
    """Connect to the benchmark server and send ``GET path``; the response is not read."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    return sock


def read_head(sock: socket.socket, *, max_size: int = 65536) -> Response:
    """Read the status line and headers of the response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before the response head")
        data += chunk
        if len(data) > max_size:
            raise ConnectionError("response head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(sock, int(status_line.split()[1]), headers, rest)


def http_get(port: int, path: str, *, timeout: float) -> Response:
    return read_head(request(port, path, timeout=timeout))


class Dechunker:
    """Incremental decoder of an HTTP/1.1 ``Transfer-Encoding: chunked`` body.

    :attr:`chunks` counts the non-empty chunks: uvicorn writes one per ASGI
    ``http.response.body`` message, so it is the number of messages the app sent.
    """

    __slots__ = ("_buffer", "_left", "_skip", "chunks", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0  # payload bytes left in the current chunk
        self._skip = 0  # bytes of the CRLF after a chunk's payload still to skip
        self.chunks = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The payload bytes in ``data`` (the rest of a split chunk header is kept)."""
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        out: list[bytes] = []
        position, end = 0, len(buffer)
        while position < end and not self.done:
            if self._left:
                take = min(self._left, end - position)
                out.append(buffer[position : position + take])
                position += take
                self._left -= take
                if not self._left:
                    self._skip = 2
            elif self._skip:
                step = min(self._skip, end - position)
                position += step
                self._skip -= step
            else:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    self._buffer = buffer[position:]
                    break
                size = int(buffer[position:line_end].split(b";", 1)[0], 16)
                position = line_end + 2
                if size:
                    self._left = size
                    self.chunks += 1
                else:
                    self.done = True  # the last chunk; no trailers are sent
        return out[0] if len(out) == 1 else b"".join(out)


class EventCounter:
    """Counts complete SSE events (their terminating ``delimiter``) in a byte stream."""

    __slots__ = ("_delimiter", "_tail", "count")

    def __init__(self, delimiter: bytes) -> None:
        self._delimiter = delimiter
        self._tail = b""
        self.count = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        delimiter = self._delimiter
        text = self._tail + data if self._tail else data
        found = text.count(delimiter)
        self.count += found
        # Keep the bytes that could start a delimiter split across reads, but never a
        # byte of one already counted.
        keep_from = len(text) - len(delimiter) + 1
        if found:
            keep_from = max(keep_from, text.rindex(delimiter) + len(delimiter))
        self._tail = text[max(keep_from, 0) :]


class EventSplitter:
    """Splits a byte stream into complete SSE events."""

    __slots__ = ("_buffer", "_delimiter")

    def __init__(self, delimiter: bytes) -> None:
        self._delimiter = delimiter
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        *events, self._buffer = (self._buffer + data).split(self._delimiter)
        return events


_DATA_LINE: Final = re.compile(rb"^data: ?(.*?)\r?$", re.MULTILINE)


def event_data(event: bytes) -> str:
    """The ``data`` of one raw SSE event (its ``data:`` lines joined with LF)."""
    return b"\n".join(_DATA_LINE.findall(event)).decode()


# -------------------------------------------------------------------------- reports


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (width + 1) + ":" if index else ":" + "-" * (width + 1) for index, width in enumerate(widths)
    )
    rule += "|"
    return "\n".join([f"### {title}", "", line(headers), rule, *(line(row) for row in rows), ""])


def targets_heading(quick: bool) -> str:
    if quick:
        return "Targets (a --quick run is a smoke test, too short to judge them):"
    return "Targets:"


def verdict(name: str, value: float, target: float, *, at_least: bool) -> str:
    passed = value >= target if at_least else value <= target
    relation = ">=" if at_least else "<="
    return f"- {'PASS' if passed else 'FAIL'}: {name}: {value:.2f} (target {relation} {target:g})"


def machine() -> str:
    """A one-line description of this machine and the software under test."""
    import importlib.metadata as metadata

    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("streamflow", "starlette", "fastapi", "sse-starlette", "uvicorn", "pydantic")
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()} on {platform.system()}; "
        f"{versions}"
    )


class Noise:
    """How much CPU *other* processes used while the benchmarks ran.

    Anything else running skews every figure: this is all the machine's busy time
    (``/proc/stat``) minus this process's and its (finished) servers' (``os.times()``).
    """

    def __init__(self) -> None:
        self._busy, self._total = _machine_seconds()
        self._own = _own_seconds()

    def report(self) -> str:
        busy, total = _machine_seconds()
        others = (busy - self._busy) - (_own_seconds() - self._own)
        share = max(others, 0.0) / max(total - self._total, 1e-9)
        return f"other processes used {share:.0%} of the machine's CPU time"


def _machine_seconds() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine since boot (all CPUs)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy / _CLOCK_TICKS, (busy + idle + iowait) / _CLOCK_TICKS


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
