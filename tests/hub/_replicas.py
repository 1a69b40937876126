"""Replicas of ``tests/hub/_redis_replica_app.py``: uvicorn subprocesses sharing one Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_replica(redis_url: str, prefix: str, log: Path, **env: str) -> Replica:
    """Start a replica (``env``: e.g. ``STREAMFLOW_LEASE="1.5"``, see the app's doc) and
    wait until it answers ``/health``."""
    port = free_port()
    environment = {
        **os.environ,
        "STREAMFLOW_REDIS_URL": redis_url,
        "STREAMFLOW_REDIS_PREFIX": prefix,
        "STREAMFLOW_LEASE": "1.5",
        "STREAMFLOW_POLL": "0.2",
        **env,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [sys.executable, "-m", "uvicorn", "tests.hub._redis_replica_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on", "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
    replica = Replica(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"replica {log.stem} exited: {replica.output()}")
        try:
            if httpx.get(f"{replica.url}/health", timeout=1).status_code == 200:
                return replica
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            replica.stop()
            raise RuntimeError(f"replica {log.stem} did not start: {replica.output()}")
        time.sleep(0.05)
