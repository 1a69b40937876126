"""A multi-user chat page in htmx, answered by a Google ADK agent and streamed through a StreamHub.

    pip install -e ".[demo,adk]"
    python examples/htmx_adk_chat/app.py          # then open http://127.0.0.1:8002

Routes:

- ``GET /``                                    the page; gives the browser its visitor cookie;
- ``POST /chat``                               htmx's form post (``message``, ``session``): starts a
                                               run of the agent on the session and answers with the
                                               turn, an element that streams the reply;
- ``GET /sessions/{session}/stream?run=RUN``   that run as ``HTMXEncoder`` fragments (without ``run``:
                                               the session's stream, its latest run then the next);
- ``GET /static/{file}``                       htmx and htmx-ext-sse, from ``examples/vendor/``.

The first message of a page creates its session: a hub session (unguessable id) whose owner is
the ADK ``user_id`` of the visitor cookie, and an ADK session of the same id under that user.
The hub's ``authorize`` hook lets a request read a session only if its cookie's user is the
session's owner, and ``hub.start(..., owner=...)`` lets a message reach only the sender's own
session. Someone else's session or run and an unknown one get the same answer (a ``404``): the
app tells nobody which sessions exist.

Options (a flag wins over its environment variable):

- ``--host`` / ``STREAMFLOW_CHAT_HOST``    (default ``127.0.0.1``)
- ``--port`` / ``STREAMFLOW_CHAT_PORT``    (default ``8002``; ``0`` picks a free port)
- ``--delay`` / ``STREAMFLOW_CHAT_DELAY``  the scripted model's seconds per chunk (default ``0.05``)
- ``--busy`` / ``STREAMFLOW_CHAT_BUSY``    ``reject`` (default) or ``queue``: a message sent while
  the session's previous answer is still streaming is refused (the page says so) or waits its turn
- ``--model`` / ``STREAMFLOW_CHAT_MODEL``  ``scripted`` (default, offline) or a Gemini model name
  such as ``gemini-2.5-flash`` (needs ``GOOGLE_API_KEY``)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import socket
from html import escape
from pathlib import Path
from string import Template
from typing import Annotated, Final, get_args
from urllib.parse import quote, urlencode

import uvicorn
from agent import APP_NAME, DEFAULT_DELAY, build_runner  # the module next to this file
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from streamflow.adapters import from_adk
from streamflow.encoders.htmx import HTMXEncoder
from streamflow.hub import BusyPolicy, SessionBusyError, SessionNotFoundError, StreamHub
from streamflow.stores import SessionInfo

HERE: Final = Path(__file__).resolve().parent
PAGE: Final = HERE / "index.html"
VENDOR: Final = HERE.parent / "vendor"
SCRIPTS: Final = {name: VENDOR / name for name in ("htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js")}
COOKIE: Final = "chat_visitor"
MAX_MESSAGE: Final = 2000

NO_COOKIE: Final = "Your browser sent no chat cookie. Allow cookies for this site and reload the page."
# Someone else's conversation and one that expired (or never was) get this same notice: no oracle.
UNAVAILABLE: Final = "This conversation is not available. Reload the page to start a new one."
BUSY: Final = "Still answering your previous message. Send this one when the answer is complete."
EMPTY: Final = "Write a message first."
TOO_LONG: Final = f"Your message is too long: at most {MAX_MESSAGE} characters."
PENDING: Final = {"reject": "Sending…", "queue": "Sending… (after the answer in progress, if any)"}

# One turn of the conversation: the question, and an element whose EventSource streams the
# reply of exactly this run and closes on `done`. Every piece of text in it is escaped.
TURN: Final = Template(
    """<article class="turn">
  <p class="you">$message</p>
  <div class="reply" sse-connect="$stream" sse-close="done">
    <div class="activity" sse-swap="step,tool" hx-swap="beforeend"></div>
    <div class="answer sf-message" sse-swap="delta" hx-swap="beforeend"></div>
    <div class="errors" sse-swap="stream_error"></div>
    <p class="status" sse-swap="done">Thinking…</p>
  </div>
</article>
"""
)
# The first answer of a page also gives its form the new session (an out-of-band swap).
SESSION_INPUT: Final = Template(
    '<input type="hidden" id="session" name="session" value="$session" hx-swap-oob="true">\n'
)

_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def visitor(request: Request) -> str | None:
    """The visitor token of the request's cookie, if it has a well-formed one."""
    token = request.cookies.get(COOKIE, "")
    return token if _TOKEN.fullmatch(token) else None


def user_id(token: str) -> str:
    """The ADK ``user_id`` of a visitor: a hash, so that the cookie itself is stored nowhere.
    In an app with logins, use the logged-in user's id instead."""
    return "visitor-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def notice(status: int, text: str) -> HTMLResponse:
    """A message for the user, swapped into the chat (the page's htmx-config swaps these codes)."""
    return HTMLResponse(f'<p class="notice" role="alert">{escape(text)}</p>\n', status_code=status)


def turn(session: str, run: str, message: str, *, new_session: bool) -> str:
    stream = f"/sessions/{quote(session, safe='')}/stream?{urlencode({'run': run})}"
    html = TURN.substitute(message=escape(message), stream=escape(stream))
    return SESSION_INPUT.substitute(session=escape(session)) + html if new_session else html


def create_app(
    *, delay: float = DEFAULT_DELAY, busy: BusyPolicy = "reject", model: str | None = None
) -> FastAPI:
    """The chat app; ``delay`` is the scripted model's seconds per chunk (see :mod:`agent`)."""
    runner = build_runner(model, delay=delay)
    adk_sessions = runner.session_service

    def owns(request: Request, session: SessionInfo) -> bool:
        """The hub's ``authorize`` hook: is the cookie's user this session's owner? The session id
        alone (it is in URLs, logs, the page) is no proof: the hub keeps each session's owner."""
        token = visitor(request)
        return token is not None and session.owner == user_id(token)

    # One run per session at a time; each response gets its own encoder. Append mode, because a
    # reconnection resumes after Last-Event-ID: each fragment adds to the text, none replaces it.
    hub = StreamHub(busy=busy, authorize=owns, encoder=lambda: HTMXEncoder(mode="append"))
    app = FastAPI(title="streamflow: htmx + Google ADK chat", lifespan=hub.lifespan)
    page = Template(PAGE.read_text(encoding="utf-8")).substitute(
        max_message=MAX_MESSAGE, pending=escape(PENDING[busy])
    )

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if visitor(request) is None:
            secure = request.url.scheme == "https"
            response.set_cookie(
                COOKIE, secrets.token_urlsafe(32), httponly=True, samesite="lax", secure=secure
            )
        return response

    @app.post("/chat", response_class=HTMLResponse)
    async def chat(
        request: Request, message: Annotated[str, Form()] = "", session: Annotated[str, Form()] = ""
    ) -> HTMLResponse:
        token = visitor(request)
        if token is None:
            return notice(403, NO_COOKIE)
        text = message.replace("\r\n", "\n").replace("\r", "\n").strip()
        if not text:
            return notice(422, EMPTY)
        if len(text) > MAX_MESSAGE:
            return notice(422, TOO_LONG)
        user = user_id(token)
        new_session = not session
        if new_session:  # the page's first message: its conversation starts here
            session = await hub.create_session(owner=user)
            await adk_sessions.create_session(app_name=APP_NAME, user_id=user, session_id=session)
        agent_run = from_adk(runner, user_id=user, session_id=session, new_message=text)
        try:
            # `owner`: someone else's session is refused exactly as an unknown one, before anything
            # runs (and before the busy check). busy="queue": waits for the answer in progress.
            run = await hub.start(session, agent_run, owner=user)
        except SessionBusyError:
            return notice(409, BUSY)
        except SessionNotFoundError:
            return notice(404, UNAVAILABLE)
        return HTMLResponse(turn(session, run, text, new_session=new_session))

    @app.get("/sessions/{session_id}/stream")
    async def stream(request: Request, session_id: str, run: str | None = None) -> Response:
        # Someone else's session or run (the authorize hook) and an unknown one: the same 404, the
        # hub's HTTPException, so that nobody learns which sessions and runs exist.
        if run is None:
            return await hub.response(request, session_id)
        info = await hub.store.run_info(run)
        if info is None or info.session_id != session_id:
            raise HTTPException(status_code=404)  # a run, but not of this session: as the hub's 404
        return await hub.response(request, run_id=run)

    @app.get("/static/{name}")
    async def script(name: str) -> Response:
        path = SCRIPTS.get(name)
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        cache = "public, max-age=31536000, immutable"  # the file names carry the versions
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": cache})

    return app


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Run the streamflow htmx + Google ADK chat example.")
    parser.add_argument("--host", default=env("STREAMFLOW_CHAT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("STREAMFLOW_CHAT_PORT", "8002")))
    parser.add_argument("--delay", type=float, default=float(env("STREAMFLOW_CHAT_DELAY", DEFAULT_DELAY)))
    parser.add_argument("--busy", choices=get_args(BusyPolicy), default=env("STREAMFLOW_CHAT_BUSY", "reject"))
    parser.add_argument("--model", default=env("STREAMFLOW_CHAT_MODEL", "scripted"))
    args = parser.parse_args(argv)
    if args.busy not in get_args(BusyPolicy):
        parser.error(f"--busy must be one of {', '.join(get_args(BusyPolicy))}, not {args.busy!r}")
    app = create_app(delay=args.delay, busy=args.busy, model=args.model)

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"streamflow htmx + ADK chat: http://{host}:{port}  (Ctrl+C to stop)", flush=True)

    config = uvicorn.Config(app, timeout_graceful_shutdown=3)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
