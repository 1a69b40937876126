"""Server memory per open, idle SSE stream.

For each contender a fresh uvicorn subprocess serves ``GET /idle`` (one delta, then a
source that awaits forever). After a warm-up, this process opens ``--streams``
concurrent streams, waits until every one has received its first event, lets the
server settle and reads its resident set size (``VmRSS`` of ``/proc/PID/status``).
KiB per stream is (RSS with the streams open - RSS before) / streams.

Run ``python benchmarks/memory.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from _common import (
    CONTENDERS,
    HAND_ROLLED,
    STREAMFLOW,
    Contender,
    Dechunker,
    Noise,
    Server,
    machine,
    raise_open_files_limit,
    read_head,
    request,
    serve,
    table,
    targets_heading,
    verdict,
)

WARMUP_STREAMS = 20
SETTLE_S = 0.5


@dataclass(frozen=True)
class Settings:
    streams: int
    timeout: float
    quick: bool = False


FULL = Settings(streams=1000, timeout=60)
QUICK = Settings(streams=200, timeout=30, quick=True)


@dataclass(frozen=True)
class Measurement:
    streams: int
    before_kib: int
    after_kib: int

    @property
    def kib_per_stream(self) -> float:
        return (self.after_kib - self.before_kib) / self.streams


@contextmanager
def open_streams(server: Server, count: int, timeout: float) -> Iterator[list[socket.socket]]:
    """``count`` idle streams, each past its first event; all closed on exit."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = request(server.port, "/idle", timeout=timeout)
            stack.callback(sock.close)
            socks.append(sock)
        for sock in socks:  # the server sets them all up concurrently meanwhile
            _read_first_event(sock, server.contender)
        yield socks


def _read_first_event(sock: socket.socket, contender: Contender) -> None:
    response = read_head(sock)
    if response.status != 200:
        raise AssertionError(f"{contender.label}: status {response.status}")
    dechunker = Dechunker()
    payload = dechunker.feed(response.body_start)
    while contender.delimiter not in payload:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"{contender.label}: the stream ended before its first event")
        payload += dechunker.feed(data)


def measure(server: Server, settings: Settings) -> Measurement:
    with open_streams(server, WARMUP_STREAMS, settings.timeout):
        pass  # the first streams load code and fill caches that every later one reuses
    time.sleep(SETTLE_S)
    before = server.rss_kib()
    with open_streams(server, settings.streams, settings.timeout):
        time.sleep(SETTLE_S)
        after = server.rss_kib()
    return Measurement(settings.streams, before, after)


def run(contenders: Sequence[Contender], settings: Settings) -> str:
    raise_open_files_limit(settings.streams + 1024)
    results: dict[str, Measurement] = {}
    for contender in contenders:
        with serve(contender) as server:
            results[contender.key] = measure(server, settings)
        print(f"  {contender.label}: {results[contender.key].kib_per_stream:.1f} KiB/stream", file=sys.stderr)
    return report(contenders, settings, results)


def report(contenders: Sequence[Contender], settings: Settings, results: dict[str, Measurement]) -> str:
    base = results.get(HAND_ROLLED.key)
    rows = []
    for contender in contenders:
        m = results[contender.key]
        rows.append(
            [
                contender.label,
                f"{m.before_kib / 1024:.1f}",
                f"{m.after_kib / 1024:.1f}",
                f"{m.kib_per_stream:.1f}",
                f"{m.kib_per_stream / base.kib_per_stream:.2f}x" if base else "-",
            ]
        )
    out = [
        table(
            f"Memory: server RSS with {settings.streams:,} open idle streams",
            ["contender", "RSS before (MiB)", "RSS with streams (MiB)", "KiB/stream", "vs hand-rolled"],
            rows,
        )
    ]
    if base and STREAMFLOW.key in results:
        out += [
            targets_heading(settings.quick),
            "",
            verdict(
                "streamflow KiB/stream / hand-rolled KiB/stream",
                results[STREAMFLOW.key].kib_per_stream / base.kib_per_stream,
                1.0,
                at_least=False,
            ),
            "",
        ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None, *, header: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (fewer streams)")
    parser.add_argument("--streams", type=int, help="concurrent streams per contender")
    parser.add_argument(
        "--only", nargs="+", choices=[c.key for c in CONTENDERS], help="run only these contenders"
    )
    args = parser.parse_args(argv)
    if header:
        print(f"Machine: {machine()}\n")
    noise = Noise()
    settings = QUICK if args.quick else FULL
    if args.streams:
        settings = dataclasses.replace(settings, streams=args.streams)
    contenders = [c for c in CONTENDERS if not args.only or c.key in args.only]
    print(run(contenders, settings))
    print(f"During this benchmark, {noise.report()}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
