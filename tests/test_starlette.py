from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Message

import streamflow.starlette as starlette_module
from streamflow import (
    Delta,
    Done,
    Error,
    Event,
    EventStreamResponse,
    JSONEncoder,
    NamedEventEncoder,
    StepEnd,
    StepStart,
    expose_exception,
    hide_exception,
    parse_event,
)
from streamflow.client import aiter_events
from streamflow.testing import decode
from tests import apps
from tests.conftest import free_port, serve

pytestmark = pytest.mark.anyio

HTTP_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [], "asgi": {"spec_version": "2.4"}}


class Recorder:
    """A minimal ASGI server side: records what the response sends."""

    def __init__(self, send_delay: float = 0.0, block_sends: bool = False) -> None:
        self.messages: list[Message] = []
        self.disconnect = anyio.Event()
        self.send_delay = send_delay
        self.block_sends = block_sends

    async def receive(self) -> Message:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.block_sends and message["type"] == "http.response.body":
            await anyio.sleep(3600)
        if self.send_delay:
            await anyio.sleep(self.send_delay)
        self.messages.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    @property
    def headers(self) -> dict[str, str]:
        start = self.messages[0]
        return {k.decode(): v.decode() for k, v in start["headers"]}


async def run(response: EventStreamResponse, recorder: Recorder, method: str = "GET") -> None:
    await response({**HTTP_SCOPE, "method": method}, recorder.receive, recorder.send)


def events_of(bodies: list[bytes]) -> list[Event]:
    from streamflow import parse_event
    from streamflow.testing import decode

    return [parse_event(sse.data) for sse in decode(b"".join(bodies))]


# --- ASGI level -------------------------------------------------------------------------


async def test_headers() -> None:
    recorder = Recorder()
    await run(EventStreamResponse(["x"], headers={"x-request-id": "r1"}), recorder)
    assert recorder.messages[0]["status"] == 200
    assert recorder.headers == {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        "x-request-id": "r1",
    }
    assert recorder.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_fast_source_is_coalesced_into_few_body_messages() -> None:
    recorder = Recorder()
    await run(EventStreamResponse([f"token {i}" for i in range(1000)]), recorder)
    events = events_of(recorder.bodies)
    assert events == [Delta(value=f"token {i}") for i in range(1000)] + [Done()]
    assert len(recorder.bodies) < 10, f"{len(recorder.bodies)} body messages for 1001 events"


async def test_slow_source_is_never_held_back() -> None:
    recorder = Recorder()
    seen_before_next: list[int] = []

    async def slow() -> AsyncIterator[str]:
        for i in range(5):
            yield str(i)
            await anyio.sleep(0.02)
            seen_before_next.append(len(events_of(recorder.bodies)))

    await run(EventStreamResponse(slow()), recorder)
    assert seen_before_next == [1, 2, 3, 4, 5], "each event was sent before the source went on"


async def test_buffer_bounds_what_waits_for_a_slow_client() -> None:
    recorder = Recorder(send_delay=0.001)
    produced = 0

    async def fast() -> AsyncIterator[str]:
        nonlocal produced
        for i in range(200):
            produced = i
            yield "x" * 100

    await run(EventStreamResponse(fast(), buffer_size=1000), recorder)
    sizes = [len(b) for b in recorder.bodies]
    assert max(sizes) < 2000, f"a body of {max(sizes)} bytes exceeds the 1000-byte buffer by > 1 event"
    assert len(events_of(recorder.bodies)) == 201


async def test_head_sends_headers_only_and_never_starts_the_source() -> None:
    started = []

    async def source() -> AsyncIterator[str]:
        started.append(True)
        yield "x"

    recorder = Recorder()
    await run(EventStreamResponse(source()), recorder, method="HEAD")
    assert started == []
    assert recorder.bodies == [b""]


async def test_send_timeout_drops_a_stalled_client_and_cancels_the_source() -> None:
    recorder = Recorder(block_sends=True)
    finalized = anyio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            while True:
                yield "x"
                await anyio.sleep(0.01)
        finally:
            finalized.set()

    with anyio.fail_after(3):
        await run(EventStreamResponse(source(), send_timeout=0.2), recorder)
    assert finalized.is_set()


class CompletingRecorder(Recorder):
    """Like uvicorn: once the response is complete, receive() reports a disconnect."""

    async def send(self, message: Message) -> None:
        await super().send(message)
        await anyio.lowlevel.checkpoint()
        if message.get("more_body") is False:
            self.disconnect.set()
            await anyio.lowlevel.checkpoint()


async def test_the_disconnect_log_is_only_for_disconnects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="streamflow")
    await run(EventStreamResponse(["x"]), CompletingRecorder())
    assert "went away" not in caplog.text

    async def slow() -> AsyncIterator[str]:
        yield "x"
        await anyio.sleep(3600)

    recorder = Recorder()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, EventStreamResponse(slow()), recorder)
        await anyio.sleep(0.05)
        recorder.disconnect.set()
    assert "went away" in caplog.text


async def test_disconnect_cancels_an_idle_source() -> None:
    recorder = Recorder()
    finalized = anyio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "one"
            await anyio.sleep(3600)
        finally:
            finalized.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, EventStreamResponse(source()), recorder)
        await anyio.sleep(0.05)
        recorder.disconnect.set()
        with anyio.fail_after(1):
            await finalized.wait()
    assert events_of(recorder.bodies) == [Delta(value="one")]
    assert recorder.bodies[-1] != b"", "no closing body message is sent to a gone client"


@pytest.mark.parametrize("native", [True, False], ids=["asyncio watch", "anyio scope"])
async def test_the_idle_sender_wakes_pings_and_sees_the_disconnect(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle sender wakes for each event, sends pings and sees the disconnect. Both
    ways of waiting: asyncio's (a pending receive() and a future), and the anyio scope
    around receive() used on trio."""
    monkeypatch.setattr(starlette_module, "_on_asyncio", lambda: native)
    recorder = Recorder()
    finalized = anyio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "a"
            await anyio.sleep(0.25)
            yield "b"
            await anyio.sleep(3600)
        finally:
            finalized.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, EventStreamResponse(source(), ping=0.05), recorder)
        await anyio.sleep(0.4)
        recorder.disconnect.set()
        with anyio.fail_after(1):
            await finalized.wait()
    bodies = recorder.bodies
    assert events_of(bodies) == [Delta(value="a"), Delta(value="b")]
    pings_between = bodies[bodies.index(b'data: {"type":"delta","value":"a"}\n\n') + 1 :].index(
        b'data: {"type":"delta","value":"b"}\n\n'
    )
    assert 2 <= pings_between <= 6, bodies  # 0.25 s of silence at ping=0.05
    assert set(bodies) - {b": ping\n\n"} == {
        b'data: {"type":"delta","value":"a"}\n\n',
        b'data: {"type":"delta","value":"b"}\n\n',
    }


async def test_async_cleanup_in_a_suspended_source_gets_to_run() -> None:
    recorder = Recorder(block_sends=False)
    cleaned = anyio.Event()
    gate = anyio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "one"
            yield "two"
            await anyio.sleep(3600)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # e.g. closing an HTTP client to the model
            cleaned.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, EventStreamResponse(source()), recorder)
        await anyio.sleep(0.05)
        gate.set()
        recorder.disconnect.set()
    assert cleaned.is_set()


async def test_an_event_the_encoder_cannot_write_becomes_error_then_done() -> None:
    recorder = Recorder()
    closed = []

    async def source() -> AsyncIterator[Any]:
        try:
            yield "ok"
            yield Delta(value="lone surrogate \ud800")
            yield "never"
        finally:
            closed.append(True)

    await run(EventStreamResponse(source()), recorder)
    assert events_of(recorder.bodies) == [Delta(value="ok"), hide_exception(ValueError()), Done()]
    assert closed == [True]


async def test_an_unencodable_event_names_the_open_step() -> None:
    recorder = Recorder()
    await run(EventStreamResponse([StepStart(step="s"), Delta(value="\ud800"), "never"]), recorder)
    assert events_of(recorder.bodies) == [
        StepStart(step="s"),
        hide_exception(ValueError()).model_copy(update={"step": "s"}),
        Done(),
    ]


async def test_an_error_the_encoder_cannot_write_falls_back_to_the_generic_one() -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        raise ValueError("bad path /tmp/\udcff")  # an undecodable file name, exposed below

    recorder = Recorder()
    await run(EventStreamResponse(source(), on_error=expose_exception), recorder)
    assert events_of(recorder.bodies) == [Delta(value="a"), hide_exception(ValueError()), Done()]


async def test_a_failing_on_error_still_ends_the_stream_with_error_and_done() -> None:
    def broken(exc: Exception) -> Error:
        raise RuntimeError("handler bug")

    recorder = Recorder()
    await run(EventStreamResponse([Delta(value="\ud800")], on_error=broken), recorder)
    assert events_of(recorder.bodies) == [hide_exception(ValueError()), Done()]


class BrokenEncoder(JSONEncoder):
    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    def open(self) -> bytes:
        if self.fail_in == "open":
            raise RuntimeError("open")
        return b""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if self.fail_in == "encode":
            raise RuntimeError("encode")
        return super().encode(event, id=id)

    def close(self) -> bytes:
        if self.fail_in == "close":
            raise RuntimeError("close")
        return b""


@pytest.mark.parametrize("fail_in", ["open", "encode", "close"])
async def test_a_broken_encoder_ends_the_response_cleanly_and_closes_the_source(
    fail_in: str, caplog: pytest.LogCaptureFixture
) -> None:
    started, closed = [], []

    async def source() -> AsyncIterator[str]:
        started.append(True)
        try:
            yield "x"
        finally:
            closed.append(True)

    recorder = Recorder()
    with anyio.fail_after(3):
        await run(EventStreamResponse(source(), encoder=BrokenEncoder(fail_in)), recorder)
    assert recorder.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert "could not be encoded" in caplog.text
    assert closed == started == ([] if fail_in == "open" else [True])


def test_header_names_override_whatever_their_case() -> None:
    response = EventStreamResponse([], headers={"Cache-Control": "no-store", "X-Extra": "1"})
    assert response.headers.getlist("cache-control") == ["no-store"]
    assert response.headers["x-extra"] == "1"


def test_on_error_none_is_refused_by_the_transport() -> None:
    with pytest.raises(TypeError, match="on_error"):
        EventStreamResponse([], on_error=None)  # type: ignore[arg-type]


async def test_exactly_one_done_even_if_the_source_sends_its_own() -> None:
    recorder = Recorder()
    await run(EventStreamResponse(["a", Done(), "b", Done()]), recorder)
    assert events_of(recorder.bodies) == [Delta(value="a"), Done()]


async def test_named_encoder_through_the_transport() -> None:
    recorder = Recorder()
    await run(EventStreamResponse([Error(message="x")], encoder=NamedEventEncoder()), recorder)
    assert b"event: stream_error\n" in b"".join(recorder.bodies)
    assert b"event: done\n" in b"".join(recorder.bodies)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ping": 0}, "ping"), ({"send_timeout": -1}, "send_timeout"), ({"buffer_size": 0}, "buffer_size")],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventStreamResponse([], **kwargs)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_asgi_under_trio() -> None:
    recorder = Recorder()

    def sync_source() -> Iterator[str]:
        yield from ["a", "b"]

    await run(EventStreamResponse(sync_source()), recorder)
    assert events_of(recorder.bodies) == [Delta(value="a"), Delta(value="b"), Done()]


# --- through a real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(apps.starlette_app) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_signals() -> None:
    apps.signals = apps.Signals()


async def stream_events(url: str, method: str = "GET", **kwargs: Any) -> list[Event]:
    async with httpx.AsyncClient(timeout=10) as client, client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200
        return [event async for event in aiter_events(response.aiter_bytes())]


@pytest.mark.slow
async def test_events_arrive_before_the_source_finishes(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", f"{base_url}/gated") as response:
        events = aiter_events(response.aiter_bytes())
        assert await anext(events) == StepStart(step="s")
        assert not apps.signals.finished
        apps.signals.release.set()
        rest = [event async for event in events]
    assert rest == [Delta(value="after release"), Done()]


@pytest.mark.slow
async def test_pings_keep_an_idle_stream_alive(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", f"{base_url}/idle") as response:
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    before_data = raw.split(b"data:")[0]
    assert before_data.count(b": ping\n\n") >= 3
    assert raw.endswith(b'data: {"type":"done"}\n\n')


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 5])
async def test_disconnect_after_k_events_runs_the_sources_finally_within_a_second(
    base_url: str, k: int
) -> None:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base_url}/endless") as response,
    ):
        events = aiter_events(response.aiter_bytes())
        received = [await anext(events) for _ in range(k)]
        await events.aclose()
    closed_at = time.monotonic()
    assert received == [Delta(value=f"tick {n}") for n in range(1, k + 1)]
    assert apps.signals.finalized.wait(1.0), "the source's finally did not run within 1 s"
    assert apps.signals.finalized_at - closed_at < 1.0


@pytest.mark.slow
async def test_disconnect_while_the_source_is_silent(base_url: str) -> None:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", f"{base_url}/silent") as response,
    ):
        events = aiter_events(response.aiter_bytes())
        assert await anext(events) == Delta(value="one")
        await events.aclose()
    assert apps.signals.finalized.wait(1.0)


@pytest.mark.slow
async def test_exception_mid_stream_delivers_everything_then_error_then_done(base_url: str) -> None:
    events = await stream_events(f"{base_url}/failing")
    assert events == [
        StepStart(step="work"),
        Delta(value="partial "),
        Delta(value="answer"),
        Error(message="The stream failed because of an internal error.", code="internal_error", step="work"),
        Done(),
    ]
    assert "hunter2" not in repr(events)
    exposed = await stream_events(f"{base_url}/failing?expose=1")
    assert exposed[3] == Error(message="database password=hunter2 refused", code="RuntimeError", step="work")


@pytest.mark.slow
async def test_unserializable_item_becomes_an_error_and_the_connection_closes_cleanly(base_url: str) -> None:
    events = await stream_events(f"{base_url}/bad-item")
    assert events == [Delta(value="fine"), hide_exception(TypeError()), Done()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_any_method_with_a_body(base_url: str, method: str) -> None:
    events = await stream_events(f"{base_url}/echo", method, json={"prompt": "hello streaming world"})
    assert events == [
        StepStart(step="echo"),
        Delta(value="hello "),
        Delta(value="streaming "),
        Delta(value="world "),
        StepEnd(step="echo", output={"words": 3}),
        Done(),
    ]


@pytest.mark.slow
async def test_fastapi_endpoint() -> None:
    with serve(apps.fastapi_app) as url:
        events = await stream_events(f"{url}/chat", "POST", json={"prompt": "hi there"})
    assert events == [
        StepStart(step="answer"),
        Delta(value="hi"),
        Delta(value="there"),
        StepEnd(step="answer"),
        Done(),
    ]


@pytest.fixture(scope="module")
def trio_url() -> Iterator[str]:
    """The same app served by hypercorn on the trio event loop, in a subprocess."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio"]
    command += ["--bind", f"127.0.0.1:{port}", "tests.apps:starlette_app"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    server = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.head(f"http://127.0.0.1:{port}/idle", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
async def test_trio_server(trio_url: str) -> None:
    events = await stream_events(f"{trio_url}/echo", "POST", json={"prompt": "on trio"})
    assert events == [
        StepStart(step="echo"),
        Delta(value="on "),
        Delta(value="trio "),
        StepEnd(step="echo", output={"words": 2}),
        Done(),
    ]
    failing = await stream_events(f"{trio_url}/failing")
    assert failing[-2:] == [
        Error(message=hide_exception(RuntimeError()).message, code="internal_error", step="work"),
        Done(),
    ]


@pytest.mark.slow
async def test_behind_base_http_middleware() -> None:
    """Apps usually have a BaseHTTPMiddleware (logging, auth) in front: streaming,
    incremental delivery and disconnect cancellation must survive it."""
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import Response

    class Tagging(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            response.headers["x-tagged"] = "1"
            return response

    app = Starlette(routes=apps.starlette_app.routes, middleware=[Middleware(Tagging)])
    with serve(app) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", f"{url}/endless") as response:
                assert response.headers["x-tagged"] == "1"
                events = aiter_events(response.aiter_bytes())
                assert await anext(events) == Delta(value="tick 1")
                await events.aclose()
            assert apps.signals.finalized.wait(1.0), "the source kept running behind the middleware"
            # A source that always has its next event ready keeps the sender busy, and this
            # middleware swallows the writes to a gone client: the sender must still look.
            apps.signals.finalized.clear()
            async with client.stream("GET", f"{url}/busy") as response:
                events = aiter_events(response.aiter_bytes())
                assert await anext(events) == Delta(value="x")
                await events.aclose()
            assert apps.signals.finalized.wait(1.0), "a busy stream kept running behind the middleware"
            failing = await stream_events(f"{url}/failing")
            assert failing[-2] == Error(
                message=hide_exception(RuntimeError()).message, code="internal_error", step="work"
            )


def test_fastapi_documents_the_stream_media_type() -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/stream", response_class=EventStreamResponse)
    async def stream() -> EventStreamResponse:
        return EventStreamResponse(["x"])

    content = app.openapi()["paths"]["/stream"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


# --- with_ids: a resumable stream's batches ---------------------------------------------


async def batches_of(*batches: Any) -> AsyncIterator[Any]:
    for batch in batches:
        yield batch


async def test_with_ids_sends_each_event_with_its_id_events_or_stored_json() -> None:
    recorder = CompletingRecorder()
    stored = Delta(value="b").to_json()
    pairs = batches_of([("r.1", Delta(value="a"))], (("r.2", stored) for _ in range(1)), [("r.3", Done())])
    await run(EventStreamResponse.with_ids(pairs, retry=500), recorder)
    body = b"".join(recorder.bodies)
    assert body == (
        b'retry: 500\n\nid: r.1\ndata: {"type":"delta","value":"a"}\n\n'
        b'id: r.2\ndata: {"type":"delta","value":"b"}\n\nid: r.3\ndata: {"type":"done"}\n\n'
    )


@pytest.mark.parametrize("encoder", [JSONEncoder, NamedEventEncoder], ids=["json", "named"])
async def test_with_ids_ends_with_error_and_done_when_a_batch_cannot_be_sent(
    encoder: type[JSONEncoder],
) -> None:
    """A store's text that is not an event (or an id that would break the frame): the
    client gets Error and Done carrying the last id sent, so it stops instead of
    reconnecting for the same batch for ever."""
    recorder = CompletingRecorder()
    bad_id = [("r.2\nid: forged", Delta(value="b"))]
    not_an_event = [("r.2", '{"type":"nonsense"}')]
    bad = bad_id if encoder is JSONEncoder else not_an_event
    response = EventStreamResponse.with_ids(batches_of([("r.1", Delta(value="a"))], bad), encoder=encoder())
    await run(response, recorder)
    decoded = decode(b"".join(recorder.bodies))
    assert [parse_event(sse.data) for sse in decoded] == [
        Delta(value="a"),
        Error(message="The stream could not be sent.", code="internal_error"),
        Done(),
    ]
    assert [sse.id for sse in decoded] == ["r.1", "r.1", "r.1"]
