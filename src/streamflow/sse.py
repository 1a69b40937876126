"""Server-Sent Events on the wire, sans I/O: writing frames and parsing a byte stream.

:func:`frame` is the only code in streamflow that writes ``data:`` lines. It splits the
payload on CRLF, CR and LF -- the three line endings the WHATWG parser knows -- so no
payload can end an event early or inject a field, and it writes LF endings only.

:class:`SSEDecoder` follows the WHATWG "interpret an event stream" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html) to the letter and is
incremental: feed it any chunking of a stream and it yields the same events.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["SSEDecoder", "ServerSentEvent", "comment", "frame", "retry"]

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_MAX_RETRY: Final = 2**64 - 1  # as browsers: a longer reconnection time is ignored


def frame(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,  # noqa: A002 - the SSE field's name
    retry: int | None = None,
) -> bytes:
    """One complete SSE event (ending in a blank line) carrying ``data``.

    A browser's ``MessageEvent.data`` will be ``data`` with every CR and CRLF turned into
    LF: the only change the SSE format allows. Raises :class:`ValueError` naming the field
    for an ``event`` or ``id`` that would break the frame (CR, LF; NUL in ``id``), an empty
    ``event``, a ``retry`` that is not an ``int`` from 0 to 2**64-1, or text that is not
    encodable as UTF-8 (a lone surrogate).
    """
    if type(data) is not str:
        raise ValueError(f"SSE data must be a str, not {type(data).__name__}")
    head = ""
    if id is not None:
        if type(id) is not str or "\n" in id or "\r" in id or "\0" in id:
            _check_single_line("id", id)
            raise ValueError("SSE field 'id' must not contain NUL")
        head = "id: " + id + "\n"
    if event is not None:
        _check_single_line("event", event)
        if not event:
            raise ValueError("SSE field 'event' must not be empty (leave it out for 'message')")
        head += f"event: {event}\n"
    if retry is not None:
        _check_retry(retry)
        head += f"retry: {retry}\n"
    if "\n" in data or "\r" in data:
        body = "data: " + "\ndata: ".join(_LINE_BREAK.split(data)) + "\n\n"
    else:
        body = "data: " + data + "\n\n"
    try:
        return (head + body if head else body).encode()
    except UnicodeEncodeError:
        for name, value in (("id", id), ("event", event), ("data", data)):
            _utf8(name, value or "")
        raise  # pragma: no cover - one of the fields above raised


def retry(milliseconds: int) -> bytes:
    """A block with only a ``retry:`` field: it sets the client's reconnection time and
    dispatches no event. Raises :class:`ValueError` as :func:`frame` does."""
    _check_retry(milliseconds)
    return f"retry: {milliseconds}\n\n".encode()


def _check_retry(retry: object) -> None:
    if type(retry) is not int or not 0 <= retry <= _MAX_RETRY:
        shown = "an int over 2**64-1" if type(retry) is int and retry > _MAX_RETRY else repr(retry)
        raise ValueError(f"SSE field 'retry' must be an int from 0 to 2**64-1, not {shown}")


def comment(text: str = "") -> bytes:
    """A comment block (``: text``), ignored by parsers; used as a keep-alive."""
    lines = _LINE_BREAK.split(text)
    return _utf8("comment", "".join(f": {line}\n" if line else ":\n" for line in lines) + "\n")


def _check_single_line(name: str, value: str) -> None:
    if type(value) is not str:
        raise ValueError(f"SSE field {name!r} must be a str, not {type(value).__name__}")
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE field {name!r} must not contain CR or LF: {value!r}")


def _utf8(name: str, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"SSE {name} is not encodable as UTF-8 (lone surrogate {text[exc.start]!r})"
        ) from None


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """A dispatched event, as a browser's ``MessageEvent`` would show it.

    ``id`` is the stream's last event ID at dispatch time (it persists across events,
    as ``lastEventId`` does); ``event`` defaults to ``"message"``.
    """

    data: str
    event: str = "message"
    id: str = ""


class SSEDecoder:
    """Incremental WHATWG event-stream parser: ``feed(bytes) -> list[ServerSentEvent]``.

    Handles a leading BOM, CRLF/CR/LF line endings (a CR ending one chunk and an LF
    starting the next is one line break), UTF-8 sequences split across chunks (invalid
    bytes become U+FFFD), one leading space stripped from values, ``id`` values with NUL
    ignored, ``retry`` accepted only as ASCII digits. An event with no data is not
    dispatched; an incomplete event at the end of the stream is discarded, so there is
    nothing to flush.

    :attr:`last_event_id` and :attr:`retry` expose the parser state a reconnecting client
    needs (the ``Last-Event-ID`` to send, and the reconnection time in milliseconds).
    """

    __slots__ = ("_data", "_decoder", "_event", "_id", "_pending", "_skip_lf", "last_event_id", "retry")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._pending: list[str] = []  # text of the current, unfinished line
        self._skip_lf = False  # the last chunk ended with CR: an LF next is the same break
        self._data: list[str] = []
        self._event = ""
        self._id = ""
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse the next chunk of the stream; return the events it completed."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if "\n" not in text and "\r" not in text:
            self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending.clear()
        lines = _LINE_BREAK.split(text)
        rest = lines.pop()  # after the last break: the start of an unfinished line
        if rest:
            self._pending.append(rest)
        elif text[-1] == "\r":
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for line in lines:
            if line:
                self._field(line)
            elif self._data:
                events.append(self._dispatch())
            else:
                self._event = ""
                self.last_event_id = self._id
        return events

    def _field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if not colon:
            value = ""
        elif not name:
            return  # a comment
        elif value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            # As browsers do, a value that overflows an unsigned 64-bit integer is ignored
            # (the length test also keeps int() clear of Python's 4300-digit limit).
            digits = value.lstrip("0") or "0"
            if len(digits) <= 20 and (retry := int(digits)) <= _MAX_RETRY:
                self.retry = retry

    def _dispatch(self) -> ServerSentEvent:
        self.last_event_id = self._id
        event = ServerSentEvent("\n".join(self._data), self._event or "message", self._id)
        self._data.clear()
        self._event = ""
        return event
