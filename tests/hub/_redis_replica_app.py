"""One replica of a hub app on a shared Redis, run by the tests as a uvicorn subprocess.

``uvicorn tests.hub._redis_replica_app:app`` with ``STREAMFLOW_REDIS_URL`` (a
``redis+cluster://`` URL for a Redis Cluster), ``STREAMFLOW_REDIS_PREFIX``,
``STREAMFLOW_LEASE``, ``STREAMFLOW_POLL`` and ``STREAMFLOW_RETRY_FOR`` (the store's
``retry_for``) in the environment.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from streamflow.hub import SessionBusyError, SessionNotFoundError, StreamHub
from streamflow.stores.redis import RedisStore

store = RedisStore(
    os.environ["STREAMFLOW_REDIS_URL"],
    prefix=os.environ["STREAMFLOW_REDIS_PREFIX"],
    retry_for=float(os.environ.get("STREAMFLOW_RETRY_FOR", "10")),
)
hub = StreamHub(
    store,
    on_last_reader_gone="finish",
    lease=float(os.environ.get("STREAMFLOW_LEASE", "1.5")),
    poll=float(os.environ.get("STREAMFLOW_POLL", "0.2")),
    ping=1.0,
)


async def deltas(count: int, delay: float, prefix: str) -> AsyncIterator[str]:
    """``count`` deltas ``prefix + i`` (``count < 0``: endless), ``delay`` s apart."""
    i = 0
    while count < 0 or i < count:
        yield f"{prefix}{i}"
        i += 1
        await anyio.sleep(delay)


async def new_session(request: Request) -> Response:
    return JSONResponse({"session": await hub.create_session()})


async def post_message(request: Request) -> Response:
    params = request.query_params
    source = deltas(int(params.get("n", "10")), float(params.get("delay", "0")), params.get("prefix", ""))
    try:
        run_id = await hub.start(request.path_params["session"], source)
    except SessionNotFoundError:
        return JSONResponse({"error": "unknown session"}, status_code=404)
    except SessionBusyError:
        return JSONResponse({"error": "busy"}, status_code=409)
    return JSONResponse({"run": run_id, "pid": os.getpid()}, status_code=202)


async def session_stream(request: Request) -> Response:
    return await hub.response(request, request.path_params["session"])


async def run_stream(request: Request) -> Response:
    return await hub.response(request, run_id=request.path_params["run"])


async def health(request: Request) -> Response:
    return PlainTextResponse(f"ok {os.getpid()}")


app = Starlette(
    routes=[
        Route("/sessions", new_session, methods=["POST"]),
        Route("/sessions/{session}/messages", post_message, methods=["POST"]),
        Route("/sessions/{session}/stream", session_stream),
        Route("/runs/{run}/stream", run_stream),
        Route("/health", health),
    ],
    lifespan=hub.lifespan,
)
