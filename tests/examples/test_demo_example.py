"""End to end: ``python examples/demo/app.py`` over real HTTP, read back with streamflow.client.

- ``/chat``: the scripted run streamed straight to the response (POST and GET);
- sessions: one run read live by three encoders at once (``json``, ``named``, ``htmx``)
  gives the same events with the same ids, and a replay gives them again;
- resume: ``Last-Event-ID`` (header or query) after any event, and ``POST /runs/{run}/drop``
  (the server ends the connection mid-answer, no ``done``) then a reconnection: nothing
  lost, nothing repeated, in every format;
- the real-model path, against a scripted OpenAI-compatible server on 127.0.0.1 (never the
  internet): the model's text streams through, the request is what the API expects, and
  failures become an ``error`` event that shows no key.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Error,
    Event,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    parse_event,
)
from streamflow.client import aiter_events
from streamflow.sse import ServerSentEvent, SSEDecoder
from tests.conftest import free_port, serve

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / "examples" / "demo"
VENDOR_DIR = ROOT / "examples" / "vendor"

DELAY = 0.004  # seconds per streamed token: short, but long enough to see the stream is incremental
SLOW_DELAY = 0.03  # for the tests that act in the middle of an answer (drop, cancel, busy)
TRICKY_PROMPT = 'Line one\r\nline two\rthree\n\ndata: {"type":"done"}\n: not a comment\n日本語 🙂 </script>'
NO_MODEL = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "STREAMFLOW_DEMO_MODEL": ""}

OUTLINE = [
    ("step_start", "route"),
    ("step_end", "route"),
    ("step_start", "lookup"),
    ("tool_call", "lookup"),
    ("tool_result", "lookup"),
    ("step_end", "lookup"),
    ("step_start", "answer"),
    ("delta", "answer"),
    ("step_end", "answer"),
    ("chat_history", None),
    ("done", None),
]
HTMX_NAMES = {
    "step_start": "step",
    "step_end": "step",
    "tool_call": "tool",
    "tool_result": "tool",
    "delta": "delta",
    "chat_history": "chat_history",
    "error": "stream_error",
    "done": "done",
}


def load_demo(load_example: Callable[[str], ModuleType], name: str) -> ModuleType:
    """Import ``examples/demo/<name>.py``; its ``from agent import ...`` and ``from llm import
    ...`` find the modules next to it, as when it runs as a script."""
    sys.path.insert(0, str(DEMO_DIR))
    try:
        return load_example(f"demo/{name}.py")
    finally:
        sys.path.remove(str(DEMO_DIR))


def start_demo(start_example: Callable[..., tuple[str, Path]], delay: float, **env: str) -> tuple[str, Path]:
    """The demo on a free port; host, port and delay come from the environment, as documented.
    No model unless ``env`` names one: a developer's own ``OPENAI_API_KEY`` is never used."""
    settings = {
        "STREAMFLOW_DEMO_HOST": "localhost",
        "STREAMFLOW_DEMO_PORT": "0",
        "STREAMFLOW_DEMO_DELAY": str(delay),
        **NO_MODEL,
        **env,
    }
    return start_example("demo/app.py", banner="streamflow demo: ", env=settings)


@pytest.fixture(scope="module")
def demo_process(start_example: Callable[..., tuple[str, Path]]) -> tuple[str, Path]:
    return start_demo(start_example, DELAY)


@pytest.fixture(scope="module")
def demo(demo_process: tuple[str, Path]) -> str:
    """The demo's base URL."""
    return demo_process[0]


@pytest.fixture(scope="module")
def slow_demo(start_example: Callable[..., tuple[str, Path]]) -> str:
    return start_demo(start_example, SLOW_DELAY)[0]


@pytest.fixture(scope="module")
def agent(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_demo(load_example, "agent")


@pytest.fixture(scope="module")
def llm(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_demo(load_example, "llm")


def outline(events: list[Event]) -> list[tuple[str, str | None]]:
    """(type, step) of each event, a run of deltas shown once."""
    result: list[tuple[str, str | None]] = []
    for event in events:
        entry = (event.type, getattr(event, "step", None))
        if not (entry[0] == "delta" and result and result[-1] == entry):
            result.append(entry)
    return result


def answer_text(events: list[Event]) -> str:
    return "".join(event.value for event in events if isinstance(event, Delta))


async def stream(http: httpx.AsyncClient, method: str, prompt: str) -> tuple[list[Event], list[float]]:
    """The events of one ``/chat`` run and the time each arrived, checking the response head
    and that nothing follows ``done``."""
    request: dict[str, Any] = (
        {"json": {"prompt": prompt}} if method == "POST" else {"params": {"prompt": prompt}}
    )
    events: list[Event] = []
    arrived: list[float] = []
    async with http.stream(method, "/chat", **request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        chunks = response.aiter_bytes()
        async for event in aiter_events(chunks):
            events.append(event)
            arrived.append(time.perf_counter())
        assert [chunk async for chunk in chunks] == [], "bytes after the done event"
    return events, arrived


# --- sessions: helpers ---------------------------------------------------------------------


async def start_run(http: httpx.AsyncClient, prompt: str) -> str:
    """A new session and a run of ``prompt`` in it; the run's id."""
    session = (await http.post("/sessions")).json()["session"]
    response = await http.post(f"/sessions/{session}/messages", json={"prompt": prompt})
    assert response.status_code == 202, response.text
    run: str = response.json()["run"]
    assert response.json() == {"run": run, "stream": f"/runs/{run}/stream"}
    return run


@dataclass
class Read:
    """What one stream response carried: its SSE events and its ``retry:``."""

    frames: list[ServerSentEvent]
    retry: int | None

    @property
    def ids(self) -> list[str]:
        return [frame.id for frame in self.frames]

    @property
    def names(self) -> list[str]:
        return [frame.event for frame in self.frames]

    @property
    def events(self) -> list[Event]:
        """The typed events (``json`` and ``named`` formats)."""
        return [parse_event(frame.data) for frame in self.frames]

    @property
    def html_text(self) -> str:
        """The text of the ``delta`` fragments (``htmx`` format), unescaped."""
        return unescape("".join(frame.data for frame in self.frames if frame.event == "delta"))


async def read_run(
    http: httpx.AsyncClient,
    run: str,
    fmt: str = "json",
    *,
    last_event_id: str | None = None,
    via: str = "header",
    on_frame: Callable[[list[ServerSentEvent]], Awaitable[None]] | None = None,
) -> Read:
    """Read ``GET /runs/{run}/stream`` until the server ends the body (after ``done``, or
    when the connection is dropped)."""
    params = {"format": fmt}
    headers = {}
    if last_event_id is not None:
        if via == "header":
            headers["Last-Event-ID"] = last_event_id
        else:
            params["last_event_id"] = last_event_id
    decoder = SSEDecoder()
    frames: list[ServerSentEvent] = []
    async with http.stream("GET", f"/runs/{run}/stream", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        async for chunk in response.aiter_bytes():
            for sse in decoder.feed(chunk):
                frames.append(sse)
                if on_frame is not None:
                    await on_frame(frames)
    return Read(frames, decoder.retry)


def expected_names(events: list[Event], fmt: str) -> list[str]:
    if fmt == "json":
        return ["message"] * len(events)
    if fmt == "named":
        return [event.type if event.type != "error" else "stream_error" for event in events]
    return [HTMX_NAMES[event.type] for event in events]


def is_done(frame: ServerSentEvent) -> bool:
    """A ``done`` event, in any of the three formats."""
    return frame.event == "done" or frame.data == '{"type":"done"}'


def lf(text: str) -> str:
    """What ``HTMXEncoder`` shows of ``text``: CRLF and CR become LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- the page and its files ----------------------------------------------------------------


async def test_demo_prints_its_url_and_serves_the_page(demo_process: tuple[str, Path]) -> None:
    demo, log = demo_process
    assert re.fullmatch(r"http://localhost:\d+", demo), demo  # STREAMFLOW_DEMO_HOST was used
    assert not demo.endswith(":8000")  # STREAMFLOW_DEMO_PORT=0 was used
    assert "answers: the scripted agent (set OPENAI_API_KEY for a real model)\n" in log.read_text()

    async with httpx.AsyncClient(base_url=demo) as http:
        response = await http.get("/")
        scripts = re.findall(r"<script src=\"([^\"]+)\"></script>", response.text)
        served = {src: await http.get("/" + src) for src in scripts}
        hidden = [await http.get(path) for path in ("/vendor/README.md", "/vendor/..%2Fdemo%2Fapp.py")]

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<form id="chat-form">' in page
    assert '<textarea id="prompt"' in page
    for view in ("json", "htmx", "inspector"):
        assert f'id="tab-{view}" data-view="{view}"' in page
        assert f'<section id="view-{view}"' in page
    assert '<button id="drop"' in page
    assert "the scripted agent (set OPENAI_API_KEY for a real model)" in page
    assert "__ANSWERER__" not in page
    # Self-contained: the only scripts are htmx and its SSE extension, served by the app
    # itself, byte for byte the vendored files; nothing from elsewhere.
    assert scripts == ["vendor/htmx-2.0.11.min.js", "vendor/htmx-ext-sse-2.2.4.min.js"]
    for src, served_file in served.items():
        assert served_file.status_code == 200
        assert served_file.headers["content-type"] == "text/javascript; charset=utf-8"
        assert served_file.content == (VENDOR_DIR / src.removeprefix("vendor/")).read_bytes()
    assert [r.status_code for r in hidden] == [404, 404]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"@import|url\(", page)


# --- /chat: one run straight to the response ---------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("prompt", ["How do I stream my agent?", TRICKY_PROMPT], ids=["plain", "tricky"])
async def test_chat_streams_the_scripted_run(demo: str, agent: ModuleType, method: str, prompt: str) -> None:
    async with httpx.AsyncClient(base_url=demo, timeout=10) as http:
        events, _ = await stream(http, method, prompt)

    assert outline(events) == OUTLINE
    starts = [event for event in events if isinstance(event, StepStart)]
    assert starts == [
        StepStart(step="route", index=1, total=3),
        StepStart(step="lookup", index=2, total=3),
        StepStart(step="answer", index=3, total=3),
    ]
    ends = [event for event in events if isinstance(event, StepEnd)]
    assert ends == [
        StepEnd(step="route", output={"intent": "docs_question", "tool": "search_docs"}),
        StepEnd(step="lookup", output={"hits": 2}),
        StepEnd(step="answer", output={"answered_by": "scripted"}),
    ]

    (call,) = [event for event in events if isinstance(event, ToolCall)]
    (result,) = [event for event in events if isinstance(event, ToolResult)]
    assert re.fullmatch(r"call_[0-9a-f]{8}", call.id)
    assert result.id == call.id
    assert call.name == "search_docs"
    assert call.arguments == {"query": prompt, "limit": 2}
    assert result.output == {"hits": agent.search_docs(prompt, limit=2)}
    assert result.is_error is False

    answer = agent.scripted_answer(prompt)
    deltas = [event.value for event in events if isinstance(event, Delta)]
    assert "".join(deltas) == answer
    assert deltas == agent.tokenize(answer)
    assert answer.startswith(f"You asked: {prompt}\n\n")
    assert "\n```python\nfrom fastapi import FastAPI\n" in answer
    assert "app = FastAPI()\n\n\n@app.post" in answer  # blank lines survive the trip

    assert events[-2] == ChatHistory(
        value=[ChatMessage(role="user", content=prompt), ChatMessage(role="assistant", content=answer)]
    )
    assert events[-1] == Done()
    assert events.count(Done()) == 1


async def test_chat_streams_incrementally(demo: str, agent: ModuleType) -> None:
    """Events leave the server as the agent yields them, not all at once at the end."""
    prompt = "Is this streamed?"
    async with httpx.AsyncClient(base_url=demo, timeout=10) as http:
        events, arrived = await stream(http, "POST", prompt)

    tokens = len(agent.tokenize(agent.scripted_answer(prompt)))
    scripted = (5 + 15 + tokens) * DELAY  # the run's sleeps, at least
    first_delta = next(i for i, event in enumerate(events) if isinstance(event, Delta))
    assert arrived[-1] - arrived[0] >= 0.8 * scripted
    assert arrived[-1] - arrived[first_delta] >= 0.8 * tokens * DELAY


async def test_empty_prompts_are_refused(demo: str) -> None:
    async with httpx.AsyncClient(base_url=demo) as http:
        session = (await http.post("/sessions")).json()["session"]
        answers = [
            await http.post("/chat", json={"prompt": ""}),
            await http.post("/chat", json={}),
            await http.post(f"/sessions/{session}/messages", json={"prompt": ""}),
            await http.post(f"/sessions/{session}/messages", json={"prompt": "x" * 2001}),
        ]
    assert [answer.status_code for answer in answers] == [422, 422, 422, 422]


# --- sessions: one run, every encoder ------------------------------------------------------


async def test_one_run_reads_the_same_through_every_encoder(demo: str, agent: ModuleType) -> None:
    """Three readers follow the run live, each through its own encoder; then a fourth reads
    it again from the store. Same events, same ids, in the same order."""
    async with httpx.AsyncClient(base_url=demo, timeout=10) as http:
        run = await start_run(http, TRICKY_PROMPT)
        reads: dict[str, Read] = {}

        async def read(fmt: str) -> None:
            reads[fmt] = await read_run(http, run, fmt)

        async with anyio.create_task_group() as readers:
            for fmt in ("json", "named", "htmx"):
                readers.start_soon(read, fmt)
        replay = await read_run(http, run, "json")

    events = reads["json"].events
    ids = [f"{run}.{n}" for n in range(1, len(events) + 1)]
    answer = agent.scripted_answer(TRICKY_PROMPT)
    assert outline(events) == OUTLINE
    assert [event.value for event in events if isinstance(event, Delta)] == agent.tokenize(answer)
    assert events[-2] == ChatHistory(
        value=[ChatMessage(role="user", content=TRICKY_PROMPT), ChatMessage(role="assistant", content=answer)]
    )
    for fmt, read in (*reads.items(), ("json", replay)):
        assert read.retry == 1000, fmt  # the hub's reconnection time, sent first
        assert read.ids == ids, fmt
        assert read.names == expected_names(events, fmt), fmt
    assert reads["named"].events == events
    assert replay.events == events
    # The htmx fragments: the answer's text, escaped (a "</script>" in it is text, not a tag).
    deltas = [frame.data for frame in reads["htmx"].frames if frame.event == "delta"]
    assert reads["htmx"].html_text == lf(answer)
    assert "&lt;/script&gt;" in "".join(deltas)
    assert not any("<" in data for data in deltas)
    tools = [frame.data for frame in reads["htmx"].frames if frame.event == "tool"]
    assert [re.search(r'class="(sf-tool [\w-]+)"', data)[1] for data in tools] == [  # type: ignore[index]
        "sf-tool sf-tool-call",
        "sf-tool sf-tool-result",
    ]


# --- resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "named", "htmx"])
@pytest.mark.parametrize("via", ["header", "query"])
async def test_last_event_id_resumes_right_after_it(demo: str, fmt: str, via: str) -> None:
    """Resuming after any event of a run gives exactly the events after it."""
    async with httpx.AsyncClient(base_url=demo, timeout=10) as http:
        run = await start_run(http, "Resume me")
        whole = await read_run(http, run, fmt)
        # after: a step, the answer's step_start, its first delta, mid-answer, chat_history
        cuts = [1, 7, 8, 30, len(whole.frames) - 1]
        resumed = [await read_run(http, run, fmt, last_event_id=whole.ids[k - 1], via=via) for k in cuts]

    for k, read in zip(cuts, resumed, strict=True):
        assert read.ids == whole.ids[k:], k
        assert [(f.event, f.data) for f in read.frames] == [(f.event, f.data) for f in whole.frames[k:]], k


@pytest.mark.parametrize("fmt", ["json", "named", "htmx"])
async def test_a_dropped_connection_resumes_with_nothing_lost_or_repeated(
    slow_demo: str, agent: ModuleType, fmt: str
) -> None:
    """``POST /runs/{run}/drop`` ends the stream mid-answer without ``done`` (what a proxy
    or a network change does); reconnecting with the last id seen, as ``EventSource`` does,
    gives the rest: the two connections together are the run, each event once."""
    prompt = "Drop me <b>now</b>"
    dropped: list[int] = []
    async with httpx.AsyncClient(base_url=slow_demo, timeout=10) as http:
        run = await start_run(http, prompt)

        async def drop_after_five_deltas(frames: list[ServerSentEvent]) -> None:
            deltas = sum(frame.event == "delta" or '"type":"delta"' in frame.data for frame in frames)
            if deltas == 5 and not dropped:
                dropped.append((await http.post(f"/runs/{run}/drop")).json()["dropped"])

        first = await read_run(http, run, fmt, on_frame=drop_after_five_deltas)
        second = await read_run(http, run, fmt, last_event_id=first.ids[-1])
        whole = await read_run(http, run, fmt)
        again = await http.post(f"/runs/{run}/drop")

    assert dropped == [1]
    assert again.json() == {"dropped": 0}  # nothing open any more
    assert not any(is_done(frame) for frame in first.frames)  # cut short: no done
    assert is_done(second.frames[-1])
    assert first.retry == second.retry == 1000
    # No gap, no repeat: the two connections carried the run's frames once, in order.
    assert first.ids + second.ids == whole.ids
    assert [(f.event, f.data) for f in first.frames + second.frames] == [
        (f.event, f.data) for f in whole.frames
    ]
    assert whole.ids == [f"{run}.{n}" for n in range(1, len(whole.ids) + 1)]
    answer = agent.scripted_answer(prompt)
    tokens = agent.tokenize(answer)
    if fmt == "htmx":
        first_text, second_text = first.html_text, second.html_text
    else:
        first_text, second_text = answer_text(first.events), answer_text(second.events)
    assert first_text + second_text == answer
    # The drop came mid-answer: a few deltas on the first connection, most on the second.
    assert answer.startswith(first_text)
    assert 5 <= len(agent.tokenize(first_text)) < len(tokens) - 10


async def test_cancel_ends_the_run_for_its_readers(slow_demo: str) -> None:
    cancelled: list[dict[str, bool]] = []
    async with httpx.AsyncClient(base_url=slow_demo, timeout=10) as http:
        run = await start_run(http, "Cancel me")

        async def cancel_after_three_deltas(frames: list[ServerSentEvent]) -> None:
            if sum('"type":"delta"' in frame.data for frame in frames) == 3 and not cancelled:
                cancelled.append((await http.post(f"/runs/{run}/cancel")).json())

        read = await read_run(http, run, on_frame=cancel_after_three_deltas)
        again = await http.post(f"/runs/{run}/cancel")

    assert cancelled == [{"cancelled": True}]
    assert again.json() == {"cancelled": False}
    events = read.events
    assert events[-2:] == [Error(message="The run was cancelled.", code="cancelled"), Done()]
    assert not any(isinstance(event, ChatHistory) for event in events)
    assert 3 <= sum(isinstance(event, Delta) for event in events) < 20


async def test_session_and_run_errors(slow_demo: str) -> None:
    async with httpx.AsyncClient(base_url=slow_demo, timeout=10) as http:
        session = (await http.post("/sessions")).json()["session"]
        first = await http.post(f"/sessions/{session}/messages", json={"prompt": "one"})
        busy = await http.post(f"/sessions/{session}/messages", json={"prompt": "two"})
        unknown_session = await http.post("/sessions/nope/messages", json={"prompt": "x"})
        unknown_run = await http.get("/runs/nope/stream")
        bad_format = await http.get(f"/runs/{first.json()['run']}/stream", params={"format": "xml"})
        other = await start_run(http, "another run")
        foreign = await read_run(http, first.json()["run"], last_event_id=f"{other}.1")
        await http.post(f"/runs/{first.json()['run']}/cancel")
        await http.post(f"/runs/{other}/cancel")

    assert first.status_code == 202
    assert (busy.status_code, busy.json()) == (409, {"error": "a reply is still being written"})
    assert (unknown_session.status_code, unknown_session.json()) == (404, {"error": "unknown session"})
    assert unknown_run.status_code == 404
    assert bad_format.status_code == 422
    assert foreign.events == [
        Error(message="The events after Last-Event-ID are not available.", code="replay_unavailable"),
        Done(),
    ]
    assert foreign.ids == ["", ""]  # the browser's next reconnection starts afresh


# --- a real model: an OpenAI-compatible server, scripted, on 127.0.0.1 ---------------------

API_KEY = "sk-test-0123456789"
MODEL = "fake-model"
MODEL_PIECES = ["Hello", " from the <script>window.__pwned=1</script> model", "", "!\n\n```python\n"]
MODEL_PIECES += ["print('hi')\n```\n", "Caf\u00e9 \U0001f642, ", "bye."]


class FakeOpenAI:
    """``POST /v1/chat/completions`` with ``"stream": true``, as OpenAI answers it: a role
    chunk, content chunks, a ``finish_reason`` chunk, ``data: [DONE]``; written in 7-byte
    pieces (lines and UTF-8 characters split across reads). The prompt picks a failure:
    ``401``, ``error mid-stream``, ``cut short``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        request = {"method": scope["method"], "path": scope["path"], "headers": headers}
        request["json"] = json.loads(body)
        self.requests.append(request)
        prompt = request["json"]["messages"][-1]["content"]
        if headers.get("authorization") != f"Bearer {API_KEY}" or prompt == "401":
            error = {
                "error": {"message": f"Incorrect API key provided: {API_KEY}", "code": "invalid_api_key"}
            }
            await self._send(send, 401, "application/json", [json.dumps(error).encode()])
            return
        frames = [self._chunk({"role": "assistant", "content": ""})]
        frames += [self._chunk({"content": piece}) for piece in MODEL_PIECES[:3]]
        if prompt == "error mid-stream":
            frames.append(b'data: {"error": {"message": "overloaded, key ' + API_KEY.encode() + b'"}}\n\n')
        elif prompt != "cut short":
            frames.append(b": a comment, as some servers send\r\n\r\n")  # CRLF and a comment too
            frames += [self._chunk({"content": piece}) for piece in MODEL_PIECES[3:]]
            frames.append(self._chunk({}, finish_reason="stop"))
            frames.append(b"data: [DONE]\n\n")
        data = b"".join(frames)
        pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
        await self._send(send, 200, "text/event-stream", pieces)

    @staticmethod
    def _chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    @staticmethod
    async def _send(send: Send, status: int, content_type: str, pieces: list[bytes]) -> None:
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            await anyio.sleep(0.001)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[tuple[str, FakeOpenAI]]:
    server = FakeOpenAI()
    with serve(server) as url:
        yield url, server


@pytest.fixture(scope="module")
def model_demo(
    start_example: Callable[..., tuple[str, Path]], fake_openai: tuple[str, FakeOpenAI]
) -> tuple[str, Path]:
    """The demo with a model: ``OPENAI_BASE_URL`` points at the fake server."""
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": f"{fake_openai[0]}/v1/",
        "STREAMFLOW_DEMO_MODEL": MODEL,
    }
    return start_demo(start_example, 0, **env)


def model_text() -> str:
    return "".join(MODEL_PIECES)


@pytest.mark.parametrize("where", ["chat", "session"])
async def test_a_real_model_answers_when_openai_api_key_is_set(
    model_demo: tuple[str, Path], fake_openai: tuple[str, FakeOpenAI], agent: ModuleType, where: str
) -> None:
    demo, log = model_demo
    url, server = fake_openai
    prompt = "What is <streamflow>?"
    server.requests.clear()
    async with httpx.AsyncClient(base_url=demo, timeout=10) as http:
        if where == "chat":
            events, _ = await stream(http, "POST", prompt)
        else:
            events = (await read_run(http, await start_run(http, prompt))).events
        page = (await http.get("/")).text

    assert f"answers: {MODEL} at {url}/v1\n" in log.read_text()
    assert f'<span id="answerer">{MODEL} at {url}/v1</span>' in page
    assert outline(events) == OUTLINE
    assert [event.value for event in events if isinstance(event, Delta)] == [p for p in MODEL_PIECES if p]
    assert StepEnd(step="answer", output={"answered_by": MODEL}) in events
    assert events[-2] == ChatHistory(
        value=[ChatMessage(role="user", content=prompt), ChatMessage(role="assistant", content=model_text())]
    )
    # What the model API received: one streaming chat completion, as OpenAI documents it.
    (request,) = server.requests
    assert request["method"] == "POST"
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert request["headers"]["content-type"] == "application/json"
    hits = agent.search_docs(prompt, limit=2)
    assert request["json"] == {"model": MODEL, "messages": agent.model_messages(prompt, hits), "stream": True}
    assert request["json"]["messages"][-1] == {"role": "user", "content": prompt}
    assert json.dumps(hits, indent=2) in request["json"]["messages"][0]["content"]  # the tool's result


@pytest.mark.parametrize(
    ("prompt", "message", "deltas"),
    [
        ("401", "The model API answered HTTP 401.", 0),
        ("error mid-stream", "The model API reported an error in the middle of its answer.", 2),
        ("cut short", "The model's stream ended early.", 2),
    ],
)
async def test_model_failures_end_the_run_with_an_error(
    model_demo: tuple[str, Path], prompt: str, message: str, deltas: int
) -> None:
    async with httpx.AsyncClient(base_url=model_demo[0], timeout=10) as http:
        events = (await read_run(http, await start_run(http, prompt))).events

    assert outline(events)[:7] == OUTLINE[:7]
    assert [event.value for event in events if isinstance(event, Delta)] == [
        p for p in MODEL_PIECES[:3] if p
    ][:deltas]
    assert events[-2:] == [Error(message=message, code="model_error", step="answer"), Done()]
    assert API_KEY not in json.dumps([event.model_dump() for event in events])
    assert API_KEY not in model_demo[1].read_text()  # nor in the server's log


async def test_an_unreachable_model_api_is_an_error(llm: ModuleType) -> None:
    config = llm.ModelConfig(api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(llm.ModelError, match=r"^The model API could not be reached \(ConnectError\)\.$"):
        async for _ in llm.stream_chat(config, [{"role": "user", "content": "hi"}]):
            pass


def test_the_model_comes_from_the_environment(llm: ModuleType) -> None:
    from_env = llm.ModelConfig.from_env
    assert from_env({}) is None
    assert from_env({"OPENAI_API_KEY": "  ", "OPENAI_BASE_URL": "http://x"}) is None
    assert from_env({"OPENAI_API_KEY": "k"}) == llm.ModelConfig(
        "k", "https://api.openai.com/v1", "gpt-4o-mini"
    )
    custom = from_env(
        {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://h:1/v1/", "STREAMFLOW_DEMO_MODEL": "m"}
    )
    assert custom == llm.ModelConfig("k", "http://h:1/v1", "m")
    assert custom.url == "http://h:1/v1/chat/completions"
    assert "secret-key" not in repr(llm.ModelConfig("secret-key"))
