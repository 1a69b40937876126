"""The AG-UI event stream (https://docs.ag-ui.com), as ``@ag-ui/client``'s ``HttpAgent`` reads it.

One ``data: <json>`` frame per AG-UI event, LF line endings, no ``event:`` field (the client
ignores it). :class:`AGUIEncoder` keeps the run's state so that every stream the transport can
send passes the client's ``verifyEvents``: one ``RUN_STARTED`` first, text messages and tool calls
opened before they are continued and closed before the run ends, a step finished only when it
is active, and nothing after ``RUN_ERROR`` or ``RUN_FINISHED``.

================================  =====================================================================
streamflow event                  AG-UI events
================================  =====================================================================
(``open()``)                      ``RUN_STARTED`` {threadId, runId, protocolVersion "1.0"}
``Delta`` (first of a run)        ``TEXT_MESSAGE_START`` {messageId (new), role "assistant"}, then
                                  ``TEXT_MESSAGE_CONTENT`` {messageId, delta}
``Delta`` (following one)         ``TEXT_MESSAGE_CONTENT``; an empty ``value`` writes nothing
any other event                   first ``TEXT_MESSAGE_END`` for the open text message, if any
``StepStart``                     ``STEP_STARTED`` {stepName, metadata.streamflow {index, total}};
                                  nothing for a step of that name already active (AG-UI steps
                                  are keyed by name: nested same-named steps merge into one)
``StepEnd``                       ``STEP_FINISHED`` {stepName, metadata.streamflow.output} when the
                                  last active step of that name ends; nothing for a step that is
                                  not active
``ToolCall``                      ``TOOL_CALL_START`` {toolCallId, toolCallName, parentMessageId},
                                  ``TOOL_CALL_ARGS`` {delta: the arguments as JSON},
                                  ``TOOL_CALL_END``. The parent is the text message just closed
                                  (or the previous call's parent, for consecutive calls), else
                                  a new id. An id already used in this run, or in the input's
                                  history, is sent as ``<id>-2`` (``-3``, ...)
``ToolResult``                    ``TOOL_CALL_RESULT`` {messageId (new), toolCallId, content: the
                                  output as is if a str, else as JSON ("" for None),
                                  metadata.streamflow.isError when ``is_error``}. A result
                                  without a call is sent too (the client accepts it)
``ChatHistory``                   ``MESSAGES_SNAPSHOT``: roles user/human, assistant/ai/model,
                                  system and developer map to those messages; any other role
                                  becomes an assistant message named after it. A message equal
                                  to one of the input's, to a streamed text message or to one of
                                  an earlier snapshot keeps that message's id (the client
                                  replaces its list with the snapshot's)
``Error``                         ``RUN_ERROR`` {message, code, metadata.streamflow.step}; nothing
                                  is written after it
``Done``                          ``TEXT_MESSAGE_END`` and ``STEP_FINISHED`` for whatever is still
                                  open (innermost step first), then ``RUN_FINISHED``
================================  =====================================================================

``Delta.step``, ``ToolCall.step``, ``ToolResult.step`` and ``ChatMessage.type`` have no AG-UI
field and are not sent. The JSON is built by hand -- the ag_ui models are ~25x slower on the
``TEXT_MESSAGE_CONTENT`` hot path -- and is byte for byte what ``ag_ui.core``'s models write
(``model_dump_json(by_alias=True)``), which the property tests check. Only
:meth:`AGUIEncoder.from_input` needs the ``ag-ui-protocol`` package (``streamflow[agui]``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from json.encoder import encode_basestring
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from pydantic import JsonValue, TypeAdapter

from streamflow.events import (
    ChatHistory,
    Delta,
    Done,
    Error,
    Event,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)
from streamflow.sse import frame

if TYPE_CHECKING:
    from ag_ui.core import RunAgentInput

__all__ = ["AGUIEncoder"]

PROTOCOL_VERSION: Final = "1.0"
"""The AG-UI protocol version this encoder speaks (declared in ``RUN_STARTED``)."""

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_ROLES: Final = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "developer",
}
_json_string = encode_basestring
_json_value: TypeAdapter[JsonValue] = TypeAdapter(JsonValue)

_NEW, _OPEN, _ENDED = 0, 1, 2


def _to_json(value: JsonValue) -> str:
    """Compact JSON as pydantic writes it (NaN and infinities as ``null``)."""
    return _json_value.dump_json(value).decode()


def _metadata(fields: dict[str, JsonValue]) -> str:
    """The ``"metadata":{...},`` member holding the streamflow fields that are not None."""
    present: dict[str, JsonValue] = {key: value for key, value in fields.items() if value is not None}
    return '"metadata":' + _to_json({"streamflow": present}) + "," if present else ""


def _new_id() -> str:
    return str(uuid.uuid4())


class AGUIEncoder:
    """Writes one run as an AG-UI event stream; see the module docstring for the mapping.

    ``thread_id`` and ``run_id`` are the ``RunAgentInput``'s (new UUIDs when left out);
    :meth:`from_input` takes both, and the history, from the request body an AG-UI client
    POSTs. One instance per stream: :meth:`open` raises :class:`RuntimeError` the second time.
    """

    media_type: str = "text/event-stream"
    headers: Mapping[str, str] = _EMPTY

    def __init__(self, *, thread_id: str | None = None, run_id: str | None = None) -> None:
        self.thread_id: str = thread_id if thread_id is not None else _new_id()
        self.run_id: str = run_id if run_id is not None else _new_id()
        self._state = _NEW
        self._message: str | None = None  # the open text message's id
        self._content_prefix = ""  # '{"type":"TEXT_MESSAGE_CONTENT","messageId":"<id>","delta":'
        self._text: list[str] = []  # the open text message's deltas
        self._parent: str | None = None  # the assistant message a ToolCall next in line belongs to
        self._steps: dict[str, int] = {}  # active step name -> how many streamflow steps hold it
        self._tool_ids: dict[str, str] = {}  # ToolCall.id -> the toolCallId sent for it
        self._used_tool_ids: set[str] = set()
        self._suffixes: dict[str, int] = {}  # ToolCall.id -> the last n of "<id>-<n>" tried
        self._known: dict[tuple[str, str | None, str], list[str]] = {}  # (role, name, content) -> ids

    @classmethod
    def from_input(cls, run_input: RunAgentInput | Mapping[str, Any] | str | bytes) -> AGUIEncoder:
        """An encoder for the run an AG-UI client asked for: ``run_input`` is the POSTed
        ``RunAgentInput`` (the ``ag_ui.core`` model, its JSON, or the decoded dict).

        Its ``threadId`` and ``runId`` go into ``RUN_STARTED`` and ``RUN_FINISHED``; its
        messages give their ids to equal messages of a ``ChatHistory``, and their tool call
        ids are not reused. Raises pydantic's ``ValidationError`` (a ``ValueError``) for a
        body that is not a ``RunAgentInput``. Needs ``pip install "streamflow[agui]"``.
        """
        try:
            from ag_ui.core import RunAgentInput
        except ImportError as exc:
            raise ImportError(
                'AGUIEncoder.from_input needs the ag-ui-protocol package: pip install "streamflow[agui]"'
            ) from exc
        if isinstance(run_input, (str, bytes, bytearray)):
            parsed = RunAgentInput.model_validate_json(run_input)
        elif isinstance(run_input, RunAgentInput):
            parsed = run_input
        else:
            parsed = RunAgentInput.model_validate(dict(run_input))
        encoder = cls(thread_id=parsed.thread_id, run_id=parsed.run_id)
        for message in parsed.messages:
            content = getattr(message, "content", None)
            if message.role in ("user", "assistant", "system", "developer") and isinstance(content, str):
                encoder._remember(message.role, getattr(message, "name", None), content, message.id)
            for call in getattr(message, "tool_calls", None) or ():
                encoder._used_tool_ids.add(call.id)
            if message.role == "tool":
                encoder._used_tool_ids.add(message.tool_call_id)
        return encoder

    def open(self) -> bytes:
        if self._state != _NEW:
            raise RuntimeError("an AGUIEncoder writes one stream: create a new one for every response")
        self._state = _OPEN
        return frame(
            '{"type":"RUN_STARTED","threadId":'
            + _json_string(self.thread_id)
            + ',"runId":'
            + _json_string(self.run_id)
            + ',"protocolVersion":"'
            + PROTOCOL_VERSION
            + '"}'
        )

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if self._state != _OPEN:
            if self._state == _NEW:
                raise RuntimeError("AGUIEncoder.encode() before open()")
            return b""  # the run is over: RUN_ERROR and RUN_FINISHED are final
        if type(event) is Delta:
            if not event.value:
                return b""
            if self._message is not None and id is None:  # the hot path
                self._text.append(event.value)
                return frame(self._content_prefix + _json_string(event.value) + "}")
        return self._frames(self._events(event), id)

    def close(self) -> bytes:
        """``b""`` after ``Done`` or ``Error``; otherwise ends the run as ``Done`` would."""
        if self._state != _OPEN:
            return b""
        return self._frames(self._events(Done()), None)

    @staticmethod
    def _frames(events: list[str], id: str | None) -> bytes:  # noqa: A002
        if not events:
            return b""
        *head, last = events
        return b"".join([frame(text) for text in head] + [frame(last, id=id)])

    def _events(self, event: Event) -> list[str]:
        """The AG-UI events (JSON) for one streamflow event, updating the run's state."""
        if type(event) is Delta:
            start = [] if self._message is not None else [self._start_message()]
            self._text.append(event.value)
            return [*start, self._content_prefix + _json_string(event.value) + "}"]
        parent = self._parent
        self._parent = None
        out: list[str] = []
        ended = self._end_message(out)
        if type(event) is ToolCall:
            out += self._tool_call(event, ended or parent)
        elif type(event) is ToolResult:
            out.append(self._tool_result(event))
        elif type(event) is StepStart:
            count = self._steps.get(event.step, 0)
            self._steps[event.step] = count + 1
            if not count:
                fields: dict[str, JsonValue] = {"index": event.index, "total": event.total}
                out.append(_step("STEP_STARTED", event.step, fields))
        elif type(event) is StepEnd:
            count = self._steps.get(event.step, 0)
            if count > 1:
                self._steps[event.step] = count - 1
            elif count:
                del self._steps[event.step]
                out.append(_step("STEP_FINISHED", event.step, {"output": event.output}))
        elif type(event) is ChatHistory:
            out.append(self._snapshot(event))
        elif type(event) is Error:
            self._state = _ENDED
            code = ',"code":' + _json_string(event.code) if event.code is not None else ""
            out.append(
                '{"type":"RUN_ERROR",'
                + _metadata({"step": event.step})
                + '"message":'
                + _json_string(event.message)
                + code
                + "}"
            )
        elif type(event) is Done:
            self._state = _ENDED
            out += [_step("STEP_FINISHED", step, {}) for step in reversed(self._steps)]
            self._steps.clear()
            out.append(
                '{"type":"RUN_FINISHED","threadId":'
                + _json_string(self.thread_id)
                + ',"runId":'
                + _json_string(self.run_id)
                + "}"
            )
        return out

    def _start_message(self) -> str:
        self._message = message_id = _new_id()
        quoted = _json_string(message_id)
        self._content_prefix = '{"type":"TEXT_MESSAGE_CONTENT","messageId":' + quoted + ',"delta":'
        return '{"type":"TEXT_MESSAGE_START","messageId":' + quoted + ',"role":"assistant"}'

    def _end_message(self, out: list[str]) -> str | None:
        """Close the open text message, if any (remembered for snapshots); return its id."""
        message_id = self._message
        if message_id is not None:
            self._message = None
            self._remember("assistant", None, "".join(self._text), message_id)
            self._text.clear()
            out.append('{"type":"TEXT_MESSAGE_END","messageId":' + _json_string(message_id) + "}")
        return message_id

    def _tool_call(self, event: ToolCall, parent: str | None) -> list[str]:
        """A whole tool call. Its parent is the text message just closed, or the previous
        call's parent when calls follow each other, or else a new assistant message."""
        self._parent = parent = parent if parent is not None else _new_id()
        call_id, n = event.id, self._suffixes.get(event.id, 1)
        while call_id in self._used_tool_ids:
            n += 1
            call_id = f"{event.id}-{n}"
        self._used_tool_ids.add(call_id)
        self._suffixes[event.id] = n
        self._tool_ids[event.id] = call_id
        quoted = _json_string(call_id)
        return [
            '{"type":"TOOL_CALL_START","toolCallId":'
            + quoted
            + ',"toolCallName":'
            + _json_string(event.name)
            + ',"parentMessageId":'
            + _json_string(parent)
            + "}",
            '{"type":"TOOL_CALL_ARGS","toolCallId":'
            + quoted
            + ',"delta":'
            + _json_string(_to_json(event.arguments))
            + "}",
            '{"type":"TOOL_CALL_END","toolCallId":' + quoted + "}",
        ]

    def _tool_result(self, event: ToolResult) -> str:
        output = event.output
        content = output if isinstance(output, str) else "" if output is None else _to_json(output)
        return (
            '{"type":"TOOL_CALL_RESULT",'
            + _metadata({"isError": True if event.is_error else None})
            + '"messageId":'
            + _json_string(_new_id())
            + ',"toolCallId":'
            + _json_string(self._tool_ids.get(event.id, event.id))
            + ',"content":'
            + _json_string(content)
            + "}"
        )

    def _snapshot(self, event: ChatHistory) -> str:
        taken: dict[tuple[str, str | None, str], int] = {}  # how many of each key this snapshot used
        messages = []
        fresh: list[tuple[str, str | None, str, str]] = []
        for message in event.value:
            role = _ROLES.get(message.role.lower())
            name = None if role is not None else message.role
            role = role or "assistant"
            key = (role, name, message.content)
            ids, used = self._known.get(key, []), taken.get(key, 0)
            taken[key] = used + 1
            if used < len(ids):
                message_id = ids[used]
            else:
                message_id = _new_id()
                fresh.append((*key, message_id))
            named = ',"name":' + _json_string(name) if name is not None else ""
            messages.append(
                '{"id":'
                + _json_string(message_id)
                + ',"role":"'
                + role
                + '"'
                + named
                + ',"content":'
                + _json_string(message.content)
                + "}"
            )
        for role, name, content, message_id in fresh:
            self._remember(role, name, content, message_id)
        return '{"type":"MESSAGES_SNAPSHOT","messages":[' + ",".join(messages) + "]}"

    def _remember(self, role: str, name: str | None, content: str, message_id: str) -> None:
        self._known.setdefault((role, name, content), []).append(message_id)


def _step(kind: str, step: str, fields: dict[str, JsonValue]) -> str:
    return '{"type":"' + kind + '",' + _metadata(fields) + '"stepName":' + _json_string(step) + "}"
