from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Error,
    ProtocolError,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    event_json_schema,
    parse_event,
)

WIRE = [
    (Delta(value="Hi"), '{"type":"delta","value":"Hi"}'),
    (Delta(value="Hi", step="answer"), '{"type":"delta","value":"Hi","step":"answer"}'),
    (StepStart(step="route"), '{"type":"step_start","step":"route"}'),
    (StepStart(step="sql", index=2, total=5), '{"type":"step_start","step":"sql","index":2,"total":5}'),
    (StepEnd(step="sql"), '{"type":"step_end","step":"sql"}'),
    (StepEnd(step="sql", output={"rows": 3}), '{"type":"step_end","step":"sql","output":{"rows":3}}'),
    (
        ChatHistory(value=[ChatMessage(role="user", content="hi")]),
        '{"type":"chat_history","value":[{"role":"user","content":"hi","type":"text"}]}',
    ),
    (Error(message="boom"), '{"type":"error","message":"boom"}'),
    (Error(message="boom", code="rate_limited"), '{"type":"error","message":"boom","code":"rate_limited"}'),
    (Done(), '{"type":"done"}'),
    (
        ToolCall(id="c1", name="weather", arguments={"city": "Oslo", "unit": None}),
        '{"type":"tool_call","id":"c1","name":"weather","arguments":{"city":"Oslo","unit":null}}',
    ),
    (
        ToolResult(id="c1", output=[1, None]),
        '{"type":"tool_result","id":"c1","output":[1,null],"is_error":false}',
    ),
]


@pytest.mark.parametrize(("event", "wire"), WIRE)
def test_wire_json_is_compact_and_omits_none(event: object, wire: str) -> None:
    assert event.to_json() == wire  # type: ignore[attr-defined]
    assert parse_event(wire) == event
    assert parse_event(wire.encode()) == event
    assert parse_event(json.loads(wire)) == event


def test_delta_fast_path_matches_pydantic() -> None:
    for value in ["", 'a"b\\c', "line\nbreak\r\n", "\x00\x1f\x7f", "é日本🙂\u2028", "</script>"]:
        for step in [None, "s", "ü\n"]:
            event = Delta(value=value, step=step)
            assert event.to_json() == event.model_dump_json(exclude_none=True)


def test_events_are_immutable_values() -> None:
    event = Delta(value="x")
    with pytest.raises(ValidationError):
        event.value = "y"  # type: ignore[misc]
    assert Delta(value="x") == event
    assert hash(Delta(value="x")) == hash(event)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"type":"nope"}', "unknown event type 'nope'"),
        ('{"value":"x"}', "missing event field 'type'"),
        ('{"type":"delta"}', "delta.value: Field required"),
        ('{"type":"delta","value":1}', "delta.value: Input should be a valid string"),
        ('{"type":"tool_call","id":"1"}', "tool_call.name: Field required"),
        ('{"type":"step_start","step":"s","index":0}', "step_start.index"),
        ('{"type":"chat_history","value":[{"role":"user"}]}', "chat_history.value.0.content"),
        ("not json", "Invalid JSON"),
        ("[1]", "an event must be a JSON object"),
        ("", "Invalid JSON"),
    ],
)
def test_parse_event_names_the_problem(data: str, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_event(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_event_rejects_other_types() -> None:
    with pytest.raises(ProtocolError, match="cannot parse an event from int"):
        parse_event(3)  # type: ignore[arg-type]


def test_protocol_error_keeps_structured_errors() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_event('{"type":"error"}')
    assert info.value.errors[0]["loc"] == ("error", "message")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert parse_event('{"type":"delta","value":"x","added_later":1}') == Delta(value="x")


def test_tool_payloads_must_be_json() -> None:
    with pytest.raises(ValidationError):
        ToolResult(id="1", output=object())  # type: ignore[arg-type]


def test_json_schema_covers_every_event_type() -> None:
    schema = event_json_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == {
        "step_start",
        "delta",
        "step_end",
        "chat_history",
        "error",
        "done",
        "tool_call",
        "tool_result",
        "gap",
    }
    json.dumps(schema)  # serializable as is
    schema["$defs"].clear()
    assert event_json_schema()["$defs"], "callers get their own copy"


def test_schema_command_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamflow", "schema"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == event_json_schema()
    bad = subprocess.run([sys.executable, "-m", "streamflow"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "usage" in bad.stderr


def test_core_import_stays_light() -> None:
    code = (
        "import sys, streamflow;"
        "heavy = {'httpx', 'hypothesis', 'fastapi', 'uvicorn', 'burr', 'google.adk', 'agno', 'langgraph'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
