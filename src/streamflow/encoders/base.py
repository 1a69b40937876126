"""The contract between the transport and a wire format."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

from streamflow.events import Event, parse_event

__all__ = ["Encoder", "IdPairs", "encode_each", "encode_pairs"]

IdPairs: TypeAlias = Sequence[tuple[str, Event | str]]
"""Events of a resumable stream with their ids: ``(id, event)``, an event being an
:data:`~streamflow.events.Event` or its wire JSON (``Event.to_json()``, as stores keep it)."""


@runtime_checkable
class Encoder(Protocol):
    """Turns one stream's events into bytes of a wire format.

    An encoder instance belongs to **one** stream: stateful formats (the Vercel AI UI
    message stream, AG-UI) keep per-stream state in it, so create a new one for every
    response. The transport calls :meth:`open` once, :meth:`encode` for each event in
    order (a complete stream ends with ``Done``; one cut short, by a disconnect or a
    resumable stream's shutdown, may not), then :meth:`close` once, and sends the
    concatenation. Every method returns complete SSE frames (built with
    :func:`streamflow.sse.frame`) or ``b""``.

    ``id`` is the event's id in a resumable stream; the encoder puts it on the last frame
    it writes for that event, so a client resuming after it misses nothing.

    An encoder may also have an ``encode_pairs(pairs)`` method: the frames of a batch of
    ``(id, event)`` pairs, where an event may be given as its wire JSON (as stores keep
    it). :func:`encode_pairs` uses it when it is there (a fast path, e.g.
    :class:`~streamflow.encoders.JSONEncoder` sends stored JSON without parsing it).
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


def encode_pairs(encoder: Encoder, pairs: IdPairs) -> bytes:
    """The frames of ``pairs`` (see :data:`IdPairs`): the encoder's own ``encode_pairs``
    when it has one, else :meth:`Encoder.encode` of each event (parsing those given as
    JSON)."""
    fast: Callable[[IdPairs], bytes] | None = getattr(encoder, "encode_pairs", None)
    if fast is not None:
        return fast(pairs)
    return encode_each(encoder, pairs)


def encode_each(encoder: Encoder, pairs: IdPairs) -> bytes:
    """:meth:`Encoder.encode` of each pair's event (parsed when given as JSON)."""
    encode = encoder.encode
    return b"".join(
        [encode(parse_event(data) if isinstance(data, str) else data, id=id_) for id_, data in pairs]
    )
