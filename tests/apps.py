"""Apps the transport tests serve with real servers (imported by hypercorn for trio too)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from streamflow import Done, EventStreamResponse, StepEnd, StepStart, expose_exception


class Signals:
    """What the sources report to the test thread."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finalized = threading.Event()
        self.finalized_at = 0.0
        self.finished = False

    def finalize(self) -> None:
        self.finalized_at = time.monotonic()
        self.finalized.set()


signals = Signals()


async def gated(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[Any]:
        yield StepStart(step="s")
        while not signals.release.is_set():  # noqa: ASYNC110 - set from the test's thread
            await anyio.sleep(0.01)
        yield "after release"
        signals.finished = True

    return EventStreamResponse(source())


async def idle(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[str]:
        await anyio.sleep(0.45)
        yield "late"

    return EventStreamResponse(source(), ping=0.1)


async def endless(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[str]:
        try:
            n = 0
            while True:
                n += 1
                yield f"tick {n}"
                await anyio.sleep(0.01)
        finally:
            signals.finalize()

    return EventStreamResponse(source())


async def busy(request: Request) -> EventStreamResponse:
    """A source that always has its next event ready (it only yields to the loop)."""

    async def source() -> AsyncIterator[str]:
        try:
            while True:
                yield "x"
                await anyio.lowlevel.checkpoint()
        finally:
            signals.finalize()

    return EventStreamResponse(source())


async def silent(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[str]:
        try:
            yield "one"
            await anyio.sleep(3600)
        finally:
            signals.finalize()

    return EventStreamResponse(source(), ping=None)


async def failing(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[Any]:
        yield StepStart(step="work")
        yield "partial "
        yield "answer"
        raise RuntimeError("database password=hunter2 refused")

    if request.query_params.get("expose") == "1":
        return EventStreamResponse(source(), on_error=expose_exception)
    return EventStreamResponse(source())


async def bad_item(request: Request) -> EventStreamResponse:
    async def source() -> AsyncIterator[Any]:
        yield "fine"
        yield {1, 2}

    return EventStreamResponse(source())


async def echo(request: Request) -> EventStreamResponse:
    body = await request.json()
    words: list[str] = body["prompt"].split()

    async def source() -> AsyncIterator[Any]:
        yield StepStart(step="echo")
        for word in words:
            yield word + " "
        yield StepEnd(step="echo", output={"words": len(words)})
        yield Done()

    return EventStreamResponse(source())


starlette_app = Starlette(
    routes=[
        Route("/gated", gated),
        Route("/idle", idle),
        Route("/endless", endless),
        Route("/busy", busy),
        Route("/silent", silent),
        Route("/failing", failing),
        Route("/bad-item", bad_item),
        Route("/echo", echo, methods=["POST", "PUT"]),
    ]
)

fastapi_app = FastAPI()


class Prompt(BaseModel):
    prompt: str


@fastapi_app.post("/chat")
async def chat(body: Prompt) -> EventStreamResponse:
    async def workflow() -> AsyncIterator[Any]:
        yield StepStart(step="answer")
        for word in body.prompt.split():
            yield word
        yield StepEnd(step="answer")

    return EventStreamResponse(workflow())
