"""streamflow: agent workflows as exact, typed Server-Sent Event streams."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamflow.adapters.iterable import Item, expose_exception, from_iterable, hide_exception
from streamflow.encoders import (
    ERROR_EVENT_NAME,
    AGUIEncoder,
    Encoder,
    HTMXEncoder,
    JSONEncoder,
    NamedEventEncoder,
    VercelAIEncoder,
    VercelChatRequest,
)
from streamflow.events import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Error,
    Event,
    Gap,
    ProtocolError,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    event_json_schema,
    parse_event,
)
from streamflow.sse import ServerSentEvent, SSEDecoder, comment, frame
from streamflow.starlette import EventStreamResponse

if TYPE_CHECKING:
    from streamflow.hub import StreamHub
    from streamflow.stores import MemoryStore

__version__ = "0.1.0"

__all__ = [
    "ERROR_EVENT_NAME",
    "AGUIEncoder",
    "ChatHistory",
    "ChatMessage",
    "Delta",
    "Done",
    "Encoder",
    "Error",
    "Event",
    "EventStreamResponse",
    "Gap",
    "HTMXEncoder",
    "Item",
    "JSONEncoder",
    "MemoryStore",
    "NamedEventEncoder",
    "ProtocolError",
    "SSEDecoder",
    "ServerSentEvent",
    "StepEnd",
    "StepStart",
    "StreamHub",
    "ToolCall",
    "ToolResult",
    "VercelAIEncoder",
    "VercelChatRequest",
    "__version__",
    "comment",
    "event_json_schema",
    "expose_exception",
    "frame",
    "from_iterable",
    "hide_exception",
    "parse_event",
]

_LAZY = {"StreamHub": "streamflow.hub", "MemoryStore": "streamflow.stores"}


def __getattr__(name: str) -> Any:
    # The session hub is imported on first use: a plain EventStreamResponse does not pay for it.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamflow' has no attribute {name!r}")
