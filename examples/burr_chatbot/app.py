"""The Burr streaming chatbot behind FastAPI, streamed with streamflow (offline: the model is scripted).

    pip install -e ".[demo,burr]"
    python examples/burr_chatbot/app.py          # then open http://127.0.0.1:8002

Routes:

- ``GET /``                          the chat page (``static/index.html``, ``chat.js``, ``sse.js``);
- ``POST /response/{conversation}``  ``{"prompt": "..."}`` -> one turn of that conversation's
  Burr app as an event stream: ``chat_history``, the steps, the answer's deltas, ``done``.

Options (a command-line flag wins over its environment variable):

- ``--host`` / ``STREAMFLOW_BURR_HOST``    (default ``127.0.0.1``)
- ``--port`` / ``STREAMFLOW_BURR_PORT``    (default ``8002``; ``0`` picks a free port)
- ``--delay`` / ``STREAMFLOW_BURR_DELAY``  seconds per streamed token (default ``0.03``)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import uvicorn
from burr.core import Application
from chatbot import HALT_AFTER, build_graph, new_conversation  # the modules next to this file
from fastapi import FastAPI
from fastapi import Path as PathParameter
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from scripted_model import DEFAULT_DELAY, ScriptedModel

from streamflow import Event, EventStreamResponse
from streamflow.adapters import from_burr

STATIC: Final = Path(__file__).with_name("static")
MAX_PROMPT: Final = 2000
CONVERSATION_ID: Final = r"^[A-Za-z0-9_-]{1,64}$"


class PromptInput(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)


@dataclass
class Conversation:
    """One conversation: its Burr app, and a lock so that it runs one turn at a time."""

    app: Application[Any]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def turn(conversation: Conversation, prompt: str) -> AsyncGenerator[Event, None]:
    """The events of one turn: the Burr run from ``prompt`` to an answer action."""
    # A Burr app must not run two turns at once (both would append to one history); a prompt
    # sent while an answer streams waits for it here.
    async with conversation.lock:
        # interrupted="restart": after a turn that failed, or whose client left mid-answer,
        # start at the entrypoint. Burr would resume at the unfinished answer action and drop
        # the new prompt, answering the old one again.
        events = from_burr(
            conversation.app, halt_after=HALT_AFTER, inputs={"prompt": prompt}, interrupted="restart"
        )
        async with aclosing(events):  # a client disconnect closes the run, down to the model
            async for event in events:
                yield event


def create_app(*, delay: float = DEFAULT_DELAY) -> FastAPI:
    """The chatbot app; ``delay`` is the scripted model's seconds per token."""
    graph = build_graph(ScriptedModel(delay=delay))
    conversations: dict[str, Conversation] = {}  # in memory; a Burr persister keeps them for real
    files = {
        name: (STATIC / name).read_text(encoding="utf-8") for name in ("index.html", "chat.js", "sse.js")
    }
    app = FastAPI(title="streamflow + Burr chatbot")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(files["index.html"])

    @app.get("/chat.js", include_in_schema=False)
    async def chat_js() -> Response:
        return Response(files["chat.js"], media_type="text/javascript")

    @app.get("/sse.js", include_in_schema=False)
    async def sse_js() -> Response:
        return Response(files["sse.js"], media_type="text/javascript")

    @app.post("/response/{conversation_id}", response_class=EventStreamResponse)
    async def respond(
        conversation_id: Annotated[str, PathParameter(pattern=CONVERSATION_ID)], body: PromptInput
    ) -> EventStreamResponse:
        conversation = conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(new_conversation(graph, conversation_id))
            conversations[conversation_id] = conversation
        return EventStreamResponse(turn(conversation, body.prompt))

    return app


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Run the streamflow Burr chatbot example.")
    parser.add_argument("--host", default=env("STREAMFLOW_BURR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("STREAMFLOW_BURR_PORT", "8002")))
    parser.add_argument("--delay", type=float, default=float(env("STREAMFLOW_BURR_DELAY", DEFAULT_DELAY)))
    args = parser.parse_args(argv)

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"streamflow Burr chatbot: http://{host}:{port}  (Ctrl+C to stop)", flush=True)

    config = uvicorn.Config(create_app(delay=args.delay), timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
