"""HTMXEncoder in a real browser: htmx 2 + htmx-ext-sse (from node_modules) in Debian's chromium.

One uvicorn server and one chromium run (``tests/browser/drive.mjs``) serve every page;
the tests assert, in Python, on what the driver read back from each page's DOM:

- the chat fragments are swapped in, in both modes, with the page's text exactly the run's
  text (a code block keeps its lines and blank lines; CRLF, split CRLF and CR are line breaks);
- model text ``<img src=x onerror=...>`` / ``<script>`` is shown as text and runs nothing
  (and the same page with the seed article's unescaped fragments *is* exploited: the check
  has teeth);
- ``sse-close="done"`` closes the EventSource: one request to the stream in a second after
  done (and without ``sse-close`` the page reconnects and re-runs the agent; a 204 does not
  stop htmx-ext-sse either: it reconnects with backoff);
- one element can log text, steps and tool calls in order (``sse-swap="delta,step,tool"``);
- a multi-turn chat (a form posts, each turn opens and closes its own EventSource) works;
- separately, the browser's own ``EventSource`` gets every ``JSONEncoder`` payload intact
  (line breaks of all kinds, leading spaces, ``data:`` inside, non-ASCII), and raw
  :func:`~streamflow.sse.frame` text with only CR and CRLF turned into LF.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from html import escape
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Encoder,
    Event,
    EventStreamResponse,
    JSONEncoder,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    frame,
)
from streamflow.encoders.htmx import HTMXEncoder
from tests.browser import ARTIFACTS, artifact, drive, finished
from tests.conftest import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "htmx"
SCRIPTS = {  # what unpkg/jsdelivr would serve ("unpkg" in each package.json), from node_modules
    "htmx.min.js": ROOT / "node_modules/htmx.org/dist/htmx.min.js",
    "sse.min.js": ROOT / "node_modules/htmx-ext-sse/dist/sse.min.js",
}

# --- the scripted runs -------------------------------------------------------------------

QUESTION = "Show me a loop <b>please</b>"
XSS_IMG = '<img src=x onerror="window.__pwned=1">'
XSS_SCRIPT = "<script>window.__pwned=2</script>"
CODE = "for i in range(3):\n\n    print(i)\n"  # a blank line and indentation inside the block
PLAN_TEXT = "Let me look that up.\r\n"  # a CRLF
ANSWER_PIECES = [
    "Here is a loop:\n\n```python\n",
    "for i in range(3):\n",
    "\n",
    "    print(i)\r",  # a CRLF split across two deltas: one line break
    "\n",
    "```\n",
    "Careful with ",
    XSS_IMG,
    " and ",
    XSS_SCRIPT,
    " & &lt; \u2014 \u00e9 \u65e5\u672c\u8a9e \U0001f642\rthe end.",  # a lone CR
]


def lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


FULL_TEXT = lf(PLAN_TEXT + "".join(ANSWER_PIECES))
SEARCH_ARGUMENTS = {"q": "python <loop>"}
SEARCH_OUTPUT = {"hits": ["for loop", "while <loop>"]}


async def chat_run() -> AsyncIterator[Event]:
    """Two steps, deltas, a tool call and its result, the chat history before and after."""
    yield ChatHistory(value=[ChatMessage(role="user", content=QUESTION)])
    yield StepStart(step="plan", index=1, total=2)
    yield Delta(value=PLAN_TEXT, step="plan")
    yield ToolCall(id="call-1", name="search", arguments=SEARCH_ARGUMENTS, step="plan")
    await anyio.sleep(0.02)
    yield ToolResult(id="call-1", output=SEARCH_OUTPUT, step="plan")
    yield StepEnd(step="plan")
    yield StepStart(step="answer", index=2, total=2)
    for piece in ANSWER_PIECES:
        yield Delta(value=piece, step="answer")
        await anyio.sleep(0.01)
    yield StepEnd(step="answer", output={"tokens": 42})
    yield ChatHistory(
        value=[ChatMessage(role="user", content=QUESTION), ChatMessage(role="assistant", content=FULL_TEXT)]
    )


async def error_run() -> AsyncIterator[Event]:
    """Text, then the agent fails: the stream carries hide_exception's generic message."""
    yield StepStart(step="answer")
    yield Delta(value="Partial answer")
    await anyio.sleep(0.02)
    raise RuntimeError("secret sk-123 in the traceback")


RUNS = {"chat": chat_run, "error": error_run}


def fenced_code(text: str) -> str:
    """A renderer as the docs ask for one: ``` blocks become <pre><code>, and it escapes."""
    out = []
    for i, part in enumerate(text.split("```")):
        if i % 2:
            _info, _, code = part.partition("\n")
            out.append(f"<pre><code>{escape(code)}</code></pre>")
        elif part:
            out.append(f"<p>{escape(part)}</p>")
    return "".join(out)


class ArticleEncoder(HTMXEncoder):
    """The seed article's fragments: the message so far put into the HTML *unescaped*.
    Only here to show that the XSS check catches what HTMXEncoder prevents."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = ""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if isinstance(event, Delta):
            self.raw += event.value
            return frame(f'<div class="sf-message">{self.raw}</div>', event="message", id=id)
        return super().encode(event, id=id)


class QuickRetry:
    """An encoder plus ``retry: 100`` first, so that a page which failed to close its
    EventSource on ``done`` reconnects within the test's wait (Chrome's default is 3 s).
    (Test code: the one hand-written SSE line here sets no data.)"""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.media_type = inner.media_type
        self.headers: Mapping[str, str] = inner.headers

    def open(self) -> bytes:
        return b"retry: 100\n\n" + self.inner.open()

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        return self.inner.encode(event, id=id)

    def close(self) -> bytes:
        return self.inner.close()


class RawTextEncoder(JSONEncoder):
    """Each delta's text as the frame's data itself (frame() splits its lines); done named."""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if isinstance(event, Delta):
            return frame(event.value, id=id)
        if isinstance(event, Done):
            return frame("", event="done", id=id)
        return b""


# What the browser's EventSource must deliver intact.
EVENTSOURCE_VALUES = [
    "a\n\nb",
    "\n\n",
    "\r",
    "\r\n",
    "x\r\ny\rz\n",
    "\r\r\n\n",
    "  two leading spaces",
    " ",
    "data: inside",
    "data: x\n\nevent: error\nid: 1\nretry: 1\n",
    ": not a comment",
    "\u00e9 \u65e5\u672c\u8a9e \U0001f642 \u2028\u2029",
    "\ufeffa BOM, not at the start of the stream",
    "nul\x00inside",
    "",
    "trailing space ",
    "</script><img src=x onerror=alert(1)>",
]


# --- the app -------------------------------------------------------------------------------

stream_requests: Counter[str] = Counter()  # requests per page key, counted by the server


def page(request: Request) -> HTMLResponse:
    q = request.query_params
    mode = q.get("mode", "replace")
    stream_url = "/stream?" + urlencode({k: v for k, v in q.items() if k != "close"})
    answer = {
        "replace": '<section id="answer" sse-swap="message"></section>',
        "append": '<section id="answer" class="sf-message" sse-swap="delta" hx-swap="beforeend"></section>',
        # text, steps and tool calls interleaved in one element
        "log": '<section id="answer" class="sf-message" sse-swap="delta,step,tool" hx-swap="beforeend">'
        "</section>",
    }[mode]
    html = Template((HERE / "chat.html").read_text()).substitute(
        title=escape(q["key"]),
        stream_url=escape(stream_url),
        close='sse-close="done"' if q.get("close", "1") == "1" else "",
        answer=answer,
    )
    return HTMLResponse(html)


def stream(request: Request) -> EventStreamResponse:
    q = request.query_params
    stream_requests[q["key"]] += 1
    encoder: Encoder
    if q.get("encoder") == "article":
        encoder = ArticleEncoder()
    elif q.get("render") == "fenced":
        encoder = HTMXEncoder(render=fenced_code)
    else:
        encoder = HTMXEncoder(mode="replace" if q.get("mode", "replace") == "replace" else "append")
    return EventStreamResponse(RUNS[q.get("run", "chat")](), encoder=QuickRetry(encoder))


def no_content(request: Request) -> Response:
    stream_requests[request.query_params["key"]] += 1
    return Response(status_code=204)


def no_content_page(request: Request) -> HTMLResponse:
    html = Template((HERE / "chat.html").read_text()).substitute(
        title="204", stream_url="/no-content?key=no-content", close='sse-close="done"', answer=""
    )
    return HTMLResponse(html)


def eventsource_page(request: Request) -> HTMLResponse:
    kind = request.query_params["kind"]
    html = Template((HERE / "eventsource.html").read_text()).substitute(
        title=kind, kind=kind, stream_url=f"/eventsource-stream?kind={kind}"
    )
    return HTMLResponse(html)


def eventsource_stream(request: Request) -> EventStreamResponse:
    encoder = JSONEncoder() if request.query_params["kind"] == "json" else RawTextEncoder()
    return EventStreamResponse(list(EVENTSOURCE_VALUES), encoder=encoder)


turn_prompts: dict[str, str] = {}  # turn id -> the question


def turns_page(request: Request) -> HTMLResponse:
    return HTMLResponse((HERE / "turns.html").read_text())


async def new_turn(request: Request) -> HTMLResponse:
    """POST /turns: the question, and an element whose EventSource streams the reply."""
    prompt = parse_qs((await request.body()).decode()).get("prompt", [""])[0]
    turn_id = str(len(turn_prompts) + 1)
    turn_prompts[turn_id] = prompt
    html = Template((HERE / "turn.html").read_text()).substitute(
        prompt=escape(prompt), stream_url=f"/turns/{turn_id}/stream"
    )
    return HTMLResponse(html)


async def echo_run(prompt: str) -> AsyncIterator[Event]:
    yield StepStart(step="answer")
    for word in re.split(r"(\s+)", f"You said: {prompt}\n\n```\n{prompt}\n```\n"):
        yield Delta(value=word)
        await anyio.sleep(0.005)
    yield StepEnd(step="answer")


def turn_stream(request: Request) -> EventStreamResponse:
    turn_id = request.path_params["turn"]
    stream_requests[f"turn-{turn_id}"] += 1
    encoder = QuickRetry(HTMXEncoder(render=fenced_code))
    return EventStreamResponse(echo_run(turn_prompts[turn_id]), encoder=encoder)


def script(request: Request) -> FileResponse:
    return FileResponse(SCRIPTS[request.path_params["name"]], media_type="text/javascript")


app = Starlette(
    routes=[
        Route("/page", page),
        Route("/stream", stream),
        Route("/no-content", no_content),
        Route("/page-204", no_content_page),
        Route("/eventsource", eventsource_page),
        Route("/eventsource-stream", eventsource_stream),
        Route("/turns", turns_page),
        Route("/turns", new_turn, methods=["POST"]),
        Route("/turns/{turn}/stream", turn_stream),
        Route("/static/{name}", script),
    ]
)

# --- one browser run for every page --------------------------------------------------------

TURN_PROMPTS = [f"first {XSS_IMG}", "second & <b>bold</b>   spaced"]
CLOSED = "window.__test && window.__test.closed === 'message'"
WAIT_AFTER_DONE = 1000  # ms: far longer than the 100 ms reconnection time the streams set


def chat_page(key: str, **params: str) -> str:
    return "/page?" + urlencode({"key": key, **params})


SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "replace",
        "path": chat_page("replace", mode="replace", render="fenced"),
        "until": CLOSED,
        "wait": WAIT_AFTER_DONE,
        "screenshot": artifact("htmx-replace.png"),
    },
    {
        "name": "replace-plain",
        "path": chat_page("replace-plain", mode="replace"),
        "until": CLOSED,
        "wait": WAIT_AFTER_DONE,
    },
    {
        "name": "append",
        "path": chat_page("append", mode="append"),
        "until": CLOSED,
        "wait": WAIT_AFTER_DONE,
        "screenshot": artifact("htmx-append.png"),
    },
    {
        "name": "log",
        "path": chat_page("log", mode="log"),
        "until": CLOSED,
        "wait": WAIT_AFTER_DONE,
    },
    {
        "name": "error",
        "path": chat_page("error", mode="append", run="error"),
        "until": CLOSED,
        "wait": WAIT_AFTER_DONE,
        "screenshot": artifact("htmx-error.png"),
    },
    {  # control: the seed article's unescaped fragments are exploitable
        "name": "article",
        "path": chat_page("article", encoder="article"),
        "until": CLOSED,
        "wait": 300,
    },
    {  # control: without sse-close the page reconnects when the server ends the stream
        "name": "no-close",
        "path": chat_page("no-close", mode="append", close="0"),
        "until": "window.__test && (window.__test.counts.done || 0) >= 1",
        "wait": WAIT_AFTER_DONE,
    },
    {  # a 204 does not stop htmx-ext-sse: it reconnects with backoff (500 ms, 1 s, ...)
        "name": "no-content",
        "path": "/page-204",
        "until": "window.__test && window.__test.sseErrors >= 1",
        "wait": 1300,
    },
    {  # a chat: each POST /turns adds a turn whose own EventSource streams the reply
        "name": "turns",
        "path": "/turns",
        "actions": [
            {"fill": ["#prompt", TURN_PROMPTS[0]]},
            {"click": "#send"},
            {"waitFor": "window.__test.closed >= 1"},
            {"fill": ["#prompt", TURN_PROMPTS[1]]},
            {"click": "#send"},
        ],
        "until": "window.__test.closed >= 2",
        "wait": WAIT_AFTER_DONE,
        "screenshot": artifact("htmx-turns.png"),
    },
    {
        "name": "eventsource-json",
        "path": "/eventsource?kind=json",
        "until": "window.__test && window.__test.done",
    },
    {
        "name": "eventsource-raw",
        "path": "/eventsource?kind=raw",
        "until": "window.__test && window.__test.done",
    },
]


@pytest.fixture(scope="module")
def browser() -> Iterator[dict[str, Any]]:
    """Serve the app, run every scenario in one chromium, return the driver's results."""
    missing = [str(p) for p in SCRIPTS.values() if not p.exists()]
    if missing:
        pytest.skip(f"node_modules not installed (npm ci): {missing}")
    stream_requests.clear()
    turn_prompts.clear()
    read_state = (HERE / "read_state.js").read_text()
    with serve(app) as base_url:
        results = drive(base_url, [{**scenario, "state": read_state} for scenario in SCENARIOS], timeout=90)
        for result in results.values():
            result["base_url"] = base_url
        yield results


def stream_request_count(result: dict[str, Any]) -> int:
    return sum(
        "/stream?" in url or "/no-content?" in url or url.endswith("/stream") for url in result["requests"]
    )


# --- the chat pages --------------------------------------------------------------------------

EXPECTED_ACTIVITY_CLASSES = [
    "sf-step sf-step-start",
    "sf-tool sf-tool-call",
    "sf-tool sf-tool-result",
    "sf-step sf-step-end",
    "sf-step sf-step-start",
    "sf-step sf-step-end",
]


def check_chat_page(state: dict[str, Any]) -> None:
    assert [cls for cls, _ in state["activity"]] == EXPECTED_ACTIVITY_CLASSES
    texts = [text for _, text in state["activity"]]
    assert texts[0] == "plan 1/2"
    assert texts[1].startswith("search")
    assert json.loads(texts[1][len("search") :]) == SEARCH_ARGUMENTS
    assert texts[2].startswith("search")
    assert json.loads(texts[2][len("search") :]) == SEARCH_OUTPUT
    assert texts[3] == "plan"
    assert texts[4] == "answer 2/2"
    assert texts[5].startswith("answer")
    assert json.loads(texts[5][len("answer") :]) == {"tokens": 42}
    assert state["history"] == [["user", QUESTION], ["assistant", FULL_TEXT]]
    assert state["errors"] == ""
    assert state["status"] == "", "done's empty fragment cleared the 'Thinking…' line"
    # The model's markup is text: no element from it, nothing ran.
    assert state["pwned"] is None
    assert state["images"] == 0
    assert state["bodyScripts"] == 0
    assert XSS_IMG in state["answerText"]
    assert XSS_SCRIPT in state["answerText"]


@pytest.mark.parametrize("name", ["replace", "replace-plain", "append"])
def test_chat_fragments_are_swapped_in_and_the_page_closes_on_done(
    browser: dict[str, Any], name: str
) -> None:
    result = browser[name]
    state = finished(result)
    assert result["consoleErrors"] == []
    check_chat_page(state)
    test = state["test"]
    assert test["closed"] == "message", "sse-close='done' closed the EventSource"
    assert test["sseErrors"] == 0, "no connection error: the page closed before the server ended"
    assert test["opened"] == 1
    # one text frame per delta, but the "\n" that ends a split CRLF adds no text: no frame
    messages = len([PLAN_TEXT, *ANSWER_PIECES]) - 1
    text_event = "delta" if name == "append" else "message"
    assert test["counts"] == {
        "chat_history": 2,
        "step": 4,
        "tool": 2,
        text_event: messages,
        "done": 1,
    }
    assert stream_request_count(result) == 1, "no reconnect in the second after done"
    assert stream_requests[name] == 1, "the server saw one request: the run ran once"


def test_replace_mode_with_a_renderer_keeps_the_code_block_lines(browser: dict[str, Any]) -> None:
    state = finished(browser["replace"])
    assert state["pres"] == [CODE], "the <pre>'s text has its newlines and its blank line"
    assert state["answerHtml"].count("<pre>") == 1
    assert "<br" not in state["answerHtml"]


@pytest.mark.parametrize("name", ["replace-plain", "append"])
def test_escaped_text_is_exactly_the_run_text(browser: dict[str, Any], name: str) -> None:
    state = finished(browser[name])
    assert state["answerText"] == FULL_TEXT
    assert CODE in state["answerText"]
    assert "<br" not in state["answerHtml"]


def test_one_element_can_log_text_steps_and_tools_in_order(browser: dict[str, Any]) -> None:
    state = finished(browser["log"])
    assert state["answerChildren"] == EXPECTED_ACTIVITY_CLASSES
    assert state["answerOwnText"] == FULL_TEXT, "the text nodes between the fragments are the text"
    assert state["pwned"] is None
    assert state["images"] == 0


def test_an_error_run_shows_the_generic_message_and_closes(browser: dict[str, Any]) -> None:
    result = browser["error"]
    state = finished(result)
    assert state["answerText"] == "Partial answer"
    assert state["errors"] == "The stream failed because of an internal error."
    assert [cls for cls, _ in state["activity"]] == ["sf-step sf-step-start"]
    assert state["status"] == ""
    assert state["test"]["closed"] == "message"
    assert state["test"]["counts"] == {"step": 1, "delta": 1, "stream_error": 1, "done": 1}
    assert "sk-123" not in json.dumps(state)
    assert stream_request_count(result) == 1
    assert stream_requests["error"] == 1


def test_a_chat_adds_turns_that_each_stream_once(browser: dict[str, Any]) -> None:
    result = browser["turns"]
    state = finished(result)
    assert result["consoleErrors"] == []
    assert state["pwned"] is None
    assert state["images"] == 0
    assert [turn["you"] for turn in state["turns"]] == TURN_PROMPTS
    for turn, prompt in zip(state["turns"], TURN_PROMPTS, strict=True):
        assert turn["pres"] == [prompt + "\n"]
        assert turn["answer"] == f"You said: {prompt}\n\n{prompt}\n\n"  # <p>, <pre>, <p>
        assert turn["activity"] == ["sf-step sf-step-start", "sf-step sf-step-end"]
    assert state["test"] == {"sseErrors": 0, "opened": 2, "closed": 2}
    assert stream_requests["turn-1"] == stream_requests["turn-2"] == 1
    assert stream_request_count(result) == 2


# --- the controls: the checks above would catch the failures -----------------------------------


def test_control_the_articles_unescaped_fragments_run_model_markup(browser: dict[str, Any]) -> None:
    state = finished(browser["article"])
    assert state["pwned"] is not None, "the same page with unescaped fragments is exploited"
    assert state["images"] >= 1


def test_control_without_sse_close_the_page_reconnects_and_reruns(browser: dict[str, Any]) -> None:
    result = browser["no-close"]
    finished(result)
    assert stream_request_count(result) >= 2
    assert stream_requests["no-close"] >= 2, "each reconnect ran the agent again"


def test_a_204_does_not_stop_htmx_ext_sse(browser: dict[str, Any]) -> None:
    result = browser["no-content"]
    state = finished(result)
    assert state["test"]["sseErrors"] >= 2
    assert stream_request_count(result) >= 2, "htmx-ext-sse reconnected after the 204"


# --- the browser's own EventSource -----------------------------------------------------------


def test_eventsource_gets_every_json_encoder_payload_intact(browser: dict[str, Any]) -> None:
    state = finished(browser["eventsource-json"])
    # JSON escapes CR and LF, so the values arrive byte for byte, CR included.
    assert state["test"]["values"] == EVENTSOURCE_VALUES
    assert state["test"]["errors"] == 0


def test_eventsource_gets_raw_frame_text_with_cr_and_crlf_as_lf(browser: dict[str, Any]) -> None:
    state = finished(browser["eventsource-raw"])
    assert state["test"]["values"] == [lf(v) for v in EVENTSOURCE_VALUES]
    assert state["test"]["errors"] == 0


def test_screenshots_are_saved(browser: dict[str, Any]) -> None:
    for name in ["htmx-replace.png", "htmx-append.png", "htmx-error.png", "htmx-turns.png"]:
        assert (ARTIFACTS / name).stat().st_size > 1000
