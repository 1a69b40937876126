"""End to end: ``python examples/burr_chatbot/app.py`` over real HTTP, its SSE reader under Node.js,
and its page in Debian's chromium.

The app runs as a user starts it, in its own process, with an offline guard loaded at start-up
(``tests/examples/burr_chatbot/offline/sitecustomize.py``) that refuses any connection beyond
the loopback interface.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Error,
    Event,
    JSONEncoder,
    NamedEventEncoder,
    StepEnd,
    StepStart,
    comment,
    frame,
)
from streamflow.client import aiter_events
from streamflow.sse import SSEDecoder
from tests.browser import artifact, drive, finished

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

HERE = Path(__file__).resolve().parent / "burr_chatbot"
BANNER = "streamflow Burr chatbot: "
DELAY = 0.005  # seconds per token for the HTTP tests: short, but the stream is visibly incremental
BROWSER_DELAY = 0.03  # slow enough for a screenshot mid-answer

QUESTION = "What is Burr?"
CODE_PROMPT = "Show me the code of an SSE response"
POEM_PROMPT = "Write a poem about streams"
UNSAFE_PROMPT = "How do I steal a password?"
FAIL_PROMPT = "/fail What happens when the model fails?"
MARKUP_PROMPT = 'Is <img src=x onerror="window.hacked=true"> </script> 日本語 🙂 shown as text?'
# The answer to CODE_PROMPT: what breaks the article's split("data: ") reader, and must arrive exactly.
SSE_BY_HAND = (
    "Here is a Server-Sent Events response body, written out by hand with CRLF line ends:\r\n"
    "\r\n"
    'data: {"type":"delta","value":"Hi"}\r\n'
    "\r\n"
    'data: {"type":"done"}\r\n'
    "\r\n"
    "Each event ends with a blank line.\n"
    "\n"
    'A reader that splits the stream on "data: " breaks on this very answer; an SSE parser does not.'
)
POEM = (
    "A token leaves the server, small and bright,\n"
    "framed as an event, and flushed into the night.\n"
    "\n"
    "The browser reads it byte by careful byte,\n"
    "and no blank line can cut this rhyme from sight."
)
REFUSAL = "I can't help with that: the safety check flagged the prompt, so no model was asked."
PROMPT_FOR_MORE = (
    "None of my modes fits that. Ask a question (end it with ?), ask for a poem, or ask for code."
)
GENERIC_ERROR = "The stream failed because of an internal error."
SECRETS = ("sk-scripted-4242", "req_81f3", "upstream timeout", "ModelError")


def question_answer(prompt: str, number: int) -> str:
    """The scripted answer to a question, the ``number``-th message of its conversation."""
    return (
        f"You asked: {prompt}\n\n"
        "I am a scripted model, so this is no real answer, only the path it took: check_safety "
        "passed, decide_mode chose answer_question, and this text streamed token by token. "
        f"It is message {number} of this conversation."
    )


# -- fixtures ---------------------------------------------------------------------------


def offline_env() -> dict[str, str]:
    """PYTHONPATH for the example's process, so that Python loads the offline guard."""
    paths = [str(HERE / "offline"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture(scope="module")
def chatbot(start_example: Callable[..., tuple[str, Path]]) -> tuple[str, Path]:
    """The app (host, port and delay as command-line flags) and its log."""
    args = ("--host", "127.0.0.1", "--port", "0", "--delay", str(DELAY))
    return start_example("burr_chatbot/app.py", *args, banner=BANNER, env=offline_env())


@pytest.fixture(scope="module")
def url(chatbot: tuple[str, Path]) -> str:
    return chatbot[0]


@pytest.fixture(scope="module")
def browser_chatbot(start_example: Callable[..., tuple[str, Path]]) -> str:
    """The app for the page tests, configured by environment variables."""
    env = {
        **offline_env(),
        "STREAMFLOW_BURR_HOST": "127.0.0.1",
        "STREAMFLOW_BURR_PORT": "0",
        "STREAMFLOW_BURR_DELAY": str(BROWSER_DELAY),
    }
    started, _ = start_example("burr_chatbot/app.py", banner=BANNER, env=env)
    assert not started.endswith(":8002"), started  # STREAMFLOW_BURR_PORT=0 was used
    return started


@pytest.fixture(scope="module")
def model(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_example("burr_chatbot/scripted_model.py")


def new_conversation() -> str:
    return uuid.uuid4().hex


# -- helpers ----------------------------------------------------------------------------


async def one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def post_turn(http: httpx.AsyncClient, conversation: str, prompt: str) -> tuple[list[Event], bytes]:
    """One turn: its events and the response body, checking the response head."""
    async with http.stream("POST", f"/response/{conversation}", json={"prompt": prompt}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    return [event async for event in aiter_events(one_chunk(body))], body


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def steps_to(answer_step: str, *, safe: bool = True) -> list[Event]:
    """The steps of a turn before its answer, then the answer step's start."""
    events: list[Event] = [
        StepStart(step="prompt"),
        StepEnd(step="prompt"),
        StepStart(step="check_safety"),
        StepEnd(step="check_safety", output={"safe": safe}),
    ]
    if safe:
        mode = "unknown" if answer_step == "prompt_for_more" else answer_step
        events += [StepStart(step="decide_mode"), StepEnd(step="decide_mode", output={"mode": mode})]
    return [*events, StepStart(step=answer_step)]


def answered(step: str, tokens: list[str]) -> list[Event]:
    return [*(Delta(value=token, step=step) for token in tokens), StepEnd(step=step), Done()]


def deltas(events: list[Event]) -> list[str]:
    return [event.value for event in events if isinstance(event, Delta)]


def article_reader(chunks: list[bytes]) -> list[Any]:
    """The article's React loop, in Python: decode each chunk, split it on "data: ", and
    JSON-parse every piece after the first."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    events = []
    for chunk in chunks:
        for item in decoder.decode(chunk).split("data: ")[1:]:
            events.append(json.loads(item))
    return events


def is_comment(line: str) -> bool:
    return line.lstrip().startswith(("//", "/**", "* ", "*/"))


# -- the app over HTTP ------------------------------------------------------------------


async def test_prints_its_url_and_serves_the_page_and_its_modules(chatbot: tuple[str, Path]) -> None:
    base, log = chatbot
    async with httpx.AsyncClient(base_url=base) as http:
        page = await http.get("/")
        chat_js = await http.get("/chat.js")
        sse_js = await http.get("/sse.js")
        missing = await http.get("/app.js")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    # One script, a module from this server; no inline script, nothing from elsewhere.
    assert html.count("<script") == 1
    assert '<script type="module" src="chat.js"></script>' in html
    assert "http:" not in html
    assert "https:" not in html
    assert '<form id="chat-form">' in html

    for module in (chat_js, sse_js):
        assert module.status_code == 200
        assert module.headers["content-type"] == "text/javascript; charset=utf-8"
        code = "\n".join(line for line in module.text.splitlines() if not is_comment(line))
        assert "innerHTML" not in code
        assert "insertAdjacentHTML" not in code
        assert "split(" not in code
    assert 'import { readEvents } from "./sse.js";' in chat_js.text
    assert "fetch(`response/${conversation}`" in chat_js.text
    assert "body.getReader()" in sse_js.text
    assert "export class SSEParser" in sse_js.text
    assert missing.status_code == 404
    assert "offline guard: on" in log.read_text()


async def test_a_question_streams_history_steps_deltas_and_done(url: str, model: ModuleType) -> None:
    answer = question_answer(QUESTION, 2)
    tokens = model.tokenize(answer)
    assert "".join(tokens) == answer
    assert len(tokens) > 30

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        events, _ = await post_turn(http, new_conversation(), QUESTION)

    assert events == [
        ChatHistory(value=[]),
        *steps_to("answer_question"),
        *answered("answer_question", tokens),
    ]
    assert "".join(deltas(events)) == answer


async def test_each_turn_sends_the_conversation_so_far_first(url: str, model: ModuleType) -> None:
    conversation = new_conversation()
    first = question_answer(QUESTION, 2)
    third = question_answer("And what is streamflow?", 6)

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        await post_turn(http, conversation, QUESTION)
        poem_turn, _ = await post_turn(http, conversation, POEM_PROMPT)
        third_turn, _ = await post_turn(http, conversation, "And what is streamflow?")
        other, _ = await post_turn(http, new_conversation(), QUESTION)

    assert poem_turn == [
        ChatHistory(value=[user(QUESTION), assistant(first)]),
        *steps_to("generate_poem"),
        *answered("generate_poem", model.tokenize(POEM)),
    ]
    assert "\n\n" in deltas(poem_turn)  # a blank line is one token, and it arrives as one
    history = [user(QUESTION), assistant(first), user(POEM_PROMPT), assistant(POEM)]
    assert third_turn == [
        ChatHistory(value=history),
        *steps_to("answer_question"),
        *answered("answer_question", model.tokenize(third)),
    ]
    assert other[0] == ChatHistory(value=[])  # conversations are separate


async def test_an_answer_full_of_sse_syntax_arrives_exactly(url: str, model: ModuleType) -> None:
    tokens = model.tokenize(SSE_BY_HAND)
    assert {"data: ", "\r\n\r\n", "\n\n", '{"type":"done"}'} <= set(tokens)

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        events, body = await post_turn(http, new_conversation(), CODE_PROMPT)

    assert events == [ChatHistory(value=[]), *steps_to("generate_code"), *answered("generate_code", tokens)]
    assert "".join(deltas(events)) == SSE_BY_HAND
    # On the wire every event is one data line and a blank line: the answer's CRs, LFs and
    # "data: " are inside JSON strings.
    lines = body.split(b"\n")
    assert b"\r" not in body
    assert all(line == b"" or line.startswith(b'data: {"type":"') for line in lines)
    assert body.count(b"\n\n") == len(events)
    # The article's reader fails on this very stream, even when it arrives in one piece.
    with pytest.raises(json.JSONDecodeError):
        article_reader([body])


async def test_the_safety_check_refuses_an_unsafe_prompt(url: str) -> None:
    conversation = new_conversation()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        events, body = await post_turn(http, conversation, UNSAFE_PROMPT)
        after, _ = await post_turn(http, conversation, QUESTION)

    # No mode decision and no model call: the refusal is fixed text, sent as one delta.
    assert events == [
        ChatHistory(value=[]),
        *steps_to("unsafe_response", safe=False),
        *answered("unsafe_response", [REFUSAL]),
    ]
    assert b"decide_mode" not in body
    assert after[0] == ChatHistory(value=[user(UNSAFE_PROMPT), assistant(REFUSAL)])
    assert "".join(deltas(after)) == question_answer(QUESTION, 4)


async def test_a_prompt_of_no_known_mode_asks_for_more(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        events, _ = await post_turn(http, new_conversation(), "Hello there")

    assert events == [
        ChatHistory(value=[]),
        *steps_to("prompt_for_more"),
        *answered("prompt_for_more", [PROMPT_FOR_MORE]),
    ]


async def test_a_failing_model_ends_the_turn_with_an_error_and_the_next_prompt_is_answered(
    chatbot: tuple[str, Path], model: ModuleType
) -> None:
    base, log = chatbot
    conversation = new_conversation()
    failed_answer = question_answer(FAIL_PROMPT, 2)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        events, body = await post_turn(http, conversation, FAIL_PROMPT)
        after, _ = await post_turn(http, conversation, QUESTION)

    streamed = model.tokenize(failed_answer)[: model.FAIL_AFTER]
    assert events == [
        ChatHistory(value=[]),
        *steps_to("answer_question"),
        *(Delta(value=token, step="answer_question") for token in streamed),
        Error(message=GENERIC_ERROR, code="internal_error", step="answer_question"),
        Done(),
    ]
    for secret in SECRETS:  # nothing of the exception reaches the client...
        assert secret.encode() not in body
    output = log.read_text(errors="replace")  # ...it is in the server's log
    assert "ModelError: upstream timeout for request req_81f3 (api key sk-scripted-4242)" in output

    # Burr would resume at the failed answer action and drop the new prompt; the app runs
    # from_burr(..., interrupted="restart"), so the new prompt starts a new turn. The history
    # keeps the unanswered prompt.
    assert after == [
        ChatHistory(value=[user(FAIL_PROMPT)]),
        *steps_to("answer_question"),
        *answered("answer_question", model.tokenize(question_answer(QUESTION, 3))),
    ]


async def test_leaving_mid_answer_stops_the_turn_and_the_next_prompt_is_answered(
    url: str, model: ModuleType
) -> None:
    conversation = new_conversation()
    abandoned = "Why is the sky blue?"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        seen: list[Event] = []
        async with (
            http.stream("POST", f"/response/{conversation}", json={"prompt": abandoned}) as response,
            aclosing(aiter_events(response.aiter_bytes())) as events,
        ):
            async for event in events:
                seen.append(event)
                if isinstance(event, Delta):
                    break  # the client leaves: the server cancels the run
        after, _ = await post_turn(http, conversation, QUESTION)

    assert seen == [
        ChatHistory(value=[]),
        *steps_to("answer_question"),
        Delta(value="You", step="answer_question"),
    ]
    assert after == [
        ChatHistory(value=[user(abandoned)]),
        *steps_to("answer_question"),
        *answered("answer_question", model.tokenize(question_answer(QUESTION, 3))),
    ]


async def test_turns_of_one_conversation_run_one_after_the_other(url: str) -> None:
    """Two prompts sent at once to one conversation: the second waits for the first (both
    runs would otherwise append to one Burr state)."""
    conversation = new_conversation()
    prompts = ["What is A?", "What is B?"]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        turns = await asyncio.gather(*(post_turn(http, conversation, prompt) for prompt in prompts))

    first, second = sorted((events for events, _ in turns), key=lambda events: len(events[0].value))
    asked_first = "".join(deltas(first)).removeprefix("You asked: ").split("\n")[0]
    asked_second = "".join(deltas(second)).removeprefix("You asked: ").split("\n")[0]
    assert sorted([asked_first, asked_second]) == prompts
    assert first[0] == ChatHistory(value=[])
    assert "".join(deltas(first)) == question_answer(asked_first, 2)
    assert second[0] == ChatHistory(value=[user(asked_first), assistant(question_answer(asked_first, 2))])
    assert "".join(deltas(second)) == question_answer(asked_second, 4)
    assert first[-1] == second[-1] == Done()


async def test_the_answer_streams_incrementally(url: str, model: ModuleType) -> None:
    arrived: list[tuple[Event, float]] = []
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        http.stream("POST", f"/response/{new_conversation()}", json={"prompt": CODE_PROMPT}) as response,
    ):
        async for event in aiter_events(response.aiter_bytes()):
            arrived.append((event, time.perf_counter()))

    times = [at for event, at in arrived if isinstance(event, Delta)]
    tokens = len(model.tokenize(SSE_BY_HAND))
    assert len(times) == tokens
    assert times[-1] - times[0] >= 0.8 * (tokens - 1) * DELAY


async def test_bad_requests_are_refused(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        empty = await http.post("/response/c1", json={"prompt": ""})
        missing = await http.post("/response/c1", json={})
        too_long = await http.post("/response/c1", json={"prompt": "x" * 2001})
        bad_id = await http.post("/response/no%20spaces", json={"prompt": QUESTION})
        long_id = await http.post(f"/response/{'c' * 65}", json={"prompt": QUESTION})
        get = await http.get("/response/c1")
    assert [r.status_code for r in (empty, missing, too_long, bad_id, long_id)] == [422] * 5
    assert get.status_code == 405


async def test_the_app_made_no_connection_beyond_loopback(chatbot: tuple[str, Path]) -> None:
    """Runs after the HTTP tests above (same process): the guard never had to refuse."""
    _, log = chatbot
    output = log.read_text(errors="replace")
    assert "offline guard: on" in output
    assert "offline guard: refused" not in output


# -- the page's SSE reader under Node.js --------------------------------------------------

# Chunkings that break naive readers: (chunks, the events [type, data, id] they must give).
TRICKY_CHUNKINGS: dict[str, tuple[list[bytes], list[list[str]]]] = {
    "cr_ends_a_chunk_lf_starts_the_next": (
        [b"data: a\r", b"\ndata: b\r", b"\r", b"\ndata: c\r\n\r", b"\n"],
        [["message", "a\nb", ""], ["message", "c", ""]],
    ),
    "cr_alone_ends_lines": ([b"data: x\rdata: y\r\r"], [["message", "x\ny", ""]]),
    "multibyte_characters_split_byte_by_byte": (
        [bytes([b]) for b in "data: é日🙂\n\n".encode()],
        [["message", "é日🙂", ""]],
    ),
    "emoji_split_across_two_chunks": (
        ["data: 🙂".encode()[:8], "data: 🙂".encode()[8:] + b"\n\n"],
        [["message", "🙂", ""]],
    ),
    "comments_spaces_and_several_data_lines": (
        [b": ping\n", b"data:  two spaces\ndata:none\ndata\n", b"\n"],
        [["message", " two spaces\nnone\n", ""]],
    ),
    "bom_alone_then_fields": (
        [b"\xef\xbb\xbf", b"event: delta\nid: 7\ndata: x\n\n", b"data: y\n\n"],
        [["delta", "x", "7"], ["message", "y", "7"]],
    ),
    "an_unterminated_event_is_dropped": ([b"data: kept\n\ndata: dropped"], [["message", "kept", ""]]),
    "invalid_utf8": ([b"data: \xff\n\n"], [["message", "\ufffd", ""]]),
}
TRICKY_DELTA = Delta(value='data: {"type":"done"}\n\n\r\nand \r after', step="generate_code")
TRICKY_DELTA_FRAME = JSONEncoder().encode(TRICKY_DELTA)
TRICKY_CHUNKINGS["a_json_delta_holding_sse_syntax_in_3_byte_chunks"] = (
    [TRICKY_DELTA_FRAME[i : i + 3] for i in range(0, len(TRICKY_DELTA_FRAME), 3)],
    [["message", TRICKY_DELTA.model_dump_json(exclude_none=True), ""]],
)

_PIECES = [
    "data: x",
    "data:x",
    "data:  two spaces",
    "data",
    "data:",
    "event: delta",
    "event:",
    "id: 7",
    "id: a\0b",
    "id",
    "retry: 100",
    "retry: 1x",
    ": ping",
    ":",
    "unknown: field",
    " data: leading space",
    "data: é 日本語 🙂",
    "data: \ufeff",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\r\r",
    "\r\n\r\n",
]


def generated_streams() -> list[bytes]:
    events: list[Event] = [
        Delta(value="\r\n\n\rdata: x\n\n: c\né🙂</script>\0\u2028", step="s"),
        ChatHistory(value=[user("data: x\n\n"), assistant(SSE_BY_HAND)]),
        StepEnd(step="decide_mode", output={"mode": "generate_code"}),
        Done(),
    ]
    encoded = [
        b"".join(encoder.encode(e) for e in events) for encoder in (JSONEncoder(), NamedEventEncoder())
    ]
    fixed = [
        frame("1\r\n2\r3\n\n5", event="x", id="9"),
        comment("a\nb") + frame("") + b"\xef\xbb\xbfdata: z\n\n",
    ]
    rng = random.Random(6)
    randomized = [
        "".join(
            rng.choice(_PIECES) + rng.choice(["\n", "\r", "\r\n"]) for _ in range(rng.randint(1, 12))
        ).encode()
        for _ in range(250)
    ]
    return encoded + fixed + randomized


def run_node(cases: list[tuple[list[bytes], list[int]]]) -> list[dict[str, Any]]:
    """Each (chunks, sizes) through the reader under Node.js; [] sizes keeps the chunks as given."""
    payload = [
        {"data": base64.b64encode(b"".join(chunks)).decode(), "chunks": sizes} for chunks, sizes in cases
    ]
    node = subprocess.run(
        ["node", str(HERE / "parse.mjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert node.returncode == 0, node.stderr
    results: list[dict[str, Any]] = json.loads(node.stdout)
    assert len(results) == len(cases)
    return results


def oracle(data: bytes) -> tuple[list[list[str]], SSEDecoder]:
    """What streamflow's WHATWG decoder makes of ``data``."""
    decoder = SSEDecoder()
    return [[sse.event, sse.data, sse.id] for sse in decoder.feed(data)], decoder


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


@needs_node
def test_reader_handles_tricky_chunkings_under_node() -> None:
    names = list(TRICKY_CHUNKINGS)
    cases = [(TRICKY_CHUNKINGS[name][0], [len(c) for c in TRICKY_CHUNKINGS[name][0]]) for name in names]
    results = run_node(cases)

    for name, result in zip(names, results, strict=True):
        chunks, expected = TRICKY_CHUNKINGS[name]
        assert result["events"] == expected, name
        assert oracle(b"".join(chunks))[0] == expected, name  # the expectation is the standard's
    (delta,) = results[-1]["events"]
    assert json.loads(delta[1])["value"] == TRICKY_DELTA.value


@needs_node
def test_reader_agrees_with_streamflows_decoder_under_node() -> None:
    """Whole streams and streams cut into 1-byte and odd-sized chunks give the events (and the
    last event ID and retry) of streamflow's own WHATWG decoder."""
    streams = generated_streams()
    cases = [([data], sizes) for data in streams for sizes in ([], [1], [2, 3], [7, 1, 5])]
    results = run_node(cases)

    for (chunks, sizes), got in zip(cases, results, strict=True):
        expected, decoder = oracle(chunks[0])
        assert got["events"] == expected, f"stream {chunks[0]!r} in chunks {sizes}"
        assert got["lastEventId"] == decoder.last_event_id
        assert got["retry"] == decoder.retry
    assert sum(len(got["events"]) for got in results) > 600  # real events, not just empty results


# -- the page in chromium ---------------------------------------------------------------

SNAPSHOT = """(() => ({
  status: document.body.dataset.status,
  statusText: document.querySelector("#status").textContent,
  messages: [...document.querySelectorAll("#messages .message")].map(
    (m) => [m.dataset.role, m.querySelector(".content").textContent]),
  steps: [...document.querySelectorAll(".turn .steps li")].map((li) => [li.dataset.step, li.dataset.state]),
  outputs: [...document.querySelectorAll(".turn .steps .output")].map((o) => o.textContent),
  errors: [...document.querySelectorAll(".turn .error")].filter((e) => !e.hidden).map((e) => e.textContent),
  streaming: document.querySelectorAll(".message.streaming").length,
  elements: [...new Set([...document.querySelectorAll("#messages *")].map((e) => e.tagName))].sort(),
  hacked: window.hacked === true,
}))()"""

ANSWER = "document.querySelector('.turn .message.assistant .content')"
READY = {"waitFor": "document.body.dataset.status === 'idle'"}
DONE = "document.body.dataset.status === 'done'"
MID_ANSWER = f"{ANSWER} && {ANSWER}.textContent.length >= 120 && document.body.dataset.status === 'streaming'"


def send(prompt: str) -> list[dict[str, Any]]:
    return [{"fill": ["#prompt", prompt]}, {"click": "#send"}]


def ask(prompt: str) -> list[dict[str, Any]]:
    """Send ``prompt`` and wait for its answer's done."""
    return [*send(prompt), {"waitFor": DONE, "timeout": 20000}]


READER_IN_THE_PAGE = """(async () => {
  const { readEvents } = await import(location.origin + "/sse.js");
  const cases = %s;
  const results = {};
  for (const [name, chunks] of Object.entries(cases)) {
    const body = new ReadableStream({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(new Uint8Array(chunk));
        controller.close();
      },
    });
    const events = [];
    for await (const event of readEvents(body)) events.push([event.type, event.data, event.id]);
    results[name] = events;
  }
  return results;
})()"""


@pytest.fixture(scope="module")
def page(browser_chatbot: str) -> dict[str, Any]:
    """All the page scenarios, run at once in one chromium."""
    reader_cases = json.dumps(
        {name: [list(c) for c in chunks] for name, (chunks, _) in TRICKY_CHUNKINGS.items()}
    )
    scenarios = [
        {
            "name": "conversation",
            "path": "/",
            "actions": [
                READY,
                *send(CODE_PROMPT),
                {"waitFor": MID_ANSWER},
                {"evaluate": f"window.midStream = {SNAPSHOT}"},
                {"screenshot": artifact("burr-chatbot-streaming.png")},
                {"waitFor": DONE, "timeout": 20000},
                {"evaluate": f"window.firstTurn = {SNAPSHOT}"},
                {"fill": ["#prompt", QUESTION]},
                {"press": ["#prompt", "Enter"]},  # Enter sends
            ],
            "until": DONE,
            "timeout": 20000,
            "state": f"({{ mid: window.midStream, first: window.firstTurn, last: {SNAPSHOT} }})",
            "screenshot": artifact("burr-chatbot-done.png"),
        },
        {
            "name": "unsafe",
            "path": "/",
            "actions": [READY, *send(UNSAFE_PROMPT)],
            "until": DONE,
            "state": SNAPSHOT,
            "screenshot": artifact("burr-chatbot-unsafe.png"),
        },
        {
            "name": "failure",
            "path": "/",
            "actions": [READY, *send(FAIL_PROMPT)],
            "until": "document.body.dataset.status === 'error'",
            "state": SNAPSHOT,
            "screenshot": artifact("burr-chatbot-failure.png"),
        },
        {
            "name": "stop",
            "path": "/",
            "actions": [
                READY,
                *send("Why is the sky blue?"),
                {"waitFor": f"{ANSWER} && {ANSWER}.textContent.length > 0"},
                {"click": "#stop"},
                {"waitFor": "document.body.dataset.status === 'stopped'"},
                {"evaluate": f"window.stopped = {SNAPSHOT}"},
                *ask(QUESTION),
            ],
            "state": f"({{ stopped: window.stopped, last: {SNAPSHOT} }})",
        },
        {"name": "markup", "path": "/", "actions": [READY, *ask(MARKUP_PROMPT)], "state": SNAPSHOT},
        {"name": "reader", "path": "/", "actions": [READY], "state": READER_IN_THE_PAGE % reader_cases},
    ]
    results = drive(browser_chatbot, scenarios)
    for name, result in results.items():
        assert result["consoleErrors"] == [], (name, result["consoleErrors"])
    return results


FINISHED_STEPS = [["prompt", "finished"], ["check_safety", "finished"], ["decide_mode", "finished"]]


def test_page_streams_the_answer_and_renders_it_exactly(page: dict[str, Any]) -> None:
    state = finished(page["conversation"])
    mid, first, last = state["mid"], state["first"], state["last"]

    # Mid-answer: a prefix of the answer, still streaming.
    (mid_user, mid_answer) = mid["messages"]
    assert mid_user == ["user", CODE_PROMPT]
    assert mid_answer[0] == "assistant"
    assert 120 <= len(mid_answer[1]) < len(SSE_BY_HAND)
    assert SSE_BY_HAND.startswith(mid_answer[1])
    assert mid["status"] == "streaming"
    assert mid["streaming"] == 1
    assert mid["steps"][-1] == ["generate_code", "running"]

    # The first answer, exact, CR, LF, blank lines and "data: " included.
    assert first["messages"] == [["user", CODE_PROMPT], ["assistant", SSE_BY_HAND]]
    assert first["steps"] == [*FINISHED_STEPS, ["generate_code", "finished"]]
    assert first["outputs"] == ['{"safe":true}', '{"mode":"generate_code"}']
    assert first["status"] == "done"
    assert first["streaming"] == 0

    # The second turn: the first comes back as the server's chat history, then the new answer.
    assert last["messages"] == [
        ["user", CODE_PROMPT],
        ["assistant", SSE_BY_HAND],
        ["user", QUESTION],
        ["assistant", question_answer(QUESTION, 4)],
    ]
    assert last["steps"] == [*FINISHED_STEPS, ["answer_question", "finished"]]
    assert last["errors"] == []
    assert last["statusText"] == "Done."


def test_page_shows_the_refusal_of_an_unsafe_prompt(page: dict[str, Any]) -> None:
    state = finished(page["unsafe"])
    assert state["messages"] == [["user", UNSAFE_PROMPT], ["assistant", REFUSAL]]
    assert state["steps"] == [
        ["prompt", "finished"],
        ["check_safety", "finished"],
        ["unsafe_response", "finished"],
    ]
    assert state["outputs"] == ['{"safe":false}']


def test_page_shows_a_failure_without_its_details(page: dict[str, Any], model: ModuleType) -> None:
    state = finished(page["failure"])
    streamed = "".join(model.tokenize(question_answer(FAIL_PROMPT, 2))[: model.FAIL_AFTER])
    assert state["messages"] == [["user", FAIL_PROMPT], ["assistant", streamed]]
    assert state["errors"] == [GENERIC_ERROR]
    assert state["steps"] == [*FINISHED_STEPS, ["answer_question", "failed"]]
    assert state["statusText"] == "The answer failed; send another prompt to go on."


def test_page_stop_ends_the_answer_and_the_next_prompt_is_answered(page: dict[str, Any]) -> None:
    state = finished(page["stop"])
    stopped, last = state["stopped"], state["last"]
    assert stopped["status"] == "stopped"
    assert stopped["streaming"] == 0
    (_, partial) = stopped["messages"][1]
    assert question_answer("Why is the sky blue?", 2).startswith(partial)
    assert len(partial) < len(question_answer("Why is the sky blue?", 2))
    # The server's history keeps the unanswered prompt; the new one is answered, not the old.
    assert last["messages"] == [
        ["user", "Why is the sky blue?"],
        ["user", QUESTION],
        ["assistant", question_answer(QUESTION, 3)],
    ]


def test_page_renders_markup_as_text(page: dict[str, Any]) -> None:
    state = finished(page["markup"])
    assert state["messages"] == [["user", MARKUP_PROMPT], ["assistant", question_answer(MARKUP_PROMPT, 2)]]
    assert state["hacked"] is False
    assert state["elements"] == ["DIV", "LI", "OL", "P", "SPAN"]  # no IMG, no SCRIPT


def test_reader_handles_tricky_chunkings_in_chromium(page: dict[str, Any]) -> None:
    results = finished(page["reader"])
    assert results == {name: expected for name, (_, expected) in TRICKY_CHUNKINGS.items()}
