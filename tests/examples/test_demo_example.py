"""End to end: ``python examples/demo/app.py`` over real HTTP, read back with streamflow.client."""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable
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
    Event,
    JSONEncoder,
    NamedEventEncoder,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    comment,
    frame,
)
from streamflow.client import aiter_events
from streamflow.sse import SSEDecoder

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

DELAY = 0.004  # seconds per streamed token: short, but long enough to see the stream is incremental
TRICKY_PROMPT = 'Line one\r\nline two\rthree\n\ndata: {"type":"done"}\n: not a comment\n日本語 🙂 </script>'


@pytest.fixture(scope="module")
def demo(start_example: Callable[..., tuple[str, Path]]) -> str:
    """The demo's base URL. Host and port come from the environment, as documented."""
    env = {
        "STREAMFLOW_DEMO_HOST": "localhost",
        "STREAMFLOW_DEMO_PORT": "0",
        "STREAMFLOW_DEMO_DELAY": str(DELAY),
    }
    url, _ = start_example("demo/app.py", banner="streamflow demo: ", env=env)
    return url


@pytest.fixture(scope="module")
def agent(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_example("demo/agent.py")


def outline(events: list[Event]) -> list[tuple[str, str | None]]:
    """(type, step) of each event, a run of deltas shown once."""
    result: list[tuple[str, str | None]] = []
    for event in events:
        entry = (event.type, getattr(event, "step", None))
        if not (entry[0] == "delta" and result and result[-1] == entry):
            result.append(entry)
    return result


async def stream(http: httpx.AsyncClient, method: str, prompt: str) -> tuple[list[Event], list[float]]:
    """The events of one run and the time each arrived, checking the response head and that
    nothing follows ``done``."""
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


async def test_demo_prints_its_url_and_serves_the_page(demo: str) -> None:
    assert re.fullmatch(r"http://localhost:\d+", demo), demo  # STREAMFLOW_DEMO_HOST was used
    assert not demo.endswith(":8000")  # STREAMFLOW_DEMO_PORT=0 was used

    async with httpx.AsyncClient(base_url=demo) as http:
        response = await http.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<form id="chat-form">' in page
    assert '<textarea id="prompt"' in page
    assert "getReader()" in page
    assert 'fetch("chat"' in page
    assert "createSSEParser" in page
    assert 'split("data: ")' not in page
    # Self-contained: no script, stylesheet, font or image from elsewhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"<script[^>]+src=|@import|url\(", page)


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("prompt", ["How do I stream my agent?", TRICKY_PROMPT], ids=["plain", "tricky"])
async def test_chat_streams_the_scripted_run(demo: str, agent: ModuleType, method: str, prompt: str) -> None:
    async with httpx.AsyncClient(base_url=demo, timeout=10) as http:
        events, _ = await stream(http, method, prompt)

    assert outline(events) == [
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
    starts = [event for event in events if isinstance(event, StepStart)]
    assert starts == [
        StepStart(step="route", index=1, total=3),
        StepStart(step="lookup", index=2, total=3),
        StepStart(step="answer", index=3, total=3),
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


async def test_chat_rejects_an_empty_prompt(demo: str) -> None:
    async with httpx.AsyncClient(base_url=demo) as http:
        empty = await http.post("/chat", json={"prompt": ""})
        missing = await http.post("/chat", json={})
    assert empty.status_code == 422
    assert missing.status_code == 422


# -- the page's JavaScript SSE parser, checked against streamflow's SSEDecoder -----------

PAGE = Path(__file__).resolve().parents[2] / "examples" / "demo" / "index.html"

_NODE_DRIVER = """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const results = cases.map(({ data, chunks }) => {
  const bytes = Buffer.from(data, "base64");
  const events = [];
  const parser = createSSEParser((event) => events.push([event.type, event.data, event.id]));
  for (let position = 0, turn = 0; position < bytes.length; turn++) {
    const size = chunks.length ? chunks[turn % chunks.length] : bytes.length;
    parser.feed(new Uint8Array(bytes.subarray(position, position + size)));
    position += size;
  }
  parser.end();
  return events;
});
process.stdout.write(JSON.stringify(results));
"""

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


def _cases() -> list[bytes]:
    fixed = [
        b"data: a\r\ndata: b\r\n\r\n",
        b"data: a\rdata: b\r\rdata: c\n\n",
        b": ping\n\ndata: after a comment\n\n",
        b"\xef\xbb\xbfdata: after a BOM\n\n",
        b"data: \xef\xbb\xbf kept: not at the start\n\n",
        b"id: 1\ndata: x\n\ndata: y\n\nid\ndata: z\n\n",
        b"event: custom\ndata: 1\n\n\ndata: 2\n\n",
        b"data: \xff invalid byte\n\n",
        b"data: incomplete, never dispatched",
        b"data: incomplete\n",
        frame("line 1\r\nline 2\rline 3\n\nline 5"),
        frame("x", event="delta", id="42"),
        comment("ping") + frame("") + comment("multi\nline"),
    ]
    tricky = ["", "\n", "\r\n", "\r", "\n\n", "data: x\n\n", ": c\n", "é🙂", "</script>", "\0", "\u2028"]
    events: list[Event] = [
        Delta(value="".join(tricky)),
        Delta(value="a\r\nb", step="s\n"),
        StepStart(step="route", index=1, total=3),
        ToolCall(id="call_1", name="search", arguments={"q": "\r\n\r\n", "n": [1, 2.5, None]}),
        ChatHistory(value=[ChatMessage(role="user", content="data: x\n\n")]),
        StepEnd(step="answer", output={"text": "\r\r\n"}),
        Done(),
    ]
    encoded = [
        b"".join(encoder.encode(event) for event in events)
        for encoder in (JSONEncoder(), NamedEventEncoder())
    ]
    rng = random.Random(20240601)
    generated = [
        "".join(
            rng.choice(_PIECES) + rng.choice(["\n", "\r", "\r\n"]) for _ in range(rng.randint(1, 12))
        ).encode()
        for _ in range(150)
    ]
    return fixed + encoded + generated


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_page_sse_parser_agrees_with_the_python_decoder() -> None:
    """The parser in index.html gives the events streamflow's WHATWG decoder gives, for
    whole streams and for every chunking tried (one byte at a time, odd sizes)."""
    page = PAGE.read_text(encoding="utf-8")
    parser = re.search(r"// sse-parser:begin\n(.*?)// sse-parser:end", page, re.DOTALL)
    assert parser, "the SSE parser markers are missing from index.html"

    chunkings: list[list[int]] = [[], [1], [2, 3], [7, 1, 5]]
    cases = [(data, chunks) for data in _cases() for chunks in chunkings]
    node = subprocess.run(
        ["node", "-e", parser[1] + _NODE_DRIVER],
        input=json.dumps(
            [{"data": base64.b64encode(data).decode(), "chunks": chunks} for data, chunks in cases]
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert node.returncode == 0, node.stderr
    results = json.loads(node.stdout)

    assert len(results) == len(cases)
    for (data, chunks), got in zip(cases, results, strict=True):
        expected = [[sse.event, sse.data, sse.id] for sse in SSEDecoder().feed(data)]
        assert got == expected, f"stream {data!r} in chunks {chunks}"
    # The comparison covered real events, not just empty results.
    assert sum(len(got) for got in results) > 400
