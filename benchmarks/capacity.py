"""Capacity: how many concurrent model-speed streams one server core carries.

Each stream is a ``GET`` whose source yields one delta every 1/30 s (``RATE``) for
``--duration`` seconds (150 events in 5 s) on a schedule fixed when it starts: event
``i`` is *due* at ``start + i/30 s`` and, if the loop is late, the source catches up
rather than drifts. Every event's value is ``"<stamp> <due>"``: ``stamp`` is the
source's ``time.perf_counter_ns()`` taken just before it yields, ``due`` its place in the
schedule (``{"type":"delta","value":"3209583012345 3209583000000"}``, ~55 bytes of JSON).

- **Load**: for ``N`` concurrent streams the client opens a stream every
  ``duration / N`` seconds, so that after a ramp of one ``duration`` exactly ``N`` run at
  once, and new ones arrive at the steady rate ``N / duration`` per second (opening all
  ``N`` in a burst would measure how fast a framework takes a burst of requests). The
  next ``--window`` seconds are measured; then the client stops opening streams, waits
  ``grace`` seconds for the events due in the window and closes what is still open.
- **Server**: this script with ``--serve KEY``, one process pinned to core 0 (uvicorn,
  ``http="h11"``, ``loop="asyncio"``, the same FastAPI app shape for every ASGI
  contender; the floor is a bare asyncio ``Protocol``). A fresh server for every step,
  warmed up by a few short streams.
- **Client**: this process, pinned to core 1 (with ``redis-server``). One asyncio loop
  holds all the connections, each an ``asyncio.Protocol`` that only appends
  ``(perf_counter_ns(), bytes)`` per read (and closes on a ``done`` event, as a client of
  a session's stream does); frames are parsed after the step. Its cost is mostly the
  kernel's (about 11 µs of system time per read here: a raw ``epoll`` loop costs the same);
  its garbage collector is off during a step.
- **Latency**: *yield -> receipt* is the client's ``perf_counter_ns()`` after the read
  that brought the event minus ``stamp`` (``CLOCK_MONOTONIC``: one clock for both
  processes); *due -> receipt* adds how late the source got to yield. A saturated loop
  runs its timers late, and a response that writes within the step of its source's
  ``yield`` (``StreamingResponse``) would show no added latency at all while its streams
  fall behind, so the criterion starts from the due time.
- **Capacity**: the largest ``N`` for which, over the window, p99 of *due -> receipt*
  (hence of *yield -> receipt*) is at most 50 ms and nothing is lost: every event due
  before the window's end arrived (within ``grace``), in order, and every stream whose
  last event was due by then got its end (the end of the HTTP response, or streamflow's
  ``done``). The ladder climbs until a step fails (stepping down if the first fails),
  then bisects between the last pass and the first failure.
- **CPU**: the server's user + system time (``/proc/PID/stat``) over the window divided
  by the events the client received in it, and as a share of the window; the client's
  own CPU (a warning above 90 %); and how long the server and the client waited for a
  CPU while runnable (``/proc/PID/schedstat``): time other processes took from them. A
  failed step where the server waited more than 5 % (the client 20 %) is re-run.
  The client and every process it starts run at ``--nice`` (default -20, with root),
  each in its own session: with ``sched_autogroup`` a process's nice value counts only
  within its session, so the session's autogroup gets it too.

Contenders: ``floor`` (a bare asyncio ``Protocol`` writing pre-encoded chunked SSE frames
from ``loop.call_at`` timers: no ASGI, no framework, the ceiling of one core),
``hand`` (``StreamingResponse`` of ``f"data: {json.dumps(x)}\\n\\n"``), ``sse-starlette``,
``fastapi`` (``fastapi.sse``, typed item), ``streamflow`` (``EventStreamResponse``),
``hub-memory`` and ``hub-redis`` (a ``StreamHub`` session per stream with one run,
read by one reader through ``hub.response``; ``hub-redis`` against a ``redis-server``
this script starts on a free port, no persistence; its peak ``connected_clients`` is
sampled during each step).

Near capacity, a full collection of the server's garbage collector (~100 ms with ~125k
live objects on the 2-vCPU machine of ``docs/performance.md``) breaks the p99 before the
CPU runs out, and whether one falls in a 5 s window is luck: a capacity moves by up to a
third between runs. ``--window 15`` gives steadier figures (and takes twice as long).

Run ``python benchmarks/capacity.py`` (about 10 min) or ``--quick`` (a smoke run, < 2 min);
``--only hand,streamflow`` to compare a few.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final, Literal, TypeAlias
from urllib.parse import parse_qs, urlsplit

import uvicorn
from _common import (
    HERE,
    HOST,
    Noise,
    _read_port,
    _stop,
    _wait_healthy,
    cpu_seconds,
    machine,
    percentile,
    raise_open_files_limit,
    table,
    wait_for_redis,
)
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from streamflow import EventStreamResponse
from streamflow.hub import StreamHub
from streamflow.stores import Store

RATE: Final = 30  # events per second per stream: a model's token rate
TARGET_P99_MS: Final = 50.0
SERVER_CPU: Final = 0
CLIENT_CPU: Final = 1
# A failed step is re-run if the server waited for its CPU this share of the window (other
# processes took it), or the client that share of its own, which it shares with redis-server.
DISTURBED: Final = 0.05
CLIENT_DISTURBED: Final = 0.20
CLIENT_BUSY: Final = 0.90
OPEN_FILES: Final = 65536
MIN_STREAMS: Final = 5  # the ladder steps down to this when its first step fails
WARMUP_STREAMS: Final = 5
WARMUP_EVENTS: Final = 5
_TERMINATOR: Final = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body (after a chunk's CRLF)
_DONE: Final = re.compile(rb'"type": ?"done"')
_STAMP: Final = re.compile(rb'"value": ?"(\d+) (\d+)"')


@dataclass(frozen=True)
class Contender:
    key: str
    label: str


FLOOR: Final = Contender("floor", "floor: bare asyncio Protocol")
HAND: Final = Contender("hand", "hand-rolled StreamingResponse")
SSE_STARLETTE: Final = Contender("sse-starlette", "sse-starlette EventSourceResponse")
FASTAPI: Final = Contender("fastapi", "fastapi.sse (typed item)")
STREAMFLOW: Final = Contender("streamflow", "streamflow EventStreamResponse")
HUB_MEMORY: Final = Contender("hub-memory", "StreamHub + MemoryStore")
HUB_REDIS: Final = Contender("hub-redis", "StreamHub + RedisStore")
CONTENDERS: Final = (FLOOR, HAND, SSE_STARLETTE, FASTAPI, STREAMFLOW, HUB_MEMORY, HUB_REDIS)
BY_KEY: Final = {c.key: c for c in CONTENDERS}


@dataclass(frozen=True)
class Settings:
    ladder: tuple[int, ...]
    duration: float  # seconds of events per stream, and of the ramp before the window
    window: float  # seconds measured, with N streams running
    grace: float  # seconds after the window the client waits for its events
    bisect: int  # extra steps between the last pass and the first failure
    retries: int  # re-runs of a failed step that other processes disturbed
    nice: int = -20  # the priority of the client, the servers and redis-server (0: unchanged)
    quick: bool = False

    @property
    def events(self) -> int:
        return round(RATE * self.duration)


FULL: Final = Settings(
    ladder=(50, 100, 200, 400, 600, 800, 1200, 1600, 2000, 3000),
    duration=5.0,
    window=5.0,
    grace=1.0,
    bisect=2,
    retries=2,
)
QUICK: Final = Settings(
    ladder=(50, 400), duration=2.0, window=3.0, grace=0.5, bisect=0, retries=0, quick=True
)


# =============================================================================== server


async def stamped(n: int, interval: float, origin: int | None = None) -> AsyncIterator[str]:
    """``n`` values ``"<stamp> <due>"``, one every ``interval`` seconds on a fixed schedule:
    value ``i`` (from 1) is due at ``origin + i * interval`` (``origin``: a ``perf_counter_ns()``,
    by default when the source starts)."""
    step = round(interval * 1e9)
    due = time.perf_counter_ns() if origin is None else origin
    for _ in range(n):
        due += step
        wait = due - time.perf_counter_ns()
        if wait > 0:
            await asyncio.sleep(wait / 1e9)
        yield f"{time.perf_counter_ns()} {due}"


_FLOOR_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)
_FLOOR_OK: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
)
_FLOOR_404: Final = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class FloorProtocol(asyncio.Protocol):
    """One connection of the floor server: a request head in, a chunked SSE body out,
    each frame written from a ``loop.call_at`` timer: no task, no ASGI, no framework."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.started = False
        self.left = 0
        self.step = 0
        self.due = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.started or self.transport is None:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 65536:
                self.transport.close()
            return
        self.started = True
        target = self.buffer.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
        url = urlsplit(target)
        if url.path == "/health":
            self.transport.write(_FLOOR_OK)
            self.transport.close()
        elif url.path == "/stream":
            query = parse_qs(url.query)
            self.left = int(query["n"][0])
            self.step = round(float(query["interval"][0]) * 1e9)
            self.transport.write(_FLOOR_HEAD)
            self.due = time.perf_counter_ns()
            self._schedule()
        else:
            self.transport.write(_FLOOR_404)
            self.transport.close()

    def _schedule(self) -> None:
        self.due += self.step
        # loop.time() is time.monotonic(), the clock of perf_counter_ns() on Linux.
        self.timer = self.loop.call_at(self.due / 1e9, self._tick)

    def _tick(self) -> None:
        assert self.transport is not None
        frame = b'data: {"type":"delta","value":"%d %d"}\n\n' % (time.perf_counter_ns(), self.due)
        self.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.left -= 1
        if self.left > 0:
            self._schedule()
        else:
            self.transport.write(b"0\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


async def serve_floor(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(loop), sock=sock, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


class DeltaItem(BaseModel):
    type: Literal["delta"] = "delta"
    value: str


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def make_hub(key: str, redis_url: str | None, prefix: str = "capacity") -> tuple[StreamHub, Lifespan]:
    """The ``StreamHub`` of contender ``key`` (``hub-memory`` or ``hub-redis``) and the app
    lifespan that runs it and closes its store."""
    from streamflow.stores import MemoryStore

    store: Store
    if key == HUB_REDIS.key:
        from streamflow.stores.redis import RedisStore

        assert redis_url is not None
        store = RedisStore(redis_url, prefix=f"{prefix}-{os.getpid()}", ttl=60)
    elif key == HUB_MEMORY.key:
        store = MemoryStore()
    else:
        raise ValueError(f"{key!r} is not a hub contender")
    hub = StreamHub(store, on_last_reader_gone="finish")

    @asynccontextmanager
    async def hub_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            yield
        await hub.store.aclose()

    return hub, hub_lifespan


def build_app(key: str, redis_url: str | None) -> FastAPI:
    """``key``'s app: ``GET /stream?n=N&interval=S`` and ``GET /health``, in one FastAPI shape."""
    hub: StreamHub | None = None
    lifespan: Lifespan | None = None
    if key in (HUB_MEMORY.key, HUB_REDIS.key):
        hub, lifespan = make_hub(key, redis_url)

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    if key == HAND.key:

        @app.get("/stream")
        async def hand(n: int, interval: float) -> Response:
            async def body() -> AsyncIterator[str]:
                async for value in stamped(n, interval):
                    yield f"data: {json.dumps({'type': 'delta', 'value': value})}\n\n"

            return StreamingResponse(
                body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
            )

    elif key == SSE_STARLETTE.key:
        from sse_starlette import EventSourceResponse, ServerSentEvent

        @app.get("/stream")
        async def sse_starlette(n: int, interval: float) -> Response:
            async def events() -> AsyncIterator[ServerSentEvent]:
                async for value in stamped(n, interval):
                    yield ServerSentEvent(data=json.dumps({"type": "delta", "value": value}))

            return EventSourceResponse(events())

    elif key == FASTAPI.key:
        from fastapi.sse import EventSourceResponse as FastAPIEventSourceResponse

        # FastAPI's documented style: an annotated generator of pydantic items.
        @app.get("/stream", response_class=FastAPIEventSourceResponse)
        async def fastapi_sse(n: int, interval: float) -> AsyncIterable[DeltaItem]:
            async for value in stamped(n, interval):
                yield DeltaItem(value=value)

    elif key == STREAMFLOW.key:

        @app.get("/stream")
        async def streamflow(n: int, interval: float) -> Response:
            return EventStreamResponse(stamped(n, interval))  # a str item is a Delta

    elif hub is not None:
        session_hub = hub

        @app.get("/stream")
        async def through_hub(request: Request, n: int, interval: float) -> Response:
            session = await session_hub.create_session()
            await session_hub.start(session, stamped(n, interval))
            return await session_hub.response(request, session)

    else:
        raise ValueError(f"unknown contender {key!r}")
    return app


def serve(key: str, redis_url: str | None) -> None:
    """The server process: pinned to ``SERVER_CPU``, prints ``PORT n``, serves until SIGTERM."""
    serve_app(None if key == FLOOR.key else build_app(key, redis_url))


def serve_app(app: FastAPI | None) -> None:
    """Serve ``app`` (``None``: the floor) as :func:`serve` does: pinned to ``SERVER_CPU``,
    uvicorn with ``h11`` and ``asyncio``; print ``PORT n``, serve until SIGTERM."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {SERVER_CPU})
    raise_open_files_limit(OPEN_FILES)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    if app is None:
        asyncio.run(serve_floor(sock))
        return
    config = uvicorn.Config(
        app,
        http="h11",
        loop="asyncio",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run(sockets=[sock])


# ========================================================================== processes


@dataclass
class Process:
    pid: int
    port: int


@contextmanager
def server_process(
    contender: Contender,
    redis_url: str | None,
    nice: int,
    timeout: float = 30.0,
    script: str = "capacity.py",
) -> Iterator[Process]:
    """``script --serve KEY`` (``script`` in this directory), in its own session at ``nice``."""
    command = [sys.executable, str(HERE / script), "--serve", contender.key]
    if redis_url:
        command += ["--redis-url", redis_url]
    # The server's stderr goes to a file: an app that fails to start says why, and the
    # tracebacks of the streams a failed step aborts do not flood the report.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
        try:
            prioritize(process.pid, nice)
            try:
                port = _read_port(process, timeout)
                _wait_healthy(port, process, timeout)
            except (RuntimeError, TimeoutError) as exc:
                log.seek(0)
                tail = log.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{contender.label}: {exc}; the end of its stderr:\n{tail}") from exc
            yield Process(process.pid, port)
        finally:
            _stop(process)


@contextmanager
def redis_server(nice: int, timeout: float = 10.0) -> Iterator[Process]:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence), pinned to the client's core."""
    binary = shutil.which("redis-server")
    assert binary is not None
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="streamflow-capacity-redis-")
    command = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    command += ["--maxclients", "16000", "--dir", directory]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=directory, start_new_session=True
    )
    try:
        prioritize(process.pid, nice)
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(process.pid, {CLIENT_CPU})
        wait_for_redis(process, port, timeout)
        yield Process(process.pid, port)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def prioritize(pid: int, nice: int) -> bool:
    """Give process ``pid`` (a session leader: its own autogroup) the priority ``nice``.

    With ``sched_autogroup`` (most desktop and VM kernels) the scheduler shares a core
    fairly between sessions whatever their processes' nice values, so the session's
    autogroup gets it too. Lowering either needs root (``CAP_SYS_NICE``); False if refused.
    """
    if not nice:
        return True
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        autogroup = Path(f"/proc/{pid}/autogroup")
        if os.getsid(pid) == pid and autogroup.exists():
            autogroup.write_text(f"{nice}\n")
    except OSError:
        return False
    return True


def run_delay(pid: int) -> float:
    """Seconds the threads of process ``pid`` spent runnable but waiting for a CPU
    (``/proc/PID/task/*/schedstat``, second field): the time other processes took from it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


# ============================================================================= client


class Reader(asyncio.Protocol):
    """One stream on the client: it records every read with its time and parses nothing
    until the step is over (but closes on a ``done`` event, as a client of a session's
    stream does)."""

    __slots__ = (
        "chunks",
        "closed",
        "done",
        "error",
        "on_close",
        "opened",
        "request",
        "tail",
        "times",
        "transport",
    )

    def __init__(self, request: bytes, opened: int, on_close: Callable[[], None]) -> None:
        self.request = request
        self.opened = opened  # perf_counter_ns() when the connection was asked for
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.times: list[int] = []
        self.chunks: list[bytes] = []
        self.tail = b""
        self.done = False
        self.closed = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.times.append(time.perf_counter_ns())
        self.chunks.append(data)
        if b'"done"' in self.tail + data and self.transport is not None:
            self.done = True
            self.transport.close()
        self.tail = data[-8:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed:
            self.closed = True
            self.on_close()

    def failed(self, error: str) -> None:
        self.error = error
        self.connection_lost(None)


@dataclass(frozen=True)
class Load:
    """What one step asks for: ``concurrency`` streams of ``events`` events, one every
    ``interval`` seconds; a stream opens every ``duration / concurrency`` seconds, so that
    from ``ramp`` (= ``duration``) on exactly ``concurrency`` are running; ``window``
    seconds are measured; the client waits ``grace`` seconds more for the window's events."""

    concurrency: int
    events: int
    interval: float
    window: float
    grace: float

    @property
    def duration(self) -> float:
        return self.events * self.interval

    @property
    def ramp(self) -> float:
        return self.duration

    @property
    def streams(self) -> int:
        """Streams opened in all: every ``duration / concurrency`` s until the window ends."""
        return max(1, round(self.concurrency * (self.ramp + self.window) / self.duration))


@dataclass
class Tally:
    """The events of a step, as the client saw them."""

    yield_us: list[float] = dataclasses.field(default_factory=list)  # receipt - stamp, due in the window
    due_us: list[float] = dataclasses.field(default_factory=list)  # receipt - due, due in the window
    delivered: int = 0  # events received during the window
    lost: int = 0  # events due before the window's end that did not arrive
    short: int = 0  # streams without all their events due by the window's end, or their end
    failed: int = 0  # streams that could not connect or got no event at all


def tally(readers: Sequence[Reader], load: Load, window: tuple[int, int]) -> Tally:
    """Check every stream and collect the latencies of the events due in ``window`` (ns)."""
    start, end = window
    step = round(load.interval * 1e9)
    result = Tally()
    for reader in readers:
        raw = b"".join(reader.chunks)
        head_end = raw.find(b"\r\n\r\n")
        if reader.error is not None or head_end < 0:
            if reader.opened + 500_000_000 < end:  # it had half a second to answer
                result.failed += 1
                result.short += 1
                result.lost += max(1, int((end - reader.opened - 500_000_000) * RATE / 1e9))
            continue
        head = raw[:head_end].decode("latin-1").lower()
        if not head.startswith("http/1.1 200") or "content-type: text/event-stream" not in head:
            raise BrokenContenderError(f"bad response head: {head[:300]!r}")
        ends = list(accumulate(len(chunk) for chunk in reader.chunks))
        first_due = 0
        count = 0
        for index, match in enumerate(_STAMP.finditer(raw, head_end)):
            received = reader.times[bisect_left(ends, match.end())]
            stamp, due = int(match[1]), int(match[2])
            if index == 0:
                first_due = due
            elif due != first_due + index * step:
                raise BrokenContenderError(f"event {index} of a stream is due at {due}, not on its schedule")
            if start <= received <= end:
                result.delivered += 1
            if due <= end:
                count += 1
                if due >= start:
                    result.yield_us.append((received - stamp) / 1000)
                    result.due_us.append((received - due) / 1000)
            if stamp > received or due > received:
                raise BrokenContenderError("an event arrived before it was stamped: clocks differ")
        total = sum(1 for _ in _STAMP.finditer(raw, head_end))
        if total > load.events:
            raise BrokenContenderError(f"a stream sent {total} events, expected {load.events}")
        if reader.done and not _DONE.search(raw, head_end):
            raise BrokenContenderError("a stream was closed on a false done")
        if not total:
            if reader.opened + 500_000_000 < end:
                result.failed += 1
                result.short += 1
                result.lost += max(1, int((end - reader.opened - 500_000_000) * RATE / 1e9))
            continue
        due_by_end = min(load.events, (end - first_due) // step + 1) if first_due <= end else 0
        missing = due_by_end - count
        last_due = first_due + (load.events - 1) * step
        ended = reader.done or raw.endswith(_TERMINATOR)
        if missing or (last_due <= end and not ended):
            result.short += 1
            result.lost += missing
    return result


@dataclass(frozen=True)
class Step:
    concurrency: int
    streams: int  # opened in all
    events: int  # due in the window
    delivered: int  # received during the window
    lost: int
    short: int  # streams short of events or of their end
    failed: int  # streams that never got an event
    p50_ms: float
    p99_ms: float
    due_p99_ms: float
    max_ms: float
    window: float  # seconds, as measured
    server_cpu: float  # seconds, over the window
    client_cpu: float  # seconds, over the window
    waited: tuple[float, float]  # the server's and the client's time waiting for a CPU / window
    redis_clients: int | None
    redis_cpu: float | None  # seconds, over the window
    attempt: int = 1

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.short == 0
            and self.p99_ms <= TARGET_P99_MS
            and self.due_p99_ms <= TARGET_P99_MS
        )

    @property
    def disturbed(self) -> bool:
        return self.waited[0] > DISTURBED or self.waited[1] > CLIENT_DISTURBED

    @property
    def client_busy(self) -> bool:
        return self.client_cpu / self.window > CLIENT_BUSY

    @property
    def cpu_us_per_event(self) -> float:
        return self.server_cpu / max(self.delivered, 1) * 1e6


class BrokenContenderError(Exception):
    """A contender sent something wrong: its figures cannot be trusted."""


async def _sample_redis_clients(port: int, peak: list[int]) -> None:
    """Keep ``peak[0]`` at the most ``connected_clients`` seen (this connection excluded)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while True:
            writer.write(b"INFO clients\r\n")
            size = int((await reader.readline())[1:])
            info = await reader.readexactly(size + 2)
            found = re.search(rb"connected_clients:(\d+)", info)
            if found:
                peak[0] = max(peak[0], int(found[1]) - 1)
            await asyncio.sleep(0.1)
    finally:
        writer.close()


def _cpu(process: Process | None) -> float:
    return cpu_seconds(process.pid) if process is not None else 0.0


@dataclass(frozen=True)
class _Snapshot:
    at: float  # loop.time()
    server: float
    client: float
    redis: float
    waited: tuple[float, float]

    @classmethod
    def take(cls, at: float, server: Process, redis: Process | None) -> _Snapshot:
        return cls(
            at,
            cpu_seconds(server.pid),
            time.process_time(),
            _cpu(redis),
            (run_delay(server.pid), run_delay(os.getpid())),
        )


async def _step(server: Process, load: Load, redis: Process | None) -> Step:
    """Open ``load.streams`` streams at a steady rate, measure the window, check everything."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET /stream?n={load.events}&interval={load.interval!r} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    readers: list[Reader] = []
    open_streams = 0
    all_closed: asyncio.Future[None] = loop.create_future()

    def closed() -> None:
        nonlocal open_streams
        open_streams -= 1
        if not open_streams and len(readers) == load.streams and not all_closed.done():
            all_closed.set_result(None)

    async def connect(reader: Reader) -> None:
        try:
            await loop.create_connection(lambda: reader, HOST, server.port)
        except OSError as exc:
            reader.failed(f"connect: {exc}")

    peak = [0]
    sampler = loop.create_task(_sample_redis_clients(redis.port, peak)) if redis else None
    connecting: set[asyncio.Task[None]] = set()
    snapshots: list[_Snapshot] = []
    started = loop.time()
    window_start, window_end = started + load.ramp, started + load.ramp + load.window

    def snapshot() -> None:
        snapshots.append(_Snapshot.take(loop.time(), server, redis))

    for at in (window_start, window_end):
        loop.call_at(at, snapshot)
    gap = load.duration / load.concurrency
    for index in range(load.streams):
        wait = started + index * gap - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        open_streams += 1
        reader = Reader(request, time.perf_counter_ns(), closed)
        readers.append(reader)
        task = loop.create_task(connect(reader))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
    try:
        async with asyncio.timeout_at(window_end + load.grace):
            await all_closed
    except TimeoutError:
        for reader in readers:
            if reader.transport is not None:
                reader.transport.abort()
    if sampler is not None:
        sampler.cancel()
    for task in list(connecting):
        task.cancel()
    await asyncio.sleep(0)  # let the aborted transports report
    if len(snapshots) < 2:
        snapshots.append(_Snapshot.take(loop.time(), server, redis))

    begin, finish = snapshots[0], snapshots[-1]
    seconds = finish.at - begin.at
    # loop.time() is time.monotonic(), perf_counter_ns()'s clock (checked in main()).
    counted = tally(readers, load, (round(begin.at * 1e9), round(finish.at * 1e9)))
    yield_us, due_us = counted.yield_us, counted.due_us
    return Step(
        concurrency=load.concurrency,
        streams=load.streams,
        events=len(yield_us),
        delivered=counted.delivered,
        lost=counted.lost,
        short=counted.short,
        failed=counted.failed,
        p50_ms=percentile(yield_us, 0.50) / 1000 if yield_us else float("nan"),
        p99_ms=percentile(yield_us, 0.99) / 1000 if yield_us else float("nan"),
        due_p99_ms=percentile(due_us, 0.99) / 1000 if due_us else float("nan"),
        max_ms=max(due_us) / 1000 if due_us else float("nan"),
        window=seconds,
        server_cpu=finish.server - begin.server,
        client_cpu=finish.client - begin.client,
        waited=(
            (finish.waited[0] - begin.waited[0]) / seconds,
            (finish.waited[1] - begin.waited[1]) / seconds,
        ),
        redis_clients=peak[0] if redis else None,
        redis_cpu=finish.redis - begin.redis if redis else None,
    )


WARMUP: Final = Load(concurrency=5, events=5, interval=0.002, window=0.05, grace=1.0)


def run_step(contender: Contender, concurrency: int, settings: Settings, redis: Process | None) -> Step:
    """A fresh server, a warm-up (which must pass), then the step."""
    redis_url = f"redis://{HOST}:{redis.port}/0" if redis else None
    load = Load(concurrency, settings.events, 1 / RATE, settings.window, settings.grace)
    with server_process(contender, redis_url, settings.nice) as server:
        gc.collect()
        gc.disable()
        try:
            warmup = asyncio.run(_step(server, WARMUP, None))
            if warmup.lost or warmup.short:
                raise BrokenContenderError(f"the warm-up failed: {warmup}")
            return asyncio.run(_step(server, load, redis))
        finally:
            gc.enable()


@dataclass
class Ladder:
    contender: Contender
    steps: list[Step]
    capacity: Step | None  # the largest passing step below the first failure
    first_failure: Step | None


def climb(contender: Contender, settings: Settings, redis: Process | None) -> Ladder:
    steps: list[Step] = []

    def measure(concurrency: int) -> Step:
        for attempt in range(1, settings.retries + 2):
            step = dataclasses.replace(run_step(contender, concurrency, settings, redis), attempt=attempt)
            steps.append(step)
            print(f"  {contender.key} N={concurrency}: {_progress(step)}", file=sys.stderr, flush=True)
            if step.passed or not step.disturbed or attempt > settings.retries:
                return step
            print(f"  {contender.key} N={concurrency}: disturbed by other processes, again", file=sys.stderr)
        raise AssertionError("unreachable")

    best: Step | None = None
    failure: Step | None = None
    for concurrency in settings.ladder:
        step = measure(concurrency)
        if not step.passed:
            failure = step
            break
        best = step
    concurrency = settings.ladder[0] // 2
    while best is None and concurrency >= MIN_STREAMS:  # the first step failed: down until one passes
        step = measure(concurrency)
        if step.passed:
            best = step
        else:
            failure = step
        concurrency //= 2
    if failure is not None and best is not None:
        low, high = best.concurrency, failure.concurrency
        for _ in range(settings.bisect):
            middle = _round_streams((low + high) / 2)
            if middle in (low, high):
                break
            step = measure(middle)
            if step.passed:
                best, low = step, middle
            else:
                failure, high = step, middle
    return Ladder(contender, steps, best, failure)


def _round_streams(value: float) -> int:
    unit = 50 if value >= 500 else 10 if value >= 50 else 1
    return int(round(value / unit) * unit)


def _progress(step: Step) -> str:
    return (
        f"{'pass' if step.passed else 'FAIL'}, p50 {step.p50_ms:.2f} ms, p99 {step.p99_ms:.2f} ms, "
        f"due p99 {step.due_p99_ms:.2f} ms, lost {step.lost}, {step.cpu_us_per_event:.1f} µs/event, "
        f"server {step.server_cpu / step.window:.0%}, client {step.client_cpu / step.window:.0%}, "
        f"waited {step.waited[0]:.1%}/{step.waited[1]:.1%}"
    )


# ============================================================================= report


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


def _verdict(step: Step) -> str:
    if step.passed:
        return "pass"
    reasons = []
    if step.lost or step.short:
        reasons.append(
            f"{step.short:,} streams short" + (f" ({step.failed:,} got nothing)" if step.failed else "")
        )
    if step.p99_ms > TARGET_P99_MS or step.due_p99_ms > TARGET_P99_MS:
        reasons.append("p99 > 50 ms")
    return "FAIL: " + ", ".join(reasons)


def ladder_table(ladder: Ladder, settings: Settings) -> str:
    redis = ladder.contender.key == HUB_REDIS.key
    headers = [
        "streams",
        "p50 ms",
        "p99 ms",
        "p99 due->recv ms",
        "max due->recv ms",
        "lost",
        "server µs/event",
        "server CPU",
        "client CPU",
        "waited for CPU: server / client",
    ]
    if redis:
        headers += ["Redis clients (peak)", "Redis CPU"]
    headers.append("result")
    rows = []
    for step in ladder.steps:
        row = [
            f"{step.concurrency:,}" + (f" (run {step.attempt})" if step.attempt > 1 else ""),
            _ms(step.p50_ms),
            _ms(step.p99_ms),
            _ms(step.due_p99_ms),
            _ms(step.max_ms),
            f"{step.lost:,}",
            f"{step.cpu_us_per_event:.1f}",
            f"{step.server_cpu / step.window:.0%}",
            f"{step.client_cpu / step.window:.0%}" + (" (!)" if step.client_busy else ""),
            f"{step.waited[0]:.1%} / {step.waited[1]:.1%}",
        ]
        if redis:
            row += [f"{step.redis_clients:,}", f"{(step.redis_cpu or 0.0) / step.window:.0%}"]
        row.append(_verdict(step))
        rows.append(row)
    title = f"{ladder.contender.label}: capacity {_capacity(ladder)}"
    notes = []
    if any(step.client_busy for step in ladder.steps):
        notes.append(
            f"(!) the client used more than {CLIENT_BUSY:.0%} of its core: "
            "the receipt times of that step may be late."
        )
    return table(title, headers, rows) + "".join(f"\n{note}\n" for note in notes)


def _capacity(ladder: Ladder) -> str:
    if ladder.capacity is None:
        return f"< {min(step.concurrency for step in ladder.steps)}" if ladder.steps else "-"
    if ladder.first_failure is None:
        return f">= {ladder.capacity.concurrency:,}"
    return f"{ladder.capacity.concurrency:,}"


def summary(ladders: Sequence[Ladder], skipped: dict[str, str]) -> str:
    base = next((lad for lad in ladders if lad.contender.key == HAND.key), None)
    rows = []
    for ladder in ladders:
        at = ladder.capacity
        ratio = "-"
        if base is not None and base.capacity is not None and at is not None:
            ratio = f"{at.concurrency / base.capacity.concurrency:.2f}x"
        rows.append(
            [
                ladder.contender.label,
                _capacity(ladder),
                f"{_ms(at.p50_ms)} / {_ms(at.p99_ms)} / {_ms(at.due_p99_ms)}" if at else "-",
                f"{at.cpu_us_per_event:.1f}" if at else "-",
                f"{at.server_cpu / at.window:.0%}" if at else "-",
                ratio,
            ]
        )
    for key, reason in skipped.items():
        rows.append([BY_KEY[key].label, f"skipped: {reason}", "-", "-", "-", "-"])
    return table(
        f"Capacity: concurrent streams of {RATE} events/s on one server core, "
        f"p99 <= {TARGET_P99_MS:g} ms and nothing lost",
        [
            "contender",
            "capacity (streams)",
            "p50 / p99 / p99 due (ms) at capacity",
            "server CPU µs/event",
            "server CPU",
            "vs hand-rolled",
        ],
        rows,
    )


def _source() -> str:
    """Where the streamflow under test comes from (``PYTHONPATH`` may point at a copy)."""
    import streamflow

    package = Path(streamflow.__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "-C", str(package), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"streamflow from {package} (not a git checkout)"
    return f"streamflow from {package} at git {revision}"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# =============================================================================== main


def _available(key: str) -> str | None:
    """Why ``key`` cannot run here, or ``None``."""
    if key == FASTAPI.key and importlib.util.find_spec("fastapi.sse") is None:
        return "this FastAPI has no fastapi.sse (native SSE needs FastAPI >= 0.135)"
    if key == SSE_STARLETTE.key and importlib.util.find_spec("sse_starlette") is None:
        return "sse-starlette is not installed"
    if key == HUB_REDIS.key:
        if shutil.which("redis-server") is None:
            return "no redis-server on the PATH"
        if importlib.util.find_spec("redis") is None:
            return 'the redis client is not installed (pip install "streamflow[redis]")'
    return None


def _check_clocks() -> None:
    for name in ("perf_counter", "monotonic"):
        if "CLOCK_MONOTONIC" not in time.get_clock_info(name).implementation:
            raise SystemExit(f"time.{name} is not CLOCK_MONOTONIC here: the latencies would be wrong")


def _pin_client() -> str:
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return "not pinned (fewer than 2 CPUs): the server and the client share the machine"
    os.sched_setaffinity(0, {CLIENT_CPU})
    return f"server on core {SERVER_CPU}, client (and redis-server) on core {CLIENT_CPU}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


Start: TypeAlias = tuple[float, str, str, str]  # started (perf_counter), load at start, placement, priority


def prepare(arguments: list[str], header: bool, nice: int, script: str = "capacity.py") -> int | Start:
    """What capacity.py and fanout.py do before measuring: check the clocks, move into a
    session of their own at priority ``nice`` (then the exit status of that run is returned),
    stop on SIGTERM like Ctrl-C (the servers and redis-server, each in its own session, are
    stopped on the way out), pin the client and raise the open-files limit."""
    _check_clocks()
    if nice:
        status = _in_own_session(arguments, header, script=script)
        if status is not None:
            return status
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    load_start = _load()
    placement = _pin_client()
    if not nice:
        priority = "default priority"
    elif prioritize(os.getpid(), nice):
        priority = f"nice {nice} for the client, each server and redis-server, each in its own session"
    else:
        priority = f"nice {nice} not permitted: default priority"
    raise_open_files_limit(OPEN_FILES)
    return started, load_start, placement, priority


def _in_own_session(argv: Sequence[str], header: bool, script: str = "capacity.py") -> int | None:
    """Unless this process leads its session, run this script again in a new session (its
    own autogroup, see :func:`prioritize`) and return its exit status. Not ``os.setsid()``
    here: that would also take this process out of the terminal's foreground group, and
    Ctrl-C would no longer reach it; this process passes SIGINT and SIGTERM on instead."""
    if os.getsid(0) == os.getpid():
        return None
    command = [sys.executable, str(HERE / script), *argv, *([] if header else ["--no-header"])]
    child = subprocess.Popen(command, start_new_session=True)
    previous = {
        signum: signal.signal(signum, lambda signum, frame: child.send_signal(signum))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        code = child.wait()
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None, *, header: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a short ladder, 3 s streams")
    parser.add_argument(
        "--only", nargs="+", help="contenders, comma- or space-separated: " + ",".join(BY_KEY)
    )
    parser.add_argument("--ladder", help="the numbers of streams to try, e.g. 100,400,800")
    parser.add_argument("--duration", type=float, help="seconds of events per stream (and of the ramp)")
    parser.add_argument("--window", type=float, help="seconds measured with N streams running")
    parser.add_argument("--bisect", type=int, help="steps between the last pass and the first failure")
    parser.add_argument("--retries", type=int, help="re-runs of a failed step disturbed by other processes")
    parser.add_argument(
        "--nice",
        type=int,
        help=f"priority of the client and the servers, needs root (default {FULL.nice}; 0: unchanged)",
    )
    parser.add_argument("--serve", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--no-header", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.redis_url)
        return 0

    settings = QUICK if args.quick else FULL
    if args.ladder:
        settings = dataclasses.replace(settings, ladder=tuple(int(v) for v in args.ladder.split(",")))
    for name in ("duration", "window", "bisect", "retries", "nice"):
        if getattr(args, name) is not None:
            settings = dataclasses.replace(settings, **{name: getattr(args, name)})
    keys = [key for value in args.only or [] for key in value.split(",") if key]
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {','.join(BY_KEY)}")
    contenders = [c for c in CONTENDERS if not keys or c.key in keys]

    arguments = list(sys.argv[1:] if argv is None else argv)
    header = header and not args.no_header
    prepared = prepare(arguments, header, settings.nice)
    if isinstance(prepared, int):
        return prepared
    started, load_start, placement, priority = prepared
    command = shlex.join(["python", "benchmarks/capacity.py", *arguments])
    if header:
        print(f"Command: `{command}`\n\nMachine: {machine()}\n\n{_source()}.\n")
    print(
        f"Streams of {RATE} events/s for {settings.duration:g} s ({settings.events} events); N streams "
        f"open every {settings.duration:g} s, evenly, so that N run at once after a {settings.duration:g} s "
        f"ramp; {settings.window:g} s measured. Ladder {', '.join(map(str, settings.ladder))} "
        f"(bisect {settings.bisect}). {placement}; {priority}.\n\nLoad average at start: {load_start}.\n",
        flush=True,
    )
    noise = Noise()
    ladders: list[Ladder] = []
    skipped: dict[str, str] = {}
    status = 0
    for contender in contenders:
        reason = _available(contender.key)
        if reason:
            skipped[contender.key] = reason
            print(f"{contender.label}: skipped, {reason}.\n", flush=True)
            continue
        try:
            if contender.key == HUB_REDIS.key:
                with redis_server(settings.nice) as redis:
                    ladder = climb(contender, settings, redis)
            else:
                ladder = climb(contender, settings, None)
        except (BrokenContenderError, RuntimeError, TimeoutError) as exc:
            print(f"{contender.label}: BROKEN: {exc}\n", flush=True)
            status = 1
            continue
        ladders.append(ladder)
        print(ladder_table(ladder, settings), flush=True)
    print(summary(ladders, skipped))
    print(
        "- **capacity**: the largest number of concurrent streams for which p99 of both latencies "
        f"is at most {TARGET_P99_MS:g} ms and every stream got all its events and its end.\n"
        "- **p50 / p99**: from the source's `yield` to the client's read; **p99 due**: from the "
        "time the event was due on the stream's schedule (includes the loop's lateness).\n"
        "- **server CPU µs/event**: the server's CPU time over the step / the events received.\n"
    )
    print(
        f"Load average at start: {load_start}; at end: {_load()}. During this benchmark, {noise.report()}. "
        f"It took {time.perf_counter() - started:.0f} s.\n"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
