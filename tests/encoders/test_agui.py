"""AGUIEncoder: the frames are AG-UI events exactly (ag_ui's pydantic models), in an order the
client accepts, carrying what the streamflow events said. The real client's verdict on generated
streams is in tests/clients/test_agui.py."""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

import pytest
from ag_ui.core import Event as AGUIEvent
from ag_ui.core import RunAgentInput
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Encoder,
    Error,
    Event,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)
from streamflow.encoders import agui
from streamflow.encoders.agui import AGUIEncoder
from streamflow.testing import decode, events, json_values, sse_texts

AG_UI_EVENT: TypeAdapter[Any] = TypeAdapter(AGUIEvent)

# A few names and ids, so that steps nest, repeat and come unbalanced, tool call ids repeat and
# results come without (or before) their call, and chat messages match earlier ones.
_STEPS = st.sampled_from(["plan", "act", ""])
_CALL_IDS = st.sampled_from(["call_1", "call_2"])
_TEXTS = st.sampled_from(["", "a", "b", "hi"])
_CHAT = st.builds(
    ChatMessage, role=st.sampled_from(["user", "assistant", "ai", "critic", "tool"]), content=_TEXTS
)
_COLLIDING: st.SearchStrategy[Event] = st.one_of(
    st.builds(StepStart, step=_STEPS, index=st.none() | st.integers(1, 3), total=st.none() | st.just(3)),
    st.builds(StepEnd, step=_STEPS, output=st.none() | json_values()),
    st.builds(Delta, value=_TEXTS),
    st.builds(ToolCall, id=_CALL_IDS, name=st.just("search"), arguments=st.just({"q": "sse"})),
    st.builds(ToolResult, id=_CALL_IDS, output=st.none() | json_values(), is_error=st.booleans()),
    st.builds(ChatHistory, value=st.lists(_CHAT, max_size=4)),
)
_BODY = st.one_of(events().filter(lambda e: not isinstance(e, (Error, Done))), _COLLIDING)
_ERRORS = st.builds(Error, message=sse_texts(), code=st.none() | sse_texts(), step=st.none() | sse_texts())


def runs() -> st.SearchStrategy[list[Event]]:
    """Streams as the transport sends them: any events, then maybe one Error, then Done."""
    return st.builds(
        lambda body, error: [*body, *([error] if error else []), Done()],
        st.lists(_BODY, max_size=24),
        st.none() | _ERRORS,
    )


def inputs() -> st.SearchStrategy[dict[str, Any]]:
    """RunAgentInput bodies whose history overlaps the generated chat messages and tool ids."""
    message = st.one_of(
        st.builds(
            lambda n, role, text: {"id": f"in-{n}", "role": role, "content": text},
            st.integers(0, 99),
            st.sampled_from(["user", "assistant", "system", "developer"]),
            _TEXTS,
        ),
        st.builds(
            lambda n: {
                "id": f"in-{n}",
                "role": "assistant",
                "toolCalls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            st.integers(0, 99),
        ),
    )
    return st.builds(
        lambda messages: {"threadId": "t", "runId": "r", "messages": messages}, st.lists(message, max_size=4)
    )


def encoders() -> st.SearchStrategy[AGUIEncoder]:
    return st.one_of(st.builds(AGUIEncoder), inputs().map(AGUIEncoder.from_input))


def encode_run(encoder: AGUIEncoder, evs: list[Event]) -> bytes:
    return encoder.open() + b"".join(encoder.encode(event) for event in evs) + encoder.close()


def wire(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(sse.data) for sse in decode(data)]


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message ids m1, m2, ... instead of UUIDs, so whole streams can be compared."""
    counter = itertools.count(1)
    monkeypatch.setattr(agui, "_new_id", lambda: f"m{next(counter)}")


@given(encoders(), runs())
def test_every_frame_is_an_ag_ui_event_exactly_as_its_model_writes_it(
    encoder: AGUIEncoder, evs: list[Event]
) -> None:
    data = encode_run(encoder, evs)
    assert b"\r" not in data  # the AG-UI client splits events on "\n\n" only
    frames = decode(data)
    assert decode(data, chunk_sizes=(1, 5)) == frames
    for sse in frames:
        assert (sse.event, sse.id) == ("message", "")
        model = AG_UI_EVENT.validate_json(sse.data)
        assert model.model_dump_json(by_alias=True) == sse.data


def check_order(stream: list[dict[str, Any]]) -> None:
    """The rules of @ag-ui/client's verifyEvents (src/verify/verify.ts) that this encoder's events
    meet, plus unique ids (the client's reducer merges a reused message or tool call id)."""
    types = [event["type"] for event in stream]
    assert types[0] == "RUN_STARTED"
    assert types[-1] in ("RUN_FINISHED", "RUN_ERROR")
    assert not {"RUN_STARTED", "RUN_FINISHED", "RUN_ERROR"} & set(types[1:-1])
    messages: set[str] = set()
    calls: set[str] = set()
    steps: set[str] = set()
    started_messages: list[str] = []
    started_calls: list[str] = []
    for event in stream:
        kind = event["type"]
        if kind == "TEXT_MESSAGE_START":
            assert event["messageId"] not in messages
            messages.add(event["messageId"])
            started_messages.append(event["messageId"])
        elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"):
            assert event["messageId"] in messages
            if kind == "TEXT_MESSAGE_END":
                messages.remove(event["messageId"])
        elif kind == "TOOL_CALL_START":
            assert event["toolCallId"] not in calls
            calls.add(event["toolCallId"])
            started_calls.append(event["toolCallId"])
        elif kind in ("TOOL_CALL_ARGS", "TOOL_CALL_END"):
            assert event["toolCallId"] in calls
            if kind == "TOOL_CALL_END":
                calls.remove(event["toolCallId"])
        elif kind == "TOOL_CALL_RESULT":
            started_messages.append(event["messageId"])
        elif kind == "STEP_STARTED":
            assert event["stepName"] not in steps
            steps.add(event["stepName"])
        elif kind == "STEP_FINISHED":
            steps.remove(event["stepName"])
    assert len(set(started_messages)) == len(started_messages)
    assert len(set(started_calls)) == len(started_calls)
    assert not calls  # a tool call is always written whole
    if types[-1] == "RUN_FINISHED":
        assert not messages
        assert not steps


@given(encoders(), runs())
def test_the_order_follows_the_client_rules(encoder: AGUIEncoder, evs: list[Event]) -> None:
    stream = wire(encode_run(encoder, evs))
    check_order(stream)
    failed = len(evs) > 1 and isinstance(evs[-2], Error)
    assert stream[-1]["type"] == ("RUN_ERROR" if failed else "RUN_FINISHED")


@given(runs())
def test_text_tool_calls_and_results_arrive_as_sent(evs: list[Event]) -> None:
    stream = wire(encode_run(AGUIEncoder(), evs))
    text = "".join(e.value for e in evs if isinstance(e, Delta))
    assert "".join(e["delta"] for e in stream if e["type"] == "TEXT_MESSAGE_CONTENT") == text

    calls = [e for e in evs if isinstance(e, ToolCall)]
    starts = [e for e in stream if e["type"] == "TOOL_CALL_START"]
    args = [json.loads(e["delta"]) for e in stream if e["type"] == "TOOL_CALL_ARGS"]
    assert [e["toolCallName"] for e in starts] == [call.name for call in calls]
    assert args == [call.arguments for call in calls]

    # A result names the most recent call with its id (as sent), or the id itself.
    sent_ids: dict[str, str] = {}
    wire_ids = iter(e["toolCallId"] for e in starts)
    expected = []
    for event in evs:
        if isinstance(event, ToolCall):
            sent_ids[event.id] = next(wire_ids)
            assert sent_ids[event.id] == event.id or sent_ids[event.id].startswith(event.id + "-")
        elif isinstance(event, ToolResult):
            output = event.output
            content = output if isinstance(output, str) else "" if output is None else None
            expected.append((sent_ids.get(event.id, event.id), content, event))
    results = [e for e in stream if e["type"] == "TOOL_CALL_RESULT"]
    assert len(results) == len(expected)
    for result, (call_id, content, event) in zip(results, expected, strict=True):
        assert result["toolCallId"] == call_id
        if content is None:
            assert json.loads(result["content"]) == event.output
        else:
            assert result["content"] == content
        assert result.get("metadata") == ({"streamflow": {"isError": True}} if event.is_error else None)


@given(runs())
def test_ids_go_on_the_last_frame_of_each_event_and_change_nothing_else(evs: list[Event]) -> None:
    counters = [itertools.count(1), itertools.count(1)]
    plain, with_ids = AGUIEncoder(thread_id="t", run_id="r"), AGUIEncoder(thread_id="t", run_id="r")
    chunks_plain, chunks_ids = [plain.open()], [with_ids.open()]
    original = agui._new_id
    try:
        for n, event in enumerate(evs):
            agui._new_id = lambda: f"m{next(counters[0])}"  # type: ignore[assignment]
            chunks_plain.append(plain.encode(event))
            agui._new_id = lambda: f"m{next(counters[1])}"  # type: ignore[assignment]
            chunk = with_ids.encode(event, id=str(n))
            chunks_ids.append(chunk)
            if chunk:
                ids = [sse.id for sse in decode(chunk)]
                assert ids == [""] * (len(ids) - 1) + [str(n)]
    finally:
        agui._new_id = original  # type: ignore[assignment]
    assert [sse.data for sse in decode(b"".join(chunks_plain))] == [
        sse.data for sse in decode(b"".join(chunks_ids))
    ]


def test_a_run_on_the_wire(fixed_ids: None) -> None:
    encoder = AGUIEncoder.from_input(
        {
            "threadId": "thread-1",
            "runId": "run-1",
            "messages": [{"id": "u1", "role": "user", "content": "Find SSE docs"}],
        }
    )
    evs: list[Event] = [
        ChatHistory(value=[ChatMessage(role="user", content="Find SSE docs")]),
        StepStart(step="search", index=1, total=2),
        Delta(value="Look"),
        Delta(value=""),
        Delta(value="ing."),
        ToolCall(id="call_1", name="search_docs", arguments={"query": "sse"}),
        ToolCall(id="call_2", name="fetch", arguments={}),
        ToolResult(id="call_1", output={"hits": 2}),
        ToolResult(id="call_2", output="<html>", is_error=True),
        StepEnd(step="search", output={"hits": 2}),
        StepStart(step="answer"),
        Delta(value="Two pages."),
        ChatHistory(
            value=[
                ChatMessage(role="human", content="Find SSE docs"),
                ChatMessage(role="ai", content="Looking."),
                ChatMessage(role="critic", content="Fine."),
            ]
        ),
        Done(),
    ]
    assert wire(encode_run(encoder, evs)) == [
        {"type": "RUN_STARTED", "threadId": "thread-1", "runId": "run-1", "protocolVersion": "1.0"},
        {"type": "MESSAGES_SNAPSHOT", "messages": [{"id": "u1", "role": "user", "content": "Find SSE docs"}]},
        {"type": "STEP_STARTED", "metadata": {"streamflow": {"index": 1, "total": 2}}, "stepName": "search"},
        {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "Look"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "ing."},
        {"type": "TEXT_MESSAGE_END", "messageId": "m1"},
        {
            "type": "TOOL_CALL_START",
            "toolCallId": "call_1",
            "toolCallName": "search_docs",
            "parentMessageId": "m1",
        },
        {"type": "TOOL_CALL_ARGS", "toolCallId": "call_1", "delta": '{"query":"sse"}'},
        {"type": "TOOL_CALL_END", "toolCallId": "call_1"},
        {"type": "TOOL_CALL_START", "toolCallId": "call_2", "toolCallName": "fetch", "parentMessageId": "m1"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "call_2", "delta": "{}"},
        {"type": "TOOL_CALL_END", "toolCallId": "call_2"},
        {"type": "TOOL_CALL_RESULT", "messageId": "m2", "toolCallId": "call_1", "content": '{"hits":2}'},
        {
            "type": "TOOL_CALL_RESULT",
            "metadata": {"streamflow": {"isError": True}},
            "messageId": "m3",
            "toolCallId": "call_2",
            "content": "<html>",
        },
        {"type": "STEP_FINISHED", "metadata": {"streamflow": {"output": {"hits": 2}}}, "stepName": "search"},
        {"type": "STEP_STARTED", "stepName": "answer"},
        {"type": "TEXT_MESSAGE_START", "messageId": "m4", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m4", "delta": "Two pages."},
        {"type": "TEXT_MESSAGE_END", "messageId": "m4"},
        {
            "type": "MESSAGES_SNAPSHOT",
            "messages": [
                {"id": "u1", "role": "user", "content": "Find SSE docs"},
                {"id": "m1", "role": "assistant", "content": "Looking."},
                {"id": "m5", "role": "assistant", "name": "critic", "content": "Fine."},
            ],
        },
        {"type": "STEP_FINISHED", "stepName": "answer"},
        {"type": "RUN_FINISHED", "threadId": "thread-1", "runId": "run-1"},
    ]


def test_unbalanced_and_nested_steps(fixed_ids: None) -> None:
    evs: list[Event] = [
        StepEnd(step="never started"),
        StepStart(step="a"),
        StepStart(step="a"),  # AG-UI keys steps by name: the inner "a" is merged into the outer
        StepStart(step="b"),
        StepEnd(step="a"),
        StepEnd(step="a"),
        StepEnd(step="a"),
        StepStart(step="c"),
        Done(),
    ]
    steps = [(e["type"], e.get("stepName")) for e in wire(encode_run(AGUIEncoder(), evs))[1:]]
    assert steps == [
        ("STEP_STARTED", "a"),
        ("STEP_STARTED", "b"),
        ("STEP_FINISHED", "a"),
        ("STEP_STARTED", "c"),
        ("STEP_FINISHED", "c"),  # still active at Done: finished innermost first
        ("STEP_FINISHED", "b"),
        ("RUN_FINISHED", None),
    ]


def test_error_ends_the_run_and_nothing_follows(fixed_ids: None) -> None:
    encoder = AGUIEncoder(thread_id="t", run_id="r")
    encoder.open()
    encoder.encode(StepStart(step="plan"))
    encoder.encode(Delta(value="Thinking"))
    error = wire(encoder.encode(Error(message="The model is overloaded.", code="overloaded", step="plan")))
    assert error == [
        {"type": "TEXT_MESSAGE_END", "messageId": "m1"},
        {
            "type": "RUN_ERROR",
            "metadata": {"streamflow": {"step": "plan"}},
            "message": "The model is overloaded.",
            "code": "overloaded",
        },
    ]
    assert encoder.encode(Done()) == b""
    assert encoder.encode(Delta(value="late")) == b""
    assert encoder.close() == b""


def test_an_error_without_code_or_step() -> None:
    encoder = AGUIEncoder()
    encoder.open()
    assert wire(encoder.encode(Error(message="x"))) == [{"type": "RUN_ERROR", "message": "x"}]


def test_close_without_done_finishes_the_run() -> None:
    encoder = AGUIEncoder(thread_id="t", run_id="r")
    encoder.open()
    encoder.encode(StepStart(step="s"))
    encoder.encode(Delta(value="x"))
    assert [e["type"] for e in wire(encoder.close())] == ["TEXT_MESSAGE_END", "STEP_FINISHED", "RUN_FINISHED"]
    assert encoder.close() == b""
    assert encoder.encode(Done()) == b""


def test_one_encoder_per_stream() -> None:
    encoder = AGUIEncoder()
    with pytest.raises(RuntimeError, match="before open"):
        encoder.encode(Delta(value="x"))
    encoder.open()
    with pytest.raises(RuntimeError, match="one stream"):
        encoder.open()
    encoder.encode(Done())
    with pytest.raises(RuntimeError, match="one stream"):
        encoder.open()


def test_the_encoder_protocol() -> None:
    encoder = AGUIEncoder()
    assert isinstance(encoder, Encoder)
    assert encoder.media_type == "text/event-stream"
    assert dict(encoder.headers) == {}
    assert encoder.thread_id != AGUIEncoder().thread_id  # new UUIDs when not given
    assert encoder.run_id != encoder.thread_id


def test_empty_deltas_write_nothing() -> None:
    encoder = AGUIEncoder()
    encoder.open()
    assert encoder.encode(Delta(value="")) == b""
    encoder.encode(Delta(value="a"))
    assert encoder.encode(Delta(value="")) == b""


def test_text_that_cannot_be_sent_raises_and_the_run_can_still_fail_cleanly() -> None:
    encoder = AGUIEncoder()
    encoder.open()
    with pytest.raises(ValueError, match="surrogate"):
        encoder.encode(Delta(value="\ud800"))
    # The transport then encodes its Error (RUN_ERROR is valid in any state), then Done.
    assert [e["type"] for e in wire(encoder.encode(Error(message="x")))] == ["TEXT_MESSAGE_END", "RUN_ERROR"]
    assert encoder.encode(Done()) == b""


@pytest.mark.parametrize(
    "body",
    [
        {"threadId": "t", "runId": "r", "messages": []},
        '{"threadId":"t","runId":"r","messages":[]}',
        b'{"threadId":"t","runId":"r","messages":[],"tools":[],"context":[],"forwardedProps":{}}',
        RunAgentInput(thread_id="t", run_id="r", messages=[]),
    ],
)
def test_from_input_reads_a_run_agent_input(body: Any) -> None:
    encoder = AGUIEncoder.from_input(body)
    assert (encoder.thread_id, encoder.run_id) == ("t", "r")


def test_from_input_refuses_a_body_that_is_not_a_run_agent_input() -> None:
    with pytest.raises(ValidationError):
        AGUIEncoder.from_input({"threadId": "t"})
    with pytest.raises(ValueError, match="runId"):
        AGUIEncoder.from_input('{"threadId":"t","messages":[]}')


def test_from_input_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ag_ui.core", None)
    with pytest.raises(ImportError, match=r"streamflow\[agui\]"):
        AGUIEncoder.from_input({"threadId": "t", "runId": "r", "messages": []})


def test_tool_call_ids_from_the_history_are_not_reused(fixed_ids: None) -> None:
    encoder = AGUIEncoder.from_input(
        {
            "threadId": "t",
            "runId": "r",
            "messages": [
                {
                    "id": "a1",
                    "role": "assistant",
                    "toolCalls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"id": "t1", "role": "tool", "toolCallId": "call_1", "content": "1"},
                {"id": "t2", "role": "tool", "toolCallId": "call_1-2", "content": "1"},
            ],
        }
    )
    evs: list[Event] = [
        ToolResult(id="call_1", output="late answer to the earlier run's call"),
        ToolCall(id="call_1", name="f"),
        ToolResult(id="call_1", output="2"),
        Done(),
    ]
    stream = wire(encode_run(encoder, evs))
    ids = [(e["type"], e.get("toolCallId")) for e in stream if "toolCallId" in e]
    assert ids == [
        ("TOOL_CALL_RESULT", "call_1"),
        ("TOOL_CALL_START", "call_1-3"),
        ("TOOL_CALL_ARGS", "call_1-3"),
        ("TOOL_CALL_END", "call_1-3"),
        ("TOOL_CALL_RESULT", "call_1-3"),
    ]


def test_snapshot_ids_are_kept_for_equal_messages(fixed_ids: None) -> None:
    encoder = AGUIEncoder(thread_id="t", run_id="r")
    history = ChatHistory(
        value=[
            ChatMessage(role="user", content="hi"),
            ChatMessage(role="user", content="hi"),
            ChatMessage(role="tool", content="42"),
            ChatMessage(role="System", content="be brief"),
            ChatMessage(role="developer", content="d"),
        ]
    )
    first, second = wire(encode_run(encoder, [history, history, Done()]))[1:3]
    assert first == second
    assert first["messages"] == [
        {"id": "m1", "role": "user", "content": "hi"},
        {"id": "m2", "role": "user", "content": "hi"},
        {"id": "m3", "role": "assistant", "name": "tool", "content": "42"},
        {"id": "m4", "role": "system", "content": "be brief"},
        {"id": "m5", "role": "developer", "content": "d"},
    ]
