"""The streamflow demo: one agent run, read through three front ends, resumable.

    pip install -e ".[demo]"
    python examples/demo/app.py            # then open http://127.0.0.1:8000

A message starts a *run* of the agent in a ``StreamHub`` session, detached from any
connection. The run's events are recorded with ids, so any number of readers can read it,
each through its own encoder, from the start or from a ``Last-Event-ID``:

- ``GET  /``                                  the page (three views of the same run);
- ``GET  /vendor/<file>``                     htmx and htmx-ext-sse, served from ``examples/vendor/``;
- ``POST /sessions``                          -> ``{"session": id}``;
- ``POST /sessions/{session}/messages``       ``{"prompt": "..."}`` -> 202 ``{"run": id, "stream": url}``;
- ``GET  /runs/{run}/stream?format=F``        the run, ``F`` = ``json`` (``JSONEncoder``, the default),
  ``named`` (``NamedEventEncoder``) or ``htmx`` (``HTMXEncoder(mode="append")``); it resumes
  after the ``Last-Event-ID`` header (or ``?last_event_id=``) and follows the run live;
- ``POST /runs/{run}/drop``                   ends the run's open stream connections *without*
  ``done``, as a flaky network or proxy would: ``EventSource`` reconnects with ``Last-Event-ID``;
- ``POST /runs/{run}/cancel``                 cancels the run (its readers get an ``error``, then ``done``);
- ``POST /chat``, ``GET /chat?prompt=...``    one run streamed straight to this response (no
  session, no resume), for ``curl -N``.

Options (a command-line flag wins over its environment variable):

- ``--host`` / ``STREAMFLOW_DEMO_HOST``    (default ``127.0.0.1``)
- ``--port`` / ``STREAMFLOW_DEMO_PORT``    (default ``8000``; ``0`` picks a free port)
- ``--delay`` / ``STREAMFLOW_DEMO_DELAY``  seconds per scripted token (default ``0.03``)

With ``OPENAI_API_KEY`` set, the answer comes from a real model (OpenAI-compatible chat
completions; ``OPENAI_BASE_URL`` and ``STREAMFLOW_DEMO_MODEL`` choose the server and the
model): see ``llm.py``.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final, Literal

import anyio
import uvicorn
from agent import DEFAULT_DELAY, run_agent  # the modules next to this file
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from llm import ModelConfig
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from streamflow import Encoder, EventStreamResponse, HTMXEncoder, JSONEncoder, NamedEventEncoder
from streamflow.hub import SessionBusyError, SessionNotFoundError, StreamHub
from streamflow.stores import MemoryStore

HERE: Final = Path(__file__).resolve().parent
PAGE: Final = HERE / "index.html"
VENDOR: Final = HERE.parent / "vendor"
VENDOR_FILES: Final = ("htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js")
DEFAULT_PROMPT: Final = "How do I stream my agent to a browser?"
MAX_PROMPT: Final = 2000
GRACE: Final = 15.0
"""Seconds a run keeps going with no reader (a view switch, a reconnection) before the hub
cancels it: a closed tab stops spending tokens."""

Format = Literal["json", "named", "htmx"]
ENCODERS: Final[dict[str, Callable[[], Encoder]]] = {
    "json": JSONEncoder,
    "named": NamedEventEncoder,
    # "append": each delta adds its own text. (In "replace" mode a resumed connection would
    # show only the text after the resume point: see docs/resume.md.)
    "htmx": lambda: HTMXEncoder(mode="append"),
}

logger = logging.getLogger("streamflow.demo")


class ChatRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)


class Connections:
    """The open stream connections of each run, so that ``POST /runs/{run}/drop`` can end them."""

    def __init__(self) -> None:
        self._open: dict[str, set[anyio.CancelScope]] = {}

    def track(self, run_id: str, response: Response) -> Response:
        return _Droppable(response, self, run_id)

    def drop(self, run_id: str) -> int:
        scopes = self._open.get(run_id, set())
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    def _add(self, run_id: str, scope: anyio.CancelScope) -> None:
        self._open.setdefault(run_id, set()).add(scope)

    def _discard(self, run_id: str, scope: anyio.CancelScope) -> None:
        scopes = self._open.get(run_id, set())
        scopes.discard(scope)
        if not scopes:
            self._open.pop(run_id, None)


class _Droppable(Response):
    """Serves ``inner``; when dropped, ends the body right there (no ``done``), the way a
    proxy ending an idle connection does. The hub's reader stops, the connection stays
    healthy, and the browser's ``EventSource`` reconnects with ``Last-Event-ID``."""

    def __init__(self, inner: Response, connections: Connections, run_id: str) -> None:
        # Not Response.__init__: this response only forwards ``inner``'s messages.
        self.inner = inner
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers
        self.background = None
        self._connections = connections
        self._run_id = run_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = ended = False

        async def forward(message: Message) -> None:
            nonlocal started, ended
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        with anyio.CancelScope() as connection:
            self._connections._add(self._run_id, connection)
            try:
                await self.inner(scope, receive, forward)
            finally:
                self._connections._discard(self._run_id, connection)
        if connection.cancelled_caught and not ended:
            if not started:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


def answerer(model: ModelConfig | None) -> str:
    """Who writes the answers, for the page and the terminal."""
    if model is None:
        return "the scripted agent (set OPENAI_API_KEY for a real model)"
    return f"{model.model} at {model.base_url}"


def create_app(*, delay: float = DEFAULT_DELAY, model: ModelConfig | None = None) -> FastAPI:
    """The demo app; ``delay`` is the scripted agent's seconds per token (``0`` in tests),
    ``model`` the real model for the answers (``None``: scripted)."""
    hub = StreamHub(MemoryStore(), on_last_reader_gone="grace", grace=GRACE)
    connections = Connections()
    app = FastAPI(title="streamflow demo", lifespan=hub.lifespan)
    app.state.hub = hub
    page = PAGE.read_text(encoding="utf-8").replace("__ANSWERER__", html.escape(answerer(model)))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/vendor/{name}")
    async def vendor(name: str) -> FileResponse:
        if name not in VENDOR_FILES:
            raise HTTPException(404)
        return FileResponse(VENDOR / name, media_type="text/javascript")

    # --- sessions: a run is read (and re-read, and resumed) through any encoder -----------

    @app.post("/sessions")
    async def new_session() -> dict[str, str]:
        return {"session": await hub.create_session()}

    @app.post("/sessions/{session}/messages", status_code=202)
    async def post_message(session: str, body: ChatRequest, request: Request) -> JSONResponse:
        try:
            run_id = await hub.start(session, run_agent(body.prompt, delay=delay, model=model))
        except SessionNotFoundError:
            return JSONResponse({"error": "unknown session"}, status_code=404)
        except SessionBusyError:
            return JSONResponse({"error": "a reply is still being written"}, status_code=409)
        stream = str(request.url_for("stream", run=run_id).path)
        return JSONResponse({"run": run_id, "stream": stream}, status_code=202)

    @app.get("/runs/{run}/stream", response_class=EventStreamResponse, name="stream")
    async def stream(request: Request, run: str, format: Format = "json") -> Response:  # noqa: A002
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        if last:
            logger.info("run %s: a %s reader resumes after %s", run, format, last)
        response = await hub.response(request, run_id=run, encoder=ENCODERS[format])
        return connections.track(run, response) if response.status_code == 200 else response

    @app.post("/runs/{run}/drop")
    async def drop(run: str) -> dict[str, int]:
        return {"dropped": connections.drop(run)}

    @app.post("/runs/{run}/cancel")
    async def cancel(run: str) -> dict[str, bool]:
        return {"cancelled": await hub.cancel(run)}

    # --- one-shot streams, no session: the simplest endpoint there is -------------------

    @app.post("/chat", response_class=EventStreamResponse)
    async def chat(request: ChatRequest) -> EventStreamResponse:
        return EventStreamResponse(run_agent(request.prompt, delay=delay, model=model))

    @app.get("/chat", response_class=EventStreamResponse)
    async def chat_get(
        prompt: Annotated[str, Query(min_length=1, max_length=MAX_PROMPT)] = DEFAULT_PROMPT,
    ) -> EventStreamResponse:
        return EventStreamResponse(run_agent(prompt, delay=delay, model=model))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the streamflow demo.")
    parser.add_argument("--host", default=os.environ.get("STREAMFLOW_DEMO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STREAMFLOW_DEMO_PORT", "8000")))
    parser.add_argument(
        "--delay", type=float, default=float(os.environ.get("STREAMFLOW_DEMO_DELAY", DEFAULT_DELAY))
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    model = ModelConfig.from_env()

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"streamflow demo: http://{host}:{port}  (Ctrl+C to stop)", flush=True)
    print(f"answers: {answerer(model)}", flush=True)

    config = uvicorn.Config(create_app(delay=args.delay, model=model), timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
