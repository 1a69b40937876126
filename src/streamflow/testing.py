"""Tools for testing a streamflow app or a custom encoder in your own CI.

Needs the ``testing`` extra (``pip install "streamflow[testing]"``, for hypothesis)::

    from hypothesis import given, strategies as st
    from streamflow.testing import assert_roundtrip, events

    @given(st.lists(events()))
    def test_my_encoder(evs):
        assert_roundtrip(MyEncoder, evs)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError('streamflow.testing needs hypothesis: pip install "streamflow[testing]"') from exc

from streamflow.encoders.base import Encoder
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
    parse_event,
)
from streamflow.sse import ServerSentEvent, SSEDecoder

__all__ = ["assert_roundtrip", "decode", "events", "json_values", "sse_texts"]

_TRICKY = (
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\r\r",
    "\r\n\r\n",
    " ",
    "  leading",
    ":",
    ": comment",
    "data: ",
    "data: x\n\n",
    "event: error\n",
    "id: 1\n",
    "retry: 1\n",
    "\ufeff",
    "\x00",
    "é",
    "日本語",
    "🙂",
    "\u2028",
    '"',
    "\\",
    "</script>",
)


def sse_texts(*, max_pieces: int = 12) -> st.SearchStrategy[str]:
    """Text biased towards what breaks naive SSE code: line breaks of all three kinds,
    blank lines, leading spaces, ``:``, ``data: `` inside text, BOM, NUL and non-ASCII."""
    piece = st.one_of(st.sampled_from(_TRICKY), st.text(max_size=8))
    return st.lists(piece, max_size=max_pieces).map("".join)


def json_values(*, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """JSON values (no NaN or infinity, which JSON cannot carry) with tricky strings."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | sse_texts()
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(sse_texts(max_pieces=3), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def events() -> st.SearchStrategy[Event]:
    """Any streamflow event, every field filled with :func:`sse_texts` or JSON values."""
    text = sse_texts()
    optional = st.none() | text
    counts = st.none() | st.integers(min_value=1, max_value=1000)
    arguments = st.dictionaries(sse_texts(max_pieces=3), json_values(), max_size=4)
    message = st.builds(ChatMessage, role=text, content=text, type=text)
    strategies: list[st.SearchStrategy[Event]] = [
        st.builds(StepStart, step=text, index=counts, total=counts),
        st.builds(Delta, value=text, step=optional),
        st.builds(StepEnd, step=text, output=json_values()),
        st.builds(ChatHistory, value=st.lists(message, max_size=4)),
        st.builds(Error, message=text, code=optional, step=optional),
        st.just(Done()),
        st.builds(ToolCall, id=text, name=text, arguments=arguments, step=optional),
        st.builds(ToolResult, id=text, output=json_values(), is_error=st.booleans(), step=optional),
        st.just(Gap()),
    ]
    return st.one_of(strategies)


def decode(data: bytes, *, chunk_sizes: Sequence[int] = ()) -> list[ServerSentEvent]:
    """Parse bytes with :class:`~streamflow.sse.SSEDecoder`, fed in chunks of the given
    sizes (cycled; all at once when empty)."""
    decoder = SSEDecoder()
    if not chunk_sizes:
        return decoder.feed(data)
    out: list[ServerSentEvent] = []
    position, turn = 0, 0
    while position < len(data):
        size = max(1, chunk_sizes[turn % len(chunk_sizes)])
        out += decoder.feed(data[position : position + size])
        position += size
        turn += 1
    return out


def assert_roundtrip(encoder: Encoder | Callable[[], Encoder], events: Sequence[Event]) -> None:
    """Assert that ``events`` survive ``encoder`` -> :class:`~streamflow.sse.SSEDecoder` ->
    :func:`~streamflow.events.parse_event` unchanged, in order, whole and byte by byte.

    For encoders that carry the streamflow protocol's JSON in each frame
    (:class:`~streamflow.encoders.JSONEncoder`, :class:`~streamflow.encoders.NamedEventEncoder`,
    your own). ``encoder`` is an instance or a factory; a factory gets a fresh instance.
    """
    factory = isinstance(encoder, type) or not isinstance(encoder, Encoder)
    session = encoder() if factory else encoder  # type: ignore[operator]
    assert isinstance(session, Encoder), f"{session!r} is not an Encoder"
    data = session.open() + b"".join(session.encode(event) for event in events) + session.close()
    whole = decode(data)
    parsed: list[Event] = []
    for sse in whole:
        try:
            parsed.append(parse_event(sse.data))
        except ProtocolError as exc:
            raise AssertionError(f"frame {len(parsed)} is not an event ({exc}): {sse.data!r}") from None
    assert parsed == list(events), f"events changed on the way:\n sent {list(events)!r}\n got  {parsed!r}"
    bytewise = decode(data, chunk_sizes=(1,))
    assert bytewise == whole, "feeding the bytes one at a time decoded differently"
    for sse in whole:
        assert sse.event != "error", "an SSE event named 'error' collides with EventSource's own"
