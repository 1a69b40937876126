"""The streamflow demo: a scripted agent streamed as Server-Sent Events by FastAPI.

    pip install -e ".[demo]"
    python examples/demo/app.py            # then open http://127.0.0.1:8000

Routes:

- ``GET /``                  a small page that POSTs to ``/chat`` and renders the stream;
- ``POST /chat``             ``{"prompt": "..."}`` -> the agent's event stream;
- ``GET /chat?prompt=...``   the same stream, for ``curl -N`` and ``EventSource``.

Options (a command-line flag wins over its environment variable):

- ``--host`` / ``STREAMFLOW_DEMO_HOST``    (default ``127.0.0.1``)
- ``--port`` / ``STREAMFLOW_DEMO_PORT``    (default ``8000``; ``0`` picks a free port)
- ``--delay`` / ``STREAMFLOW_DEMO_DELAY``  seconds per streamed token (default ``0.03``)
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Annotated, Final

import uvicorn
from agent import DEFAULT_DELAY, run_agent  # the module next to this file
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from streamflow import EventStreamResponse

PAGE: Final = Path(__file__).with_name("index.html")
DEFAULT_PROMPT: Final = "How do I stream my agent to a browser?"
MAX_PROMPT: Final = 2000


class ChatRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)


def create_app(*, delay: float = DEFAULT_DELAY) -> FastAPI:
    """The demo app; ``delay`` is the agent's seconds per token (``0`` in tests)."""
    app = FastAPI(title="streamflow demo")
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.post("/chat", response_class=EventStreamResponse)
    async def chat(request: ChatRequest) -> EventStreamResponse:
        return EventStreamResponse(run_agent(request.prompt, delay=delay))

    @app.get("/chat", response_class=EventStreamResponse)
    async def chat_get(
        prompt: Annotated[str, Query(min_length=1, max_length=MAX_PROMPT)] = DEFAULT_PROMPT,
    ) -> EventStreamResponse:
        return EventStreamResponse(run_agent(prompt, delay=delay))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the streamflow demo.")
    parser.add_argument("--host", default=os.environ.get("STREAMFLOW_DEMO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STREAMFLOW_DEMO_PORT", "8000")))
    parser.add_argument(
        "--delay", type=float, default=float(os.environ.get("STREAMFLOW_DEMO_DELAY", DEFAULT_DELAY))
    )
    args = parser.parse_args(argv)

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"streamflow demo: http://{host}:{port}  (Ctrl+C to stop)", flush=True)

    config = uvicorn.Config(create_app(delay=args.delay), timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
