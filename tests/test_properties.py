"""The round-trip properties the whole wire layer rests on, over hypothesis' inputs."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from streamflow import Delta, Event, JSONEncoder, NamedEventEncoder, SSEDecoder, frame, parse_event
from streamflow.encoders import HTMXEncoder
from streamflow.encoders.base import encode_pairs
from streamflow.testing import assert_roundtrip, decode, events, sse_texts


def lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@given(st.lists(events(), max_size=12))
def test_json_encoder_roundtrip(evs: list[Event]) -> None:
    assert_roundtrip(JSONEncoder, evs)


@given(st.lists(events(), max_size=12))
def test_named_event_encoder_roundtrip(evs: list[Event]) -> None:
    assert_roundtrip(NamedEventEncoder(), evs)
    encoder = NamedEventEncoder()
    names = [sse.event for sse in decode(b"".join(encoder.encode(e) for e in evs))]
    assert names == [encoder.names[e.type] for e in evs]
    assert "error" not in names


@given(sse_texts(), st.none() | sse_texts().map(lf).filter(lambda s: "\n" not in s))
def test_frame_gives_back_the_text_with_only_line_endings_normalized(text: str, name: str | None) -> None:
    event = name or None
    [sse] = SSEDecoder().feed(frame(text, event=event, id="7"))
    assert sse.data == lf(text)
    assert sse.event == (event or "message")
    assert sse.id == "7"


@given(st.lists(sse_texts(), min_size=1, max_size=6), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_any_chunking_decodes_to_the_same_events(texts: list[str], sizes: list[int]) -> None:
    data = b"".join(frame(t, id=str(i)) for i, t in enumerate(texts))
    assert decode(data, chunk_sizes=sizes) == decode(data)
    assert [sse.data for sse in decode(data)] == [lf(t) for t in texts]


@given(st.binary(max_size=200), st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_arbitrary_bytes_never_break_the_decoder_and_chunking_is_irrelevant(
    data: bytes, sizes: list[int]
) -> None:
    assert decode(data, chunk_sizes=sizes) == decode(data)


@given(events())
def test_to_json_is_what_parse_event_reads(event: Event) -> None:
    assert parse_event(event.to_json()) == event
    assert event.to_json() == event.model_dump_json(exclude_none=True)


@given(sse_texts(), st.none() | sse_texts())
def test_delta_fast_path_equals_pydantic(value: str, step: str | None) -> None:
    event = Delta(value=value, step=step)
    assert event.to_json() == event.model_dump_json(exclude_none=True)


@given(events(), st.none() | st.integers(0, 10**6).map(str))
def test_json_encoders_fast_path_writes_exactly_what_frame_writes(event: Event, event_id: str | None) -> None:
    assert JSONEncoder().encode(event, id=event_id) == frame(event.to_json(), id=event_id)


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6).map(str) | st.text(max_size=8), events(), st.booleans()), max_size=8
    )
)
def test_encode_pairs_writes_exactly_what_encode_writes(items: list[tuple[str, Event, bool]]) -> None:
    """A batch of a resumable stream: each event as an object or as its stored JSON, ids
    of any text. The fast path writes the bytes encode() writes, or raises what it raises."""
    pairs: list[tuple[str, Event | str]] = [(i, e.to_json() if as_json else e) for i, e, as_json in items]
    for make in (JSONEncoder, NamedEventEncoder, HTMXEncoder):
        one, other = make(), make()
        expected = outcome(lambda one=one: b"".join(one.encode(e, id=i) for i, e, _ in items))
        assert outcome(lambda other=other: encode_pairs(other, pairs)) == expected


def outcome(call: Callable[[], bytes]) -> bytes | tuple[type[Exception], str]:
    try:
        return call()
    except (ValueError, RuntimeError) as exc:  # RuntimeError: HTMXEncoder after its Done
        return type(exc), str(exc)
