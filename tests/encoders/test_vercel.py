"""VercelAIEncoder: every frame is a chunk the AI SDK (ai@6) accepts, in an order it can apply.

Three models of the SDK are used, and the slow tests at the end prove each against the real
one in node:

- ``CHUNK``: a mirror of the zod ``uiMessageChunkSchema`` (node_modules/ai/dist/index.mjs,
  ``var uiMessageChunkSchema``), field by field: every object is loose (extra keys pass),
  ``.optional()`` means "absent", never ``null``, and ``z.unknown()`` keys are required.
- ``read_ui_message``: a mirror of ``processUIMessageStream`` for the chunk types the
  encoder writes; it fails where the SDK throws a ``UIMessageStreamError``.
- The streams: ``from_iterable``'s grammar (any events, at most one Error, then Done) with
  unbalanced and nested steps and tool results without a call.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, Union

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import (
    ConfigDict,
    Discriminator,
    JsonValue,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Encoder,
    Error,
    Event,
    EventStreamResponse,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)
from streamflow.encoders.vercel import UIMessage, VercelAIEncoder, VercelChatRequest
from streamflow.testing import decode, events, json_values, sse_texts

ROOT = Path(__file__).resolve().parents[2]
CHECK_SCRIPT = ROOT / "tests" / "clients" / "vercel" / "check_streams.mjs"

# --- the mirror of uiMessageChunkSchema -----------------------------------------------------

ProviderMetadata = dict[str, dict[str, JsonValue]]  # providerMetadataSchema
ToolMetadata = dict[str, JsonValue]  # toolMetadataSchema
Unknown = Any  # z.unknown(): any JSON value, null included, but the key must be there

# type -> fields, as in the zod source; "name?" is `.optional()`.
CHUNK_FIELDS: dict[str, dict[str, Any]] = {
    "text-start": {"id": str, "providerMetadata?": ProviderMetadata},
    "text-delta": {"id": str, "delta": str, "providerMetadata?": ProviderMetadata},
    "text-end": {"id": str, "providerMetadata?": ProviderMetadata},
    "error": {"errorText": str},
    "tool-input-start": {
        "toolCallId": str,
        "toolName": str,
        "inputEncoding?": Literal["json", "text"],
        "providerExecuted?": bool,
        "providerMetadata?": ProviderMetadata,
        "toolMetadata?": ToolMetadata,
        "dynamic?": bool,
        "title?": str,
    },
    "tool-input-delta": {"toolCallId": str, "inputTextDelta": str},
    "tool-input-available": {
        "toolCallId": str,
        "toolName": str,
        "input": Unknown,
        "providerExecuted?": bool,
        "providerMetadata?": ProviderMetadata,
        "toolMetadata?": ToolMetadata,
        "dynamic?": bool,
        "title?": str,
    },
    "tool-input-error": {
        "toolCallId": str,
        "toolName": str,
        "input": Unknown,
        "providerExecuted?": bool,
        "providerMetadata?": ProviderMetadata,
        "toolMetadata?": ToolMetadata,
        "dynamic?": bool,
        "errorText": str,
        "title?": str,
    },
    "tool-approval-request": {
        "approvalId": str,
        "toolCallId": str,
        "approvalDescriptor?": Unknown,
        "inputSchemaInput?": Unknown,
        "signature?": str,
    },
    "tool-output-available": {
        "toolCallId": str,
        "output": Unknown,
        "providerExecuted?": bool,
        "providerMetadata?": ProviderMetadata,
        "toolMetadata?": ToolMetadata,
        "dynamic?": bool,
        "preliminary?": bool,
    },
    "tool-output-error": {
        "toolCallId": str,
        "errorText": str,
        "providerExecuted?": bool,
        "providerMetadata?": ProviderMetadata,
        "toolMetadata?": ToolMetadata,
        "dynamic?": bool,
    },
    "tool-output-denied": {"toolCallId": str},
    "reasoning-start": {"id": str, "providerMetadata?": ProviderMetadata},
    "reasoning-delta": {"id": str, "delta": str, "providerMetadata?": ProviderMetadata},
    "reasoning-end": {"id": str, "providerMetadata?": ProviderMetadata},
    "source-url": {"sourceId": str, "url": str, "title?": str, "providerMetadata?": ProviderMetadata},
    "source-document": {
        "sourceId": str,
        "mediaType": str,
        "title": str,
        "filename?": str,
        "providerMetadata?": ProviderMetadata,
    },
    "file": {"url": str, "mediaType": str, "providerMetadata?": ProviderMetadata},
    "data-*": {"id?": str, "data": Unknown, "transient?": bool},
    "start-step": {},
    "finish-step": {},
    "start": {"messageId?": str, "messageMetadata?": Unknown},
    "finish": {
        "finishReason?": Literal["stop", "length", "content-filter", "tool-calls", "error", "other"],
        "messageMetadata?": Unknown,
    },
    "abort": {"reason?": str},
    "message-metadata": {"messageMetadata": Unknown},
}
CHUNK_TYPES = [name for name in CHUNK_FIELDS if name != "data-*"]

WRITTEN_TYPES = {
    "start",
    "start-step",
    "finish-step",
    "text-start",
    "text-delta",
    "text-end",
    "tool-input-available",
    "tool-output-available",
    "tool-output-error",
    "data-step",
    "data-chat-history",
    "data-tool-result",
    "error",
    "finish",
}
"""The chunk types the encoder may write: nothing else, ever."""


def _chunk_model(name: str, fields: dict[str, Any]) -> Any:
    """A TypedDict for one z.looseObject: extra keys pass, types are not coerced."""
    # z.custom((value) => typeof value === "string" && value.startsWith("data-"))
    kind = Annotated[str, StringConstraints(pattern="^data-")] if name == "data-*" else Literal[name]
    annotations: dict[str, Any] = {"type": kind}
    for field, annotation in fields.items():
        optional = field.endswith("?")
        annotations[field.rstrip("?")] = NotRequired[annotation] if optional else annotation
    model = TypedDict(name.title().replace("-", "").replace("*", "Any"), annotations)  # type: ignore[operator]
    return with_config(ConfigDict(extra="allow", strict=True))(model)


def _chunk_tag(value: Any) -> str | None:
    """z.union tries each object in turn; only one can match a given `type`."""
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str):
        return None
    return "data-*" if kind.startswith("data-") else kind


CHUNK: TypeAdapter[Any] = TypeAdapter(
    Annotated[
        Union[tuple(Annotated[_chunk_model(n, f), Tag(n)] for n, f in CHUNK_FIELDS.items())],  # noqa: UP007
        Discriminator(_chunk_tag),
    ]
)


def mirror_accepts(data: str) -> bool:
    try:
        CHUNK.validate_json(data)
    except ValidationError:
        return False
    return True


# --- the mirror of processUIMessageStream (the parts this encoder can produce) ------------


class StreamRejected(AssertionError):
    """Where the SDK would throw a UIMessageStreamError (or fail to parse a frame)."""


def read_ui_message(payloads: list[str]) -> dict[str, Any]:
    """Apply the chunks as processUIMessageStream does; return the message, the errors the
    stream reported (``onError``) and its finish reason."""
    parts: list[dict[str, Any]] = []
    active: dict[str, dict[str, Any]] = {}  # activeTextParts
    message: dict[str, Any] = {"id": "", "parts": parts, "errors": [], "finishReason": None}

    def current_step() -> list[dict[str, Any]]:
        starts = [i for i, part in enumerate(parts) if part["type"] == "step-start"]
        return parts[starts[-1] + 1 :] if starts else parts

    def is_tool(part: dict[str, Any]) -> bool:
        return part["type"].startswith("tool-") or part["type"] == "dynamic-tool"

    for data in payloads:
        if not mirror_accepts(data):
            raise StreamRejected(f"not a chunk the SDK accepts: {data}")
        chunk = json.loads(data)
        kind = chunk["type"]
        if kind == "start":
            message["id"] = chunk.get("messageId", message["id"])
        elif kind == "text-start":
            active[chunk["id"]] = {"type": "text", "text": "", "state": "streaming"}
            parts.append(active[chunk["id"]])
        elif kind in ("text-delta", "text-end"):
            if chunk["id"] not in active:
                raise StreamRejected(f"{kind} for missing text part {chunk['id']!r}")
            if kind == "text-delta":
                active[chunk["id"]]["text"] += chunk["delta"]
            else:
                active.pop(chunk["id"])["state"] = "done"
        elif kind == "start-step":
            parts.append({"type": "step-start"})
        elif kind == "finish-step":
            active.clear()
        elif kind == "tool-input-available":
            dynamic = chunk.get("dynamic", False)
            same = "dynamic-tool" if dynamic else "tool-"
            found = [
                p
                for p in current_step()
                if (p["type"] == same if dynamic else p["type"].startswith(same))
                and p["toolCallId"] == chunk["toolCallId"]
            ]
            part = found[0] if found else {}
            if not found:
                parts.append(part)
            part.clear()
            part.update(
                {"type": "dynamic-tool" if dynamic else f"tool-{chunk['toolName']}"}
                | ({"toolName": chunk["toolName"]} if dynamic else {})
                | {"toolCallId": chunk["toolCallId"], "state": "input-available", "input": chunk["input"]}
            )
        elif kind in ("tool-output-available", "tool-output-error"):
            calls = [p for p in current_step() if is_tool(p) and p["toolCallId"] == chunk["toolCallId"]]
            calls = calls or [
                p for p in reversed(parts) if is_tool(p) and p["toolCallId"] == chunk["toolCallId"]
            ]
            if not calls:
                raise StreamRejected(f"no tool invocation found for {chunk['toolCallId']!r}")
            part = calls[0]
            part.pop("output", None)
            part.pop("errorText", None)
            if kind == "tool-output-available":
                part.update(state="output-available", output=chunk["output"])
            else:
                part.update(state="output-error", errorText=chunk["errorText"])
        elif kind.startswith("data-"):
            same_id = [p for p in parts if "id" in chunk and p["type"] == kind and p.get("id") == chunk["id"]]
            if same_id:
                same_id[0]["data"] = chunk["data"]
            else:
                parts.append({key: chunk[key] for key in ("type", "id", "data") if key in chunk})
        elif kind == "error":
            message["errors"].append(chunk["errorText"])
        elif kind == "finish":
            message["finishReason"] = chunk.get("finishReason")
        else:
            raise AssertionError(f"the encoder wrote a {kind!r} chunk")
    return message


# --- streams ---------------------------------------------------------------------------

STEP_NAMES = st.sampled_from(["plan", "search", "answer"]) | sse_texts(max_pieces=2)
CALL_IDS = st.sampled_from(["call_1", "call_2"]) | sse_texts(max_pieces=2)
counts = st.none() | st.integers(1, 9)


def body_events() -> st.SearchStrategy[Event]:
    """Anything but Error and Done; step names and call ids often repeat, so steps nest,
    end out of order, or never end, and results come with, without, or twice for a call."""
    return st.one_of(
        events().filter(lambda event: not isinstance(event, (Error, Done))),
        st.builds(Delta, value=sse_texts()),
        st.builds(StepStart, step=STEP_NAMES, index=counts, total=counts),
        st.builds(StepEnd, step=STEP_NAMES, output=json_values()),
        st.builds(
            ToolCall,
            id=CALL_IDS,
            name=st.sampled_from(["search", "tool-with-dashes"]) | sse_texts(max_pieces=2),
            arguments=st.dictionaries(sse_texts(max_pieces=2), json_values(), max_size=3),
        ),
        st.builds(ToolResult, id=CALL_IDS, output=json_values(), is_error=st.booleans()),
    )


def streams(max_size: int = 24) -> st.SearchStrategy[list[Event]]:
    """What an encoder receives: any events, then at most one Error, then Done."""
    errors = st.none() | st.builds(
        Error, message=sse_texts(), code=st.none() | sse_texts(), step=st.none() | STEP_NAMES
    )
    return st.builds(
        lambda body, error: [*body, *([error] if error else []), Done()],
        st.lists(body_events(), max_size=max_size),
        errors,
    )


def encode_all(evs: list[Event], encoder: VercelAIEncoder | None = None, ids: bool = False) -> bytes:
    encoder = encoder or VercelAIEncoder(message_id="msg-1")
    head = encoder.open()
    body = b"".join(encoder.encode(e, id=str(i) if ids else None) for i, e in enumerate(evs))
    return head + body + encoder.close()


def payloads_of(data: bytes) -> list[str]:
    frames = decode(data)
    assert [sse.event for sse in frames] == ["message"] * len(frames), "a named SSE event"
    assert frames, "no frames"
    assert frames[-1].data == "[DONE]", "the stream does not end with [DONE]"
    assert "[DONE]" not in [sse.data for sse in frames[:-1]]
    return [sse.data for sse in frames[:-1]]


def check_contract(evs: list[Event], payloads: list[str]) -> dict[str, Any]:
    """The encoder's own promises, on top of what the SDK needs."""
    chunks = [json.loads(p) for p in payloads]
    kinds = [chunk["type"] for chunk in chunks]
    assert set(kinds) <= WRITTEN_TYPES, set(kinds) - WRITTEN_TYPES
    assert kinds[0] == "start"
    assert kinds.count("start") == 1
    assert kinds[-1] == "finish"
    assert kinds.count("finish") == 1
    open_text, open_step = None, False
    for chunk in chunks:  # text parts and steps are balanced, and closed before the end
        if chunk["type"] == "text-start":
            assert open_text is None
            open_text = chunk["id"]
        elif chunk["type"] == "text-end":
            assert open_text == chunk["id"]
            open_text = None
        elif chunk["type"] in ("start-step", "finish-step"):
            assert open_text is None
            assert open_step == (chunk["type"] == "finish-step")
            open_step = not open_step
        elif chunk["type"] in ("error", "finish"):
            assert open_text is None
            assert not open_step
    failed = isinstance(evs[-2] if len(evs) > 1 else None, Error)
    assert kinds.count("error") == failed
    if failed:
        assert kinds[-2:] == ["error", "finish"]
        assert chunks[-1]["finishReason"] == "error"
        assert chunks[-2]["errorText"] == evs[-2].message  # type: ignore[union-attr]
    else:
        assert chunks[-1]["finishReason"] == "stop"
    return read_ui_message(payloads)


def expected_view(evs: list[Event]) -> dict[str, Any]:
    """What the message must show, from the events alone."""
    text = "".join(e.value for e in evs if isinstance(e, Delta))
    open_steps: list[str] = []
    step_starts, step_status = 0, []
    for event in evs:
        if isinstance(event, StepStart):
            step_starts += not open_steps
            open_steps.append(event.step)
            step_status.append([event.step, "running"])
        elif isinstance(event, StepEnd):
            running = [s for s in step_status if s[1] == "running" and s[0] == event.step]
            if event.step in open_steps:
                del open_steps[len(open_steps) - 1 - open_steps[::-1].index(event.step)]
                running[-1][1] = "done"
            else:
                step_status.append([event.step, "done"])
        elif isinstance(event, Error):
            for status in step_status:
                if status[1] == "running":
                    status[1] = "error"
    called: set[str] = set()
    orphans = 0
    for event in evs:
        if isinstance(event, ToolCall):
            called.add(event.id)
        elif isinstance(event, ToolResult) and event.id not in called:
            orphans += 1
    histories = [e for e in evs if isinstance(e, ChatHistory)]
    return {
        "text": text,
        "step_starts": step_starts,
        "steps": [tuple(s) for s in step_status],
        "orphans": orphans,
        "history": [m.model_dump() for m in histories[-1].value] if histories else None,
    }


def actual_view(message: dict[str, Any]) -> dict[str, Any]:
    parts = message["parts"]
    history = [p["data"]["messages"] for p in parts if p["type"] == "data-chat-history"]
    assert len(history) <= 1
    return {
        "text": "".join(p["text"] for p in parts if p["type"] == "text"),
        "step_starts": sum(p["type"] == "step-start" for p in parts),
        "steps": [(p["data"]["name"], p["data"]["status"]) for p in parts if p["type"] == "data-step"],
        "orphans": sum(p["type"] == "data-tool-result" for p in parts),
        "history": history[0] if history else None,
    }


def check_tools(evs: list[Event], message: dict[str, Any]) -> None:
    """A call whose id is used once shows its input and its (last) result."""
    calls = [e for e in evs if isinstance(e, ToolCall)]
    for call in calls:
        if [c.id for c in calls].count(call.id) > 1:
            continue
        [part] = [p for p in message["parts"] if p.get("toolCallId") == call.id and "state" in p]
        assert part["type"] == f"tool-{call.name}"
        assert part["input"] == call.arguments
        after = evs[evs.index(call) :]
        results = [e for e in after if isinstance(e, ToolResult) and e.id == call.id]
        if not results:
            assert part["state"] == "input-available"
        elif results[-1].is_error:
            assert part["state"] == "output-error"
        else:
            assert part["state"] == "output-available"
            assert part["output"] == results[-1].output


# --- properties ------------------------------------------------------------------------


@given(streams())
def test_every_frame_is_a_chunk_the_sdk_accepts_in_an_order_it_can_apply(evs: list[Event]) -> None:
    payloads = payloads_of(encode_all(evs))
    for data in payloads:
        assert mirror_accepts(data), data
    message = check_contract(evs, payloads)
    assert actual_view(message) == expected_view(evs)
    check_tools(evs, message)
    assert all(p["state"] == "done" for p in message["parts"] if p["type"] == "text")
    assert message["errors"] == [e.message for e in evs if isinstance(e, Error)]


@given(streams(max_size=8), st.lists(st.integers(1, 9), min_size=1, max_size=4))
def test_any_chunking_and_ids_decode_the_same(evs: list[Event], sizes: list[int]) -> None:
    data = encode_all(evs, ids=True)
    frames = decode(data)
    assert decode(data, chunk_sizes=sizes) == frames
    assert [sse.data for sse in frames] == [sse.data for sse in decode(encode_all(evs))]


@given(streams(max_size=12))
def test_an_event_id_is_on_the_last_frame_of_its_event(evs: list[Event]) -> None:
    encoder = VercelAIEncoder()
    encoder.open()
    for index, event in enumerate(evs):
        frames = decode(encoder.encode(event, id=str(index)))
        if frames:
            assert frames[-1].id == str(index)
            assert all(sse.id == "" for sse in frames[:-1])


@given(sse_texts())
def test_text_is_written_as_json_stringify_writes_it(text: str) -> None:
    [_, _, delta, _, _] = payloads_of(encode_all([Delta(value=text), Done()]))
    assert json.loads(delta) == {"type": "text-delta", "id": "text-1", "delta": text}
    delta.encode()  # valid UTF-8: a lone surrogate is escaped, everything else is as is
    assert all(char in delta for char in text if char.isprintable() and not 0xD800 <= ord(char) <= 0xDFFF)


# --- examples --------------------------------------------------------------------------


def test_the_mapping() -> None:
    evs: list[Event] = [
        StepStart(step="search", index=1, total=2),
        ToolCall(id="call_1", name="search_docs", arguments={"query": "sse"}),
        ToolResult(id="call_1", output={"hits": 2}),
        StepEnd(step="search", output={"hits": 2}),
        StepStart(step="answer", index=2, total=2),
        Delta(value="Two "),
        Delta(value="pages."),
        StepEnd(step="answer"),
        ChatHistory(value=[ChatMessage(role="user", content="sse?")]),
        Done(),
    ]
    assert [json.loads(p) for p in payloads_of(encode_all(evs))] == [
        {"type": "start", "messageId": "msg-1"},
        {"type": "start-step"},
        {
            "type": "data-step",
            "id": "step-1",
            "data": {"name": "search", "status": "running", "index": 1, "total": 2},
        },
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "search_docs",
            "input": {"query": "sse"},
        },
        {"type": "tool-output-available", "toolCallId": "call_1", "output": {"hits": 2}},
        {
            "type": "data-step",
            "id": "step-1",
            "data": {"name": "search", "status": "done", "index": 1, "total": 2, "output": {"hits": 2}},
        },
        {"type": "finish-step"},
        {"type": "start-step"},
        {
            "type": "data-step",
            "id": "step-2",
            "data": {"name": "answer", "status": "running", "index": 2, "total": 2},
        },
        {"type": "text-start", "id": "text-3"},
        {"type": "text-delta", "id": "text-3", "delta": "Two "},
        {"type": "text-delta", "id": "text-3", "delta": "pages."},
        {"type": "text-end", "id": "text-3"},
        {
            "type": "data-step",
            "id": "step-2",
            "data": {"name": "answer", "status": "done", "index": 2, "total": 2},
        },
        {"type": "finish-step"},
        {
            "type": "data-chat-history",
            "id": "chat-history",
            "data": {"messages": [{"role": "user", "content": "sse?", "type": "text"}]},
        },
        {"type": "finish", "finishReason": "stop"},
    ]


def test_an_error_closes_the_text_and_the_steps_before_the_error_chunk() -> None:
    evs: list[Event] = [
        StepStart(step="outer"),
        StepStart(step="inner"),
        Delta(value="partial"),
        Error(message="The model is overloaded.", code="overloaded", step="inner"),
        Done(),
    ]
    kinds = [
        (c["type"], c.get("data", {}).get("status")) for c in map(json.loads, payloads_of(encode_all(evs)))
    ]
    assert kinds[-7:] == [
        ("text-delta", None),
        ("text-end", None),
        ("data-step", "error"),
        ("data-step", "error"),
        ("finish-step", None),
        ("error", None),
        ("finish", None),
    ]


def test_unbalanced_steps_and_orphan_results() -> None:
    evs: list[Event] = [
        StepEnd(step="ghost", output=1),
        StepStart(step="a"),
        StepStart(step="b"),
        StepEnd(step="a"),  # not the innermost: the SDK step stays open for "b"
        ToolResult(id="never-called", output="x", is_error=True),
        StepStart(step="c"),  # never ended
        Done(),
    ]
    chunks = [json.loads(p) for p in payloads_of(encode_all(evs))]
    assert [c["type"] for c in chunks].count("start-step") == 1
    assert chunks[1] == {
        "type": "data-step",
        "id": "step-1",
        "data": {"name": "ghost", "status": "done", "output": 1},
    }
    assert {
        "type": "data-tool-result",
        "data": {"toolCallId": "never-called", "output": "x", "isError": True},
    } in chunks
    assert [c["type"] for c in chunks][-2:] == ["finish-step", "finish"]
    message = read_ui_message([json.dumps(c) for c in chunks])
    assert actual_view(message)["steps"] == [
        ("ghost", "done"),
        ("a", "done"),
        ("b", "running"),
        ("c", "running"),
    ]


def test_tool_errors_and_dynamic_tools() -> None:
    evs: list[Event] = [
        ToolCall(id="1", name="a", arguments={}),
        ToolResult(id="1", output="no such file", is_error=True),
        ToolCall(id="2", name="b"),
        ToolResult(id="2", output={"code": 2}, is_error=True),
        ToolCall(id="3", name="c"),
        ToolResult(id="3", is_error=True),
        Done(),
    ]
    chunks = [json.loads(p) for p in payloads_of(encode_all(evs, VercelAIEncoder(dynamic_tools=True)))]
    assert [c["errorText"] for c in chunks if c["type"] == "tool-output-error"] == [
        "no such file",
        '{"code":2}',
        "",
    ]
    assert all(c["dynamic"] is True for c in chunks if c["type"] == "tool-input-available")
    parts = read_ui_message([json.dumps(c) for c in chunks])["parts"]
    assert [(p["type"], p["toolName"], p["state"]) for p in parts] == [
        ("dynamic-tool", n, "output-error") for n in "abc"
    ]


def test_lone_surrogates_and_non_finite_numbers_are_written_as_javascript_would() -> None:
    evs: list[Event] = [
        Delta(value="a\ud800b 🙂 é"),
        ToolCall(id="1", name="t", arguments={"x": float("nan"), "y": [float("inf")], "z": "\udfff"}),
        Done(),
    ]
    data = encode_all(evs)
    data.decode()  # valid UTF-8
    assert b'"a\\ud800b \xf0\x9f\x99\x82 \xc3\xa9"' in data
    chunks = [json.loads(p) for p in payloads_of(data)]
    assert chunks[2]["delta"] == "a\ud800b 🙂 é"
    assert chunks[4]["input"] == {"x": None, "y": [None], "z": "\udfff"}


def test_headers_media_type_and_protocol() -> None:
    encoder = VercelAIEncoder()
    assert isinstance(encoder, Encoder)
    assert encoder.media_type == "text/event-stream"
    assert dict(encoder.headers) == {"x-vercel-ai-ui-message-stream": "v1"}
    response = EventStreamResponse([], encoder=VercelAIEncoder())
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert VercelAIEncoder().message_id != VercelAIEncoder().message_id


def test_misuse_raises() -> None:
    encoder = VercelAIEncoder()
    with pytest.raises(RuntimeError, match="open"):
        encoder.encode(Delta(value="x"))
    encoder.open()
    with pytest.raises(RuntimeError, match="one stream"):
        encoder.open()
    with pytest.raises(ValueError, match="'id'"):
        encoder.encode(Delta(value="x"), id="a\nb")
    assert decode(encoder.encode(Delta(value="x")))[0].data.startswith('{"type":"text-start"')  # state intact
    encoder.encode(Error(message="boom"))
    with pytest.raises(RuntimeError, match="after Error"):
        encoder.encode(Delta(value="x"))
    assert encoder.encode(Done()) == b""
    with pytest.raises(RuntimeError, match="after Done"):
        encoder.encode(Done())


# --- the request model -----------------------------------------------------------------


def test_the_request_use_chat_sends() -> None:
    body = {
        "id": "chat-1",
        "messages": [
            {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "first"}]},
            {
                "id": "a1",
                "role": "assistant",
                "parts": [
                    {"type": "step-start"},
                    {
                        "type": "tool-search",
                        "toolCallId": "c",
                        "state": "output-available",
                        "input": {},
                        "output": 1,
                    },
                    {"type": "text", "text": "answer", "state": "done"},
                    {"type": "data-step", "id": "step-1", "data": {"name": "s"}},
                ],
            },
            {
                "id": "u2",
                "role": "user",
                "metadata": {"k": 1},
                "parts": [
                    {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="},
                    {"type": "text", "text": "second "},
                    {"type": "text", "text": "question"},
                ],
            },
        ],
        "trigger": "submit-message",
        "temperature": 0.5,  # from the transport's `body` option
    }
    request = VercelChatRequest.model_validate(body)
    assert request.last_user_text() == "second question"
    assert request.model_extra == {"temperature": 0.5}
    assert request.message_id is None
    assert request.messages[1].parts[1].model_extra == {
        "toolCallId": "c",
        "state": "output-available",
        "input": {},
        "output": 1,
    }
    regenerate = VercelChatRequest.model_validate(
        {**body, "trigger": "regenerate-message", "messageId": "a1"}
    )
    assert regenerate.message_id == "a1"
    assert VercelChatRequest(id="c", messages=[], trigger="submit-message").last_user_text() == ""
    assert UIMessage(id="a", role="assistant", parts=[]).text == ""
    with pytest.raises(ValidationError):
        VercelChatRequest.model_validate({**body, "trigger": "resume-stream"})


# --- the mirrors against the real SDK ----------------------------------------------------


NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # a node run per try; failures name the stream


def run_node(payload: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(CHECK_SCRIPT)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def as_javascript(value: Any) -> Any:
    """A JSON value as JavaScript holds it: every number a double (1e16 reads back as an int)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return [as_javascript(item) for item in value]
    if isinstance(value, dict):
        return {key: as_javascript(item) for key, item in value.items()}
    return value


def sdk_view(part: dict[str, Any]) -> dict[str, Any]:
    keep = ("type", "id", "text", "state", "toolName", "toolCallId", "input", "output", "errorText", "data")
    return {key: as_javascript(part[key]) for key in keep if key in part}


@pytest.mark.slow
@settings(max_examples=10, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(st.lists(streams(max_size=16), min_size=1, max_size=25), st.lists(st.integers(1, 64), min_size=1))
def test_a_batch_of_streams_through_the_real_sdk(batch: list[list[Event]], sizes: list[int]) -> None:
    """The SDK's own path (DefaultChatTransport.processResponseStream: parseJsonEventStream
    with uiMessageChunkSchema, then readUIMessageStream) over the bytes, in chunks: it
    rejects nothing, reports only the Error, and builds the message the Python mirror does."""
    bodies = [encode_all(evs) for evs in batch]
    results = run_node({"streams": [base64.b64encode(b).decode() for b in bodies], "chunkSizes": sizes})[
        "streams"
    ]
    for evs, body, result in zip(batch, bodies, results, strict=True):
        assert result["failure"] is None, (result["failure"], evs)
        mirror = read_ui_message(payloads_of(body))
        assert result["errors"] == mirror["errors"]
        assert [sdk_view(p) for p in result["message"]["parts"]] == [sdk_view(p) for p in mirror["parts"]]
        assert result["message"]["id"] == "msg-1"
        assert result["chunkTypes"] == [json.loads(p)["type"] for p in payloads_of(body)]


VALUES = [
    None,
    "",
    "x",
    "data-x",
    0,
    1.5,
    True,
    False,
    [],
    ["x"],
    {},
    {"a": 1},
    {"a": {"b": 1}},
    {"a": {"b": None}},
]
FIELD_NAMES = sorted({f.rstrip("?") for fields in CHUNK_FIELDS.values() for f in fields})
TYPES = [*CHUNK_TYPES, "data-x", "data-", "bogus", "dat-x", "DATA-x", "text_start", "", "reasoning"]


MUTATIONS = st.tuples(
    st.integers(0, 10**6),
    st.sampled_from(["drop", "set", "type", "keep"]),
    st.sampled_from(["type", *FIELD_NAMES]),
    st.sampled_from([*VALUES, *TYPES]),
)
RANDOM_CHUNKS = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)}, optional={name: st.sampled_from(VALUES) for name in FIELD_NAMES}
)


def mutate(chunks: list[dict[str, Any]], mutation: tuple[int, str, str, Any]) -> dict[str, Any]:
    at, how, key, value = mutation
    changed = dict(chunks[at % len(chunks)])
    if how == "drop":
        changed.pop(key, None)
    elif how == "set":
        changed[key] = value
    elif how == "type":
        changed["type"] = value
    return changed


@pytest.mark.slow
@settings(max_examples=5, suppress_health_check=list(HealthCheck))
@given(streams(max_size=12), st.lists(MUTATIONS, max_size=120), st.lists(RANDOM_CHUNKS, max_size=60))
def test_the_chunk_mirror_agrees_with_the_sdk_schema(
    evs: list[Event], mutations: list[tuple[int, str, str, Any]], random: list[dict[str, Any]]
) -> None:
    """uiMessageChunkSchema itself (through parseJsonEventStream) and CHUNK give the same
    verdict on each object, accepted or rejected: the encoder's chunks, each changed once
    (a key dropped, set to another value, another type), and random ones."""
    written = [json.loads(p) for p in payloads_of(encode_all(evs))]
    objects = [*written, *(mutate(written, m) for m in mutations), *random, [], "x", 1, None, {"data": 1}]
    texts = [json.dumps(o) for o in objects]
    verdicts = run_node({"chunks": texts})["chunks"]
    disagree = [(t, v) for t, v in zip(texts, verdicts, strict=True) if mirror_accepts(t) != v]
    assert not disagree, disagree[:5]
    assert any(verdicts)
    assert not all(verdicts)
