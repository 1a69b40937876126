"""VercelAIEncoder against the real AI SDK (ai@6.0.322 from node_modules) over real HTTP.

A FastAPI app on uvicorn serves three scripted runs with ``VercelAIEncoder`` and reads the
request body with ``VercelChatRequest``. Two node drivers consume them:

- ``vercel/read_stream.mjs``: ``fetch`` + ``parseJsonEventStream`` with
  ``uiMessageChunkSchema`` + ``readUIMessageStream``, the SDK's own stream code;
- ``vercel/chat.mjs``: ``AbstractChat`` (the engine behind ``useChat``) with
  ``DefaultChatTransport({api})`` and ``sendMessage({text})``, twice, so the second request
  carries the first answer back to the server.

The tests assert in Python on the JSON the drivers print.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Event,
    EventStreamResponse,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    hide_exception,
)
from streamflow.encoders.vercel import VercelAIEncoder, VercelChatRequest
from tests.conftest import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "vercel"

ANSWER = ["Two pages ", "match:\n", "- SSE 🙂\r\n", "- data: streams\n\n", '"quoted" \\ done.']
HITS = {"hits": 2, "titles": ["SSE", "Streams"]}
FAILED = hide_exception(RuntimeError()).message

# --- the scripted runs -------------------------------------------------------------------


async def answer(prompt: str) -> AsyncIterator[Event]:
    """Two steps: a tool call and its result, then streamed text; then the chat history."""
    yield StepStart(step="search", index=1, total=2)
    yield ToolCall(id="call_1", name="search_docs", arguments={"query": prompt})
    await anyio.sleep(0.01)
    yield ToolResult(id="call_1", output=HITS)
    yield StepEnd(step="search", output={"hits": 2})
    yield StepStart(step="answer", index=2, total=2)
    for piece in ANSWER:
        yield Delta(value=piece)
        await anyio.sleep(0.005)
    yield StepEnd(step="answer")
    history = [
        ChatMessage(role="user", content=prompt),
        ChatMessage(role="assistant", content="".join(ANSWER)),
    ]
    yield ChatHistory(value=history)


async def failing(prompt: str) -> AsyncIterator[Event]:
    yield StepStart(step="work")
    yield Delta(value="partial ")
    await anyio.sleep(0.01)
    raise RuntimeError("a detail the user must not see")


async def messy(prompt: str) -> AsyncIterator[Event]:
    """What user sources do: steps ended that never started, ended out of order or never;
    a result for a call never made; a call id used twice."""
    yield StepEnd(step="ghost")
    yield StepStart(step="outer")
    yield StepStart(step="inner")
    yield Delta(value="a")
    yield StepEnd(step="outer")
    yield Delta(value="b")
    yield ToolResult(id="never-called", output=1)
    yield ToolCall(id="t", name="calc", arguments={"x": 1})
    yield ToolResult(id="t", output="division by zero", is_error=True)
    yield StepEnd(step="inner")
    yield StepStart(step="never-ended")
    yield ToolCall(id="t", name="calc", arguments={"x": 2})
    yield ToolResult(id="t", output=2)
    yield Delta(value="c")


received: list[VercelChatRequest] = []


def make_app() -> FastAPI:
    app = FastAPI()
    runs = {"chat": answer, "fail": failing, "messy": messy}

    @app.post("/api/{run}")
    async def chat(run: str, request: VercelChatRequest) -> EventStreamResponse:
        received.append(request)
        return EventStreamResponse(runs[run](request.last_user_text()), encoder=VercelAIEncoder())

    return app


# --- the drivers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    if shutil.which("node") is None or not (ROOT / "node_modules" / "ai").is_dir():
        pytest.skip("node and node_modules/ai are needed (npm ci)")
    received.clear()
    with serve(make_app()) as url:
        yield url


def run_driver(script: str, base_url: str) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(HERE / script), base_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


@pytest.fixture(scope="module")
def streams(base_url: str) -> dict[str, Any]:
    return run_driver("read_stream.mjs", base_url)


@pytest.fixture(scope="module")
def chats(base_url: str) -> dict[str, Any]:
    return run_driver("chat.mjs", base_url)


def text_of(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def check_answer(message: dict[str, Any], prompt: str) -> None:
    """The assistant message of the `answer` run, as the SDK built it."""
    parts = message["parts"]
    assert [p["type"] for p in parts] == [
        "step-start",
        "data-step",
        "tool-search_docs",
        "step-start",
        "data-step",
        "text",
        "data-chat-history",
    ]
    assert text_of(message) == "".join(ANSWER)
    assert parts[5]["state"] == "done"
    tool = parts[2]
    assert tool["toolCallId"] == "call_1"
    assert tool["state"] == "output-available"
    assert tool["input"] == {"query": prompt}
    assert tool["output"] == HITS
    assert parts[1] == {
        "type": "data-step",
        "id": "step-1",
        "data": {"name": "search", "status": "done", "index": 1, "total": 2, "output": {"hits": 2}},
    }
    assert parts[4]["data"] == {"name": "answer", "status": "done", "index": 2, "total": 2}
    assert parts[6]["data"] == {
        "messages": [
            {"role": "user", "content": prompt, "type": "text"},
            {"role": "assistant", "content": "".join(ANSWER), "type": "text"},
        ]
    }


# --- readUIMessageStream over fetch --------------------------------------------------------


def test_read_ui_message_stream_builds_the_message(streams: dict[str, Any]) -> None:
    result = streams["/api/chat"]
    assert result["status"] == 200
    assert result["protocol"] == "v1"
    assert result["contentType"].startswith("text/event-stream")
    assert result["failure"] is None
    assert result["errors"] == []
    check_answer(result["message"], "sse?")
    assert result["message"]["id"].startswith("msg-")
    assert result["snapshots"] > len(ANSWER), "the message was not built incrementally"
    types = [chunk["type"] for chunk in result["chunks"]]
    assert types[0] == "start"
    assert types[-1] == "finish"
    assert result["chunks"][-1]["finishReason"] == "stop"
    assert types.count("start-step") == types.count("finish-step") == 2


def test_read_ui_message_stream_reports_the_error(streams: dict[str, Any]) -> None:
    result = streams["/api/fail"]
    assert result["failure"] is None
    assert result["errors"] == [FAILED]
    parts = result["message"]["parts"]
    assert [p["type"] for p in parts] == ["step-start", "data-step", "text"]
    assert parts[1]["data"] == {"name": "work", "status": "error"}
    assert parts[2] == {"type": "text", "text": "partial ", "state": "done"}
    assert [c["type"] for c in result["chunks"]][-3:] == ["finish-step", "error", "finish"]
    assert result["chunks"][-1]["finishReason"] == "error"


def test_read_ui_message_stream_takes_unbalanced_steps_and_orphan_results(streams: dict[str, Any]) -> None:
    result = streams["/api/messy"]
    assert result["failure"] is None
    assert result["errors"] == []
    check_messy(result["message"])


def check_messy(message: dict[str, Any]) -> None:
    parts = message["parts"]
    assert text_of(message) == "abc"
    steps = [(p["data"]["name"], p["data"]["status"]) for p in parts if p["type"] == "data-step"]
    assert steps == [
        ("ghost", "done"),
        ("outer", "done"),
        ("inner", "done"),
        ("never-ended", "running"),
    ]
    assert sum(p["type"] == "step-start" for p in parts) == 2
    [orphan] = [p for p in parts if p["type"] == "data-tool-result"]
    assert orphan["data"] == {"toolCallId": "never-called", "output": 1, "isError": False}
    tools = [p for p in parts if p["type"] == "tool-calc"]
    assert [(t["state"], t["input"], t.get("output"), t.get("errorText")) for t in tools] == [
        ("output-error", {"x": 1}, None, "division by zero"),
        ("output-available", {"x": 2}, 2, None),  # in a new SDK step: a part of its own
    ]


# --- AbstractChat (useChat) -------------------------------------------------------------


def test_use_chat_sends_and_renders_a_turn(chats: dict[str, Any]) -> None:
    first = chats["first"]
    assert first["status"] == "ready"
    assert first["error"] is None
    assert first["errors"] == []
    assert first["statuses"] == ["submitted", "streaming", "ready"]
    user, assistant = first["messages"]
    assert user["role"] == "user"
    assert user["parts"] == [{"type": "text", "text": "sse?"}]
    assert assistant["role"] == "assistant"
    check_answer(assistant, "sse?")
    assert first["finishes"] == [
        {"isError": False, "isAbort": False, "isDisconnect": False, "finishReason": "stop"}
    ]
    assert first["toolCalls"] == ["search_docs"]  # onToolCall sees the call; nothing to do client-side
    assert [part["type"] for part in first["data"]] == ["data-step"] * 4 + ["data-chat-history"]
    assert first["valid"], first["validationError"]


def test_use_chat_posts_the_history_back_and_the_server_reads_it(chats: dict[str, Any]) -> None:
    second = chats["second"]
    assert second["status"] == "ready"
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user", "assistant"]
    check_answer(second["messages"][3], "and htmx?")
    assert second["messages"][1]["id"] != second["messages"][3]["id"]
    assert second["valid"], second["validationError"]
    [request] = [r for r in received if r.last_user_text() == "and htmx?"]
    assert request.id == "chat-1"
    assert request.trigger == "submit-message"
    assert [m.role for m in request.messages] == ["user", "assistant", "user"]
    assert request.messages[1].text == "".join(ANSWER)
    assert request.messages[1].id == second["messages"][1]["id"]
    [tool] = [p for p in request.messages[1].parts if p.type == "tool-search_docs"]
    assert tool.model_extra is not None
    assert tool.model_extra["output"] == HITS


def test_use_chat_ends_a_failed_run_in_error_status(chats: dict[str, Any]) -> None:
    failed = chats["fail"]
    assert failed["status"] == "error"
    assert failed["error"] == {"name": "Error", "message": FAILED}
    assert failed["errors"] == [FAILED]
    assert failed["statuses"] == ["submitted", "streaming", "error"]
    assert failed["finishes"] == [  # the chat stopped reading at the error chunk: no finishReason
        {"isError": True, "isAbort": False, "isDisconnect": False, "finishReason": None}
    ]
    assistant = failed["messages"][-1]
    assert assistant["role"] == "assistant"
    assert [p["type"] for p in assistant["parts"]] == ["step-start", "data-step", "text"]
    assert assistant["parts"][1]["data"]["status"] == "error"
    assert assistant["parts"][2] == {"type": "text", "text": "partial ", "state": "done"}


def test_use_chat_takes_unbalanced_steps_and_orphan_results(chats: dict[str, Any]) -> None:
    result = chats["messy"]
    assert result["status"] == "ready"
    assert result["error"] is None
    check_messy(result["messages"][-1])
    assert result["valid"], result["validationError"]
