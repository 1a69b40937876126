"""No fault of one source harms anything else: every exception a source can raise ends its
own stream with the events before it, an ``Error`` (generic, with a code) and one ``Done``.

``KeyboardInterrupt``, ``SystemExit`` and the cancellation of the task that runs the stream
(a disconnect, a shutdown) are not the source's failure: they propagate.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamflow import (
    Delta,
    Done,
    Error,
    Event,
    EventStreamResponse,
    expose_exception,
    from_iterable,
    parse_event,
)
from streamflow.adapters import SourceAbortedError
from streamflow.sse import SSEDecoder
from tests.conftest import serve

pytestmark = pytest.mark.anyio


class CustomAbort(BaseException):
    """A BaseException a library might define (gevent's GreenletExit, trio's old Cancelled...)."""


def _raise_cancelled() -> BaseException:
    return asyncio.CancelledError("an SDK's future was cancelled under the source")


FAILURES: dict[str, Callable[[], BaseException]] = {
    "RuntimeError": lambda: RuntimeError("secret prompt text"),
    "GeneratorExit": lambda: GeneratorExit("secret prompt text"),
    "custom BaseException": lambda: CustomAbort("secret prompt text"),
    "CancelledError of its own": _raise_cancelled,
    "ExceptionGroup": lambda: ExceptionGroup("secret prompt text", [ValueError("x")]),
    "BaseExceptionGroup": lambda: BaseExceptionGroup("secret prompt text", [CustomAbort("x")]),
}

GENERIC = Error(message="The stream failed because of an internal error.", code="internal_error")


def failing(make: Callable[[], BaseException], count: int = 3) -> AsyncIterator[str]:
    async def source() -> AsyncIterator[str]:
        for i in range(count):
            yield f"d{i}"
            await anyio.lowlevel.checkpoint()
        raise make()

    return source()


async def collect(source: Any, **options: Any) -> list[Event]:
    async with aclosing(from_iterable(source, **options)) as events:
        return [event async for event in events]


@pytest.mark.parametrize("make", FAILURES.values(), ids=FAILURES.keys())
async def test_any_failure_of_a_source_ends_its_stream_with_error_and_one_done(
    make: Callable[[], BaseException],
) -> None:
    assert await collect(failing(make)) == [
        Delta(value="d0"),
        Delta(value="d1"),
        Delta(value="d2"),
        GENERIC,
        Done(),
    ]


@pytest.mark.parametrize("make", FAILURES.values(), ids=FAILURES.keys())
def test_any_failure_of_a_sync_source_too(make: Callable[[], BaseException]) -> None:
    def source() -> Iterator[str]:
        yield "a"
        raise make()

    assert anyio.run(collect, source()) == [Delta(value="a"), GENERIC, Done()]


async def test_the_handler_gets_an_exception_that_names_the_base_exception() -> None:
    seen: list[Exception] = []

    def handler(exc: Exception) -> Error:
        seen.append(exc)
        return expose_exception(exc)

    events = await collect(failing(lambda: CustomAbort("x"), count=0), on_error=handler)
    assert events == [Error(message="the source raised CustomAbort", code="SourceAbortedError"), Done()]
    assert isinstance(seen[0], SourceAbortedError)
    assert isinstance(seen[0].__cause__, CustomAbort)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_propagate_after_closing_the_source(
    kind: type[BaseException],
) -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[str]:
        try:
            yield "a"
            raise kind()
        finally:
            closed.append(True)

    seen: list[Event] = []

    async def consume() -> None:
        async with aclosing(from_iterable(source())) as events:
            async for event in events:
                seen.append(event)

    with pytest.raises(kind):
        await consume()
    assert seen == [Delta(value="a")]
    assert closed == [True]


async def test_our_own_cancellation_propagates_and_is_no_error() -> None:
    seen: list[Event] = []
    closed = anyio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "a"
            await anyio.sleep_forever()
        finally:
            closed.set()

    with anyio.move_on_after(0.2) as scope:
        async with aclosing(from_iterable(source())) as events:
            async for event in events:
                seen.append(event)
    assert scope.cancelled_caught
    assert seen == [Delta(value="a")]
    assert closed.is_set()


async def test_asyncio_task_cancel_propagates_too() -> None:
    seen: list[Event] = []

    async def source() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(3600)

    async def consume() -> None:
        async with aclosing(from_iterable(source())) as events:
            async for event in events:
                seen.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [Delta(value="a")]


def test_under_trio_an_asyncio_cancelled_error_is_the_sources_failure() -> None:
    assert anyio.run(collect, failing(_raise_cancelled, count=1), backend="trio") == [
        Delta(value="d0"),
        GENERIC,
        Done(),
    ]


async def test_a_clean_up_that_raises_a_base_exception_is_a_failure() -> None:
    async def source() -> AsyncIterator[str]:
        try:
            yield "a"
        finally:
            raise CustomAbort("in clean-up")

    assert await collect(source()) == [Delta(value="a"), GENERIC, Done()]


# --- through a real server: the failing stream ends well, the others are untouched --------


def _app(finished: list[str]) -> Starlette:
    async def failing_route(request: Request) -> Response:
        make = FAILURES[request.query_params["kind"]]
        return EventStreamResponse(failing(make, count=int(request.query_params.get("n", "3"))))

    async def slow(request: Request) -> Response:
        async def source() -> AsyncIterator[str]:
            try:
                for i in range(40):
                    yield f"s{i}"
                    await anyio.sleep(0.01)
            finally:
                finished.append("slow")

        return EventStreamResponse(source())

    return Starlette(routes=[Route("/fail", failing_route), Route("/slow", slow)])


def _read(client: httpx.Client, url: str, **params: str) -> tuple[list[Event], bytes]:
    decoder, raw = SSEDecoder(), b""
    with client.stream("GET", url, params=params) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            raw += chunk
    return [parse_event(sse.data) for sse in decoder.feed(raw)], raw


@pytest.mark.slow
def test_a_failing_source_on_a_real_server_harms_no_other_stream() -> None:
    finished: list[str] = []
    results: dict[str, list[Event]] = {}
    with serve(_app(finished)) as url, httpx.Client(timeout=20) as client:

        def read_slow() -> None:
            results["slow"] = _read(client, f"{url}/slow")[0]

        thread = threading.Thread(target=read_slow)
        thread.start()
        for kind in FAILURES:
            events, raw = _read(client, f"{url}/fail", kind=kind)
            assert events == [Delta(value="d0"), Delta(value="d1"), Delta(value="d2"), GENERIC, Done()], kind
            assert b"secret" not in raw
        thread.join(20)
    assert results["slow"] == [*(Delta(value=f"s{i}") for i in range(40)), Done()]
    assert finished == ["slow"]


# --- a reader that stops reading; an event the encoder cannot write ------------------------


def test_a_client_that_takes_no_bytes_is_dropped_by_default() -> None:
    assert EventStreamResponse([]).send_timeout == 30.0


@pytest.mark.slow
def test_a_client_that_stops_reading_is_dropped_and_the_source_cancelled() -> None:
    import socket
    from urllib.parse import urlsplit

    cancelled = threading.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "x" * 4096
                await anyio.lowlevel.checkpoint()
        finally:
            cancelled.set()

    async def route(request: Request) -> Response:
        return EventStreamResponse(endless(), send_timeout=1.0, buffer_size=16 * 1024)

    with serve(Starlette(routes=[Route("/", route)])) as url:
        parts = urlsplit(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((str(parts.hostname), int(parts.port or 80)))
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
            assert cancelled.wait(15), "the stalled client was never dropped"
        finally:
            sock.close()


class _Fragile:
    """A JSON encoder that cannot write the delta "bad"."""

    media_type = "text/event-stream"
    headers: dict[str, str] = {}  # noqa: RUF012

    def __init__(self) -> None:
        from streamflow.encoders import JSONEncoder

        self.inner = JSONEncoder()

    def open(self) -> bytes:
        return b""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if isinstance(event, Delta) and event.value == "bad":
            raise ValueError("cannot write this one")
        return self.inner.encode(event, id=id)

    def close(self) -> bytes:
        return b""


@pytest.mark.slow
def test_an_event_the_encoder_cannot_write_keeps_its_batch_mates() -> None:
    async def batches() -> AsyncIterator[list[tuple[str, Event | str]]]:
        yield [("r.1", Delta(value="a")), ("r.2", Delta(value="b").to_json()), ("r.3", Delta(value="bad"))]
        yield [("r.4", Delta(value="never"))]

    async def route(request: Request) -> Response:
        return EventStreamResponse.with_ids(batches(), encoder=_Fragile())

    with serve(Starlette(routes=[Route("/", route)])) as url, httpx.Client(timeout=20) as client:
        raw = client.get(url).content
    frames = SSEDecoder().feed(raw)
    assert [(sse.id, parse_event(sse.data)) for sse in frames] == [
        ("r.1", Delta(value="a")),
        ("r.2", Delta(value="b")),
        ("r.2", Error(message="The stream could not be sent.", code="internal_error")),
        ("r.2", Done()),
    ]


async def test_closing_a_stream_at_its_error_is_no_second_failure() -> None:
    """A consumer that closes the stream right after its Error (a wrapper's aclosing) gets no
    'ignored GeneratorExit' and no second Error."""

    async def source() -> AsyncIterator[Any]:
        yield "a"
        yield Error(message="typed", code="mine")

    inner = from_iterable(source())

    async def wrapper() -> AsyncIterator[Event]:
        async with aclosing(inner) as events:
            async for event in events:
                yield event

    assert await collect(wrapper()) == [Delta(value="a"), Error(message="typed", code="mine"), Done()]
