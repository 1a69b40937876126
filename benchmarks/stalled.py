"""Server memory a reader that never reads costs, and whether ``send_timeout`` drops it.

A uvicorn subprocess (this script with ``--serve``: asyncio, and the HTTP implementation
uvicorn picks, as in the other benchmarks) serves one Starlette app. Its sources yield
deltas whose value is ``SIZE`` ASCII characters (a frame of ``SIZE`` + 36 bytes, plus an
``id:`` line on the hub) as fast as they can, with a checkpoint (``anyio.sleep(0)``) after
each:

- ``GET /hand?size=S``: a hand-rolled ``StreamingResponse`` of
  ``f"data: {json.dumps(x)}\\n\\n"`` from an endless generator (the baseline);
- ``GET /plain?size=S&buffer_size=B&send_timeout=T|none``: ``EventStreamResponse`` of the
  same endless source;
- ``GET /hub``: a reader of one shared run of ``StreamHub(MemoryStore(...),
  on_last_reader_gone="finish")`` (the app's lifespan is ``hub.lifespan``), which
  ``GET /hub/start?size=S&events=E`` starts: ``E`` deltas as fast as they come (12 MiB of
  them, at least 6,000), then the run stays live, its source waiting for ever. A reader
  with no ``Last-Event-ID`` starts at the run's first event, so a stalled one is as far
  behind as on a fast live run; the store's log is one, shared, and complete before the
  baseline, so none of it is in the per-reader figure. ``StreamHub`` gets ``send_timeout=``
  and ``buffer_size=`` only if its signature takes them;
- ``GET /stats``: the live sources, the events they yielded or the hub's readers read
  from the store, the hub's readers, the bytes in asyncio's write buffers (uvicorn's
  transports), and glibc's bytes in use (``mallinfo2``); ``GET /gc``: ``gc.collect()``.

Part 1, for each event size and contender, a fresh server: after a warm-up (two readers
that take 256 KiB and leave) and a ``gc.collect()``, the server's ``VmRSS`` is read once
stable (polled every 0.5 s until it moved by less than 1 % over 2 s); then this process
opens ``--readers`` raw sockets with ``SO_RCVBUF=4096`` (set before ``connect``), each
sending a ``GET`` and never reading, waits until all are attached, their sources (the
hub: its readers' store reads) took no event for 2 s and the RSS is stable again (at
most 60 s), and reads it after another ``gc.collect()``. KiB per stalled reader = (RSS
stalled - RSS before) / readers, against the bound the project aims for,
``3 x buffer_size + 64 KiB`` (an idle stream costs about 30 KiB, see ``memory.py``; the
rest is room for one event over the limit in each place). The server sets
``SO_SNDBUF=64 KiB`` on each stream's socket (``--server-sndbuf``; 0 leaves the kernel's
autotuning, which on loopback lets the kernel take ~2.7 MiB per stalled reader first,
outside the RSS, and makes 100-byte runs minutes long). The sockets then peek (nothing
consumed) at what they got: a 200 and SSE frames. Last, the stalled clients close their
sockets and two readers of the endless stream take 256 KiB and disconnect: every source
(the hub: reader) should be gone within 5 s.

Part 2, the same with ``send_timeout`` (``--send-timeout``, 2 s) on
``EventStreamResponse`` and on the hub (the hand-rolled response has none): the stalled
readers should be dropped, their sources cancelled and the memory back near the
baseline. The server's memory is read after the drop, after a ``gc.collect()`` and after
the clients close their sockets.

Run ``python benchmarks/stalled.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from _common import (
    HERE,
    HOST,
    Dechunker,
    Noise,
    _read_port,
    _stop,
    _wait_healthy,
    http_get,
    machine,
    raise_open_files_limit,
    rss_kib,
    table,
    targets_heading,
    verdict,
)

KIB: Final = 1024
DEFAULT_BUFFER_SIZE: Final = 64 * KIB  # EventStreamResponse's default (the hub's responses use it)
FIXED_OVERHEAD_KIB: Final = 64  # an idle stream (~30 KiB, memory.py) plus one event over each limit
CLIENT_RCVBUF: Final = 4096
SERVER_SNDBUF: Final = 64 * KIB  # Linux doubles it; loopback's autotuning goes to ~2.7 MiB
WARMUP_READERS: Final = 2
LEAVERS: Final = 2  # readers that disconnect mid-stream, after the measurement
WARMUP_BYTES: Final = 256 * KIB
MAX_RUN_EVENTS: Final = 1_000_000  # the hub's store keeps the whole shared run


def run_events(size: int) -> int:
    """Events of the hub's shared run: far more than a stalled reader takes before it
    stalls (the kernel alone takes up to 4 MiB, three store reads up to 12 MiB)."""
    return max(6_000, 12 * 2**20 // (size + 64))


DROP_RESIDUE_KIB: Final = (
    16  # what a dropped reader may leave behind of its own (not the server's), per reader
)


@dataclass(frozen=True)
class ContenderInfo:
    key: str
    label: str


HAND: Final = ContenderInfo("hand", "hand-rolled StreamingResponse")
PLAIN: Final = ContenderInfo("plain", "streamflow EventStreamResponse")
HUB: Final = ContenderInfo("hub", "streamflow StreamHub (MemoryStore)")
CONTENDERS: Final = (HAND, PLAIN, HUB)


@dataclass(frozen=True)
class Settings:
    readers: int
    sizes: tuple[int, ...]
    poll: float  # seconds between two RSS reads
    window: float  # the RSS is stable when it moved by < 1 % over this many seconds
    cap: float  # ... or after this many seconds
    send_timeout: float
    buffer_size: int = DEFAULT_BUFFER_SIZE
    server_sndbuf: int = SERVER_SNDBUF  # 0: the kernel's default (autotuned)
    close_wait: float = 5.0  # seconds a source (the hub: reader) may outlive its client's socket
    quick: bool = False


FULL = Settings(readers=50, sizes=(100, 4096), poll=0.5, window=2.0, cap=60.0, send_timeout=2.0)
QUICK = Settings(
    readers=10,
    sizes=(100, 4096),
    poll=0.25,
    window=1.0,
    cap=20.0,
    send_timeout=1.0,
    close_wait=2.0,
    quick=True,
)


# ------------------------------------------------------------------------------ server


def serve_app(hub_send_timeout: float | None, hub_buffer_size: int, sndbuf: int) -> None:
    """The benchmark app under uvicorn on 127.0.0.1 (prints ``PORT n``, serves until SIGTERM)."""
    import gc
    import inspect

    import anyio
    import anyio.lowlevel
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    import streamflow
    from streamflow import EventStreamResponse
    from streamflow.hub import StreamHub
    from streamflow.stores import MemoryStore

    stats: dict[str, int] = dict.fromkeys(("started", "live", "cancelled", "events", "hub_produced"), 0)

    class CountingMemoryStore(MemoryStore):
        """A ``MemoryStore`` that counts the events its readers take (one counter, shared)."""

        events_read = 0
        end_reads = 0  # reads that returned the shared run's last event
        last_seq = -1

        async def read(self, *args: Any, **kwargs: Any) -> Any:
            batch = await super().read(*args, **kwargs)
            if batch:
                self.events_read += len(batch)
                self.end_reads += int(batch[-1][0]) == self.last_seq
            return batch

    def value_of(size: int) -> str:
        return ("streamflow stalled reader " * (size // 26 + 1))[:size]

    async def endless(size: int, n: int | None) -> Any:
        """Deltas of ``size`` characters, for ever (or ``n``), a checkpoint after each."""
        value = value_of(size)
        stats["started"] += 1
        stats["live"] += 1
        try:
            count = 0
            while n is None or count < n:
                yield value
                stats["events"] += 1
                count += 1
                await anyio.lowlevel.checkpoint()
        except (GeneratorExit, anyio.get_cancelled_exc_class()):
            stats["cancelled"] += 1
            raise
        finally:
            stats["live"] -= 1

    server_box: list[uvicorn.Server] = []

    def limit_sndbuf(request: Request) -> None:
        """``SO_SNDBUF`` on this request's socket (accepted sockets do not inherit it): the
        kernel then holds ``2 x sndbuf`` for a stalled reader instead of autotuning its
        buffer up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB)."""
        if not sndbuf or not server_box:
            return
        client = tuple(request.scope.get("client") or ())
        for connection in server_box[0].server_state.connections:
            transport = getattr(connection, "transport", None)
            if transport is not None and transport.get_extra_info("peername") == client:
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                return

    def count_of(request: Request) -> int | None:
        n = request.query_params.get("n")
        return None if n is None else int(n)

    async def hand(request: Request) -> Response:
        limit_sndbuf(request)

        async def body() -> Any:
            size = int(request.query_params.get("size", "100"))
            async for value in endless(size, count_of(request)):
                yield f"data: {json.dumps({'type': 'delta', 'value': value})}\n\n"

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    async def plain(request: Request) -> Response:
        limit_sndbuf(request)
        query = request.query_params
        timeout = query.get("send_timeout", "none")
        return EventStreamResponse(
            endless(int(query.get("size", "100")), count_of(request)),
            buffer_size=int(query.get("buffer_size", str(DEFAULT_BUFFER_SIZE))),
            send_timeout=None if timeout == "none" else float(timeout),
        )

    # The hub: send_timeout only if this streamflow's StreamHub takes it (None = never drop).
    hub_options: dict[str, Any] = {}
    takes_send_timeout = "send_timeout" in inspect.signature(StreamHub).parameters
    if takes_send_timeout:
        hub_options["send_timeout"] = hub_send_timeout
    takes_buffer_size = "buffer_size" in inspect.signature(StreamHub).parameters
    if takes_buffer_size:
        hub_options["buffer_size"] = hub_buffer_size
    store = CountingMemoryStore(max_events_per_run=MAX_RUN_EVENTS)
    hub = StreamHub(store, on_last_reader_gone="finish", **hub_options)
    shared: dict[str, str] = {}

    async def run_source(size: int, events: int) -> Any:
        value = value_of(size)
        for _ in range(events):
            yield value
            stats["hub_produced"] += 1
        await anyio.sleep_forever()  # the run stays live: its readers follow it

    async def hub_start(request: Request) -> Response:
        events = int(request.query_params["events"])
        if events > store.max_events_per_run:
            return PlainTextResponse("too many events for the store", status_code=400)
        session = await hub.create_session()
        shared["session"] = session
        store.last_seq = events
        shared["run"] = await hub.start(session, run_source(int(request.query_params["size"]), events))
        return JSONResponse(shared)

    async def hub_reader(request: Request) -> Response:
        limit_sndbuf(request)
        return await hub.response(request, shared["session"])

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def collect(request: Request) -> Response:
        return JSONResponse({"collected": gc.collect()})

    heap = heap_in_use_function()

    async def stats_route(request: Request) -> Response:
        connections = list(server_box[0].server_state.connections) if server_box else []
        transports = [getattr(connection, "transport", None) for connection in connections]
        runs = getattr(hub, "_runs", None)  # introspection for the benchmark only
        hub_readers = sum(run.readers for run in runs.values()) if isinstance(runs, dict) else -1
        return JSONResponse(
            {
                **stats,
                "http": type(connections[0]).__name__ if connections else "?",
                "connections": len(connections),
                "heap": heap(),
                "transport_buffer": sum(t.get_write_buffer_size() for t in transports if t is not None),
                "hub_readers": hub_readers,
                "store_events_read": store.events_read,
                "store_end_reads": store.end_reads,
                "hub_send_timeout": hub_send_timeout if takes_send_timeout else "unsupported",
                "hub_buffer_size": hub_buffer_size if takes_buffer_size else "unsupported",
                "streamflow": str(Path(streamflow.__file__).parent),
            }
        )

    app = Starlette(
        routes=[
            Route("/hand", hand),
            Route("/plain", plain),
            Route("/hub", hub_reader),
            Route("/hub/start", hub_start),
            Route("/stats", stats_route),
            Route("/gc", collect),
            Route("/health", health),
        ],
        lifespan=hub.lifespan,
    )
    raise_open_files_limit()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        loop="asyncio",
        log_level="critical",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server_box.append(server)
    server.run(sockets=[sock])


def heap_in_use_function() -> Callable[[], int]:
    """glibc's bytes in use by ``malloc`` (``mallinfo2``: ``uordblks + hblkhd``), or -1.

    Every ``bytes`` buffer above 512 bytes (the transport's, the outbox's, a message) is
    there; Python's small objects are not (pymalloc's arenas are ``mmap``-ed apart). Unlike
    the RSS, it falls when memory is freed, and freed memory reused does not hide it.
    """
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
                *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
            )
        ]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return lambda: -1
    mallinfo2.restype = MallInfo2

    def heap() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return heap


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        return get_json(self.port, "/stats")

    def collect_garbage(self) -> None:
        get_json(self.port, "/gc")


@contextmanager
def server(settings: Settings, hub_send_timeout: float | None, timeout: float = 30.0) -> Iterator[Server]:
    command = [
        sys.executable,
        str(HERE / "stalled.py"),
        "--serve",
        "--buffer-size",
        str(settings.buffer_size),
    ]
    command += ["--server-sndbuf", str(settings.server_sndbuf)]
    if hub_send_timeout is not None:
        command += ["--hub-send-timeout", str(hub_send_timeout)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        port = _read_port(process, timeout)
        _wait_healthy(port, process, timeout)
        yield Server(process, port)
    finally:
        _stop(process)


# ------------------------------------------------------------------------------ client


def get_json(port: int, path: str, timeout: float = 30.0) -> dict[str, Any]:
    with http_get(port, path, timeout=timeout) as response:
        body = response.body_start
        length = int(response.headers.get("content-length", "-1"))
        while len(body) < length:
            data = response.sock.recv(65536)
            if not data:
                break
            body += data
        if response.status != 200:
            raise AssertionError(f"GET {path}: status {response.status}: {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result


def stalled_reader(port: int, path: str) -> socket.socket:
    """A client that sends ``GET path`` with a 4 KiB receive buffer and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)  # before connect: the window
    sock.settimeout(10.0)
    sock.connect((HOST, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()  # with unread data: the kernel resets the connection


def read_and_leave(port: int, path: str, count: int) -> None:
    """``count`` readers, one after the other, that take ``WARMUP_BYTES`` (or the whole body
    if it is shorter) and close their sockets."""
    for _ in range(count):
        with http_get(port, path, timeout=10.0) as response:
            if response.status != 200:
                raise AssertionError(f"GET {path}: status {response.status}")
            dechunker = Dechunker()
            got = len(dechunker.feed(response.body_start))
            while got < WARMUP_BYTES and not dechunker.done:
                data = response.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"GET {path}: the stream ended after {got} bytes")
                got += len(dechunker.feed(data))


def warm_up(port: int, contender: ContenderInfo, size: int, settings: Settings) -> None:
    """Readers that take ``WARMUP_BYTES`` and leave: the code paths and caches are warm.

    The hand-rolled and plain streams are finite here and read to their end: an endless one
    may outlive a reader that leaves (see :func:`leavers_left_running`).
    """
    path = path_of(contender, size, settings, None)
    if contender is not HUB:
        path += f"&n={WARMUP_BYTES // (size + 36) + 1}"
    read_and_leave(port, path, WARMUP_READERS)


def leavers_left_running(srv: Server, contender: ContenderInfo, size: int, settings: Settings) -> int:
    """Readers of the endless stream that take ``WARMUP_BYTES`` and disconnect: how many of
    their sources (the hub: readers) still run ``settings.close_wait`` seconds later (-1:
    unknown)."""
    read_and_leave(srv.port, path_of(contender, size, settings, None), LEAVERS)
    wait_until(lambda: readers_now(contender, srv.stats()) <= 0, settings.close_wait)
    return readers_now(contender, srv.stats())


def check_heads(socks: Sequence[socket.socket], path: str) -> None:
    """Every stalled reader got a 200 and SSE frames (peeked at: nothing is consumed)."""
    for sock in socks:
        head = sock.recv(CLIENT_RCVBUF, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if not head.startswith(b"HTTP/1.1 200") or b"\r\n\r\n" not in head:
            raise AssertionError(f"GET {path}: a stalled reader got {head[:80]!r}")
        body = head.partition(b"\r\n\r\n")[2]
        if b"data: {" not in body:
            raise AssertionError(f"GET {path}: a stalled reader got no SSE frame: {body[:80]!r}")


def kernel_queues(port: int) -> tuple[int, int]:
    """Bytes the kernel holds on ``port``'s connections (``/proc/net/tcp``): the server's
    send queues and the clients' receive queues."""
    send = receive = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        tx_queue, rx_queue = (int(part, 16) for part in fields[4].split(":"))
        if local_port == port and fields[3] == "01":  # ESTABLISHED, the server's side
            send += tx_queue
        elif remote_port == port:
            receive += rx_queue
    return send, receive


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


@dataclass(frozen=True)
class Stable:
    rss_kib: int
    peak_kib: int
    seconds: float
    capped: bool  # still moving when the cap was reached


def wait_stable(pid: int, settings: Settings, progress: Callable[[], int] | None = None) -> Stable:
    """Poll ``VmRSS`` until it moved by less than 1 % over ``settings.window`` seconds and
    ``progress()`` (the events the readers took) did not move at all: the kernel, whose
    buffers are not in the RSS, takes its part before a reader stalls."""
    started = time.monotonic()
    samples: list[tuple[int, int]] = []
    span = round(settings.window / settings.poll)
    while True:
        now, rss = time.monotonic(), rss_kib(pid)
        samples.append((rss, progress() if progress is not None else 0))
        if len(samples) > span:
            old_rss, old_progress = samples[-1 - span]
            if abs(rss - old_rss) <= 0.01 * old_rss and samples[-1][1] == old_progress:
                return Stable(rss, max(rss for rss, _ in samples), now - started, capped=False)
        if now - started >= settings.cap:
            return Stable(rss, max(rss for rss, _ in samples), now - started, capped=True)
        time.sleep(settings.poll)


@dataclass(frozen=True)
class Snapshot:
    """The server's memory at one moment."""

    rss_kib: int
    heap: int  # glibc's bytes in use (-1: unknown)
    transport: int  # bytes in asyncio's write buffers
    connections: int  # open connections, less the one asking
    stats: dict[str, Any]

    def heap_above(self, base: Snapshot) -> int:
        return -1 if self.heap < 0 or base.heap < 0 else self.heap - base.heap


def snapshot(srv: Server, rss: int | None = None) -> Snapshot:
    stats = srv.stats()
    return Snapshot(
        rss if rss is not None else rss_kib(srv.pid),
        int(stats["heap"]),
        int(stats["transport_buffer"]),
        int(stats["connections"]) - 1,
        stats,
    )


def progress_of(srv: Server, contender: ContenderInfo) -> Callable[[], int]:
    key = "store_events_read" if contender is HUB else "events"
    return lambda: int(srv.stats()[key])


def path_of(contender: ContenderInfo, size: int, settings: Settings, send_timeout: float | None) -> str:
    if contender is HAND:
        return f"/hand?size={size}"
    if contender is PLAIN:
        timeout = "none" if send_timeout is None else f"{send_timeout:g}"
        return f"/plain?size={size}&buffer_size={settings.buffer_size}&send_timeout={timeout}"
    return "/hub"


def readers_now(contender: ContenderInfo, stats: dict[str, Any]) -> int:
    """The hub's readers (-1: unknown), or the live sources of the others."""
    return int(stats["hub_readers"] if contender is HUB else stats["live"])


@dataclass(frozen=True)
class Prepared:
    path: str
    baseline: Snapshot
    settled: Stable


def prepare(
    srv: Server, contender: ContenderInfo, size: int, settings: Settings, send_timeout: float | None
) -> Prepared:
    """Start the hub's shared run, warm up, let the warm-up readers go, take the baseline."""
    if contender is HUB:
        events = run_events(size)
        get_json(srv.port, f"/hub/start?size={size}&events={events}")
        if not wait_until(lambda: int(srv.stats()["hub_produced"]) >= events, 60.0, 0.2):
            raise TimeoutError("the hub's run did not record its events within 60 s")
    path = path_of(contender, size, settings, send_timeout)
    warm_up(srv.port, contender, size, settings)
    if not wait_until(lambda: readers_now(contender, srv.stats()) <= 0, 10.0):
        raise AssertionError(f"{contender.label}: the warm-up streams did not end")
    srv.collect_garbage()  # the warm-up streams' cycles count in no figure
    settled = wait_stable(srv.pid, settings)
    return Prepared(path, snapshot(srv, settled.rss_kib), settled)


def open_readers(
    srv: Server, contender: ContenderInfo, prepared: Prepared, count: int
) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(stalled_reader(srv.port, prepared.path))
        started = int(prepared.baseline.stats["started"])

        def attached() -> bool:
            stats = srv.stats()
            if contender is HUB:
                return int(stats["hub_readers"]) >= count or int(stats["hub_readers"]) < 0
            return int(stats["started"]) - started >= count

        if not wait_until(attached, 20.0):
            raise TimeoutError(f"{contender.label}: the stalled readers were not all attached within 20 s")
    except BaseException:
        close_all(socks)
        raise
    return socks


# ----------------------------------------------------------------------------- part 1


@dataclass(frozen=True)
class Stalled:
    contender: ContenderInfo
    size: int
    readers: int
    before: Snapshot
    after: Snapshot
    settled: Stable
    taken: int  # events the stalled readers' sources yielded, or the hub's readers read
    kernel_send: int
    kernel_receive: int
    reached_end: bool  # a hub reader read the whole run: it was not held by the transport
    left_running: int  # sources (hub: readers) still running close_wait s after the clients closed (-1: ?)
    leavers_running: int  # ... of the LEAVERS readers that disconnected mid-stream (-1: not run, or ?)

    @property
    def kib_per_reader(self) -> float:
        return (self.after.rss_kib - self.before.rss_kib) / self.readers


def measure_stalled(contender: ContenderInfo, size: int, settings: Settings) -> Stalled:
    with server(settings, hub_send_timeout=None) as srv:
        prepared = prepare(srv, contender, size, settings, send_timeout=None)
        socks = open_readers(srv, contender, prepared, settings.readers)
        try:
            settled = wait_stable(srv.pid, settings, progress_of(srv, contender))
            srv.collect_garbage()  # nothing to collect, as at the baseline
            after = snapshot(srv)
            kernel_send, kernel_receive = kernel_queues(srv.port)
            check_heads(socks, prepared.path)
        finally:
            close_all(socks)
        wait_until(lambda: readers_now(contender, srv.stats()) <= 0, settings.close_wait)
        left_running = readers_now(contender, srv.stats())
        leavers_running = leavers_left_running(srv, contender, size, settings) if left_running == 0 else -1
    key = "store_events_read" if contender is HUB else "events"
    return Stalled(
        contender,
        size,
        settings.readers,
        prepared.baseline,
        after,
        settled,
        int(after.stats[key]) - int(prepared.baseline.stats[key]),
        kernel_send,
        kernel_receive,
        contender is HUB
        and int(after.stats["store_end_reads"]) > int(prepared.baseline.stats["store_end_reads"]),
        left_running,
        leavers_running,
    )


# ----------------------------------------------------------------------------- part 2


@dataclass(frozen=True)
class Dropped:
    contender: ContenderInfo
    size: int
    readers: int
    before: Snapshot | None = None  # None: this StreamHub takes no send_timeout
    peak_rss_kib: int = 0
    peak_heap: int = -1  # glibc's bytes in use above the baseline, at the most
    dropped_at: Snapshot | None = None  # once every reader is gone and the RSS is stable
    collected: Snapshot | None = None  # ... then after gc.collect()
    closed: Snapshot | None = None  # ... then after the clients closed their sockets
    dropped: int = 0  # readers gone (the hub) or sources ended (the others); -1: unknown
    cancelled: int = 0  # sources cancelled
    drop_seconds: float = 0.0  # from the last reader's connect to the last drop

    @property
    def supported(self) -> bool:
        return self.before is not None


def measure_drop(contender: ContenderInfo, size: int, settings: Settings) -> Dropped:
    timeout = settings.send_timeout
    with server(settings, hub_send_timeout=timeout if contender is HUB else None) as srv:
        if contender is HUB and srv.stats()["hub_send_timeout"] == "unsupported":
            return Dropped(contender, size, settings.readers)
        prepared = prepare(srv, contender, size, settings, send_timeout=timeout)
        base = prepared.baseline
        socks = open_readers(srv, contender, prepared, settings.readers)
        connected = time.monotonic()
        try:
            peak_rss, peak_heap = base.rss_kib, -1
            deadline = connected + timeout + settings.cap
            while True:
                now = snapshot(srv)
                peak_rss, peak_heap = max(peak_rss, now.rss_kib), max(peak_heap, now.heap_above(base))
                if readers_now(contender, now.stats) <= 0 or time.monotonic() > deadline:
                    break
                time.sleep(min(settings.poll, 0.25))
            drop_seconds = time.monotonic() - connected
            settled = wait_stable(srv.pid, settings)
            dropped_at = snapshot(srv, settled.rss_kib)
            srv.collect_garbage()
            collected = snapshot(srv)
            check_heads(socks, prepared.path)
        finally:
            close_all(socks)
        wait_until(lambda: snapshot(srv).connections == 0, 10.0)
        srv.collect_garbage()
        closed = snapshot(srv)
    left = readers_now(contender, dropped_at.stats)
    return Dropped(
        contender,
        size,
        settings.readers,
        before=base,
        peak_rss_kib=max(peak_rss, settled.peak_kib),
        peak_heap=peak_heap,
        dropped_at=dropped_at,
        collected=collected,
        closed=closed,
        dropped=settings.readers - left if left >= 0 else -1,
        cancelled=int(dropped_at.stats["cancelled"]) - int(base.stats["cancelled"]),
        drop_seconds=drop_seconds,
    )


# ----------------------------------------------------------------------------- report


def bound_kib(settings: Settings) -> float:
    return 3 * settings.buffer_size / KIB + FIXED_OVERHEAD_KIB


def mib(kib: float) -> str:
    return f"{kib / KIB:.1f}"


def sndbuf_text(settings: Settings) -> str:
    return f"{settings.server_sndbuf // KIB} KiB" if settings.server_sndbuf else "autotuned"


def per_reader(total_bytes: int, readers: int) -> str:
    """KiB per reader of ``total_bytes`` ("?" if unknown)."""
    return "?" if total_bytes < 0 else f"{total_bytes / KIB / readers:,.0f}"


def report_stalled(results: Sequence[Stalled], settings: Settings) -> str:
    bound = bound_kib(settings)
    rows = []
    for r in results:
        n = r.readers
        rows.append(
            [
                r.contender.label,
                f"{r.size:,} B",
                mib(r.before.rss_kib),
                mib(r.after.rss_kib) + (" (moving)" if r.settled.capped else ""),
                f"{r.kib_per_reader:,.0f}",
                per_reader(r.after.heap_above(r.before), n),
                per_reader(r.after.transport, n),
                f"{r.taken / n:,.0f}",
                f"{r.kernel_send / KIB / n:,.0f} + {r.kernel_receive / KIB / n:,.0f}",
                ("?" if r.left_running < 0 else f"{r.left_running}/{n}")
                + (", -" if r.leavers_running < 0 else f", {r.leavers_running}/{LEAVERS}"),
            ]
        )
    lines = [
        table(
            f"Stalled readers: server memory per reader that never reads ({settings.readers} readers, "
            f"SO_RCVBUF {CLIENT_RCVBUF}, server SO_SNDBUF {sndbuf_text(settings)}, "
            f"buffer_size {settings.buffer_size // KIB} KiB, send_timeout=None)",
            [
                "contender",
                "event",
                "RSS before (MiB)",
                "RSS stalled (MiB)",
                "RSS KiB/reader",
                "malloc'd KiB/reader",
                "of which transport buffers",
                "events taken/reader",
                "kernel KiB/reader (send + recv queues)",
                f"running {settings.close_wait:g} s after close: stalled, left mid-stream",
            ],
            rows,
        ),
        "RSS KiB/reader is (RSS stalled - RSS before) / readers; malloc'd: the same in glibc's bytes in "
        "use (mallinfo2: the byte buffers, not Python's small objects); transport buffers: "
        "asyncio's write buffers under uvicorn; the kernel's queues are not in the RSS.",
        "",
        targets_heading(settings.quick),
        "",
    ]
    for r in results:
        name = f"{r.contender.label}, {r.size:,} B events: RSS KiB per stalled reader"
        line = verdict(name, r.kib_per_reader, bound, at_least=False)
        line += f" = 3 x buffer_size + {FIXED_OVERHEAD_KIB} KiB"
        if r.kib_per_reader > bound:
            line += f"; {r.kib_per_reader / bound:.1f}x the bound"
        if r.settled.capped:
            line += f" (still moving after {settings.cap:g} s)"
        if r.reached_end:
            line += " (WARNING: a reader read the whole run, so it was not stalled: raise run_events())"
        lines.append(line)
        what = "hub readers" if r.contender is HUB else "sources"
        if r.left_running > 0:
            lines.append(
                f"- FAIL: {r.contender.label}, {r.size:,} B events: {r.left_running}/{r.readers} {what} "
                f"still running {settings.close_wait:g} s after their stalled clients closed their sockets"
            )
        if r.leavers_running > 0:
            lines.append(
                f"- FAIL: {r.contender.label}, {r.size:,} B events: {r.leavers_running}/{LEAVERS} {what} "
                f"still running {settings.close_wait:g} s after their clients disconnected mid-stream "
                "(having read 256 KiB)"
            )
    lines.append("")
    return "\n".join(lines)


def report_drops(results: Sequence[Dropped], settings: Settings) -> str:
    rows = []
    notes = []
    for r in results:
        if r.before is None or r.dropped_at is None or r.collected is None or r.closed is None:
            rows.append([r.contender.label, f"{r.size:,} B", "not supported", *["-"] * 5])
            notes.append(
                f"- {r.contender.label}, {r.size:,} B events: not supported: this StreamHub(...) takes no "
                "send_timeout"
            )
            continue
        n, base = r.readers, r.before
        rss = [r.peak_rss_kib, r.dropped_at.rss_kib, r.closed.rss_kib]
        heap = [r.peak_heap, *(s.heap_above(base) for s in (r.dropped_at, r.collected, r.closed))]
        rows.append(
            [
                r.contender.label,
                f"{r.size:,} B",
                f"{'?' if r.dropped < 0 else r.dropped}/{n} in {r.drop_seconds:.1f} s",
                "- (shared run)" if r.contender is HUB else f"{r.cancelled}",
                " / ".join(f"{(kib - base.rss_kib) / n:,.0f}" for kib in rss),
                " / ".join(per_reader(value, n) for value in heap),
                f"{r.dropped_at.connections}",
                per_reader(r.dropped_at.transport, n),
            ]
        )
        left = r.dropped_at.heap_above(base)
        # What the server's own connection keeps (uvicorn flushes to a client that never reads
        # until it closes) is the server's, not the stream's: the stream's part must be gone.
        own = left - r.dropped_at.transport
        passed = r.dropped == n and own <= DROP_RESIDUE_KIB * KIB * n
        notes.append(
            f"- {'PASS' if passed else 'FAIL'}: {r.contender.label}, {r.size:,} B events: {r.dropped}/{n} "
            f"dropped; still held per dropped reader: {per_reader(left, n)} KiB malloc'd "
            f"({per_reader(r.collected.heap_above(base), n)} after gc.collect()), of which "
            f"{per_reader(r.dropped_at.transport, n)} KiB in the transport buffers of the "
            f"{r.dropped_at.connections} connections the server keeps open, so "
            f"{per_reader(own, n)} KiB of the stream's own "
            f"(target: all dropped, <= {DROP_RESIDUE_KIB} KiB of the stream's own per reader)"
        )
    out = [
        table(
            f"Dropping stalled readers: send_timeout={settings.send_timeout:g} s ({settings.readers} readers)",
            [
                "contender",
                "event",
                "dropped",
                "sources cancelled",
                "RSS KiB/reader: stalled / dropped / clients closed",
                "malloc'd KiB/reader: stalled / dropped / gc.collect() / clients closed",
                "connections left open",
                "their transport buffers, KiB/reader",
            ],
            rows,
        ),
        "Each figure is above the baseline (no reader), per reader. glibc keeps the heap it frees, "
        "so the RSS stays near its peak: what the server still holds is the malloc'd column. A "
        "dropped stream's own buffers wait for the cyclic garbage collector (gc.collect()); the "
        "connections stay open, with their transport buffers, until the clients close them.",
        "",
        targets_heading(settings.quick),
        "",
        *notes,
        f"- {HAND.label}: has no send_timeout; not measured here.",
        "",
    ]
    return "\n".join(out)


def run(contenders: Sequence[ContenderInfo], settings: Settings, *, drops: bool) -> list[str]:
    raise_open_files_limit(settings.readers + 1024)
    stalled: list[Stalled] = []
    for size in settings.sizes:
        for contender in contenders:
            result = measure_stalled(contender, size, settings)
            stalled.append(result)
            print(
                f"  {contender.label}, {size} B: {result.kib_per_reader:,.1f} KiB/reader "
                f"(settled in {result.settled.seconds:.1f} s)",
                file=sys.stderr,
            )
    reports = [describe_server(stalled[0].after.stats), report_stalled(stalled, settings)] if stalled else []
    dropped: list[Dropped] = []
    if drops:
        for size in settings.sizes:
            for contender in contenders:
                if contender is HAND:
                    continue
                drop = measure_drop(contender, size, settings)
                dropped.append(drop)
                print(
                    f"  drop: {contender.label}, {size} B: "
                    + (f"{drop.dropped}/{drop.readers} dropped" if drop.supported else "not supported"),
                    file=sys.stderr,
                )
    if dropped:
        reports.append(report_drops(dropped, settings))
    return reports


def describe_server(stats: dict[str, Any]) -> str:
    """What the server ran: its HTTP implementation, where streamflow came from, what
    ``StreamHub`` takes."""
    takes = {name: stats[f"hub_{name}"] != "unsupported" for name in ("send_timeout", "buffer_size")}
    return (
        f"Server: uvicorn on asyncio, {stats['http']}; streamflow from {stats['streamflow']}; StreamHub "
        + ", ".join(f"{'takes' if ok else 'does not take'} {name}" for name, ok in takes.items())
        + ". The client is this process."
    )


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers separated by commas, not {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None, *, header: bool = True) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (10 readers, shorter waits)")
    parser.add_argument("--readers", type=int, help="stalled readers per measurement (default 50)")
    parser.add_argument("--sizes", type=parse_sizes, help="event sizes in bytes (default 100,4096)")
    parser.add_argument(
        "--only", nargs="+", choices=[c.key for c in CONTENDERS], help="run only these contenders"
    )
    parser.add_argument("--buffer-size", type=int, help="buffer_size in bytes (default 65536)")
    parser.add_argument(
        "--server-sndbuf",
        type=int,
        help="SO_SNDBUF of the server's sockets (default 65536; 0: the kernel's default, autotuned up to "
        "net.ipv4.tcp_wmem: megabytes per stalled reader, much longer to fill)",
    )
    parser.add_argument("--send-timeout", type=float, help="part 2's send_timeout in seconds (default 2)")
    parser.add_argument("--no-drop", action="store_true", help="skip part 2 (send_timeout)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hub-send-timeout", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_app(args.hub_send_timeout, args.buffer_size or DEFAULT_BUFFER_SIZE, args.server_sndbuf or 0)
        return 0
    settings = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.readers:
        changes["readers"] = args.readers
    if args.sizes:
        changes["sizes"] = args.sizes
    if args.send_timeout:
        changes["send_timeout"] = args.send_timeout
    if args.buffer_size:
        changes["buffer_size"] = args.buffer_size
    if args.server_sndbuf is not None:
        changes["server_sndbuf"] = args.server_sndbuf
    settings = dataclasses.replace(settings, **changes)
    if header:
        print(f"Machine: {machine()}\n")
    noise = Noise()
    started = time.perf_counter()
    contenders = [c for c in CONTENDERS if not args.only or c.key in args.only]
    for report in run(contenders, settings, drops=not args.no_drop):
        print(report)
    print(f"This benchmark took {time.perf_counter() - started:.0f} s.")
    print(f"During this benchmark, {noise.report()}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
