"""End to end: ``python examples/proxy/app.py`` as a process, re-streaming a real upstream over
HTTP -- the demo as a process, or a scripted upstream served in this process (whose sources
report when their ``finally`` runs) -- read back with streamflow.client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from streamflow import (
    Delta,
    Done,
    Error,
    Event,
    EventStreamResponse,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    parse_event,
)
from streamflow.client import aiter_events
from tests.conftest import free_port, serve

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROXY_BANNER = "streamflow proxy: "
SUMMARY_KEYS = {"transcript", "upstream_events", "redacted", "first_event_ms", "elapsed_ms"}
TRICKY_PROMPT = 'Line one\r\nline two\rthree\n\ndata: {"type":"done"}\n: not a comment\n日本語 🙂 </script>'
EMAIL = "jane.doe@example.com"
KEY = "sk-abcdefghijklmnop1234"

SCRIPTED = {"OPENAI_API_KEY": ""}  # the demo's scripted agent, even where a key is set
UNAVAILABLE = Error(message="The agent service is not available.", code="upstream_unavailable", step="proxy")
CUT_OFF = "The agent service's stream was cut off before it finished."


# -- the upstreams -----------------------------------------------------------------------


class Signals:
    """What the scripted upstream's sources report to the test thread."""

    def __init__(self) -> None:
        self.hang_started = threading.Event()
        self.hang_closed = threading.Event()
        self.hang_closed_at = 0.0
        self.flood_closed = threading.Event()
        self.flood_closed_at = 0.0


def scripted_upstream(signals: Signals) -> Starlette:
    """A streamflow service whose ``POST /chat`` does what its prompt says."""

    async def hang() -> AsyncIterator[Event | str]:
        try:
            yield StepStart(step="answer")
            yield Delta(value="first ", step="answer")
            signals.hang_started.set()
            await anyio.sleep(3600)  # only a closed connection ends this
            yield "never sent"
        finally:
            signals.hang_closed_at = time.monotonic()
            signals.hang_closed.set()

    async def flood() -> AsyncIterator[Event | str]:
        try:
            yield StepStart(step="answer")
            while True:  # faster than any reader: it waits at its yield when the buffers are full
                yield Delta(value="x" * 1023 + " ", step="answer")
        finally:
            signals.flood_closed_at = time.monotonic()
            signals.flood_closed.set()

    async def fail() -> AsyncIterator[Event | str]:
        yield StepStart(step="answer")
        yield "partial "
        raise RuntimeError("password=s3cret: the model backend is down")

    async def cut() -> AsyncIterator[bytes]:  # a stream that ends without its done
        yield b'data: {"type":"step_start","step":"answer"}\n\n'
        yield b'data: {"type":"delta","value":"cut off","step":"answer"}\n\n'

    split: list[Event] = [  # an e-mail address and a key, each cut across deltas
        StepStart(step="answer"),
        Delta(value="Write to jane.d", step="answer"),
        Delta(value="oe@exam", step="answer"),
        Delta(value="ple.com or use sk-abcdefgh", step="answer"),
        Delta(value="ijklmnopqrst", step="answer"),
        Delta(value=" now.", step="answer"),
        StepEnd(step="answer"),
    ]

    async def chat(request: Request) -> Response:
        prompt = (await request.json())["prompt"]
        if prompt == "hang":
            return EventStreamResponse(hang())
        if prompt == "flood":
            return EventStreamResponse(flood())
        if prompt == "fail":
            return EventStreamResponse(fail())
        if prompt == "cut":
            return StreamingResponse(cut(), media_type="text/event-stream")
        if prompt == "split":
            return EventStreamResponse(split)
        if prompt == "refuse":
            return JSONResponse({"detail": "overloaded"}, status_code=503)
        if prompt == "json":
            return JSONResponse({"answer": "not a stream"})
        return JSONResponse({"detail": f"unknown prompt {prompt!r}"}, status_code=400)

    return Starlette(routes=[Route("/chat", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def demo(start_example: Callable[..., tuple[str, Path]]) -> str:
    url, _ = start_example(
        "demo/app.py", "--port", "0", "--delay", "0", banner="streamflow demo: ", env=SCRIPTED
    )
    return url


@pytest.fixture(scope="module")
def proxy(start_example: Callable[..., tuple[str, Path]], demo: str) -> str:
    """The proxy in front of the demo; the upstream given as an environment variable."""
    env = {"STREAMFLOW_PROXY_UPSTREAM": f"{demo}/chat", "STREAMFLOW_PROXY_PORT": "0"}
    url, _ = start_example("proxy/app.py", banner=PROXY_BANNER, env=env)
    return url


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, Signals]]:
    signals = Signals()
    with serve(scripted_upstream(signals)) as url:
        yield url, signals


@pytest.fixture(scope="module")
def scripted_proxy(start_example: Callable[..., tuple[str, Path]], upstream: tuple[str, Signals]) -> str:
    url, _ = start_example(
        "proxy/app.py", "--port", "0", "--upstream", f"{upstream[0]}/chat", banner=PROXY_BANNER
    )
    return url


@pytest.fixture(scope="module")
def unreachable_proxy(start_example: Callable[..., tuple[str, Path]]) -> tuple[str, Path]:
    """A proxy whose upstream port has nothing listening on it."""
    nowhere = f"http://127.0.0.1:{free_port()}/chat"
    return start_example("proxy/app.py", "--port", "0", "--upstream", nowhere, banner=PROXY_BANNER)


@pytest.fixture
def doomed_demo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A slow demo in a process of this test's own, to be killed in the middle of a run."""
    log = tmp_path / "demo.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-u", str(EXAMPLES / "demo/app.py"), "--port", "0", "--delay", "0.05"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SCRIPTED},
        )
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(r"^streamflow demo: (http://\S+)", log.read_text(), re.MULTILINE)):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield found[1], process
    finally:
        process.kill()
        process.wait()


# -- helpers -------------------------------------------------------------------------------


async def one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def fetch(base: str, prompt: str, method: str = "POST") -> tuple[list[Event], httpx.Headers, bytes]:
    """One whole run: its events, the response headers and the body."""
    request: dict[str, Any] = (
        {"json": {"prompt": prompt}} if method == "POST" else {"params": {"prompt": prompt}}
    )
    async with httpx.AsyncClient(base_url=base, timeout=20) as http:
        response = await http.request(method, "/chat", **request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content.endswith(b'data: {"type":"done"}\n\n'), "bytes after the done event"
    events = [event async for event in aiter_events(one_chunk(response.content))]
    return events, response.headers, response.content


async def transcript(base: str, transcript_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        response = await http.get(f"/transcripts/{transcript_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def stored_events(stored: dict[str, Any]) -> list[Event]:
    return [parse_event(event) for event in stored["events"]]


def same_call_ids(events: list[Event]) -> list[Event]:
    """The events with each tool call id replaced by its rank (the demo draws them at random)."""
    ids: dict[str, str] = {}
    result: list[Event] = []
    for event in events:
        if isinstance(event, (ToolCall, ToolResult)):
            event = event.model_copy(update={"id": ids.setdefault(event.id, f"call_{len(ids)}")})
        result.append(event)
    return result


def check_summary(summary: Event, headers: httpx.Headers, *, upstream_events: int, redacted: int) -> None:
    assert isinstance(summary, StepEnd)
    assert summary.step == "proxy"
    assert isinstance(summary.output, dict)
    assert set(summary.output) == SUMMARY_KEYS
    assert summary.output["transcript"] == headers["x-transcript-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-transcript-id"])
    assert summary.output["upstream_events"] == upstream_events
    assert summary.output["redacted"] == redacted
    first, elapsed = summary.output["first_event_ms"], summary.output["elapsed_ms"]
    assert isinstance(first, float)
    assert isinstance(elapsed, float)
    assert 0 <= first <= elapsed < 20_000


# -- in front of the demo ----------------------------------------------------------------


async def test_the_proxy_describes_itself_and_validates_prompts(proxy: str, demo: str) -> None:
    async with httpx.AsyncClient(base_url=proxy) as http:
        index = await http.get("/")
        empty = await http.post("/chat", json={"prompt": ""})
        long = await http.get("/chat", params={"prompt": "x" * 2001})
        unknown = await http.get("/transcripts/nope")
    assert index.status_code == 200
    assert index.json()["upstream"] == f"{demo}/chat"
    assert (empty.status_code, long.status_code, unknown.status_code) == (422, 422, 404)


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("prompt", ["How do I stream my agent?", TRICKY_PROMPT], ids=["plain", "tricky"])
async def test_the_demo_run_is_restreamed_exactly_inside_the_proxy_step(
    proxy: str, demo: str, method: str, prompt: str
) -> None:
    direct, _, _ = await fetch(demo, prompt, method)
    events, headers, _ = await fetch(proxy, prompt, method)

    assert events[0] == StepStart(step="proxy")
    # Every upstream event, in order and unchanged (but for the tool call's random id),
    # then the proxy's summary instead of the upstream's done, then one done.
    assert same_call_ids(events[1:-2]) == same_call_ids(direct[:-1])
    assert direct[-1] == Done()
    check_summary(events[-2], headers, upstream_events=len(direct) - 1, redacted=0)
    assert events[-1] == Done()

    # The text exactly, in the same deltas as the agent's tokens (the scripted answer
    # quotes the prompt, CRs, blank lines, "data:" and all).
    deltas = [event for event in events if isinstance(event, Delta)]
    assert deltas == [event for event in direct if isinstance(event, Delta)]
    assert len(deltas) > 10
    assert prompt in "".join(delta.value for delta in deltas)


async def test_the_transcript_is_what_was_streamed(proxy: str) -> None:
    prompt = "Keep this one"
    events, headers, _ = await fetch(proxy, prompt)
    transcript_id = headers["x-transcript-id"]

    stored = await transcript(proxy, transcript_id)
    assert stored["id"] == transcript_id
    assert stored["prompt"] == prompt
    assert stored["status"] == "complete"
    assert stored_events(stored) == events  # the same run: tool call ids included

    async with httpx.AsyncClient(base_url=proxy) as http:
        listed = (await http.get("/transcripts")).json()
    (entry,) = [item for item in listed if item["id"] == transcript_id]
    assert entry == {
        "id": transcript_id,
        "prompt": prompt,
        "status": "complete",
        "started_at": stored["started_at"],
        "events": len(events),
    }


async def test_emails_and_keys_are_redacted_everywhere(proxy: str, demo: str) -> None:
    prompt = f"Mail {EMAIL}, and use {KEY} please"
    redacted_prompt = "Mail [email], and use [key] please"
    direct, _, _ = await fetch(demo, prompt)
    events, headers, body = await fetch(proxy, prompt)

    def redact(text: str) -> str:
        return text.replace(EMAIL, "[email]").replace(KEY, "[key]")

    assert EMAIL.encode() not in body
    assert KEY.encode() not in body
    expected = [
        parse_event(json.loads(redact(event.to_json())))  # the same event with both replaced
        for event in same_call_ids(direct[:-1])
    ]
    assert same_call_ids(events[1:-2]) == expected
    # Each one found is counted: in the tool call, the answer and the chat history.
    found = sum(event.to_json().count(EMAIL) + event.to_json().count(KEY) for event in direct)
    assert found >= 6
    check_summary(events[-2], headers, upstream_events=len(direct) - 1, redacted=found)
    text = "".join(event.value for event in events if isinstance(event, Delta))
    assert redacted_prompt in text

    stored = await transcript(proxy, headers["x-transcript-id"])
    assert stored["prompt"] == redacted_prompt
    assert stored_events(stored) == events


async def test_an_upstream_killed_mid_stream_is_an_error_then_done(
    start_example: Callable[..., tuple[str, Path]],
    doomed_demo: tuple[str, subprocess.Popen[bytes]],
    demo: str,
) -> None:
    demo_url, demo_process = doomed_demo
    args = ("--port", "0", "--upstream", f"{demo_url}/chat")
    proxy_url, log = start_example("proxy/app.py", *args, banner=PROXY_BANNER)
    prompt = "Will this answer finish?"

    events: list[Event] = []
    with anyio.fail_after(20):  # a hang fails the test instead of holding it
        async with (
            httpx.AsyncClient(base_url=proxy_url, timeout=10) as http,
            http.stream("POST", "/chat", json={"prompt": prompt}) as response,
        ):
            assert response.status_code == 200
            transcript_id = response.headers["x-transcript-id"]
            chunks = response.aiter_bytes()
            async for event in aiter_events(chunks):
                events.append(event)
                if isinstance(event, Delta) and demo_process.poll() is None:
                    demo_process.kill()  # SIGKILL: no goodbye from the upstream
            assert [chunk async for chunk in chunks] == [], "bytes after the done event"

    assert demo_process.wait(timeout=10) == -signal.SIGKILL  # it was killed, it did not finish
    assert events[0] == StepStart(step="proxy")
    assert events[-2:] == [Error(message=CUT_OFF, code="upstream_incomplete", step="answer"), Done()]
    # Before the error: the start of the same run (from a demo left alive), exactly, up to
    # some of its answer's deltas.
    whole, _, _ = await fetch(demo, prompt)
    before = same_call_ids(events[1:-2])
    assert before == same_call_ids(whole[: len(before)])
    assert isinstance(before[-1], Delta)
    answer = [event for event in whole if isinstance(event, Delta)]
    assert len([event for event in before if isinstance(event, Delta)]) < len(answer) // 2  # cut early

    stored = await transcript(proxy_url, transcript_id)
    assert stored["status"] == "failed"
    assert stored_events(stored) == events
    assert "streamflow.proxy: the upstream" in log.read_text()


# -- in front of the scripted upstream -----------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        pytest.param(
            "fail",
            [
                StepStart(step="answer"),
                Delta(value="partial "),
                Error(
                    message="The stream failed because of an internal error.",
                    code="internal_error",
                    step="answer",
                ),
            ],
            id="upstream-error-event",
        ),
        pytest.param(
            "cut",
            [
                StepStart(step="answer"),
                Delta(value="cut ", step="answer"),
                Delta(value="off", step="answer"),  # held back for the redactor, then sent
                Error(message=CUT_OFF, code="upstream_incomplete", step="answer"),
            ],
            id="upstream-ends-without-done",
        ),
        pytest.param(
            "refuse",
            [
                Error(
                    message="The agent service refused the request (HTTP 503).",
                    code="upstream_status",
                    step="proxy",
                )
            ],
            id="upstream-http-503",
        ),
        pytest.param(
            "json",
            [
                Error(
                    message="The agent service sent something that is not a streamflow stream.",
                    code="upstream_protocol",
                    step="proxy",
                )
            ],
            id="upstream-not-a-stream",
        ),
    ],
)
async def test_an_upstream_failure_is_a_typed_error_then_done(
    scripted_proxy: str, prompt: str, expected: list[Event]
) -> None:
    events, headers, body = await fetch(scripted_proxy, prompt)

    assert events == [StepStart(step="proxy"), *expected, Done()]
    assert b"s3cret" not in body
    assert b"Traceback" not in body
    stored = await transcript(scripted_proxy, headers["x-transcript-id"])
    assert stored["status"] == "failed"
    assert stored_events(stored) == events


async def test_an_unreachable_upstream_is_a_typed_error(unreachable_proxy: tuple[str, Path]) -> None:
    url, log = unreachable_proxy
    with anyio.fail_after(10):
        events, headers, body = await fetch(url, "anyone there?")

    assert events == [StepStart(step="proxy"), UNAVAILABLE, Done()]
    assert b"Traceback" not in body
    stored = await transcript(url, headers["x-transcript-id"])
    assert (stored["status"], stored_events(stored)) == ("failed", events)
    assert "streamflow.proxy: the upstream" in log.read_text()
    assert "ConnectError" in log.read_text()  # the details are in the proxy's log


async def test_text_split_across_deltas_is_redacted(scripted_proxy: str) -> None:
    events, headers, _ = await fetch(scripted_proxy, "split")

    assert events[:-2] == [
        StepStart(step="proxy"),
        StepStart(step="answer"),
        Delta(value="Write to ", step="answer"),
        Delta(value="[email] or use ", step="answer"),
        Delta(value="[key] ", step="answer"),
        Delta(value="now.", step="answer"),
        StepEnd(step="answer"),
    ]
    check_summary(events[-2], headers, upstream_events=7, redacted=2)
    assert events[-1] == Done()


async def test_a_client_disconnect_closes_the_upstream_request(
    scripted_proxy: str, upstream: tuple[str, Signals]
) -> None:
    """The upstream's source waits for an hour after its first delta; the client leaves
    then. The proxy closes its upstream request, so the source's ``finally`` runs."""
    _, signals = upstream
    received: list[Event] = []
    async with (
        httpx.AsyncClient(base_url=scripted_proxy, timeout=10) as http,
        http.stream("POST", "/chat", json={"prompt": "hang"}) as response,
    ):
        transcript_id = response.headers["x-transcript-id"]
        events = aiter_events(response.aiter_bytes())  # kept open: closing it would close the response
        while not isinstance(event := await anext(events), Delta):
            received.append(event)
        received.append(event)
        assert signals.hang_started.is_set()
        assert not signals.hang_closed.is_set()  # the upstream source is still running
        left = time.monotonic()
    # The response and the client are closed here: the connection to the proxy is gone.

    closed = await anyio.to_thread.run_sync(signals.hang_closed.wait, 10)
    assert closed, "the upstream source was never closed"
    assert signals.hang_closed_at - left < 3  # promptly: the source itself would sleep an hour

    assert received == [
        StepStart(step="proxy"),
        StepStart(step="answer"),
        Delta(value="first ", step="answer"),
    ]
    with anyio.fail_after(10):
        while (stored := await transcript(scripted_proxy, transcript_id))["status"] == "streaming":  # noqa: ASYNC110 - the proxy is another process
            await anyio.sleep(0.05)
    assert stored["status"] == "cancelled"
    assert stored_events(stored) == received  # no done: the client left before the end


async def test_a_client_that_stops_reading_then_leaves_closes_the_upstream_request(
    scripted_proxy: str, upstream: tuple[str, Signals]
) -> None:
    """The client reads a little, then stops: the buffers fill up to the upstream's source,
    and the proxy's relay waits at its yield, not in a read of the upstream. Leaving still
    closes the upstream request at once."""
    _, signals = upstream
    async with (
        httpx.AsyncClient(base_url=scripted_proxy, timeout=10) as http,
        http.stream("POST", "/chat", json={"prompt": "flood"}) as response,
    ):
        events = aiter_events(response.aiter_bytes())  # kept open: closing it would close the response
        received = [await anext(events) for _ in range(3)]
        await anyio.sleep(1.5)  # the proxy and the upstream fill every buffer on the way
        assert not signals.flood_closed.is_set()
        left = time.monotonic()

    closed = await anyio.to_thread.run_sync(signals.flood_closed.wait, 10)
    assert closed, "the upstream source was never closed"
    assert signals.flood_closed_at - left < 3
    assert received == [
        StepStart(step="proxy"),
        StepStart(step="answer"),
        Delta(value="x" * 1023 + " ", step="answer"),
    ]
