"""Run every streamflow benchmark and print their tables (Markdown).

    python benchmarks/run_all.py            # the full run behind docs/performance.md
    python benchmarks/run_all.py --quick    # a smoke run, a minute or two
    python benchmarks/run_all.py --capacity # also capacity.py: ~10 min more (2 with --quick)

Each benchmark also runs alone: ``python benchmarks/encode.py``, ``stream.py``,
``memory.py``, ``hub.py``, ``stalled.py``, ``capacity.py`` (each with ``--quick``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence

import encode
import hub
import memory
import stalled
import stream
from _common import machine


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run of every benchmark")
    parser.add_argument("--capacity", action="store_true", help="also run capacity.py, the longest by far")
    args = parser.parse_args(argv)
    passed = ["--quick"] if args.quick else []
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["run_all", *argv])
    print(f"## streamflow benchmarks\n\nCommand: `{command}`\n\nMachine: {machine()}\n")
    started = time.perf_counter()
    for benchmark in (encode.main, stream.main, memory.main):
        status = benchmark(passed, header=False)
        if status:
            return status
    status = hub.main(passed)
    if status:
        return status
    status = stalled.main(passed, header=False)
    if status:
        return status
    if args.capacity:
        import capacity  # FastAPI, uvicorn and the hub: only when asked for

        status = capacity.main(passed, header=False)
        if status:
            return status
    print(f"All benchmarks took {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
