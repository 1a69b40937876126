"""The Vercel AI SDK's UI message stream v1 (``ai`` 6; tested with 6.0.322), as ``useChat`` reads it.

Early ``ai`` 5 releases validate chunks strictly and refuse the ``finishReason`` of ``finish``.

Every frame is ``data: <chunk JSON>`` and the response carries the header
``x-vercel-ai-ui-message-stream: v1``. The SDK's client validates each chunk against its
``uiMessageChunkSchema`` and stops applying the stream at the first chunk it rejects (an
unknown ``type``, a missing or ``null`` field) or cannot apply (a ``text-delta`` for a text
part that was never started, a tool output for an unknown call), so this encoder only
writes documented chunk types, in an order the client accepts for *any* stream
:func:`~streamflow.adapters.from_iterable` produces: unbalanced and nested steps, tool
results without a call, an ``Error``.

==========================  ===========================================================
streamflow event            UI message stream chunks
==========================  ===========================================================
(``open()``)                ``start`` with ``messageId``
``Delta``                   ``text-start`` (when no text part is open), ``text-delta``
``StepStart``               ``start-step`` (outermost step only), ``data-step``
                            ``{name, status: "running", index, total}`` (``id`` per step)
``StepEnd``                 ``data-step`` with the same ``id``, ``status: "done"`` and
                            ``output``; ``finish-step`` when the outermost step ends. A
                            ``StepEnd`` without a ``StepStart`` is a ``data-step`` of its own
``ToolCall``                ``tool-input-available`` (``toolCallId``, ``toolName``,
                            ``input``; ``dynamic: true`` with ``dynamic_tools=True``)
``ToolResult``              ``tool-output-available`` (``output``), or ``tool-output-error``
                            (``errorText``) for ``is_error``; for an ``id`` this stream never
                            called, ``data-tool-result`` ``{toolCallId, output, isError}``
``ChatHistory``             ``data-chat-history`` ``{messages}`` (``id: "chat-history"``,
                            so a later history replaces the earlier one)
``Error``                   ``data-step`` ``status: "error"`` for each open step,
                            ``finish-step``, ``error`` (``errorText``), ``finish`` with
                            ``finishReason: "error"``
``Done``                    ``finish`` with ``finishReason: "stop"`` (nothing after an
                            ``Error``)
(``close()``)               ``data: [DONE]``
==========================  ===========================================================

Any event other than a ``Delta`` first ends the open text part (``text-end``), so parts
stay in the order the events came; an open step is ended (``finish-step``) before
``finish``. A step the source never ends keeps ``status: "running"``.

Errors: ``useChat`` (``AbstractChat``) stops reading at the ``error`` chunk and sets its
status to ``"error"`` with ``chat.error.message`` = ``Error.message``; that is why the
text part and the step are closed *before* it. ``readUIMessageStream`` reports it to
``onError`` and goes on to the ``finish``. ``Error.code`` has no place in the format and
is not sent.

Text is written as ``JSON.stringify`` writes it: non-ASCII as is, a lone surrogate as a
``\\udXXX`` escape, NaN and infinity as ``null``; no event makes this encoder raise.

:class:`VercelChatRequest` is the body ``useChat``'s ``DefaultChatTransport`` POSTs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from types import MappingProxyType
from typing import Any, Final, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from streamflow.events import ChatHistory, Delta, Done, Error, Event, StepEnd, StepStart, ToolCall, ToolResult
from streamflow.sse import frame

__all__ = ["UIMessage", "UIMessagePart", "VercelAIEncoder", "VercelChatRequest"]

_HEADERS: Final[Mapping[str, str]] = MappingProxyType({"x-vercel-ai-ui-message-stream": "v1"})
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_CHAT_HISTORY_ID: Final = "chat-history"


@dataclass(slots=True)
class _OpenStep:
    name: str
    part_id: str  # the id of its data-step part, which StepEnd (or Error) updates
    index: int | None
    total: int | None


class VercelAIEncoder:
    """streamflow events as the AI SDK's UI message stream, for ``useChat``.

    ``message_id`` is the assistant message's id (default: a new random one);
    ``dynamic_tools=True`` makes tool calls ``dynamic-tool`` parts (with ``toolName``)
    instead of ``tool-<name>`` parts. One instance per stream: ``open()`` a second time
    raises :class:`RuntimeError`.
    """

    media_type: str = "text/event-stream"
    headers: Mapping[str, str] = _HEADERS

    def __init__(self, *, message_id: str | None = None, dynamic_tools: bool = False) -> None:
        self.message_id = message_id if message_id is not None else f"msg-{uuid4().hex}"
        self.dynamic_tools = dynamic_tools
        self._opened = False
        self._finished = False  # `finish` was written (at Done, or at an Error)
        self._done = False
        self._text_id: str | None = None  # the open text part
        self._steps: list[_OpenStep] = []  # an SDK step is open exactly while this is not empty
        self._tool_calls: set[str] = set()
        self._count = 0  # numbers the text and step part ids

    def open(self) -> bytes:
        if self._opened:
            raise RuntimeError("a VercelAIEncoder writes one stream; create a new one for each response")
        self._opened = True
        return _frame(_json({"type": "start", "messageId": self.message_id}))

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if not self._opened:
            raise RuntimeError("open() must be called before encode()")
        if self._done:
            raise RuntimeError(f"a {event.type!r} event after Done")
        if self._finished and type(event) is not Done:
            raise RuntimeError(f"a {event.type!r} event after Error; only Done may follow")
        if id is not None:
            frame("", id=id)  # a bad id raises here, before the stream's state changes
        if type(event) is Delta:
            chunks = self._delta(event)
        else:
            chunks = self._close_text()
            match event:
                case StepStart():
                    self._step_start(event, chunks)
                case StepEnd():
                    self._step_end(event, chunks)
                case ToolCall():
                    self._tool_call(event, chunks)
                case ToolResult():
                    self._tool_result(event, chunks)
                case ChatHistory():
                    messages = [message.model_dump() for message in event.value]
                    chunks.append(_data("data-chat-history", {"messages": messages}, _CHAT_HISTORY_ID))
                case Error():
                    self._error(event, chunks)
                case Done():
                    self._done = True
                    if not self._finished:
                        self._finish("stop", chunks)
        if not chunks:
            return b""
        last = chunks.pop()
        return b"".join(map(_frame, chunks)) + _frame(last, id)

    def close(self) -> bytes:
        return frame("[DONE]")

    # --- one method per event; each appends chunk JSON texts to `chunks` -----------------

    def _delta(self, event: Delta) -> list[str]:
        chunks: list[str] = []
        if self._text_id is None:
            self._text_id = self._new_id("text")
            chunks.append(_json({"type": "text-start", "id": self._text_id}))
        delta = encode_basestring(event.value)
        chunks.append(f'{{"type":"text-delta","id":{encode_basestring(self._text_id)},"delta":{delta}}}')
        return chunks

    def _step_start(self, event: StepStart, chunks: list[str]) -> None:
        if not self._steps:
            chunks.append('{"type":"start-step"}')
        step = _OpenStep(event.step, self._new_id("step"), event.index, event.total)
        self._steps.append(step)
        chunks.append(_step_part(step, "running"))

    def _step_end(self, event: StepEnd, chunks: list[str]) -> None:
        for position in range(len(self._steps) - 1, -1, -1):  # the innermost of that name
            if self._steps[position].name == event.step:
                step = self._steps.pop(position)
                chunks.append(_step_part(step, "done", event.output))
                if not self._steps:
                    chunks.append('{"type":"finish-step"}')
                return
        unopened = _OpenStep(event.step, self._new_id("step"), None, None)  # a StepEnd alone
        chunks.append(_step_part(unopened, "done", event.output))

    def _tool_call(self, event: ToolCall, chunks: list[str]) -> None:
        self._tool_calls.add(event.id)
        chunk: dict[str, Any] = {
            "type": "tool-input-available",
            "toolCallId": event.id,
            "toolName": event.name,
            "input": event.arguments,
        }
        if self.dynamic_tools:
            chunk["dynamic"] = True
        chunks.append(_json(chunk))

    def _tool_result(self, event: ToolResult, chunks: list[str]) -> None:
        if event.id not in self._tool_calls:
            # The SDK fails on an output for a call it has no part for: data, not a tool part.
            orphan = {"toolCallId": event.id, "output": event.output, "isError": event.is_error}
            chunks.append(_data("data-tool-result", orphan))
        elif event.is_error:
            output = event.output
            text = output if isinstance(output, str) else "" if output is None else _json(output)
            chunks.append(_json({"type": "tool-output-error", "toolCallId": event.id, "errorText": text}))
        else:
            result = {"type": "tool-output-available", "toolCallId": event.id, "output": event.output}
            chunks.append(_json(result))

    def _error(self, event: Error, chunks: list[str]) -> None:
        chunks.extend(_step_part(step, "error") for step in self._steps)
        self._finish("error", chunks, error=event.message)

    def _finish(self, reason: str, chunks: list[str], error: str | None = None) -> None:
        if self._steps:
            self._steps.clear()
            chunks.append('{"type":"finish-step"}')
        if error is not None:
            chunks.append(_json({"type": "error", "errorText": error}))
        chunks.append(_json({"type": "finish", "finishReason": reason}))
        self._finished = True

    def _close_text(self) -> list[str]:
        if self._text_id is None:
            return []
        chunk = _json({"type": "text-end", "id": self._text_id})
        self._text_id = None
        return [chunk]

    def _new_id(self, kind: str) -> str:
        self._count += 1
        return f"{kind}-{self._count}"


def _step_part(step: _OpenStep, status: str, output: JsonValue = None) -> str:
    data: dict[str, Any] = {"name": step.name, "status": status}
    if step.index is not None:
        data["index"] = step.index
    if step.total is not None:
        data["total"] = step.total
    if output is not None:
        data["output"] = output
    return _data("data-step", data, step.part_id)


def _data(kind: str, data: dict[str, Any], part_id: str | None = None) -> str:
    """A data part; parts with the same type and ``id`` replace each other in the message."""
    if part_id is None:
        return _json({"type": kind, "data": data})
    return _json({"type": kind, "id": part_id, "data": data})


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or infinity: JSON.stringify writes null, and so does this
        return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _frame(text: str, id: str | None = None) -> bytes:  # noqa: A002
    try:
        return frame(text, id=id)
    except ValueError:  # a lone surrogate (the id was checked): escape it as JSON.stringify does
        return frame(_LONE_SURROGATE.sub(lambda match: f"\\u{ord(match[0]):04x}", text), id=id)


# --- the request useChat sends ------------------------------------------------------------


class UIMessagePart(BaseModel):
    """One part of a :class:`UIMessage`: ``text``, ``file``, ``step-start``, ``tool-*``,
    ``data-*``, ...; the fields other than ``type`` and ``text`` are kept as extras."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class UIMessage(BaseModel):
    """A message of the chat, as the AI SDK's ``UIMessage``."""

    model_config = ConfigDict(extra="allow")

    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[UIMessagePart]
    metadata: JsonValue = None

    @property
    def text(self) -> str:
        """The message's text parts, concatenated."""
        return "".join(part.text for part in self.parts if part.type == "text" and part.text is not None)


class VercelChatRequest(BaseModel):
    """The JSON body ``useChat`` (``DefaultChatTransport``) POSTs: the chat ``id``, all its
    ``messages``, the ``trigger`` and, to regenerate one, ``messageId``. Fields added with the
    transport's or ``sendMessage``'s ``body`` option are kept in ``model_extra``.

    ::

        @app.post("/api/chat")
        async def chat(request: VercelChatRequest) -> EventStreamResponse:
            return EventStreamResponse(agent(request.last_user_text()), encoder=VercelAIEncoder())
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    messages: list[UIMessage]
    trigger: Literal["submit-message", "regenerate-message"]
    message_id: str | None = Field(default=None, alias="messageId")

    def last_user_text(self) -> str:
        """The text of the last user message (``""`` if there is none)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""
