"""Encoders: one stream of :mod:`streamflow.events` written in a client's wire format.

=====================  ============================================================
encoder                client
=====================  ============================================================
:class:`JSONEncoder`   ``EventSource.onmessage``, a ``fetch`` reader, ``streamflow.client``
:class:`NamedEventEncoder`  ``EventSource.addEventListener(type)``
:class:`HTMXEncoder`   htmx 2 with htmx-ext-sse (``sse-swap``), escaped HTML fragments
:class:`VercelAIEncoder`  the Vercel AI SDK's UI message stream (``useChat``)
:class:`AGUIEncoder`   AG-UI clients (``@ag-ui/client`` ``HttpAgent``, CopilotKit)
=====================  ============================================================
"""

from streamflow.encoders.agui import AGUIEncoder
from streamflow.encoders.base import Encoder
from streamflow.encoders.htmx import HTMX_EVENT_NAMES, HTMXEncoder
from streamflow.encoders.json_events import ERROR_EVENT_NAME, JSONEncoder, NamedEventEncoder
from streamflow.encoders.vercel import VercelAIEncoder, VercelChatRequest

__all__ = [
    "ERROR_EVENT_NAME",
    "HTMX_EVENT_NAMES",
    "AGUIEncoder",
    "Encoder",
    "HTMXEncoder",
    "JSONEncoder",
    "NamedEventEncoder",
    "VercelAIEncoder",
    "VercelChatRequest",
]
