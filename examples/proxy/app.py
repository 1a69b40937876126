"""A proxy that re-streams another streamflow service: reads it, augments it, keeps it.

    pip install -e ".[demo]"
    python examples/demo/app.py                  # the upstream, on http://127.0.0.1:8000
    python examples/proxy/app.py                 # the proxy, on http://127.0.0.1:8002

Routes:

- ``GET /``                          what this proxy is and where its upstream is;
- ``POST /chat``                     ``{"prompt": "..."}`` -> the upstream run, augmented;
- ``GET /chat?prompt=...``           the same, for ``curl -N`` and ``EventSource``;
- ``GET /transcripts``               the transcripts kept, newest last;
- ``GET /transcripts/{id}``          one transcript with every event it sent.

Each stream has an ``X-Transcript-Id`` header, and its summary names the transcript too.

Options (a command-line flag wins over its environment variable):

- ``--host`` / ``STREAMFLOW_PROXY_HOST``          (default ``127.0.0.1``)
- ``--port`` / ``STREAMFLOW_PROXY_PORT``          (default ``8002``; ``0`` picks a free port)
- ``--upstream`` / ``STREAMFLOW_PROXY_UPSTREAM``  the stream endpoint the proxy POSTs
  ``{"prompt": ...}`` to (default ``http://127.0.0.1:8000/chat``, the demo)
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field
from relay import Redactor, relay  # the modules next to this file
from starlette.background import BackgroundTask
from transcripts import RecordingEncoder, TranscriptStore

from streamflow import EventStreamResponse

DEFAULT_UPSTREAM: Final = "http://127.0.0.1:8000/chat"
DEFAULT_PROMPT: Final = "How do I stream my agent to a browser?"
MAX_PROMPT: Final = 2000
TRANSCRIPT_HEADER: Final = "x-transcript-id"


class ChatRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)


def create_app(upstream: str = DEFAULT_UPSTREAM, *, keep: int = 1000) -> FastAPI:
    """The proxy for the stream endpoint ``upstream``, keeping the last ``keep`` transcripts."""
    store = TranscriptStore(keep=keep)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client for every request: its connection pool is shared. streamflow.client
        # raises the read timeout to 60 s for streams; connecting gets 5 s.
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as http:
            app.state.http = http
            yield

    app = FastAPI(title="streamflow proxy", lifespan=lifespan)

    def stream(request: Request, prompt: str) -> EventStreamResponse:
        transcript = store.create(prompt=Redactor().text(prompt))
        return EventStreamResponse(
            relay(request.app.state.http, upstream, prompt, transcript=transcript.id),
            encoder=RecordingEncoder(transcript),  # a new one per response, as always
            headers={TRANSCRIPT_HEADER: transcript.id},
            background=BackgroundTask(transcript.end),  # runs after a disconnect too
        )

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {
            "service": "streamflow proxy",
            "upstream": upstream,
            "routes": ["POST /chat", "GET /chat?prompt=...", "GET /transcripts", "GET /transcripts/{id}"],
        }

    @app.post("/chat", response_class=EventStreamResponse)
    async def chat(body: ChatRequest, request: Request) -> EventStreamResponse:
        return stream(request, body.prompt)

    @app.get("/chat", response_class=EventStreamResponse)
    async def chat_get(
        request: Request,
        prompt: Annotated[str, Query(min_length=1, max_length=MAX_PROMPT)] = DEFAULT_PROMPT,
    ) -> EventStreamResponse:
        return stream(request, prompt)

    @app.get("/transcripts")
    async def transcripts() -> list[dict[str, Any]]:
        return [transcript.summary() for transcript in store.all()]

    @app.get("/transcripts/{transcript_id}")
    async def transcript(transcript_id: str) -> dict[str, Any]:
        found = store.get(transcript_id)
        if found is None:
            raise HTTPException(status_code=404, detail="no such transcript")
        return found.to_json()

    return app


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Run the streamflow proxy example.")
    parser.add_argument("--host", default=env("STREAMFLOW_PROXY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("STREAMFLOW_PROXY_PORT", "8002")))
    parser.add_argument("--upstream", default=env("STREAMFLOW_PROXY_UPSTREAM", DEFAULT_UPSTREAM))
    args = parser.parse_args(argv)

    upstream = httpx.URL(args.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.host:
        parser.error(f"--upstream must be an http:// or https:// URL, not {args.upstream!r}")

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"streamflow proxy: http://{host}:{port}  (upstream {upstream}; Ctrl+C to stop)", flush=True)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    config = uvicorn.Config(create_app(str(upstream)), timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
