"""The benchmark scripts still run and still check what they measure (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmarks_run_and_their_contenders_send_the_right_events() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for contender in ("hand-rolled", "streamflow", "sse-starlette", "fastapi.sse"):
        assert contender in result.stdout
