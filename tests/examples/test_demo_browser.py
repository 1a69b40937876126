"""The demo's page in Debian's headless chromium (``tests/browser``), against the demo app
served in-process by uvicorn, with a middleware that records every stream connection.

One chromium runs every scenario (each in its own page, session and run); the tests assert
on what each page showed and on what the server saw:

- the JSON view shows the answer as it streams (a screenshot mid-stream and one at the end;
  the mid-stream text is a strict prefix of the final text, which is exactly the answer,
  with a ``<script>`` in it shown as text);
- the events inspector lists every event of the run, in order, with its id;
- **Drop connection** mid-answer: the server ends the connection without ``done``, the
  browser's EventSource reconnects with ``Last-Event-ID``, and the page ends with the exact
  answer, every event once (JSON view and htmx view);
- the htmx view, switched to in the middle of the run, renders the same answer from the
  same run, and so does the JSON view switched back to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs

import pytest
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamflow.sse import SSEDecoder
from tests.browser import artifact, drive, finished
from tests.conftest import serve
from tests.examples.test_demo_example import load_demo

pytestmark = pytest.mark.slow

DELAY = 0.04  # seconds per token: an answer of ~70 tokens streams for about 3 s
STREAM_PATH = re.compile(r"/runs/([^/]+)/stream")
XSS_PROMPT = 'Show me <script>window.__pwned = 1</script> & <img src=x onerror="window.__pwned = 2">'

STATE = "document.querySelector('#status').dataset.state"
JSON_TEXT = "document.querySelector('#json-answer').textContent"
HTMX_TEXT = "(document.querySelector('#htmx-answer') || {textContent: ''}).textContent"


@dataclass
class StreamConnection:
    """One request to ``/runs/{run}/stream``, as the server answered it."""

    run: str
    format: str
    last_event_id: str | None
    ids: list[str] = field(default_factory=list)  # of the events written to the socket
    names: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        pairs = zip(self.names, self.data, strict=True)
        return any(name == "done" or data == '{"type":"done"}' for name, data in pairs)

    @property
    def deltas(self) -> int:
        pairs = zip(self.names, self.data, strict=True)
        return sum(name == "delta" or '"type":"delta"' in data for name, data in pairs)


class RecordStreams:
    """Passes everything through; records what each stream connection carried."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.connections: list[StreamConnection] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = STREAM_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope["query_string"].decode())
        record = StreamConnection(
            run=match[1],
            format=query.get("format", ["json"])[0],
            last_event_id=Headers(scope=scope).get("last-event-id"),
        )
        self.connections.append(record)
        decoder = SSEDecoder()

        async def recording_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                for sse in decoder.feed(message.get("body", b"")):
                    record.ids.append(sse.id)
                    record.names.append(sse.event)
                    record.data.append(sse.data)

        await self.app(scope, receive, recording_send)

    def of(self, run: str) -> list[StreamConnection]:
        return [connection for connection in self.connections if connection.run == run]


@pytest.fixture(scope="module")
def agent(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_demo(load_example, "agent")


@pytest.fixture(scope="module")
def server(load_example: Callable[[str], ModuleType]) -> Iterator[tuple[str, RecordStreams]]:
    demo = load_demo(load_example, "app")
    recorder = RecordStreams(demo.create_app(delay=DELAY, model=None))
    with serve(recorder, lifespan="on") as url:  # the hub lives in the app's lifespan
        yield url, recorder


def send(prompt: str, view: str | None = None) -> list[dict[str, Any]]:
    """The actions that pick a view (before any run) and send ``prompt``."""
    actions: list[dict[str, Any]] = [{"click": f"#tab-{view}"}] if view else []
    return [*actions, {"fill": ["#prompt", prompt]}, {"click": "#send"}]


def done_in(view: str) -> str:
    return f"demo.view === '{view}' && demo.reader && demo.reader.finished && {STATE} === 'done'"


def streaming_past(text: str, chars: int) -> str:
    """``text`` (a JS expression) is longer than ``chars`` and the view is still streaming."""
    return f"{text}.length > {chars} && {STATE} === 'streaming'"


READER = (
    "{run: demo.run, ids: demo.reader.ids, opens: demo.reader.opens,"
    " status: document.querySelector('#status').textContent}"
)

SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "stream",
        "path": "/",
        "actions": [
            *send(XSS_PROMPT),
            {"waitFor": streaming_past(JSON_TEXT, 200)},
            {"evaluate": f"window.__mid = {{text: {JSON_TEXT}, state: {STATE}}}"},
            {"screenshot": artifact("demo-mid.png")},
        ],
        "until": done_in("json"),
        "state": f"""({{
            ...{READER},
            mid: window.__mid,
            text: {JSON_TEXT},
            code: document.querySelector('#json-answer pre').textContent,
            elements: [...document.querySelectorAll('#json-answer *')].map((e) => e.tagName),
            steps: [...document.querySelectorAll('#json-steps li')]
                .map((li) => [li.className, li.firstChild.textContent]),
            tool: document.querySelector('#json-tools .tool strong').textContent,
            pwned: window.__pwned ?? null,
        }})""",
        "screenshot": artifact("demo-end.png"),
    },
    {
        "name": "inspector",
        "path": "/",
        "actions": send("Inspect me", "inspector"),
        "until": done_in("inspector"),
        "state": f"""({{
            ...{READER},
            rows: [...document.querySelectorAll('#inspector-rows tr')].map((tr) =>
                [tr.className, ...[...tr.cells].map((td) => td.textContent)]),
        }})""",
    },
    {
        "name": "reconnect",
        "path": "/",
        "actions": [*send("Drop me"), {"waitFor": streaming_past(JSON_TEXT, 150)}, {"click": "#drop"}],
        "until": done_in("json"),
        "state": f"({{...{READER}, text: {JSON_TEXT}}})",
        "screenshot": artifact("demo-reconnect.png"),
    },
    {
        "name": "htmx",
        "path": "/",
        "actions": [
            *send("Same <b>run</b>, htmx"),
            {"waitFor": streaming_past(JSON_TEXT, 100)},
            {"click": "#tab-htmx"},  # in the middle of the run
            {"waitFor": done_in("htmx")},
            {"screenshot": artifact("demo-htmx.png")},
            {
                "evaluate": f"""window.__htmx = {{
                    ...{READER},
                    text: {HTMX_TEXT},
                    bold: document.querySelectorAll('#htmx-answer b').length,
                    steps: [...document.querySelectorAll('#htmx-activity .sf-step')]
                        .map((e) => [e.className, e.querySelector('.sf-step-name').textContent]),
                    tools: [...document.querySelectorAll('#htmx-activity .sf-tool')]
                        .map((e) => [e.className, e.querySelector('.sf-tool-name').textContent]),
                }}"""
            },
            {"click": "#tab-json"},  # and back: the JSON view reads the same run again
        ],
        "until": done_in("json"),
        "state": f"({{htmx: window.__htmx, json: {{...{READER}, text: {JSON_TEXT}}}}})",
    },
    {
        "name": "htmx-reconnect",
        "path": "/",
        "actions": [
            *send("Drop htmx", "htmx"),
            {"waitFor": streaming_past(HTMX_TEXT, 150)},
            {"click": "#drop"},
        ],
        "until": done_in("htmx"),
        "state": f"({{...{READER}, text: {HTMX_TEXT}}})",
    },
]


@pytest.fixture(scope="module")
def results(server: tuple[str, RecordStreams]) -> dict[str, Any]:
    for name in ("demo-mid.png", "demo-end.png", "demo-reconnect.png", "demo-htmx.png"):
        Path(artifact(name)).unlink(missing_ok=True)
    return drive(server[0], SCENARIOS)


def scripted_run(agent: ModuleType, prompt: str) -> list[tuple[str, str]]:
    """(SSE event name, step) of each event of the scripted run, as NamedEventEncoder names them."""
    tokens = agent.tokenize(agent.scripted_answer(prompt))
    head = [("step_start", "route"), ("step_end", "route"), ("step_start", "lookup")]
    head += [("tool_call", "lookup"), ("tool_result", "lookup"), ("step_end", "lookup")]
    answer = [("step_start", "answer")] + [("delta", "answer")] * len(tokens) + [("step_end", "answer")]
    return head + answer + [("chat_history", ""), ("done", "")]


def ids_of(run: str, count: int) -> list[str]:
    return [f"{run}.{n}" for n in range(1, count + 1)]


def test_the_answer_streams_into_the_page(
    results: dict[str, Any], server: tuple[str, RecordStreams], agent: ModuleType
) -> None:
    result = results["stream"]
    state = finished(result)
    assert result["consoleErrors"] == []
    answer = agent.scripted_answer(XSS_PROMPT)

    # Mid-stream, the page showed a part of the answer; at the end, all of it, exactly.
    assert state["mid"]["state"] == "streaming"
    assert state["mid"]["text"]
    assert len(state["mid"]["text"]) < len(state["text"])
    assert state["text"].startswith(state["mid"]["text"])
    assert state["text"] == answer
    assert Path(artifact("demo-mid.png")).stat().st_size > 10_000
    assert Path(artifact("demo-end.png")).stat().st_size > 10_000

    # The prompt's <script> and <img> are text: no element came from the answer, nothing ran.
    assert state["pwned"] is None
    assert set(state["elements"]) <= {"PRE", "CODE", "SPAN"}
    assert "<script>window.__pwned = 1</script>" in state["text"]
    code = answer[answer.index("```python") : answer.index("```\n\n", answer.index("```python")) + 4]
    assert state["code"] == code  # the fenced block is one <pre>, its blank lines kept
    assert state["steps"] == [["finished", "route"], ["finished", "lookup"], ["finished", "answer"]]
    assert state["tool"] == "search_docs"
    assert state["status"].startswith(
        f"Done: {len(scripted_run(agent, XSS_PROMPT))} events over 1 connection in "
    )

    # One connection, every event once.
    run = state["run"]
    count = len(scripted_run(agent, XSS_PROMPT))
    assert state["ids"] == ids_of(run, count)
    assert state["opens"] == 1
    (connection,) = server[1].of(run)
    assert (connection.format, connection.last_event_id, connection.done) == ("json", None, True)
    assert connection.ids == ids_of(run, count)


def test_the_inspector_lists_every_event_in_order(results: dict[str, Any], agent: ModuleType) -> None:
    result = results["inspector"]
    state = finished(result)
    assert result["consoleErrors"] == []
    run = state["run"]
    rows = state["rows"]
    expected = scripted_run(agent, "Inspect me")

    assert rows[0][0] == "connection"
    assert rows[0][4:] == ["(open)", "", "", "connected"]
    events = [row for row in rows if row[0] == "event"]
    assert len(rows) == len(events) + 1  # no connection was lost
    assert [row[1] for row in events] == [str(n) for n in range(1, len(expected) + 1)]
    assert [(row[4], row[5]) for row in events] == expected
    assert [row[6] for row in events] == ids_of(run, len(expected))
    # Timing: ms since the view connected, never going back; +ms since the previous event.
    times = [int(row[2]) for row in events]
    assert times == sorted(times)
    assert all(re.fullmatch(r"\+\d+", row[3]) for row in events)
    assert sum(int(row[3][1:]) for row in events) == pytest.approx(times[-1], abs=len(events))
    # Details: each delta's text as JSON, the tool call, the step outputs.
    tokens = agent.tokenize(agent.scripted_answer("Inspect me"))
    assert [row[7] for row in events if row[4] == "delta"] == [
        json.dumps(token, ensure_ascii=False) for token in tokens
    ]
    assert re.fullmatch(
        r'search_docs\(\{"query":"Inspect me","limit":2\}\) id=call_[0-9a-f]{8}', events[3][7]
    )
    assert [row[7] for row in events if row[4] == "step_end"] == [
        '{"intent":"docs_question","tool":"search_docs"}',
        '{"hits":2}',
        '{"answered_by":"scripted"}',
    ]
    assert events[-2][7] == "2 messages"
    assert state["ids"] == ids_of(run, len(expected))


def test_a_dropped_connection_resumes_without_a_gap_or_a_repeat(
    results: dict[str, Any], server: tuple[str, RecordStreams], agent: ModuleType
) -> None:
    result = results["reconnect"]
    state = finished(result)
    assert result["consoleErrors"] == []
    run = state["run"]
    count = len(scripted_run(agent, "Drop me"))

    # The page: the exact answer, each event received once, over two connections.
    assert state["text"] == agent.scripted_answer("Drop me")
    assert state["ids"] == ids_of(run, count)
    assert state["opens"] == 2
    assert state["status"].startswith(f"Done: {count} events over 2 connections in ")

    # The server: the first connection ended mid-answer without done; the browser came back
    # by itself with the id of the last event it got, and the hub went on right after it.
    first, second = server[1].of(run)
    assert (first.last_event_id, first.done) == (None, False)
    assert 0 < first.deltas < len(agent.tokenize(agent.scripted_answer("Drop me")))
    assert second.last_event_id == first.ids[-1]
    assert second.done
    assert first.ids + second.ids == ids_of(run, count)


def test_the_htmx_view_renders_the_same_run(
    results: dict[str, Any], server: tuple[str, RecordStreams], agent: ModuleType
) -> None:
    result = results["htmx"]
    state = finished(result)
    assert result["consoleErrors"] == []
    prompt = "Same <b>run</b>, htmx"
    answer = agent.scripted_answer(prompt)
    htmx, again = state["htmx"], state["json"]
    run = htmx["run"]
    count = len(scripted_run(agent, prompt))

    # The htmx view, opened in the middle of the run, shows the whole answer (the hub
    # replayed what it had missed, then it followed live), escaped: "<b>" is text.
    assert htmx["text"] == answer
    assert htmx["bold"] == 0
    assert htmx["steps"] == [
        ["sf-step sf-step-start", "route"],
        ["sf-step sf-step-end", "route"],
        ["sf-step sf-step-start", "lookup"],
        ["sf-step sf-step-end", "lookup"],
        ["sf-step sf-step-start", "answer"],
        ["sf-step sf-step-end", "answer"],
    ]
    assert htmx["tools"] == [
        ["sf-tool sf-tool-call", "search_docs"],
        ["sf-tool sf-tool-result", "search_docs"],
    ]
    assert htmx["ids"] == ids_of(run, count)[: len(htmx["ids"])]  # the events it swapped or tracked
    # ... and the JSON view, switched back to, reads the same run again.
    assert again["run"] == run
    assert again["text"] == answer
    assert again["ids"] == ids_of(run, count)

    # The server: one run, three connections; the first (JSON) was closed by the switch.
    first, middle, last = server[1].of(run)
    assert [(c.format, c.last_event_id) for c in (first, middle, last)] == [
        ("json", None),
        ("htmx", None),
        ("json", None),
    ]
    assert not first.done
    assert middle.done
    assert last.done
    assert middle.ids == last.ids == ids_of(run, count)
    assert Path(artifact("demo-htmx.png")).stat().st_size > 10_000


def test_the_htmx_view_resumes_a_dropped_connection(
    results: dict[str, Any], server: tuple[str, RecordStreams], agent: ModuleType
) -> None:
    result = results["htmx-reconnect"]
    state = finished(result)
    # htmx logs the EventSource's error event (the drop) to the console, and nothing else.
    htmx_js = f"{server[0]}/vendor/htmx-2.0.11.min.js"
    assert result["consoleErrors"] == [{"text": "[object Event]", "url": htmx_js}]
    run = state["run"]
    count = len(scripted_run(agent, "Drop htmx"))

    assert state["text"] == agent.scripted_answer("Drop htmx")
    assert state["opens"] == 2
    first, second = server[1].of(run)
    assert (first.format, first.last_event_id, first.done) == ("htmx", None, False)
    assert first.deltas > 0
    assert second.last_event_id == first.ids[-1]
    assert second.done
    assert first.ids + second.ids == ids_of(run, count)
