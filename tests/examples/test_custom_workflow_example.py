"""End to end: ``python examples/custom_workflow/app.py`` over real HTTP (plain Starlette,
``NamedEventEncoder``), read back with streamflow.client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from streamflow import Delta, Done, Error, Event, StepEnd, StepStart
from streamflow.client import aiter_events, aiter_sse

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SLOW_DELAY = 0.6  # seconds per blocking call in the workflow, for the event-loop test
TOPIC = "browser cancellation"
SECRET_PARTS = ("s3cret", "postgres", "ConnectionError", "refused")


@pytest.fixture(scope="module")
def workflow(start_example: Callable[..., tuple[str, Path]]) -> tuple[str, Path]:
    """The example with no delay (host, port and delay given as command-line flags)."""
    args = ("--host", "127.0.0.1", "--port", "0", "--delay", "0")
    return start_example("custom_workflow/app.py", *args, banner="streamflow custom workflow: ")


@pytest.fixture(scope="module")
def slow_workflow(start_example: Callable[..., tuple[str, Path]]) -> str:
    args = ("--host", "127.0.0.1", "--port", "0", "--delay", str(SLOW_DELAY))
    url, _ = start_example("custom_workflow/app.py", *args, banner="streamflow custom workflow: ")
    return url


@pytest.fixture(scope="module")
def steps(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_example("custom_workflow/workflow.py")


def as_events(items: Iterable[Event | str]) -> list[Event]:
    """What a source's items become on the wire: ``str`` -> ``Delta``, then ``Done``."""
    return [Delta(value=item) if isinstance(item, str) else item for item in items] + [Done()]


async def one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def fetch(url: str, path: str) -> tuple[list[Event], list[str], bytes]:
    """The events of a whole response, their SSE event names, and its bytes."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get(path, params={"topic": TOPIC})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [event async for event in aiter_events(one_chunk(response.content))]
    names = [sse.event async for sse in aiter_sse(one_chunk(response.content))]
    return events, names, response.content


def check_named(events: list[Event], names: list[str]) -> None:
    """NamedEventEncoder: ``event: <type>`` on every frame, ``stream_error`` for errors."""
    assert names == [event.type if event.type != "error" else "stream_error" for event in events]


@pytest.mark.parametrize("variant", ["sync", "async"])
async def test_workflow_streams_its_steps(
    workflow: tuple[str, Path], steps: ModuleType, variant: str
) -> None:
    url, _ = workflow
    events, names, _ = await fetch(url, f"/run/{variant}")

    # The same events the generator yields in-process, in order, then one done.
    assert events == as_events(steps.report(TOPIC, delay=0))
    check_named(events, names)

    starts = [event for event in events if isinstance(event, StepStart)]
    ends = [event for event in events if isinstance(event, StepEnd)]
    assert starts == [
        StepStart(step="fetch", index=1, total=3),
        StepStart(step="analyze", index=2, total=3),
        StepStart(step="summarize", index=3, total=3),
    ]
    assert [event.step for event in ends] == ["fetch", "analyze", "summarize"]
    for start, end in zip(starts, ends, strict=True):
        assert events.index(start) < events.index(end)
    assert ends[0].output == {"titles": ["Server-Sent Events", "Cancellation"]}
    assert ends[1].output == {"documents": 2, "words": 54, "top_words": ["stream", "text", "server"]}

    text = "".join(event.value for event in events if isinstance(event, Delta))
    summary = "Report on 'browser cancellation'.\n\nSources:\n- Server-Sent Events\n- Cancellation\n\n"
    assert text.startswith("Found 2 documents.\n54 words; most frequent: stream, text, server.\n" + summary)
    assert ends[2].output == {"characters": len(text) - text.index("Report on")}
    assert events[-1] == Done()
    assert events.count(Done()) == 1


async def test_failing_workflow_sends_earlier_events_then_error_and_done(
    workflow: tuple[str, Path], steps: ModuleType
) -> None:
    url, log = workflow
    events, names, body = await fetch(url, "/run/failing")

    assert events == [
        StepStart(step="fetch", index=1, total=3),
        Delta(value="Found 2 documents.\n"),
        StepEnd(step="fetch", output={"titles": ["Server-Sent Events", "Cancellation"]}),
        StepStart(step="analyze", index=2, total=3),
        Error(
            message="The stream failed because of an internal error.", code="internal_error", step="analyze"
        ),
        Done(),
    ]
    check_named(events, names)
    assert b"event: stream_error\n" in body
    for part in SECRET_PARTS:  # nothing of the exception reaches the client...
        assert part.encode() not in body
    # ...it is in the server's log, with its traceback.
    output = log.read_text(errors="replace")
    assert "Traceback" in output
    assert "s3cret" in output


async def test_sync_workflow_does_not_block_the_event_loop(slow_workflow: str, steps: ModuleType) -> None:
    """While the sync generator sits in time.sleep, the server answers other requests, and
    what it yielded before has already been sent."""
    async with httpx.AsyncClient(base_url=slow_workflow, timeout=10) as http:
        started = time.perf_counter()
        async with (
            http.stream("GET", "/run/sync", params={"topic": TOPIC}) as response,
            aclosing(aiter_events(response.aiter_bytes())) as events,
        ):
            first = await anext(events)
            first_after = time.perf_counter() - started
            # The generator is now blocked in the fetch step's time.sleep(SLOW_DELAY).
            health_started = time.perf_counter()
            health = await http.get("/health")
            health_took = time.perf_counter() - health_started
            second = await anext(events)
            second_after = time.perf_counter() - started
        # Leaving the block drops the connection: the server cancels the run.

    assert first == StepStart(step="fetch", index=1, total=3)
    assert first_after < SLOW_DELAY / 2, "the first event was held back"
    assert health.json() == {"ok": True}
    assert health_took < SLOW_DELAY / 2, f"/health waited {health_took:.2f}s for the blocking generator"
    assert second == Delta(value="Found 2 documents.\n")
    assert second_after >= SLOW_DELAY * 0.9


async def test_page_and_bad_requests(workflow: tuple[str, Path]) -> None:
    url, _ = workflow
    async with httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/")
        unknown = await http.get("/run/nope")
        too_long = await http.get("/run/sync", params={"topic": "x" * 201})

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form id="run-form">' in page.text
    assert "new EventSource(" in page.text
    for name in ("step_start", "delta", "step_end", "stream_error", "done"):
        assert f'on("{name}"' in page.text
    assert unknown.status_code == 404
    assert too_long.status_code == 422
