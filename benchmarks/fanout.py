"""Fan-out: one run of a ``StreamHub`` session followed live by many readers at once.

Issue 11's fan-out target: **one run at model speed (30 events/s) followed by 1,000
readers**, with p99 latency <= 100 ms and nothing lost.

- **Server**: this script with ``--serve KEY``, one uvicorn process pinned to core 0
  (``http="h11"``, ``loop="asyncio"``, as ``capacity.py``), a ``StreamHub``
  (``on_last_reader_gone="finish"``) with a ``MemoryStore`` (``hub-memory``) or a
  ``RedisStore`` on a ``redis-server`` this script starts on a free port, without
  persistence, pinned to core 1 with the client (``hub-redis``). Routes: ``POST /session``
  (``hub.create_session()``), ``GET /stream/{session}`` (``hub.response(request,
  session)``) and ``POST /start/{session}?n=N&interval=S`` (``hub.start`` of a source that
  yields ``N`` deltas ``"<stamp> <due>"`` on a fixed schedule from the origin it answers
  with: ``stamp`` is the source's ``perf_counter_ns()`` just before its ``yield``, ``due``
  the event's time on the schedule, see ``capacity.stamped``). A fresh server for each
  contender, warmed up by a short run with a few readers.
- **Client**: this process, pinned to core 1, one asyncio loop holding every reader as
  ``capacity.Reader`` (a ``Protocol`` that only records each read and its
  ``perf_counter_ns()``, and closes on ``done``); its garbage collector is off meanwhile.
  It creates one session, opens ``--readers`` streams of it (at most 100 connecting at
  once) and waits until every one has its response head (the hub then holds them all,
  waiting for the session's first run); only then does it start the run: ``--duration``
  seconds of events at 30/s (300 in 10 s). It waits for every reader's ``done`` (at most
  ``--grace`` seconds after the last event was due) and parses the frames afterwards.
- **Checks**: every reader must get every event of the run exactly once, in order (from
  the first: all were open before it started), then ``done``. *Lost* counts the
  (reader, event) pairs that never arrived, *duplicated* those that arrived more than once.
- **Latency**, over every delivery (readers x events): *yield -> receipt*, the client's
  ``perf_counter_ns()`` after the read that brought the event minus ``stamp``
  (``CLOCK_MONOTONIC``: one clock for both processes), and *due -> receipt*, which adds
  how late the source got to yield (a saturated loop runs its timers late).
- **PASS**: nothing lost or duplicated, every reader got ``done``, and p99 of both
  latencies <= 100 ms.
- **CPU**: the server's user + system time (``/proc/PID/stat``) from the run's start until
  the last reader's ``done``, as a share of that time, and per delivery; the client's
  (flagged above 90 %: its receipt times may then be late) and redis-server's; how long
  the server and the client waited for a CPU while runnable (``/proc/PID/schedstat``).

``--py-spy DIR`` also samples each server with ``py-spy record --nonblocking --format raw``
during the run (collapsed stacks in ``DIR/fanout-KEY.txt``): needs ``py-spy`` on the PATH
or in the venv, and root or ``ptrace`` rights; the sampling costs the server a little.

Run ``python benchmarks/fanout.py`` (1,000 readers, 10 s, both contenders: about a minute)
or ``--quick`` (200 readers, 3 s); ``--readers 500``, ``--only hub-memory``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Final

from _common import HOST, Noise, cpu_seconds, machine, percentile, table
from capacity import (
    _DONE,
    _STAMP,
    CLIENT_BUSY,
    CLIENT_DISTURBED,
    DISTURBED,
    HUB_MEMORY,
    HUB_REDIS,
    RATE,
    BrokenContenderError,
    Contender,
    Process,
    Reader,
    _available,
    _load,
    _ms,
    _sample_redis_clients,
    _source,
    make_hub,
    prepare,
    redis_server,
    run_delay,
    serve_app,
    server_process,
    stamped,
)
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from starlette.responses import Response

TARGET_P99_MS: Final = 100.0
CONTENDERS: Final = (HUB_MEMORY, HUB_REDIS)
BY_KEY: Final = {c.key: c for c in CONTENDERS}
CONNECTING: Final = 100  # readers connecting at once
HEAD_TIMEOUT: Final = 60.0  # seconds for every reader to get its response head
WARMUP_READERS: Final = 5
WARMUP_EVENTS: Final = 5
WARMUP_INTERVAL: Final = 0.002


@dataclass(frozen=True)
class Settings:
    readers: int
    duration: float  # seconds of events of the run
    grace: float  # seconds after the last event was due that the client waits for the rest
    retries: int = 2  # re-runs of a failed run that other processes disturbed
    nice: int = -20  # the priority of the client, the servers and redis-server (0: unchanged)
    quick: bool = False
    py_spy: Path | None = None

    @property
    def events(self) -> int:
        return round(RATE * self.duration)


FULL: Final = Settings(readers=1000, duration=10.0, grace=10.0)
QUICK: Final = Settings(readers=200, duration=3.0, grace=3.0, retries=0, quick=True)


# =============================================================================== server


def build_app(key: str, redis_url: str | None) -> FastAPI:
    """``key``'s app: ``POST /session``, ``GET /stream/{session}``, ``POST /start/{session}``."""
    hub, lifespan = make_hub(key, redis_url, prefix="fanout")
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.post("/session")
    async def new_session() -> PlainTextResponse:
        return PlainTextResponse(await hub.create_session())

    @app.get("/stream/{session}")
    async def stream(request: Request, session: str) -> Response:
        return await hub.response(request, session)

    @app.post("/start/{session}")
    async def start(session: str, n: int, interval: float) -> PlainTextResponse:
        origin = time.perf_counter_ns()  # event i (from 1) is due at origin + i * interval
        await hub.start(session, stamped(n, interval, origin))
        return PlainTextResponse(str(origin))

    return app


def serve(key: str, redis_url: str | None) -> None:
    """The server process (see :func:`capacity.serve_app`)."""
    serve_app(build_app(key, redis_url))


# ============================================================================= client


async def _call(port: int, method: str, path: str) -> str:
    """A one-off request (``Connection: close``); its body, which must come with a 200."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise BrokenContenderError(f"{method} {path}: {raw[:300]!r}")
    return body.decode()


class HeadReader(Reader):
    """A :class:`capacity.Reader` that calls ``on_head`` once: when its response head is in,
    or when it closes without one."""

    __slots__ = ("has_head", "on_head")

    def __init__(
        self, request: bytes, opened: int, on_close: Callable[[], None], on_head: Callable[[], None]
    ) -> None:
        super().__init__(request, opened, on_close)
        self.on_head = on_head
        self.has_head = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.has_head and b"\r\n\r\n" in b"".join(self.chunks):
            self.has_head = True
            self.on_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.has_head:
            self.has_head = True
            self.on_head()
        super().connection_lost(exc)


@dataclass(frozen=True)
class Load:
    readers: int
    events: int
    interval: float
    grace: float

    @property
    def step(self) -> int:
        return round(self.interval * 1e9)


@dataclass
class Tally:
    """Every delivery of a run, as the readers saw it."""

    yield_us: list[float] = dataclasses.field(default_factory=list)  # receipt - stamp
    due_us: list[float] = dataclasses.field(default_factory=list)  # receipt - due
    lost: int = 0  # (reader, event) pairs that never arrived
    duplicated: int = 0  # deliveries of an event a reader already had
    disordered: int = 0  # deliveries of an event before one the reader already had
    short: int = 0  # readers without every event, or without done
    no_done: int = 0  # readers that never got done
    failed: int = 0  # readers that never got a response head


def tally(readers: Sequence[Reader], load: Load, origin: int) -> Tally:
    """Check every reader against the run's schedule (event ``i`` due at ``origin + i * step``)."""
    result = Tally()
    step = load.step
    for reader in readers:
        raw = b"".join(reader.chunks)
        head_end = raw.find(b"\r\n\r\n")
        if reader.error is not None or head_end < 0:
            result.failed += 1
            result.short += 1
            result.no_done += 1
            result.lost += load.events
            continue
        head = raw[:head_end].decode("latin-1").lower()
        if not head.startswith("http/1.1 200") or "content-type: text/event-stream" not in head:
            raise BrokenContenderError(f"bad response head: {head[:300]!r}")
        ends = list(accumulate(len(chunk) for chunk in reader.chunks))
        seen = bytearray(load.events)
        latest = -1
        for match in _STAMP.finditer(raw, head_end):
            received = reader.times[bisect_left(ends, match.end())]
            stamp, due = int(match[1]), int(match[2])
            index, off = divmod(due - origin, step)
            if off or not 1 <= index <= load.events:
                raise BrokenContenderError(f"an event due at {due} is not on the run's schedule")
            if stamp > received or due > received:
                raise BrokenContenderError("an event arrived before it was stamped: clocks differ")
            if seen[index - 1]:
                result.duplicated += 1
                continue
            seen[index - 1] = 1
            if index < latest:
                result.disordered += 1
            latest = max(latest, index)
            result.yield_us.append((received - stamp) / 1000)
            result.due_us.append((received - due) / 1000)
        missing = load.events - sum(seen)
        done = _DONE.search(raw, head_end) is not None
        result.lost += missing
        result.no_done += not done
        result.short += bool(missing) or not done
    return result


@dataclass(frozen=True)
class Outcome:
    contender: Contender
    load: Load
    opened: float  # seconds to open every reader and get its response head
    counted: Tally
    span: float  # seconds from the run's start to the last reader's done (or the deadline)
    server_cpu: float  # seconds, over span
    client_cpu: float
    redis_cpu: float | None
    redis_clients: int | None
    waited: tuple[float, float]  # the server's and the client's time waiting for a CPU / span
    attempt: int = 1

    @property
    def deliveries(self) -> int:
        return len(self.counted.yield_us)

    def quantile_ms(self, values: Sequence[float], fraction: float) -> float:
        return percentile(values, fraction) / 1000 if values else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.quantile_ms(self.counted.yield_us, 0.99)

    @property
    def due_p99_ms(self) -> float:
        return self.quantile_ms(self.counted.due_us, 0.99)

    @property
    def complete(self) -> bool:
        c = self.counted
        return not (c.lost or c.duplicated or c.disordered or c.short)

    @property
    def passed(self) -> bool:
        return self.complete and self.p99_ms <= TARGET_P99_MS and self.due_p99_ms <= TARGET_P99_MS

    @property
    def client_busy(self) -> bool:
        return self.client_cpu / self.span > CLIENT_BUSY

    @property
    def disturbed(self) -> bool:
        """Other processes took the server's CPU (or the client's) for a noticeable share."""
        return self.waited[0] > DISTURBED or self.waited[1] > CLIENT_DISTURBED


def _cpus(server: Process, redis: Process | None) -> tuple[float, float, float, float, float]:
    return (
        cpu_seconds(server.pid),
        time.process_time(),
        cpu_seconds(redis.pid) if redis is not None else 0.0,
        run_delay(server.pid),
        run_delay(os.getpid()),
    )


async def fanout(contender: Contender, server: Process, load: Load, redis: Process | None) -> Outcome:
    """One session, ``load.readers`` readers of it, then its one run; check every delivery."""
    loop = asyncio.get_running_loop()
    session = await _call(server.port, "POST", "/session")
    request = (
        f"GET /stream/{session} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    open_readers = load.readers
    all_closed: asyncio.Future[None] = loop.create_future()

    def closed() -> None:
        nonlocal open_readers
        open_readers -= 1
        if not open_readers and not all_closed.done():
            all_closed.set_result(None)

    gate = asyncio.Semaphore(CONNECTING)

    async def connect(reader: Reader) -> None:
        async with gate:
            try:
                await loop.create_connection(lambda: reader, HOST, server.port)
            except OSError as exc:
                reader.failed(f"connect: {exc}")

    began = time.perf_counter()
    heads = load.readers  # readers still without their response head (nor closed)
    all_headed: asyncio.Future[None] = loop.create_future()

    def headed() -> None:
        nonlocal heads
        heads -= 1
        if not heads and not all_headed.done():
            all_headed.set_result(None)

    readers = [HeadReader(request, time.perf_counter_ns(), closed, headed) for _ in range(load.readers)]
    await asyncio.gather(*(connect(reader) for reader in readers))
    with suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(all_headed), HEAD_TIMEOUT)
    opened = time.perf_counter() - began

    peak = [0]
    sampler = loop.create_task(_sample_redis_clients(redis.port, peak)) if redis else None
    before = _cpus(server, redis)
    at_start = loop.time()
    origin = int(
        await _call(server.port, "POST", f"/start/{session}?n={load.events}&interval={load.interval!r}")
    )
    last_due = origin + load.events * load.step
    try:
        # loop.time() is time.monotonic(), perf_counter_ns()'s clock (checked in main()).
        async with asyncio.timeout_at(last_due / 1e9 + load.grace):
            await all_closed
    except TimeoutError:
        for reader in readers:
            if reader.transport is not None:
                reader.transport.abort()
    after = _cpus(server, redis)
    span = loop.time() - at_start
    if sampler is not None:
        sampler.cancel()
    await asyncio.sleep(0)  # let the aborted transports report
    return Outcome(
        contender=contender,
        load=load,
        opened=opened,
        counted=tally(readers, load, origin),
        span=span,
        server_cpu=after[0] - before[0],
        client_cpu=after[1] - before[1],
        redis_cpu=after[2] - before[2] if redis else None,
        redis_clients=peak[0] if redis else None,
        waited=((after[3] - before[3]) / span, (after[4] - before[4]) / span),
    )


@contextmanager
def py_spy(pid: int, output: Path | None, seconds: float) -> Iterator[None]:
    """``py-spy record`` of process ``pid`` for ``seconds`` into ``output`` (if given)."""
    if output is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [binary, "record", "--nonblocking", "--format", "raw", "-r", "200"]
    command += ["-d", str(max(1, round(seconds))), "-o", str(output), "--pid", str(pid)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            _, errors = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            _, errors = process.communicate(timeout=10)
        if process.returncode:
            print(f"py-spy failed: {errors.decode(errors='replace')[-500:]}", file=sys.stderr)


def measure_again(contender: Contender, settings: Settings, redis: Process | None) -> Outcome:
    """:func:`measure`, again (at most ``settings.retries`` times) while it fails disturbed."""
    for attempt in range(1, settings.retries + 2):
        outcome = dataclasses.replace(measure(contender, settings, redis), attempt=attempt)
        print(f"  {contender.key}: {_progress(outcome)}", file=sys.stderr, flush=True)
        if outcome.passed or not outcome.disturbed or attempt > settings.retries:
            return outcome
        print(f"  {contender.key}: disturbed by other processes, again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def measure(contender: Contender, settings: Settings, redis: Process | None) -> Outcome:
    """A fresh server, a warm-up (which must be complete), then the run."""
    redis_url = f"redis://{HOST}:{redis.port}/0" if redis else None
    load = Load(settings.readers, settings.events, 1 / RATE, settings.grace)
    warmup = Load(WARMUP_READERS, WARMUP_EVENTS, WARMUP_INTERVAL, 5.0)
    with server_process(contender, redis_url, settings.nice, script="fanout.py") as server:
        gc.collect()
        gc.disable()
        try:
            trial = asyncio.run(fanout(contender, server, warmup, None))
            if not trial.complete:
                raise BrokenContenderError(f"the warm-up was incomplete: {trial.counted}")
            output = settings.py_spy / f"fanout-{contender.key}.txt" if settings.py_spy else None
            with py_spy(server.pid, output, settings.duration + 3):
                return asyncio.run(fanout(contender, server, load, redis))
        finally:
            gc.enable()


# ============================================================================= report


def _progress(outcome: Outcome) -> str:
    c = outcome.counted
    return (
        f"{'pass' if outcome.passed else 'FAIL'}, readers open in {outcome.opened:.1f} s, "
        f"p99 {_ms(outcome.p99_ms)} ms, due p99 {_ms(outcome.due_p99_ms)} ms, lost {c.lost}, "
        f"duplicated {c.duplicated}, server {outcome.server_cpu / outcome.span:.0%}, "
        f"client {outcome.client_cpu / outcome.span:.0%}, waited {outcome.waited[0]:.1%}/{outcome.waited[1]:.1%}"
    )


def _verdict(outcome: Outcome) -> str:
    if outcome.passed:
        return "PASS"
    c = outcome.counted
    reasons = []
    if c.short:
        reasons.append(f"{c.short:,} readers short" + (f" ({c.failed:,} got nothing)" if c.failed else ""))
    if c.duplicated or c.disordered:
        reasons.append(f"{c.duplicated:,} duplicated, {c.disordered:,} out of order")
    if outcome.p99_ms > TARGET_P99_MS or outcome.due_p99_ms > TARGET_P99_MS:
        reasons.append(f"p99 > {TARGET_P99_MS:g} ms")
    return "FAIL: " + ", ".join(reasons)


def results_table(outcomes: Sequence[Outcome], settings: Settings) -> str:
    rows = []
    for o in outcomes:
        c = o.counted
        rows.append(
            [
                o.contender.label + (f" (run {o.attempt})" if o.attempt > 1 else ""),
                f"{o.load.readers:,}",
                f"{o.deliveries:,} / {o.load.readers * o.load.events:,}",
                f"{c.lost:,}",
                f"{c.duplicated:,}",
                f"{c.short:,}",
                " / ".join(_ms(o.quantile_ms(c.yield_us, q)) for q in (0.5, 0.99, 1.0)),
                " / ".join(_ms(o.quantile_ms(c.due_us, q)) for q in (0.5, 0.99, 1.0)),
                f"{o.server_cpu / o.span:.0%}",
                f"{o.server_cpu / max(o.deliveries, 1) * 1e6:.1f}",
                f"{o.client_cpu / o.span:.0%}" + (" (!)" if o.client_busy else ""),
                f"{(o.redis_cpu or 0.0) / o.span:.0%} ({o.redis_clients:,} clients)"
                if o.redis_clients
                else "-",
                f"{o.waited[0]:.1%} / {o.waited[1]:.1%}" + (" (!)" if o.disturbed else ""),
                _verdict(o),
            ]
        )
    title = (
        f"Fan-out: one run of {settings.events} events at {RATE}/s followed by {settings.readers:,} "
        f"readers, p99 <= {TARGET_P99_MS:g} ms and nothing lost"
    )
    headers = [
        "contender",
        "readers",
        "deliveries",
        "lost",
        "duplicated",
        "readers short",
        "yield->recv p50 / p99 / max ms",
        "due->recv p50 / p99 / max ms",
        "server CPU",
        "server µs/delivery",
        "client CPU",
        "Redis CPU (peak clients)",
        "waited for CPU: server / client",
        "result",
    ]
    notes = []
    if any(o.client_busy for o in outcomes):
        notes.append(
            f"(!) client CPU: the client used more than {CLIENT_BUSY:.0%} of its core: the receipt "
            "times of that run may be late."
        )
    if any(o.disturbed for o in outcomes):
        notes.append(
            f"(!) waited: other processes took more than {DISTURBED:.0%} of the server's time (or "
            f"{CLIENT_DISTURBED:.0%} of the client's): that run's figures are pessimistic."
        )
    return table(title, headers, rows) + "".join(f"\n{note}\n" for note in notes)


# =============================================================================== main


def main(argv: Sequence[str] | None = None, *, header: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 readers, a 3 s run")
    parser.add_argument("--readers", type=int, help=f"readers of the run (default {FULL.readers:,})")
    parser.add_argument("--duration", type=float, help=f"seconds of the run (default {FULL.duration:g})")
    parser.add_argument("--grace", type=float, help="seconds to wait for events after the last is due")
    parser.add_argument("--retries", type=int, help="re-runs of a failed run disturbed by other processes")
    parser.add_argument(
        "--only", nargs="+", help="contenders, comma- or space-separated: " + ",".join(BY_KEY)
    )
    parser.add_argument(
        "--nice",
        type=int,
        help=f"priority of the client and the servers, needs root (default {FULL.nice}; 0: unchanged)",
    )
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="record each server with py-spy into DIR")
    parser.add_argument("--serve", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--no-header", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.redis_url)
        return 0

    settings = QUICK if args.quick else FULL
    for name in ("readers", "duration", "grace", "retries", "nice", "py_spy"):
        if getattr(args, name) is not None:
            settings = dataclasses.replace(settings, **{name: getattr(args, name)})
    if settings.readers < 1 or settings.events < 1:
        parser.error("--readers and --duration must give at least one reader and one event")
    keys = [key for value in args.only or [] for key in value.split(",") if key]
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {','.join(BY_KEY)}")
    contenders = [c for c in CONTENDERS if not keys or c.key in keys]

    arguments = list(sys.argv[1:] if argv is None else argv)
    header = header and not args.no_header
    prepared = prepare(arguments, header, settings.nice, script="fanout.py")
    if isinstance(prepared, int):
        return prepared
    started, load_start, placement, priority = prepared
    if settings.py_spy:
        settings.py_spy.mkdir(parents=True, exist_ok=True)
    if header:
        command = shlex.join(["python", "benchmarks/fanout.py", *arguments])
        print(f"Command: `{command}`\n\nMachine: {machine()}\n\n{_source()}.\n")
    print(
        f"One session; {settings.readers:,} readers of its stream open (each with its response head) "
        f"before its one run starts: {settings.events} events at {RATE}/s ({settings.duration:g} s). "
        f"{placement}; {priority}.\n\nLoad average at start: {load_start}.\n",
        flush=True,
    )
    noise = Noise()
    outcomes: list[Outcome] = []
    status = 0
    for contender in contenders:
        reason = _available(contender.key)
        if reason:
            print(f"{contender.label}: skipped, {reason}.\n", flush=True)
            continue
        try:
            if contender.key == HUB_REDIS.key:
                with redis_server(settings.nice) as redis:
                    outcome = measure_again(contender, settings, redis)
            else:
                outcome = measure_again(contender, settings, None)
        except (BrokenContenderError, RuntimeError, TimeoutError) as exc:
            print(f"{contender.label}: BROKEN: {exc}\n", flush=True)
            status = 1
            continue
        outcomes.append(outcome)
    print(results_table(outcomes, settings))
    print(
        "- **deliveries**: (reader, event) pairs received once / expected; **lost**: never "
        "received; **readers short**: without every event or without `done`.\n"
        "- **yield->recv**: from the source's `yield` to the client's read; **due->recv**: from "
        "the event's time on the run's schedule (includes the loop's lateness); over every delivery.\n"
        "- **server CPU**: its CPU time from the run's start to the last reader's `done`, as a share "
        "of that time, and per delivery.\n"
    )
    print(
        f"Load average at start: {load_start}; at end: {_load()}. During this benchmark, {noise.report()}. "
        f"It took {time.perf_counter() - started:.0f} s.\n"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
