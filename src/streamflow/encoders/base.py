"""The contract between the transport and a wire format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from streamflow.events import Event

__all__ = ["Encoder"]


@runtime_checkable
class Encoder(Protocol):
    """Turns one stream's events into bytes of a wire format.

    An encoder instance belongs to **one** stream: stateful formats (the Vercel AI UI
    message stream, AG-UI) keep per-stream state in it, so create a new one for every
    response. The transport calls :meth:`open` once, :meth:`encode` for each event in
    order (the last one is always a ``Done``), then :meth:`close` once, and sends the
    concatenation. Every method returns complete SSE frames (built with
    :func:`streamflow.sse.frame`) or ``b""``.

    ``id`` is the event's id in a resumable stream; the encoder puts it on the last frame
    it writes for that event, so a client resuming after it misses nothing.
    """

    @property
    def media_type(self) -> str:
        """The response's media type (``text/event-stream`` for every SSE format)."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers the wire format needs (e.g. ``x-vercel-ai-ui-message-stream: v1``)."""
        ...

    def open(self) -> bytes:
        """Bytes to send before the first event (a prelude, or ``b""``)."""
        ...

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        """The frames for one event."""
        ...

    def close(self) -> bytes:
        """Bytes to send after the last event (a trailer, or ``b""``)."""
        ...
