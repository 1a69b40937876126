"""Text-to-BI with Agno, streamed as typed Server-Sent Events (scripted models: offline, no API key).

    pip install -e ".[demo,agno]"
    python examples/agno_text_to_bi/app.py        # then open http://127.0.0.1:8002

Routes:

- ``GET /``                     the page: steps with progress, the SQL, the table, the analysis, Cancel;
- ``POST /query``               ``{"question": "..."}`` -> the run's event stream; its id is the
                                ``X-Run-Id`` response header;
- ``GET /runs/{id}``            what the run did, recorded by its steps (status, steps that ran, query);
- ``POST /runs/{id}/cancel``    stop the run: the stream ends with ``error`` (``code: cancelled``) and
                                ``done``. Closing the connection stops it too.

Options (a flag wins over its environment variable):

- ``--host`` / ``STREAMFLOW_BI_HOST``                     (default ``127.0.0.1``)
- ``--port`` / ``STREAMFLOW_BI_PORT``                     (default ``8002``; ``0`` picks a free port)
- ``--delay`` / ``STREAMFLOW_BI_DELAY``                   seconds per streamed model chunk (default ``0.04``)
- ``--query-timeout`` / ``STREAMFLOW_BI_QUERY_TIMEOUT``   seconds a query may run (default ``10``)

The sample database is created at startup in a temporary directory and deleted on exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Final

import uvicorn
from agno.models.base import Model
from agno.workflow import Workflow
from bi_workflow import STEPS, Run, build_workflow  # the modules next to this file
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from warehouse import create_database

from streamflow import Event, EventStreamResponse
from streamflow.adapters import from_agno

PAGE: Final = Path(__file__).with_name("index.html")
MAX_QUESTION: Final = 500
KEEP_RUNS: Final = 200  # the records kept for GET /runs/{id}, newest last


class Question(BaseModel):
    question: str = Field(min_length=1, max_length=MAX_QUESTION)


async def stream_run(run: Run, workflow: Workflow) -> AsyncIterator[Event]:
    """The run's events for the client: ``from_agno`` makes them; ``run`` follows them.

    When the client goes away, ``EventStreamResponse`` cancels this generator: ``from_agno`` closes the
    Agno run down to the model's stream, a running query is stopped in its thread, and ``finally``
    records the run as cancelled.
    """
    agno_stream = workflow.arun(input=run.question, run_id=run.id, stream=True, stream_events=True)
    try:
        async with aclosing(
            from_agno(agno_stream, total_steps=len(STEPS), on_error=run.error_event)
        ) as events:
            async for event in events:
                run.observe(event)
                yield event
    finally:
        run.finish()


def create_app(
    *, database: Path, delay: float = 0.04, query_timeout: float = 10.0, model: Model | None = None
) -> FastAPI:
    """The app over the SQLite file ``database`` (see ``warehouse.create_database``).

    ``model`` replaces the scripted models, e.g. ``OpenAIChat(id="gpt-4o-mini")``.
    """
    app = FastAPI(title="streamflow: Agno Text-to-BI")
    page = PAGE.read_text(encoding="utf-8")
    runs: OrderedDict[str, Run] = OrderedDict()

    def find(run_id: str) -> Run:
        if (run := runs.get(run_id)) is None:
            raise HTTPException(status_code=404, detail="no such run")
        return run

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.post("/query", response_class=EventStreamResponse)
    async def query(body: Question) -> EventStreamResponse:
        run = Run(id=uuid.uuid4().hex, question=body.question)
        runs[run.id] = run
        while len(runs) > KEEP_RUNS:
            runs.popitem(last=False)
        workflow = build_workflow(
            run, database=database, delay=delay, query_timeout=query_timeout, model=model
        )
        return EventStreamResponse(stream_run(run, workflow), headers={"X-Run-Id": run.id})

    @app.get("/runs/{run_id}")
    async def run_record(run_id: str) -> JSONResponse:
        return JSONResponse(find(run_id).as_json())

    @app.post("/runs/{run_id}/cancel")
    async def cancel(run_id: str) -> JSONResponse:
        run = find(run_id)
        if run.status != "running":
            return JSONResponse({"status": run.status}, status_code=409)
        await run.cancel()
        return JSONResponse({"status": "cancelling"}, status_code=202)

    return app


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Run the streamflow Agno Text-to-BI example.")
    parser.add_argument("--host", default=env("STREAMFLOW_BI_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("STREAMFLOW_BI_PORT", "8002")))
    parser.add_argument("--delay", type=float, default=float(env("STREAMFLOW_BI_DELAY", "0.04")))
    parser.add_argument(
        "--query-timeout", type=float, default=float(env("STREAMFLOW_BI_QUERY_TIMEOUT", "10"))
    )
    args = parser.parse_args(argv)
    if args.delay < 0 or args.query_timeout <= 0:
        parser.error("--delay must be at least 0 and --query-timeout more than 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)-8s %(message)s")
    os.environ.setdefault("AGNO_TELEMETRY", "false")

    # Bind first, so the URL printed is one that is listening (and port 0 shows the real port).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host

    with tempfile.TemporaryDirectory(prefix="streamflow-bi-") as directory, sock:
        database = Path(directory) / "sales.db"
        create_database(database)
        app = create_app(database=database, delay=args.delay, query_timeout=args.query_timeout)
        print(f"streamflow Agno Text-to-BI: http://{host}:{port}  (Ctrl+C to stop)", flush=True)
        config = uvicorn.Config(app, timeout_graceful_shutdown=3)
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
