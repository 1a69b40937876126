"""The typed event protocol: what an agent run says, independent of any wire format.

Every event is an immutable pydantic model with a literal ``type``; :data:`Event` is their
discriminated union. The wire JSON is compact and leaves out fields that are ``None``::

    >>> Delta(value="Hi").to_json()
    '{"type":"delta","value":"Hi"}'

:func:`parse_event` is the way back. It raises :class:`ProtocolError` naming the unknown
type or the bad field, never a bare pydantic error.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

__all__ = [
    "ChatHistory",
    "ChatMessage",
    "Delta",
    "Done",
    "Error",
    "Event",
    "EventType",
    "Gap",
    "ProtocolError",
    "StepEnd",
    "StepStart",
    "ToolCall",
    "ToolResult",
    "event_json_schema",
    "parse_event",
]


class ProtocolError(ValueError):
    """Data that is not a valid streamflow event.

    The message names the unknown ``type`` or the offending field (``delta.value: ...``);
    :attr:`errors` keeps pydantic's structured error list when there is one.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors: list[dict[str, Any]] = errors or []


def _wire_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Describe the wire JSON exactly, for generated front-end types: a field whose
    default is not ``None`` is always written (required); a ``None`` default is omitted on
    the wire, so no ``default`` is shown (next to a ``$ref`` it confuses generators)."""
    required = schema.setdefault("required", [])
    for name, field in model.model_fields.items():
        prop = schema["properties"].get(name, {})
        if field.default is None:
            prop.pop("default", None)
        elif name not in required:
            required.append(name)


class _Model(BaseModel):
    # Unknown fields are ignored so that a reader keeps working when a newer writer adds
    # one; an unknown event *type* is still an error.
    model_config = ConfigDict(frozen=True, extra="ignore", json_schema_extra=_wire_schema)


class _EventBase(_Model):
    type: str

    def to_json(self) -> str:
        """The compact wire JSON of this event, without ``None`` fields."""
        return self.model_dump_json(exclude_none=True)


class StepStart(_EventBase):
    """A named step of the run began (an action, a node, a sub-agent, a workflow step).

    ``index`` (1-based) and ``total`` are optional progress hints: "step 2 of 5".
    """

    type: Literal["step_start"] = "step_start"
    step: str = Field(description="The step's name; its step_end (or the run's error) carries the same name.")
    index: int | None = Field(
        default=None, ge=1, description='Which step this is, from 1: "step index of total".'
    )
    total: int | None = Field(default=None, ge=1, description="How many steps the run has, when known.")


class Delta(_EventBase):
    """A piece of streamed text. Concatenating a run's deltas gives its text."""

    type: Literal["delta"] = "delta"
    value: str = Field(description="The text to append; any characters, line breaks included.")
    step: str | None = Field(default=None, description="The step that wrote it, when the source says so.")

    def to_json(self) -> str:
        # The hot path of every stream: a hand-built string is several times faster than
        # model_dump_json and produces the same bytes (checked by the property tests).
        if self.step is None:
            return _DELTA_PREFIX + _json_string(self.value) + "}"
        return _DELTA_PREFIX + _json_string(self.value) + ',"step":' + _json_string(self.step) + "}"


class StepEnd(_EventBase):
    """The step named ``step`` finished; ``output`` is its (JSON) result, if any."""

    type: Literal["step_end"] = "step_end"
    step: str = Field(description="The name its step_start carried.")
    output: JsonValue = Field(default=None, description="The step's result as JSON, if it has one.")


class ChatMessage(_Model):
    """One message of a conversation, as a chat UI renders it."""

    role: str = Field(description="Who wrote it: user, assistant, system, tool...")
    content: str = Field(description="The message's text.")
    type: str = Field(
        default="text", description="How to render content (text unless the app says otherwise)."
    )


class ChatHistory(_EventBase):
    """The conversation so far (or after the run), for a UI to render or replace."""

    type: Literal["chat_history"] = "chat_history"
    value: list[ChatMessage] = Field(description="The messages, oldest first.")


class Error(_EventBase):
    """The run failed. ``message`` is meant for the user; ``code`` for programs; ``step``
    names the step that failed, when known."""

    type: Literal["error"] = "error"
    message: str = Field(
        description="Safe to show to the user: by default a generic text, never an exception's."
    )
    code: str | None = Field(
        default=None,
        description="A stable reason for programs: internal_error, cancelled, replay_unavailable...",
    )
    step: str | None = Field(default=None, description="The step that was running when the run failed.")


class Done(_EventBase):
    """The stream is complete. A well-formed stream ends with exactly one ``Done``."""

    type: Literal["done"] = "done"

    def to_json(self) -> str:
        return _DONE_JSON


class Gap(_EventBase):
    """Events of this run before this point are not in the stream: a reader that joined a
    long run after its retention dropped its first events starts from the first retained
    one, after a ``gap``. Text before it is missing; what follows is the run, live."""

    type: Literal["gap"] = "gap"


class ToolCall(_EventBase):
    """The agent called tool ``name`` with ``arguments``; ``id`` pairs it with its result."""

    type: Literal["tool_call"] = "tool_call"
    id: str = Field(description="Unique within the run; the tool_result of this call carries the same id.")
    name: str = Field(description="The tool's name.")
    arguments: dict[str, JsonValue] = Field(
        default_factory=dict, description="The arguments the agent passed, as a JSON object."
    )
    step: str | None = Field(default=None, description="The step that made the call, when known.")


class ToolResult(_EventBase):
    """The result of the tool call ``id``; ``is_error`` marks a failed call."""

    type: Literal["tool_result"] = "tool_result"
    id: str = Field(description="The id of the tool_call this answers.")
    output: JsonValue = Field(
        default=None, description="What the tool returned, as JSON (or the error it reported)."
    )
    is_error: bool = Field(default=False, description="Whether the call failed.")
    step: str | None = Field(default=None, description="The step that made the call, when known.")


Event: TypeAlias = Annotated[
    StepStart | Delta | StepEnd | ChatHistory | Error | Done | ToolCall | ToolResult | Gap,
    Field(discriminator="type"),
]
"""Any streamflow event, discriminated on ``type``."""

EventType: TypeAlias = Literal[
    "step_start", "delta", "step_end", "chat_history", "error", "done", "tool_call", "tool_result", "gap"
]

EVENT_TYPES: Final[dict[str, type[_EventBase]]] = {
    "step_start": StepStart,
    "delta": Delta,
    "step_end": StepEnd,
    "chat_history": ChatHistory,
    "error": Error,
    "done": Done,
    "tool_call": ToolCall,
    "tool_result": ToolResult,
    "gap": Gap,
}

EVENT_CLASSES: Final = (StepStart, Delta, StepEnd, ChatHistory, Error, Done, ToolCall, ToolResult, Gap)

_json_string = encode_basestring
_DELTA_PREFIX: Final = '{"type":"delta","value":'
_DONE_JSON: Final = '{"type":"done"}'
_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of :data:`Event`, for generating front-end types.

    ``python -m streamflow schema`` prints it.
    """
    return {"title": "Event", **_adapter.json_schema(mode="serialization")}


def parse_event(data: str | bytes | bytearray | dict[str, Any]) -> Event:
    """Validate wire JSON (``str``/``bytes``) or an already decoded ``dict`` into an event.

    Raises :class:`ProtocolError` for malformed JSON, a missing or unknown ``type``, or a
    field that does not fit the event's model; the message names which.
    """
    try:
        if isinstance(data, dict):
            return _adapter.validate_python(data)
        if isinstance(data, (str, bytes, bytearray)):
            return _adapter.validate_json(data)
    except ValidationError as exc:
        raise _protocol_error(exc) from None
    raise ProtocolError(f"cannot parse an event from {type(data).__name__}")


def _protocol_error(exc: ValidationError) -> ProtocolError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag", "")
        message = f"unknown event type {tag!r}; expected one of {', '.join(EVENT_TYPES)}"
    elif kind == "union_tag_not_found":
        message = "missing event field 'type'"
    elif kind == "json_invalid":
        message = str(first["msg"])  # "Invalid JSON: ..."
    elif not first["loc"]:
        message = f"an event must be a JSON object ({first['msg']})"
    else:
        loc = ".".join(str(part) for part in first["loc"])
        message = f"{loc}: {first['msg']}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
    return ProtocolError(message, [dict(e) for e in errors])
