from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from streamflow import Delta, Done, Error, EventStreamResponse, NamedEventEncoder, ProtocolError, StepStart
from streamflow.client import IncompleteStreamError, aiter_events, aiter_sse, connect
from tests import apps
from tests.conftest import serve

pytestmark = pytest.mark.anyio


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_events_from_arbitrary_chunks_stop_at_done() -> None:
    data = b'data: {"type":"delta",' + b'"value":"a\\nb"}\r\n\r\n: ping\n\ndata: {"type":"done"}\n\n'
    parts = [data[i : i + 3] for i in range(0, len(data), 3)] + [b"data: ignored after done\n\n"]
    events = [event async for event in aiter_events(chunks(*parts))]
    assert events == [Delta(value="a\nb"), Done()]


async def test_a_cut_stream_is_an_incomplete_stream_error() -> None:
    with pytest.raises(IncompleteStreamError, match="before its 'done'"):
        [event async for event in aiter_events(chunks(b'data: {"type":"delta","value":"x"}\n\n'))]


async def test_a_frame_that_is_not_an_event_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="Invalid JSON"):
        [event async for event in aiter_events(chunks(b"data: [DONE]\n\n"))]


async def test_aiter_sse_gives_raw_frames_with_names_and_ids() -> None:
    frames = [sse async for sse in aiter_sse(chunks(b"event: x\nid: 1\ndata: a\n\n"))]
    assert [(f.event, f.id, f.data) for f in frames] == [("x", "1", "a")]


async def named(request: Request) -> EventStreamResponse:
    return EventStreamResponse([StepStart(step="s"), "hi", Error(message="m")], encoder=NamedEventEncoder())


async def status(request: Request) -> JSONResponse:
    return JSONResponse({"detail": "nope"}, status_code=403)


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("data: hello\n\n")


async def echo_headers(request: Request) -> EventStreamResponse:
    return EventStreamResponse([request.headers.get("accept", ""), request.headers.get("x-token", "")])


app = Starlette(
    routes=[
        Route("/named", named),
        Route("/status", status),
        Route("/plain", plain),
        Route("/headers", echo_headers),
        Route("/endless", apps.endless),
    ]
)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(app) as base:
        yield base


async def read(url: str, **kwargs: Any) -> list[Any]:
    async with httpx.AsyncClient() as http, connect(http, "GET", url, **kwargs) as events:
        return [event async for event in events]


@pytest.mark.slow
async def test_connect_reads_named_event_streams(url: str) -> None:
    expected = [StepStart(step="s"), Delta(value="hi"), Error(message="m", step="s"), Done()]
    assert await read(f"{url}/named") == expected


@pytest.mark.slow
async def test_connect_sends_accept_and_keeps_caller_headers(url: str) -> None:
    events = await read(f"{url}/headers", headers={"x-token": "t"})
    assert events == [Delta(value="text/event-stream"), Delta(value="t"), Done()]


@pytest.mark.slow
async def test_connect_raises_for_an_http_error(url: str) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        await read(f"{url}/status")
    assert info.value.response.status_code == 403


@pytest.mark.slow
async def test_connect_refuses_a_response_that_is_not_an_event_stream(url: str) -> None:
    with pytest.raises(ProtocolError, match="expected a text/event-stream response"):
        await read(f"{url}/plain")


@pytest.mark.slow
async def test_leaving_the_block_early_closes_the_upstream(url: str) -> None:
    apps.signals = apps.Signals()
    async with httpx.AsyncClient() as http, connect(http, "GET", f"{url}/endless") as events:
        assert await anext(events) == Delta(value="tick 1")
    assert apps.signals.finalized.wait(1.0), "the upstream source kept running"


def test_connect_raises_a_short_read_timeout_but_keeps_an_explicit_one() -> None:
    seen: list[httpx.Timeout] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(httpx.Timeout(**request.extensions["timeout"]))
        body = b'data: {"type":"done"}\n\n'
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async def read_with(**kwargs: Any) -> None:
        transport = httpx.MockTransport(handler)
        async with (
            httpx.AsyncClient(transport=transport) as http,
            connect(http, "GET", "http://t/", **kwargs) as ev,
        ):
            assert [e async for e in ev] == [Done()]

    import anyio

    anyio.run(read_with)
    anyio.run(lambda: read_with(timeout=2.0))
    assert seen[0].read == 60.0
    assert seen[0].connect == 5.0
    assert seen[1].read == 2.0


def test_connect_takes_headers_in_any_form_httpx_does() -> None:
    seen: list[list[tuple[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append([(k, v) for k, v in request.headers.multi_items() if k in ("accept", "x-a")])
        body = b'data: {"type":"done"}\n\n'
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async def read_with(headers: Any) -> None:
        transport = httpx.MockTransport(handler)
        async with (
            httpx.AsyncClient(transport=transport) as http,
            connect(http, "GET", "http://t/", headers=headers) as ev,
        ):
            assert [event async for event in ev] == [Done()]

    import anyio

    anyio.run(read_with, {"Accept": "text/event-stream, application/json"})
    anyio.run(read_with, [("x-a", "1")])
    assert seen[0] == [("accept", "text/event-stream, application/json")], "one Accept, the caller's"
    assert sorted(seen[1]) == [("accept", "text/event-stream"), ("x-a", "1")]
