"""The benchmark server: one contender's app under uvicorn on 127.0.0.1.

``python benchmarks/_server.py CONTENDER`` binds a free port, prints ``PORT <n>`` and
serves until SIGINT/SIGTERM. Every contender runs in the same FastAPI app shape, so
routing and request handling cost the same and only the SSE response differs:

- ``GET /fast?n=N``: ``N`` delta events from a source that never awaits;
- ``GET /slow?n=N&interval=S``: ``N`` deltas, one every ``S`` seconds, each carrying
  ``ts=<time.perf_counter_ns()>`` taken just before the source yields it;
- ``GET /idle``: one delta, then a source that waits forever (an open, idle stream).

Each delta is ``{"type": "delta", "value": token}`` in the contender's own idiom.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Literal

import anyio
import uvicorn
from _common import BY_KEY, HOST, make_tokens, raise_open_files_limit
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse as FastAPIEventSourceResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response, StreamingResponse

from streamflow import EventStreamResponse

TOKENS = make_tokens(1000)


async def fast_source(n: int) -> AsyncIterator[str]:
    """``n`` tokens as fast as they can be taken: no await between them."""
    tokens, size = TOKENS, len(TOKENS)
    for index in range(n):
        yield tokens[index % size]


async def slow_source(n: int, interval: float) -> AsyncIterator[str]:
    """``n`` tokens, one every ``interval`` seconds, each stamped when it is yielded."""
    for index in range(n):
        await anyio.sleep(interval)
        yield f"ts={time.perf_counter_ns()} {TOKENS[index % len(TOKENS)]}"


async def idle_source() -> AsyncIterator[str]:
    """One token, then nothing, ever: an idle stream held open by its client."""
    yield TOKENS[0]
    await anyio.sleep_forever()


# Every contender's response, given a source of tokens. --------------------------------


def hand_rolled(tokens: AsyncIterable[str]) -> Response:
    async def body() -> AsyncIterator[str]:
        async for token in tokens:
            yield f"data: {json.dumps({'type': 'delta', 'value': token})}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def streamflow(tokens: AsyncIterable[str]) -> Response:
    return EventStreamResponse(tokens)  # a str item is a Delta


def sse_starlette(tokens: AsyncIterable[str]) -> Response:
    async def events() -> AsyncIterator[ServerSentEvent]:
        async for token in tokens:
            yield ServerSentEvent(data=json.dumps({"type": "delta", "value": token}))

    return EventSourceResponse(events())


RESPONSES: dict[str, Callable[[AsyncIterable[str]], Response]] = {
    "hand": hand_rolled,
    "streamflow": streamflow,
    "sse-starlette": sse_starlette,
}


def response_app(make_response: Callable[[AsyncIterable[str]], Response]) -> FastAPI:
    app = base_app()

    @app.get("/fast")
    async def fast(n: int = 1000) -> Response:
        return make_response(fast_source(n))

    @app.get("/slow")
    async def slow(n: int = 100, interval: float = 0.01) -> Response:
        return make_response(slow_source(n, interval))

    @app.get("/idle")
    async def idle() -> Response:
        return make_response(idle_source())

    return app


class DeltaItem(BaseModel):
    type: Literal["delta"] = "delta"
    value: str


def fastapi_typed_app() -> FastAPI:
    """FastAPI's documented SSE style: an annotated generator of pydantic items."""
    app = base_app()

    @app.get("/fast", response_class=FastAPIEventSourceResponse)
    async def fast(n: int = 1000) -> AsyncIterable[DeltaItem]:
        async for token in fast_source(n):
            yield DeltaItem(value=token)

    @app.get("/slow", response_class=FastAPIEventSourceResponse)
    async def slow(n: int = 100, interval: float = 0.01) -> AsyncIterable[DeltaItem]:
        async for token in slow_source(n, interval):
            yield DeltaItem(value=token)

    @app.get("/idle", response_class=FastAPIEventSourceResponse)
    async def idle() -> AsyncIterable[DeltaItem]:
        async for token in idle_source():
            yield DeltaItem(value=token)

    return app


def fastapi_dict_app() -> FastAPI:
    """FastAPI's SSE path with plain dicts and no return annotation (``jsonable_encoder``)."""
    app = base_app()

    # No return annotations: an annotated item type selects the typed path above.
    @app.get("/fast", response_class=FastAPIEventSourceResponse)
    async def fast(n: int = 1000):  # type: ignore[no-untyped-def]
        async for token in fast_source(n):
            yield {"type": "delta", "value": token}

    @app.get("/slow", response_class=FastAPIEventSourceResponse)
    async def slow(n: int = 100, interval: float = 0.01):  # type: ignore[no-untyped-def]
        async for token in slow_source(n, interval):
            yield {"type": "delta", "value": token}

    @app.get("/idle", response_class=FastAPIEventSourceResponse)
    async def idle():  # type: ignore[no-untyped-def]
        async for token in idle_source():
            yield {"type": "delta", "value": token}

    return app


def base_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    return app


def build_app(key: str) -> FastAPI:
    if key == "fastapi":
        return fastapi_typed_app()
    if key == "fastapi-dict":
        return fastapi_dict_app()
    return response_app(RESPONSES[key])


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in BY_KEY:
        print(f"usage: _server.py {{{','.join(BY_KEY)}}}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    app: Any = build_app(argv[0])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
