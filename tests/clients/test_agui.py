"""AGUIEncoder against the real AG-UI client, @ag-ui/client 1.0.0 (node_modules).

- HttpAgent.runAgent() POSTs a RunAgentInput to a streamflow app served by uvicorn; the app reads
  the body, and the run (or the failing run) comes back through the client's whole pipeline.
- Generated streams (every grammar-conforming shape, unbalanced steps included) go through the
  client's own SSE parser, schemas and verifyEvents, and through a whole runAgent(): none is
  rejected. Known-bad streams are in the same batches, and rejected, so the harness is live.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ag_ui.core import RunAgentInput
from fastapi import FastAPI
from hypothesis import given, settings
from starlette.requests import Request

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Error,
    Event,
    EventStreamResponse,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    expose_exception,
)
from streamflow.encoders.agui import AGUIEncoder
from streamflow.testing import decode
from tests.conftest import serve
from tests.encoders.test_agui import encode_run, encoders, runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "agui"


def node(script: str, *args: str, stdin: str | None = None) -> Any:
    """Run a driver script with node from the repo root; return the JSON it prints last."""
    if shutil.which("node") is None or not (ROOT / "node_modules/@ag-ui/client").is_dir():
        pytest.skip("needs node and `npm ci` (@ag-ui/client in node_modules)")
    done = subprocess.run(
        ["node", str(SCRIPTS / script), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"node {script} failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


app = FastAPI()


async def answer(run_input: RunAgentInput) -> AsyncIterator[Event | str]:
    question = run_input.messages[-1].content
    assert isinstance(question, str)
    yield ChatHistory(value=[ChatMessage(role="user", content=question)])
    yield StepStart(step="plan", index=1, total=2)
    yield "Let me "
    yield "look that up."
    yield StepEnd(step="plan")
    yield StepStart(step="act", index=2, total=2)
    yield ToolCall(id="call_1", name="search_docs", arguments={"query": question, "limit": 3})
    yield ToolResult(id="call_1", output={"hits": 2})
    yield "Found 2 pages about "
    yield f"{run_input.forwarded_props['topic']}."
    yield StepEnd(step="act")


@app.post("/agent")
async def agent(run_input: RunAgentInput) -> EventStreamResponse:
    """FastAPI validates the POSTed RunAgentInput itself."""
    return EventStreamResponse(answer(run_input), encoder=AGUIEncoder.from_input(run_input))


@app.post("/failing")
async def failing(request: Request) -> EventStreamResponse:
    """Plain Starlette: the encoder reads the raw body."""
    encoder = AGUIEncoder.from_input(await request.body())

    async def source() -> AsyncIterator[Event | str]:
        yield StepStart(step="plan")
        yield "Thinking"
        raise RuntimeError("model overloaded")

    return EventStreamResponse(source(), encoder=encoder, on_error=expose_exception)


def test_http_agent_runs_a_streamflow_run() -> None:
    with serve(app) as url:
        seen = node("run_agent.mjs", f"{url}/agent")
    assert (seen["resolved"], seen["rejected"], seen["runFailed"], seen["runErrors"]) == (
        True,
        None,
        None,
        [],
    )
    events = seen["events"]
    assert [event["type"] for event in events] == [
        "RUN_STARTED",
        "MESSAGES_SNAPSHOT",
        "STEP_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
        "STEP_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
        "RUN_FINISHED",
    ]
    # The ids the client sent in its RunAgentInput.
    assert events[0] == {
        "type": "RUN_STARTED",
        "threadId": "thread-42",
        "runId": "run-7",
        "protocolVersion": "1.0",
    }
    assert events[-1] == {"type": "RUN_FINISHED", "threadId": "thread-42", "runId": "run-7"}
    # The question came from the POSTed messages, the topic from its forwardedProps.
    assert [text["text"] for text in seen["texts"]] == ["Let me look that up.", "Found 2 pages about SSE."]
    assert seen["toolCalls"] == [
        {"id": "call_1", "name": "search_docs", "args": {"query": "What is SSE?", "limit": 3}}
    ]
    assert seen["toolResults"] == [{"toolCallId": "call_1", "content": '{"hits":2}'}]
    assert seen["steps"] == [
        ["started", "plan"],
        ["finished", "plan"],
        ["started", "act"],
        ["finished", "act"],
    ]
    assert events[2]["metadata"] == {"streamflow": {"index": 1, "total": 2}}

    # The client's conversation: the snapshot kept the user message's own id (no duplicate), the
    # tool call sits in an assistant message, and its result right after it.
    messages = seen["messages"]
    assert [(m["role"], m.get("content"), bool(m.get("toolCalls"))) for m in messages] == [
        ("user", "What is SSE?", False),
        ("assistant", "Let me look that up.", False),
        ("assistant", None, True),
        ("tool", '{"hits":2}', False),
        ("assistant", "Found 2 pages about SSE.", False),
    ]
    assert messages[0]["id"] == "user-1"
    assert messages[2]["toolCalls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "search_docs", "arguments": '{"query":"What is SSE?","limit":3}'},
        }
    ]
    assert messages[3]["toolCallId"] == "call_1"
    assert seen["newMessages"] == messages[1:]


def test_http_agent_sees_the_run_error_and_resolves() -> None:
    """@ag-ui/client 1.0.0 hands RUN_ERROR to onRunErrorEvent and ends the run normally:
    runAgent() resolves, onRunFailed is not called (a RUN_ERROR is an event, not a failure of
    the client's pipeline; only a thrown error, e.g. a verification error, rejects)."""
    with serve(app) as url:
        seen = node("run_agent.mjs", f"{url}/failing")
    assert [event["type"] for event in seen["events"]] == [
        "RUN_STARTED",
        "STEP_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    assert seen["runErrors"] == [
        {
            "type": "RUN_ERROR",
            "metadata": {"streamflow": {"step": "plan"}},
            "message": "model overloaded",
            "code": "RuntimeError",
        }
    ]
    assert (seen["resolved"], seen["rejected"], seen["runFailed"]) == (True, None, None)
    assert seen["steps"] == [["started", "plan"]]
    assert [(m["role"], m["content"]) for m in seen["messages"]] == [
        ("user", "What is SSE?"),
        ("assistant", "Thinking"),
    ]


# Streams the client must reject: proof that a rejection would show up in these batches.
REJECTED = {
    "STEP_FINISHED without STEP_STARTED": (
        ["RUN_STARTED", {"type": "STEP_FINISHED", "stepName": "x"}],
        "that was not started",
    ),
    "STEP_STARTED twice": (
        ["RUN_STARTED", {"type": "STEP_STARTED", "stepName": "x"}, {"type": "STEP_STARTED", "stepName": "x"}],
        'Step "x" is already active',
    ),
    "RUN_FINISHED with an active step": (
        ["RUN_STARTED", {"type": "STEP_STARTED", "stepName": "x"}, "RUN_FINISHED"],
        "while steps are still active",
    ),
    "TEXT_MESSAGE_CONTENT outside a message": (
        ["RUN_STARTED", {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "x"}],
        "No active text message",
    ),
    "RUN_FINISHED with an open message": (
        ["RUN_STARTED", {"type": "TEXT_MESSAGE_START", "messageId": "m"}, "RUN_FINISHED"],
        "while text messages are still active",
    ),
    "TOOL_CALL_ARGS outside a call": (
        ["RUN_STARTED", {"type": "TOOL_CALL_ARGS", "toolCallId": "c", "delta": "{}"}],
        "No active tool call",
    ),
    "anything after RUN_ERROR": (
        ["RUN_STARTED", {"type": "RUN_ERROR", "message": "x"}, "RUN_FINISHED"],
        "already errored",
    ),
    "anything after RUN_FINISHED": (
        ["RUN_STARTED", "RUN_FINISHED", {"type": "STEP_STARTED", "stepName": "x"}],
        "already finished",
    ),
    "no RUN_STARTED first": (
        [{"type": "STEP_STARTED", "stepName": "x"}],
        "First event must be 'RUN_STARTED'",
    ),
}


def bad_body(events: list[Any]) -> str:
    run = {"threadId": "t", "runId": "r"}
    expanded = [{"type": e, **run} if isinstance(e, str) else e for e in events]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in expanded)


def check_batch(bodies: list[bytes]) -> None:
    """Every body is accepted by the client, and every known-bad one is rejected."""
    bad = list(REJECTED.values())
    lines = [json.dumps(body.decode()) for body in bodies] + [json.dumps(bad_body(e)) for e, _ in bad]
    results = node("verify_batch.mjs", stdin="\n".join(lines) + "\n")
    assert len(results) == len(lines)
    for body, result in zip(bodies, results, strict=False):
        types = [json.loads(sse.data)["type"] for sse in decode(body)]
        assert result["verify"] == {"ok": True, "types": types}, f"{result}\n{body.decode()}"
        assert result["run"] == {"ok": True, "error": None, "events": len(types)}, (
            f"{result}\n{body.decode()}"
        )
    for (_, message), result in zip(bad, results[len(bodies) :], strict=True):
        assert not result["verify"]["ok"]
        assert message in result["verify"]["error"]
        assert not result["run"]["ok"]
        assert message in result["run"]["error"]


def test_the_real_client_accepts_every_generated_stream() -> None:
    """Hypothesis generates the streams (one node process checks them all, so no shrinking:
    a failure prints the body the client rejected)."""
    bodies: list[bytes] = []

    @settings(max_examples=300, database=None)
    @given(encoders(), runs())
    def collect(encoder: AGUIEncoder, evs: list[Event]) -> None:
        bodies.append(encode_run(encoder, evs))

    collect()
    assert len(bodies) >= 200
    check_batch(bodies)


def test_the_real_client_accepts_the_awkward_streams() -> None:
    awkward: list[list[Event]] = [
        [Done()],
        [Error(message="failed before anything"), Done()],
        [StepEnd(step="never started"), StepStart(step="a"), StepStart(step="a"), StepEnd(step="a"), Done()],
        [StepStart(step="a"), StepStart(step="b"), StepEnd(step="a"), StepStart(step="a"), Done()],
        [StepStart(step=""), StepEnd(step=""), StepEnd(step=""), StepStart(step=""), Done()],
        [StepStart(step="a"), Delta(value="x"), Error(message="boom", step="a"), Done()],
        [StepStart(step="a"), ToolCall(id="c", name="f"), Error(message="boom"), Done()],
        [ToolResult(id="nobody called", output=None, is_error=True), Done()],
        [
            ToolCall(id="c", name="f"),
            ToolCall(id="c", name="f"),
            ToolResult(id="c"),
            ToolResult(id="c"),
            Done(),
        ],
        [ToolCall(id="c", name="f"), ToolCall(id="c-2", name="f"), ToolCall(id="c", name="f"), Done()],
        [
            Delta(value=""),
            Delta(value="a"),
            Delta(value=""),
            ToolCall(id="c", name="f"),
            Delta(value="b"),
            Done(),
        ],
        [
            ChatHistory(value=[ChatMessage(role="user", content="q"), ChatMessage(role="tool", content="r")]),
            Delta(value="a"),
            ChatHistory(
                value=[ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")]
            ),
            Delta(value="b"),
            Done(),
        ],
        [Delta(value="data: x\n\n\r\n"), StepStart(step="line\nbreak"), Delta(value="\u2028🙂\x00"), Done()],
    ]
    check_batch([encode_run(AGUIEncoder(), evs) for evs in awkward])
