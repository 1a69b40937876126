"""The runnable example of every adapter (docs/adapters.md) serves a well-formed stream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamflow import Delta, Done, Error, Event, StepEnd, StepStart, ToolCall, ToolResult
from streamflow.client import aiter_events
from tests.conftest import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "burr_app.py": ("POST", "/response/conversation-1", {"json": {"prompt": "Hello there"}}),
    "adk_app.py": ("GET", "/chat", {"params": {"q": "Weather in Paris?"}}),
    "agno_app.py": ("POST", "/workflow/query", {"json": {"message": "Revenue last month?"}}),
    "langgraph_app.py": ("GET", "/chat", {"params": {"q": "Weather in Paris?"}}),
}


@pytest.fixture(params=sorted(CASES))
def example(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    name: str = request.param
    port = free_port()
    env = {**os.environ, "PORT": str(port), "AGNO_TELEMETRY": "false", "LANGSMITH_TRACING": "false"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "adapters" / name)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    stderr = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"{name} exited: {stderr}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield name, url
    finally:
        process.terminate()
        process.wait(10)


async def test_example_streams_a_well_formed_run(example: tuple[str, str]) -> None:
    name, url = example
    method, path, kwargs = CASES[name]
    events: list[Event] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(method, url + path, **kwargs) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = [event async for event in aiter_events(response.aiter_bytes())]

    assert events[-1] == Done()
    assert events.count(Done()) == 1
    assert not [e for e in events if isinstance(e, Error)], events
    assert "".join(e.value for e in events if isinstance(e, Delta)).strip(), "no text was streamed"
    open_steps: list[str] = []
    for event in events:
        if isinstance(event, StepStart):
            open_steps.append(event.step)
        elif isinstance(event, StepEnd):
            assert open_steps[-1:] == [event.step], f"unbalanced steps in {events}"
            open_steps.pop()
    assert open_steps == []
    calls = {e.id for e in events if isinstance(e, ToolCall)}
    results = {e.id for e in events if isinstance(e, ToolResult)}
    assert calls == results, "every tool call has its result"
