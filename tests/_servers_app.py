"""The app tests/test_servers.py serves with real ASGI servers (uvicorn, hypercorn, granian,
daphne), each in a subprocess that imports ``tests._servers_app:app``.

The server is another process: a source reports what it did by writing a marker file whose
path the test passes in the query string (``?marker=/tmp/...``). Times are
``time.monotonic()``, one clock for every process of the machine (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from streamflow import Delta, EventStreamResponse, Item, StepEnd, StepStart

DELTAS = 50
STEP = "stream"
TRICKY = ["two\n\nlines", "carriage\rreturn", "crlf\r\nline", "\r\n\r\n", "end\n\n\r\r"]
SECRET = "secret-token-xyz"
FAILING_DELTAS = ["partial ", "answer ", "so far"]


def mark(path: str, text: str) -> None:
    """Write ``text`` to the marker file at ``path`` (atomically: the test polls for it)."""
    partial = f"{path}.partial"
    with open(partial, "w") as file:
        file.write(text)
    os.replace(partial, path)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"ok {os.getpid()}")


async def ordered(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[Item]:
        yield StepStart(step=STEP)
        for n in range(DELTAS):
            yield Delta(value=f"delta {n} ", step=STEP)
            if n % 5 == 4:  # several writes, not one
                await anyio.sleep(0.005)
        yield StepEnd(step=STEP, output={"deltas": DELTAS})

    return EventStreamResponse(source())


async def tricky(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[Item]:
        for value in TRICKY:
            yield value
            await anyio.sleep(0.005)

    return EventStreamResponse(source())


async def failing(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[Item]:
        for value in FAILING_DELTAS:
            yield value
            await anyio.sleep(0.01)
        raise RuntimeError(SECRET)

    return EventStreamResponse(source())


async def endless(request: Request) -> EventStreamResponse:
    """A delta every 50 ms until the client goes; the marker gets the time its ``finally`` ran."""
    marker = request.query_params["marker"]

    async def source() -> AsyncIterator[Item]:
        try:
            n = 0
            while True:
                n += 1
                yield f"tick {n}"
                await anyio.sleep(0.05)
        finally:
            mark(marker, repr(time.monotonic()))

    return EventStreamResponse(source())


async def pings(request: Request) -> EventStreamResponse:
    """An event, a second of silence (pings every 0.2 s), another event."""

    async def source() -> AsyncIterator[Item]:
        yield "first"
        await anyio.sleep(1.0)
        yield "second"

    return EventStreamResponse(source(), ping=0.2)


async def started(request: Request) -> EventStreamResponse:
    """A source that writes its marker as soon as it starts."""
    marker = request.query_params["marker"]

    async def source() -> AsyncIterator[Item]:
        mark(marker, repr(time.monotonic()))
        yield "started"

    return EventStreamResponse(source())


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/ordered", ordered),
        Route("/tricky", tricky),
        Route("/failing", failing),
        Route("/endless", endless),
        Route("/pings", pings),
        Route("/started", started),  # GET routes answer HEAD too
    ]
)
