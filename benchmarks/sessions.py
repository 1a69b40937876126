"""MemoryStore bookkeeping against the number of live sessions.

Creating a session, starting a run and finishing it must not cost more when many sessions
are live: expiry looks at the least recently used sessions only (O(1) amortised). The
audit's code scanned every session: 0.04 ms at 1,000, 1.4 ms at 20,000 and 10-14 ms at
100,000 live sessions, on the event loop.

Run ``python benchmarks/sessions.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from _common import machine, table, targets_heading, verdict

from streamflow.stores import MemoryStore


async def cost(live: int, samples: int) -> tuple[float, float]:
    """Median milliseconds of (create_session) and of (create_session + create_run + finish)
    with ``live`` sessions already live."""
    store = MemoryStore()
    for i in range(live):
        await store.create_session(f"s{i}")
    create: list[float] = []
    cycle: list[float] = []
    for i in range(samples):
        start = time.perf_counter()
        await store.create_session(f"n{i}")
        middle = time.perf_counter()
        run = await store.create_run(f"n{i}", producer="p", lease=30)
        await store.finish(run, "finished")
        end = time.perf_counter()
        create.append(middle - start)
        cycle.append(end - start)
    return statistics.median(create) * 1e3, statistics.median(cycle) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (fewer sessions)")
    args = parser.parse_args()
    sizes = (1_000, 20_000) if args.quick else (1_000, 20_000, 100_000)
    samples = 200 if args.quick else 2_000
    print(f"# MemoryStore bookkeeping\n\n{machine()}\n")
    rows: list[list[str]] = []
    results: dict[int, tuple[float, float]] = {}
    for live in sizes:
        results[live] = anyio.run(cost, live, samples)
        create, cycle = results[live]
        rows.append([f"{live:,}", f"{create:.4f}", f"{cycle:.4f}"])
    print(
        table(
            f"Median of {samples:,} operations (ms)",
            ["live sessions", "create_session", "create_session + create_run + finish"],
            rows,
        )
    )
    print(targets_heading(args.quick))
    print(
        verdict(
            f"create_session with {sizes[-1]:,} live sessions (ms)",
            results[sizes[-1]][0],
            0.1,
            at_least=False,
        )
    )
    ratio = results[sizes[-1]][1] / results[sizes[0]][1]
    print(verdict(f"cycle at {sizes[-1]:,} / cycle at {sizes[0]:,} live sessions", ratio, 2, at_least=False))


if __name__ == "__main__":
    main()
