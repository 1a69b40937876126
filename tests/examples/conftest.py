"""Fixtures for the end-to-end tests of ``examples/``.

Each example runs in its own process exactly as a user starts it
(``python examples/<name>/app.py``), listening on a free port of the loopback interface
(``--port 0``, or its environment variable), and is stopped when the session ends.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TypeAlias

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STARTUP_TIMEOUT = 20.0

ExampleServer: TypeAlias = tuple[str, Path]
"""A running example: the base URL it printed, and the file with its output (stdout and stderr)."""

StartExample: TypeAlias = Callable[..., ExampleServer]


@pytest.fixture(scope="session")
def start_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartExample]:
    """``start_example(script, *args, env=..., banner=...)``: run ``examples/<script>`` and
    wait until the line starting with ``banner`` and a URL is printed and the URL answers."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(script: str, *args: str, banner: str, env: Mapping[str, str] | None = None) -> ExampleServer:
        log = tmp_path_factory.mktemp("example") / "output.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-u", str(EXAMPLES / script), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        processes.append(process)
        url = _wait_for_url(process, log, banner)
        _wait_until_serving(process, log, url)
        return url, log

    yield start

    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def load_example() -> Callable[[str], ModuleType]:
    """``load_example("demo/agent.py")``: import an example's module from its file."""
    cache: dict[str, ModuleType] = {}

    def load(relative: str) -> ModuleType:
        if relative not in cache:
            name = "example_" + re.sub(r"\W", "_", relative.removesuffix(".py"))
            spec = importlib.util.spec_from_file_location(name, EXAMPLES / relative)
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up while it runs
            spec.loader.exec_module(module)
            cache[relative] = module
        return cache[relative]

    return load


def _wait_for_url(process: subprocess.Popen[bytes], log: Path, banner: str) -> str:
    pattern = re.compile(rf"^{re.escape(banner)}(http://\S+)", re.MULTILINE)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if found := pattern.search(output):
            return found[1]
        if process.poll() is not None:
            pytest.fail(f"the example exited with {process.returncode} before printing its URL:\n{output}")
        time.sleep(0.05)
    pytest.fail(f"the example printed no {banner!r} line in {STARTUP_TIMEOUT}s:\n{log.read_text()}")


def _wait_until_serving(process: subprocess.Popen[bytes], log: Path, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            if process.poll() is not None:
                pytest.fail(f"the example exited with {process.returncode}:\n{log.read_text()}")
            time.sleep(0.05)
        else:
            return
    pytest.fail(f"the example printed {url} but did not answer there:\n{log.read_text()}")
