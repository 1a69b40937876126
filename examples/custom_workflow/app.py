"""A custom workflow streamed by plain Starlette (no FastAPI), with named SSE events.

    pip install -e ".[demo]"      # for uvicorn
    python examples/custom_workflow/app.py       # then open http://127.0.0.1:8001

Routes (``topic`` is optional):

- ``GET /``                       a page that reads the streams with ``EventSource``;
- ``GET /run/sync?topic=...``     the workflow as a sync generator (blocking calls inside);
- ``GET /run/async?topic=...``    the same workflow as an async generator;
- ``GET /run/failing?topic=...``  the sync workflow failing in its second step;
- ``GET /health``                 answers at once, even while a sync workflow blocks.

``NamedEventEncoder`` puts the event type on every frame (``event: step_start``,
``event: delta``...), so a page can ``addEventListener`` per type; an ``error`` event is
named ``stream_error``, never ``error``, which ``EventSource`` uses for a dropped connection.

Options: ``--host`` (``127.0.0.1``), ``--port`` (``8001``; ``0`` picks a free port) and
``--delay`` (seconds per blocking call, default ``0.6``), or the environment variables
``STREAMFLOW_WORKFLOW_HOST``, ``STREAMFLOW_WORKFLOW_PORT`` and ``STREAMFLOW_WORKFLOW_DELAY``.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from workflow import DEFAULT_DELAY, areport, report  # the module next to this file

from streamflow import Event, EventStreamResponse, NamedEventEncoder

PAGE: Final = Path(__file__).with_name("index.html")
DEFAULT_TOPIC: Final = "server-sent events"
MAX_TOPIC: Final = 200


def create_app(*, delay: float = DEFAULT_DELAY) -> Starlette:
    """The app; ``delay`` is the workflow's seconds per blocking call (``0`` in tests)."""
    page = PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def run(request: Request) -> Response:
        topic = request.query_params.get("topic", "").strip() or DEFAULT_TOPIC
        if len(topic) > MAX_TOPIC:
            return PlainTextResponse(f"topic: at most {MAX_TOPIC} characters", status_code=422)
        variant = request.path_params["variant"]
        source: Iterator[Event | str] | AsyncIterator[Event | str]
        if variant == "sync":
            source = report(topic, delay=delay)  # a sync generator: streamflow iterates it in a thread
        elif variant == "async":
            source = areport(topic, delay=delay)
        elif variant == "failing":
            source = report(topic, delay=delay, fail=True)
        else:
            return PlainTextResponse("no such workflow variant", status_code=404)
        # A new encoder for every response; the default on_error sends a generic message.
        return EventStreamResponse(source, encoder=NamedEventEncoder())

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/run/{variant}", run),
            Route("/health", health),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Run the streamflow custom-workflow example.")
    parser.add_argument("--host", default=env("STREAMFLOW_WORKFLOW_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("STREAMFLOW_WORKFLOW_PORT", "8001")))
    parser.add_argument("--delay", type=float, default=float(env("STREAMFLOW_WORKFLOW_DELAY", DEFAULT_DELAY)))
    args = parser.parse_args(argv)

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"streamflow custom workflow: http://{host}:{port}  (Ctrl+C to stop)", flush=True)

    config = uvicorn.Config(create_app(delay=args.delay), timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
