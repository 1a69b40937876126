"""The streamflow protocol itself on the wire: one SSE event per protocol event."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from streamflow.encoders.base import IdPairs, encode_each
from streamflow.events import EVENT_TYPES, Event
from streamflow.sse import frame

__all__ = ["ERROR_EVENT_NAME", "JSONEncoder", "NamedEventEncoder"]

ERROR_EVENT_NAME: Final = "stream_error"
"""The SSE event name :class:`NamedEventEncoder` gives ``error`` events.

Never ``error``: a browser's ``EventSource`` (and htmx-ext-sse) fire their own
connection-failure event under that name, so a listener for it could not tell a failed
agent run from a dropped connection.
"""

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


class JSONEncoder:
    """``data: <event JSON>`` frames with no ``event:`` field (the default).

    Every frame reaches ``EventSource.onmessage`` (or a ``fetch`` reader) and carries its
    ``type`` inside the JSON: ``data: {"type":"delta","value":"Hi"}``.
    """

    media_type: str = "text/event-stream"
    headers: Mapping[str, str] = _EMPTY

    def open(self) -> bytes:
        return b""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        text = event.to_json()
        # The hot path. Compact JSON never holds a CR or LF (JSON escapes them), so this is
        # frame(text, id=id) without the call; the property tests check the bytes are equal.
        try:
            if id is None:
                return ("data: " + text + "\n\n").encode()
            if type(id) is str and "\n" not in id and "\r" not in id and "\0" not in id:
                return ("id: " + id + "\ndata: " + text + "\n\n").encode()
        except UnicodeEncodeError:
            pass
        return frame(text, id=id)  # raises the ValueError that names the field

    def encode_pairs(self, pairs: IdPairs) -> bytes:
        """The frames of a batch of ``(id, event)`` pairs (a resumable stream's). An event
        given as its wire JSON (as stores keep it) is sent as it is, never parsed."""
        if type(self).encode is JSONEncoder.encode:  # not a subclass writing other frames
            try:
                frames = [
                    "id: " + i + "\ndata: " + (d if isinstance(d, str) else d.to_json()) for i, d in pairs
                ]
                text = "\n\n".join(frames) + "\n\n"
            except TypeError:  # an id that is not a str: encode() names it
                pass
            else:
                # Each frame holds three LFs and no CR or NUL (JSON escapes them), unless an id
                # (or a store's text) has one: then encode() below raises naming the field.
                if text.count("\n") == 3 * len(pairs) and "\r" not in text and "\0" not in text:
                    try:
                        return text.encode()
                    except UnicodeEncodeError:
                        pass
        return encode_each(self, pairs)

    def close(self) -> bytes:
        return b""


class NamedEventEncoder(JSONEncoder):
    """Like :class:`JSONEncoder`, plus ``event: <type>`` so a page can
    ``addEventListener("delta", ...)`` per type.

    ``error`` events are named :data:`ERROR_EVENT_NAME` (``stream_error``). ``names`` maps
    protocol types to other SSE event names; a mapping to ``error`` or to a name with CR
    or LF is refused with :class:`ValueError`.
    """

    def __init__(self, names: Mapping[str, str] | None = None) -> None:
        chosen = {name: name for name in EVENT_TYPES}
        chosen["error"] = ERROR_EVENT_NAME
        for event_type, name in (names or {}).items():
            if event_type not in EVENT_TYPES:
                raise ValueError(f"names: unknown event type {event_type!r}")
            if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
                raise ValueError(f"names[{event_type!r}]: not a one-line SSE event name: {name!r}")
            if name == "error":
                raise ValueError(
                    f"names[{event_type!r}]: 'error' is reserved by EventSource for "
                    "connection failures; choose another name"
                )
            chosen[event_type] = name
        self.names: Mapping[str, str] = MappingProxyType(chosen)

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        return frame(event.to_json(), event=self.names[event.type], id=id)
