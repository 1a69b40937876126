"""The cost of resumability: one run through a ``StreamHub`` vs a direct response.

A uvicorn subprocess (this script with ``--serve``) serves two endpoints from one app:

- ``GET /direct?n=N``: ``EventStreamResponse`` of a source yielding ``N`` deltas without
  awaiting (as ``benchmarks/stream.py``'s ``/fast``);
- ``GET /hub?n=N``: the same source started as a run of a new session of a
  ``StreamHub(MemoryStore())`` and read back by ``hub.response``: every event is recorded
  in the store with its id, then encoded with ``id:``.

- ``GET /redis?n=N``: the same through a second hub on a ``RedisStore`` (a real
  ``redis-server`` on 127.0.0.1, started by this script in a temp dir, or ``--redis URL``):
  the events the source has ready together are appended by one Lua script (one round
  trip per batch, ``XADD`` each) and readers ``XREAD``.
  Without ``redis-server`` on the PATH and no ``--redis``, this row is left out (said so).

events/s is ``N`` over the time from sending the request to receiving the last event
(``Done`` included); the best of the runs is reported after a warm-up; the two
contenders alternate. Memory: the bytes (``tracemalloc``) a ``MemoryStore`` holds for
1,000 retained finished runs of ``--run-events`` deltas each.

Run ``python benchmarks/hub.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass

from _common import (
    HERE,
    HOST,
    Dechunker,
    EventCounter,
    Noise,
    _read_port,
    _stop,
    _wait_healthy,
    machine,
    make_tokens,
    read_head,
    request,
    table,
    targets_heading,
    verdict,
    wait_for_redis,
)

TARGET_COST = 0.20  # the hub with MemoryStore costs at most 20% of direct throughput
TOKENS = make_tokens(1000)


@dataclass(frozen=True)
class Settings:
    events: int
    repeats: int
    warmup_events: int
    runs: int
    run_events: int
    timeout: float
    quick: bool = False


FULL = Settings(events=200_000, repeats=5, warmup_events=20_000, runs=1000, run_events=200, timeout=300)
QUICK = Settings(
    events=10_000, repeats=1, warmup_events=1_000, runs=1000, run_events=200, timeout=60, quick=True
)


# ------------------------------------------------------------------------------ server


def serve_app() -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from streamflow import EventStreamResponse
    from streamflow.hub import StreamHub
    from streamflow.stores import MemoryStore

    hub = StreamHub(
        MemoryStore(max_events_per_run=2_000_000, max_finished_runs=10), on_last_reader_gone="finish"
    )

    async def fast_source(n: int) -> AsyncIterator[str]:
        tokens, size = TOKENS, len(TOKENS)
        for index in range(n):
            yield tokens[index % size]

    async def direct(request: Request) -> Response:
        return EventStreamResponse(fast_source(int(request.query_params["n"])))

    async def through_hub(request: Request) -> Response:
        session = await hub.create_session()
        await hub.start(session, fast_source(int(request.query_params["n"])))
        return await hub.response(request, session)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [Route("/direct", direct), Route("/hub", through_hub), Route("/health", health)]
    hubs = [hub]
    redis_url = os.environ.get("STREAMFLOW_BENCH_REDIS")
    if redis_url:
        from streamflow.stores.redis import RedisStore

        redis_hub = StreamHub(
            RedisStore(redis_url, prefix="bench", maxlen=2_000_000, ttl=60), on_last_reader_gone="finish"
        )
        hubs.append(redis_hub)

        async def through_redis(request: Request) -> Response:
            session = await redis_hub.create_session()
            await redis_hub.start(session, fast_source(int(request.query_params["n"])))
            return await redis_hub.response(request, session)

        routes.append(Route("/redis", through_redis))

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for each in hubs:
                await stack.enter_async_context(each.lifespan(app))
            yield
            for each in hubs:
                await each.store.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    print(f"PORT {port}", flush=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)


@contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str | None]:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence); ``None`` if not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="streamflow-bench-redis-")
    command = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*command, "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=directory
    )
    try:
        wait_for_redis(process, port, timeout)
        yield f"redis://{HOST}:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def server(timeout: float = 30.0, redis_url: str | None = None) -> Iterator[int]:
    env = dict(os.environ)
    if redis_url:
        env["STREAMFLOW_BENCH_REDIS"] = redis_url
    process = subprocess.Popen(
        [sys.executable, str(HERE / "hub.py"), "--serve"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        port = _read_port(process, timeout)
        _wait_healthy(port, process, timeout)
        yield port
    finally:
        _stop(process)


# ------------------------------------------------------------------------------ client


def measure(port: int, path: str, events: int, timeout: float) -> float:
    """events/s of one response of ``events`` deltas plus its ``Done``."""
    expected = events + 1
    # The hubs' responses start with a `retry:` block, which is no event.
    blocks = expected + (0 if path == "/direct" else 1)
    started = time.perf_counter()
    with read_head(request(port, f"{path}?n={events}", timeout=timeout)) as response:
        if response.status != 200:
            raise AssertionError(f"{path}: status {response.status}")
        dechunker, counter = Dechunker(), EventCounter(b"\n\n")
        counter.feed(dechunker.feed(response.body_start))
        while counter.count < blocks and not dechunker.done:
            data = response.sock.recv(1 << 18)
            if not data:
                break
            counter.feed(dechunker.feed(data))
            if len(data) < 16384 and counter.count < blocks:
                time.sleep(0.0005)
        elapsed = time.perf_counter() - started
    got = counter.count - (blocks - expected)
    if got != expected:
        raise AssertionError(f"{path}: {got} events, expected {expected}")
    return events / elapsed


def retained_runs_memory(runs: int, run_events: int) -> int:
    """Bytes a MemoryStore holds for ``runs`` finished runs of ``run_events`` deltas."""
    from streamflow import Delta, Done
    from streamflow.stores import MemoryStore

    async def fill(store: MemoryStore) -> None:
        for index in range(runs):
            session = f"session-{index}"
            await store.create_session(session)
            run = await store.create_run(session, producer="bench", lease=60)
            for position in range(run_events):
                await store.append(run, Delta(value=TOKENS[(index + position) % len(TOKENS)]))
            await store.append(run, Done())
            await store.finish(run, "finished")

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = MemoryStore(max_finished_runs=runs, retention=3600)
    asyncio.run(fill(store))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    if len(store) != runs:
        raise AssertionError(f"{len(store)} runs retained, expected {runs}")
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis", metavar="URL", help="a Redis for the RedisStore row (default: start one)")
    args = parser.parse_args(argv)
    if args.serve:
        serve_app()
        return 0
    settings = QUICK if args.quick else FULL
    noise = Noise()
    rates: dict[str, list[float]] = {"/direct": [], "/hub": []}
    with nullcontext(args.redis) if args.redis else redis_server() as redis_url:
        if redis_url:
            rates["/redis"] = []
        with server(redis_url=redis_url) as port:
            for path in rates:
                measure(port, path, settings.warmup_events, settings.timeout)
            for _ in range(settings.repeats):
                for path, found in rates.items():
                    found.append(measure(port, path, settings.events, settings.timeout))
    direct, hub = max(rates["/direct"]), max(rates["/hub"])
    cost = 1 - hub / direct
    memory = retained_runs_memory(settings.runs, settings.run_events)
    rows = [
        ["direct EventStreamResponse", f"{direct:,.0f}", "1.00"],
        ["StreamHub(MemoryStore) run + response", f"{hub:,.0f}", f"{hub / direct:.2f}"],
    ]
    if "/redis" in rates:
        redis_rate = max(rates["/redis"])
        rows.append(
            ["StreamHub(RedisStore) run + response", f"{redis_rate:,.0f}", f"{redis_rate / direct:.2f}"]
        )
    else:
        rows.append(["StreamHub(RedisStore): no redis-server on the PATH (or pass --redis URL)", "-", "-"])
    print(machine())
    print()
    print(
        table(
            f"Throughput, {settings.events:,} deltas, best of {settings.repeats}",
            ["", "events/s", "ratio"],
            rows,
        )
    )
    print(
        table(
            "MemoryStore: retained finished runs",
            ["runs", "events per run", "total MiB", "KiB per run"],
            [
                [
                    f"{settings.runs:,}",
                    f"{settings.run_events + 1}",
                    f"{memory / 2**20:.1f}",
                    f"{memory / 1024 / settings.runs:.1f}",
                ]
            ],
        )
    )
    print(targets_heading(settings.quick))
    print(verdict("throughput cost of the hub (1 - hub/direct)", cost, TARGET_COST, at_least=False))
    print(noise.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
