"""End-to-end SSE throughput and latency through a real uvicorn server on 127.0.0.1.

For each contender a uvicorn subprocess serves ``_server.py``'s app; this process is
the client, on the other core. It reads with a blocking socket and a minimal chunked
decoder, counts events by their terminating blank line and reads in batches (see
``NAP_S``), so it is far from being the bottleneck: the table shows the server at ~100 %
of a core and the client well below.

- **Throughput**: ``GET /fast?n=N``, a source yielding ``N`` deltas without awaiting.
  events/s is ``N`` over the time from sending the request to receiving the last event;
  the best of 5 runs is reported, after one warm-up run. The runs go round the
  contenders, whose servers all stay up (idle when not measured).
- **Latency**: ``GET /slow``, one delta every 10 ms, each carrying the server's
  ``time.perf_counter_ns()`` from just before the source yields it; latency is the
  client's ``perf_counter_ns()`` right after the ``recv`` that completed the event minus
  that stamp (both are ``CLOCK_MONOTONIC``, one clock for the whole machine).

Run ``python benchmarks/stream.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from _common import (
    CONTENDERS,
    HAND_ROLLED,
    STREAMFLOW,
    Contender,
    Dechunker,
    EventCounter,
    EventSplitter,
    Noise,
    Server,
    event_data,
    machine,
    make_tokens,
    percentile,
    raise_open_files_limit,
    read_head,
    request,
    serve,
    table,
    targets_heading,
    verdict,
)

TARGET_THROUGHPUT_RATIO = 2.0
# "Adds no latency": a stream that held events back (to batch them, or until a timer)
# would add milliseconds; these allowances are measurement noise on loopback.
P50_ALLOWANCE_US = 100.0
P99_ALLOWANCE_US = 1000.0
END_ALLOWANCE_S = 0.1  # the response ends right after its last event
END_GRACE_S = 2.0  # how long to wait for the end of a response after its last event
# When a read brings less than this, the client naps before the next one so that events
# pile up in the socket: it then reads them in batches, at a fraction of a core, instead
# of waking once per event. Half a millisecond of any contender's output is a few KiB,
# far less than the socket buffers hold, so no server ever waits for the client.
SMALL_READ = 16384
NAP_S = 0.0005
_STAMP = re.compile(r"ts=(\d+) ")


@dataclass(frozen=True)
class Settings:
    events: int
    repeats: int
    warmup_events: int
    slow_events: int
    interval: float
    timeout: float
    quick: bool = False


FULL = Settings(events=200_000, repeats=5, warmup_events=20_000, slow_events=200, interval=0.01, timeout=300)
QUICK = Settings(
    events=10_000, repeats=1, warmup_events=1_000, slow_events=30, interval=0.01, timeout=60, quick=True
)


@dataclass(frozen=True)
class ThroughputRun:
    events: int  # deltas received
    seconds: float  # request sent -> last event received
    writes: int  # HTTP chunks, i.e. ASGI body messages
    server_cpu: float  # seconds
    client_cpu: float  # seconds
    end_lag: float | None  # last event -> end of the response, None if it did not end in time

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass(frozen=True)
class LatencyRun:
    latencies_us: list[float]
    end_lag: float | None


def measure_throughput(server: Server, events: int, settings: Settings) -> ThroughputRun:
    """One ``/fast`` response, read to its last event, then to its end (within a grace)."""
    contender = server.contender
    expected = events + contender.extra_events
    deadline = time.perf_counter() + settings.timeout
    server_cpu = server.cpu_seconds()
    client_cpu = time.process_time()
    started = time.perf_counter()
    with read_head(request(server.port, f"/fast?n={events}", timeout=settings.timeout)) as response:
        _check_head(contender, response.status, response.headers)
        dechunker, counter = Dechunker(), EventCounter(contender.delimiter)
        first = dechunker.feed(response.body_start)
        counter.feed(first)
        sample = bytearray(first)
        while counter.count < expected and not dechunker.done:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{contender.label}: no complete response within {settings.timeout}s")
            data = response.sock.recv(1 << 18)
            if not data:
                break
            payload = dechunker.feed(data)
            counter.feed(payload)
            if len(sample) < 65536:
                sample += payload
            if len(data) < SMALL_READ and counter.count < expected:
                time.sleep(NAP_S)
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu
        if counter.count != expected:
            raise AssertionError(f"{contender.label}: {counter.count} events, expected {expected}")
        _check_sample(contender, bytes(sample))
        end_lag = _wait_for_end(response.sock, dechunker)
    return ThroughputRun(events, elapsed, dechunker.chunks, server_cpu, client_cpu, end_lag)


def measure_latency(server: Server, settings: Settings) -> LatencyRun:
    """One ``/slow`` response: the delay of every event from the server's yield to receipt."""
    contender = server.contender
    deadline = time.perf_counter() + settings.timeout
    path = f"/slow?n={settings.slow_events}&interval={settings.interval}"
    latencies: list[float] = []
    with read_head(request(server.port, path, timeout=settings.timeout)) as response:
        received_ns = time.perf_counter_ns()
        _check_head(contender, response.status, response.headers)
        dechunker, splitter = Dechunker(), EventSplitter(contender.delimiter)
        data = response.body_start
        while True:
            for event in splitter.feed(dechunker.feed(data)):
                item = json.loads(event_data(event))
                if item["type"] == "delta":
                    stamp = _STAMP.match(item["value"])
                    if stamp is None:
                        raise AssertionError(f"{contender.label}: no timestamp in {item!r}")
                    latencies.append((received_ns - int(stamp[1])) / 1000)
            if len(latencies) == settings.slow_events or dechunker.done:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{contender.label}: no complete response within {settings.timeout}s")
            data = response.sock.recv(65536)
            received_ns = time.perf_counter_ns()
            if not data:
                break
        if len(latencies) != settings.slow_events:
            raise AssertionError(
                f"{contender.label}: {len(latencies)} events, expected {settings.slow_events}"
            )
        end_lag = _wait_for_end(response.sock, dechunker)
    return LatencyRun(latencies, end_lag)


def _check_head(contender: Contender, status: int, headers: dict[str, str]) -> None:
    if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
        raise AssertionError(f"{contender.label}: status {status}, headers {headers}")
    if headers.get("transfer-encoding") != "chunked":
        raise AssertionError(f"{contender.label}: expected a chunked response, got {headers}")


def _check_sample(contender: Contender, sample: bytes) -> None:
    """The first events must be the source's first tokens as ``{"type":"delta",...}``."""
    tokens = make_tokens(1000)
    *events, _ = sample.split(contender.delimiter)
    for index, event in enumerate(events[:1000]):
        item = json.loads(event_data(event))
        if item != {"type": "delta", "value": tokens[index]}:
            raise AssertionError(f"{contender.label}: event {index} is {item!r}")


def _wait_for_end(sock: socket.socket, dechunker: Dechunker) -> float | None:
    """Seconds from now until the response's last chunk, or None after ``END_GRACE_S``."""
    started = time.perf_counter()
    sock.settimeout(END_GRACE_S)
    try:
        while not dechunker.done:
            if time.perf_counter() - started > END_GRACE_S:
                return None
            data = sock.recv(1 << 16)
            if not data:
                break
            dechunker.feed(data)
    except TimeoutError:
        return None
    return time.perf_counter() - started if dechunker.done else None


def run(contenders: Sequence[Contender], settings: Settings) -> str:
    """Every contender's server runs at once (idle while another is measured) and the
    repeats go round the contenders, so a burst of other load cannot hit just one."""
    raise_open_files_limit()
    runs: dict[str, list[ThroughputRun]] = {c.key: [] for c in contenders}
    latency: dict[str, LatencyRun] = {}
    with ExitStack() as stack:
        servers = [stack.enter_context(serve(contender)) for contender in contenders]
        for server in servers:
            runs[server.contender.key].append(measure_throughput(server, settings.warmup_events, settings))
        for _ in range(settings.repeats):
            for server in servers:
                runs[server.contender.key].append(measure_throughput(server, settings.events, settings))
        for server in servers:
            latency[server.contender.key] = measure_latency(server, settings)
    throughput: dict[str, ThroughputRun] = {}
    end_lags: dict[str, float | None] = {}
    for contender in contenders:
        timed = runs[contender.key][1:]  # after the warm-up
        throughput[contender.key] = best = max(timed, key=lambda r: r.rate)
        lags = [r.end_lag for r in runs[contender.key]] + [latency[contender.key].end_lag]
        end_lags[contender.key] = None if None in lags else max(lag for lag in lags if lag is not None)
        print(f"  {contender.label}: {best.rate:,.0f} events/s", file=sys.stderr)
    return report(contenders, settings, throughput, latency, end_lags)


def _end(lag: float | None) -> str:
    return f"> {END_GRACE_S:g} s (stalled)" if lag is None else f"{lag * 1000:.1f} ms"


def report(
    contenders: Sequence[Contender],
    settings: Settings,
    throughput: dict[str, ThroughputRun],
    latency: dict[str, LatencyRun],
    end_lags: dict[str, float | None],
) -> str:
    base = throughput.get(HAND_ROLLED.key)
    rows = []
    for contender in contenders:
        r = throughput[contender.key]
        rows.append(
            [
                contender.label,
                f"{r.rate:,.0f}",
                f"{r.rate / base.rate:.2f}x" if base else "-",
                f"{r.server_cpu / r.events * 1e6:.1f}",
                f"{r.server_cpu / r.seconds:.0%}",
                f"{r.events / max(r.writes, 1):,.1f}",
                f"{r.client_cpu / r.seconds:.0%}",
                _end(end_lags[contender.key]),
            ]
        )
    out = [
        table(
            f"Throughput: {settings.events:,} deltas from a source that never awaits "
            f"(best of {settings.repeats})",
            [
                "contender",
                "events/s",
                "vs hand-rolled",
                "server CPU µs/event",
                "server CPU",
                "events/write",
                "client CPU",
                "last event -> end (worst)",
            ],
            rows,
        )
    ]

    base_latency = latency.get(HAND_ROLLED.key)
    rows = []
    for contender in contenders:
        values = latency[contender.key].latencies_us
        p50, p99 = percentile(values, 0.50), percentile(values, 0.99)
        if base_latency:
            delta = (
                f"{p50 - percentile(base_latency.latencies_us, 0.50):+.0f} / "
                f"{p99 - percentile(base_latency.latencies_us, 0.99):+.0f}"
            )
        else:
            delta = "-"
        rows.append(
            [
                contender.label,
                f"{p50:.0f}",
                f"{p99:.0f}",
                f"{max(values):.0f}",
                delta,
            ]
        )
    out.append(
        table(
            f"Latency: {settings.slow_events} deltas, one every {settings.interval * 1000:g} ms "
            "(source yield -> client recv, µs)",
            ["contender", "p50", "p99", "max", "p50 / p99 vs hand-rolled"],
            rows,
        )
    )

    if base and STREAMFLOW.key in throughput and base_latency:
        ours = throughput[STREAMFLOW.key]
        ours_latency = latency[STREAMFLOW.key].latencies_us
        added_p50, added_p99 = (
            percentile(ours_latency, q) - percentile(base_latency.latencies_us, q) for q in (0.50, 0.99)
        )
        ours_end = end_lags[STREAMFLOW.key]
        out += [
            targets_heading(settings.quick),
            "",
            verdict(
                "streamflow throughput / hand-rolled",
                ours.rate / base.rate,
                TARGET_THROUGHPUT_RATIO,
                at_least=True,
            ),
            verdict(
                "streamflow p50 latency - hand-rolled p50 (µs)", added_p50, P50_ALLOWANCE_US, at_least=False
            ),
            verdict(
                "streamflow p99 latency - hand-rolled p99 (µs)", added_p99, P99_ALLOWANCE_US, at_least=False
            ),
            verdict(
                "streamflow: last event -> end of the response, worst run (s)",
                END_GRACE_S if ours_end is None else ours_end,
                END_ALLOWANCE_S,
                at_least=False,
            ),
            "",
        ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None, *, header: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small N, one repeat)")
    parser.add_argument("--events", type=int, help="deltas per throughput run")
    parser.add_argument(
        "--only", nargs="+", choices=[c.key for c in CONTENDERS], help="run only these contenders"
    )
    args = parser.parse_args(argv)
    if header:
        print(f"Machine: {machine()}\n")
    noise = Noise()
    settings = QUICK if args.quick else FULL
    if args.events:
        settings = dataclasses.replace(settings, events=args.events)
    contenders = [c for c in CONTENDERS if not args.only or c.key in args.only]
    print(run(contenders, settings))
    print(f"During this benchmark, {noise.report()}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
