"""Fixtures of the hub tests: a store per backend, an app around a hub, real uvicorn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streamflow import Delta, Event, parse_event
from streamflow.hub import SessionBusyError, SessionNotFoundError, StreamHub
from streamflow.sse import SSEDecoder
from streamflow.stores import MemoryStore, Store
from tests.conftest import serve

StoreFactory = Callable[..., Store]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.slow),
        pytest.param("redis-cluster", marks=pytest.mark.slow),
    ]
)
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Makes a fresh store of each backend (the Redis helper adds its param here).

    Keyword arguments are the store's retention options; only the backend-neutral ones
    are used by store-agnostic tests. ``redis`` uses the session's real ``redis-server``
    (started on first use, never skipped), each store under a fresh key prefix.
    """
    if request.param == "memory":
        yield lambda **options: MemoryStore(**options)
    elif request.param == "redis":
        import secrets

        from streamflow.stores.redis import RedisStore
        from tests.hub._redis_server import shared_redis

        url = shared_redis(request.config).url
        names = {"retention": "ttl", "max_events_per_run": "maxlen", "session_ttl": "session_ttl"}

        def make_redis(**options: object) -> Store:
            kept = {names[name]: value for name, value in options.items() if name in names}
            return RedisStore(url, prefix=f"test-{secrets.token_hex(6)}", **kept)  # type: ignore[arg-type]

        yield make_redis
    elif request.param == "redis-cluster":  # the session's three-master Redis Cluster
        from tests.hub._redis_server import cluster_store_factory

        yield cluster_store_factory(request.config)
    else:  # pragma: no cover
        raise AssertionError(request.param)


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()


@dataclass
class Control:
    """What the test sources report to the test thread."""

    finalized: dict[str, threading.Event] = field(default_factory=dict)
    started: dict[str, threading.Event] = field(default_factory=dict)

    def event(self, table: dict[str, threading.Event], name: str) -> threading.Event:
        return table.setdefault(name, threading.Event())


class CustomAbort(BaseException):
    """A BaseException of a library's own (not an Exception)."""


FAILURES: dict[str, Callable[[], BaseException]] = {
    "RuntimeError": lambda: RuntimeError("secret prompt text"),
    "GeneratorExit": lambda: GeneratorExit("secret prompt text"),
    "CustomAbort": lambda: CustomAbort("secret prompt text"),
    "CancelledError": lambda: asyncio.CancelledError("an SDK's future, cancelled under the source"),
}


def make_source(params: dict[str, str], control: Control) -> AsyncIterator[Any]:
    """``n`` deltas ``prefix + i`` (``delay`` s apart); ``endless=1`` never ends; the source
    reports its start and its ``finally`` under ``name``. ``size`` pads each delta to that
    many characters; ``bad_at=i`` makes delta ``i`` a lone surrogate (no store or client
    can carry it); ``fail=<name of FAILURES>`` raises that after the deltas."""
    count = int(params.get("n", "10"))
    delay = float(params.get("delay", "0"))
    prefix = params.get("prefix", "")
    name = params.get("name", "")
    endless = params.get("endless") == "1"
    size = int(params.get("size", "0"))
    bad_at = int(params.get("bad_at", "-1"))
    fail = params.get("fail")

    async def source() -> AsyncIterator[Any]:
        control.event(control.started, name).set()
        try:
            i = 0
            while endless or i < count:
                text = "\ud800" if i == bad_at else f"{prefix}{i}"
                yield text.ljust(size, ".")
                i += 1
                await anyio.sleep(delay)
            if fail is not None:
                raise FAILURES[fail]()
        finally:
            control.event(control.finalized, name).set()

    return source()


def hub_app(hub: StreamHub, control: Control) -> Starlette:
    async def new_session(request: Request) -> Response:
        options = await request.json() if await request.body() else {}
        return JSONResponse({"session": await hub.create_session(**options)})

    async def post_message(request: Request) -> Response:
        session = request.path_params["session"]
        source = make_source(dict(request.query_params), control)
        try:
            run_id = await hub.start(session, source)
        except SessionNotFoundError:
            return JSONResponse({"error": "unknown session"}, status_code=404)
        except SessionBusyError:
            return JSONResponse({"error": "busy"}, status_code=409)
        return JSONResponse({"run": run_id}, status_code=202)

    async def session_stream(request: Request) -> Response:
        return await hub.response(request, request.path_params["session"])

    async def run_stream(request: Request) -> Response:
        return await hub.response(request, run_id=request.path_params["run"])

    async def run_info(request: Request) -> Response:
        info = await hub.store.run_info(request.path_params["run"])
        return JSONResponse(None if info is None else {"status": info.status, "session": info.session_id})

    async def stats(request: Request) -> Response:
        return JSONResponse({"runs": len(hub._runs), "new_run": len(hub._new_run), "locks": len(hub._locks)})

    async def shutdown(request: Request) -> Response:
        hub.shutdown()
        return JSONResponse({})

    return Starlette(
        routes=[
            Route("/sessions", new_session, methods=["POST"]),
            Route("/sessions/{session}/messages", post_message, methods=["POST"]),
            Route("/sessions/{session}/stream", session_stream),
            Route("/runs/{run}/stream", run_stream),
            Route("/runs/{run}/info", run_info),
            Route("/stats", stats),
            Route("/shutdown", shutdown, methods=["POST"]),
        ],
        lifespan=hub.lifespan,
    )


@contextmanager
def serve_hub(app: Starlette) -> Iterator[str]:
    """``tests.conftest.serve`` with the lifespan on (the hub's lifetime)."""
    with serve(app, lifespan="on") as url:
        yield url


@dataclass
class Served:
    url: str
    http: httpx.Client
    control: Control
    hub: StreamHub

    def session(self, **options: Any) -> str:
        """A new session (``options``: ``owner=``, ``metadata=``)."""
        response = self.http.post(f"{self.url}/sessions", json=options or None)
        response.raise_for_status()
        session: str = response.json()["session"]
        return session

    def post(self, session: str, **params: Any) -> httpx.Response:
        return self.http.post(f"{self.url}/sessions/{session}/messages", params=params)

    def start(self, session: str, **params: Any) -> str:
        response = self.post(session, **params)
        assert response.status_code == 202, response.text
        run: str = response.json()["run"]
        return run

    def read(
        self,
        path: str,
        *,
        last_id: str | None = None,
        stop_after: int | None = None,
        query: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> Reading:
        """Read the stream at ``path`` until its end (or ``stop_after`` events: then
        disconnect)."""
        headers = {b"accept": b"text/event-stream"}
        if last_id is not None:
            headers[b"last-event-id"] = last_id.encode()  # as browsers send it: UTF-8
        reading = Reading()
        decoder = SSEDecoder()
        with self.http.stream("GET", self.url + path, headers=headers, params=query, timeout=timeout) as r:
            reading.status = r.status_code
            if r.status_code != 200:
                r.read()
                return reading
            if stop_after == 0:
                return reading
            for chunk in r.iter_raw():
                reading.raw += chunk
                for sse in decoder.feed(chunk):
                    reading.pairs.append((sse.id, parse_event(sse.data)))
                    if stop_after is not None and len(reading.pairs) >= stop_after:
                        return reading
        reading.ended = True
        return reading


@dataclass
class Reading:
    status: int = 0
    raw: bytes = b""
    pairs: list[tuple[str, Event]] = field(default_factory=list)
    ended: bool = False  # the server ended the body (not a client-side stop)

    @property
    def events(self) -> list[Event]:
        return [event for _, event in self.pairs]

    @property
    def last_id(self) -> str | None:
        return self.pairs[-1][0] if self.pairs else None


@pytest.fixture
def make_served(store: Store) -> Iterator[Callable[..., Served]]:
    """Start a served hub app: ``make_served(**hub_options)`` (at most one per test)."""
    with ExitStack() as stack:

        def make(**options: Any) -> Served:
            options.setdefault("store", store)
            hub = StreamHub(**options)
            control = Control()
            url = stack.enter_context(serve_hub(hub_app(hub, control)))
            http = stack.enter_context(httpx.Client(timeout=20.0))
            return Served(url, http, control, hub)

        yield make


def deltas(prefix: str, count: int) -> list[Event]:
    return [Delta(value=f"{prefix}{i}") for i in range(count)]
