"""streamflow: agent workflows as exact, typed Server-Sent Event streams."""

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
    "HTMXEncoder",
    "Item",
    "JSONEncoder",
    "NamedEventEncoder",
    "ProtocolError",
    "SSEDecoder",
    "ServerSentEvent",
    "StepEnd",
    "StepStart",
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
