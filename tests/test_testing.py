"""streamflow.testing must catch the bugs it exists for, not just pass."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflow import Delta, Done, Event, JSONEncoder
from streamflow.testing import assert_roundtrip, decode, events, sse_texts


class NaiveEncoder(JSONEncoder):
    """The f-string every project starts with: breaks on a line break in the payload."""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if isinstance(event, Delta):
            return f'data: {{"type":"delta","value":"{event.value}"}}\n\n'.encode()
        return super().encode(event, id=id)


class ErrorNamingEncoder(JSONEncoder):
    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        return f"event: {event.type}\n".encode() + super().encode(event, id=id)


def test_assert_roundtrip_catches_a_naive_encoder() -> None:
    with pytest.raises(AssertionError):
        assert_roundtrip(NaiveEncoder, [Delta(value="line one\n\nline two"), Done()])


def test_assert_roundtrip_catches_an_event_named_error() -> None:
    from streamflow import Error

    with pytest.raises(AssertionError, match="named 'error'"):
        assert_roundtrip(ErrorNamingEncoder(), [Error(message="x")])


def test_hypothesis_finds_the_naive_encoders_bug() -> None:
    @settings(max_examples=500, database=None, derandomize=True, report_multiple_bugs=False)
    @given(st.lists(events(), max_size=5))
    def check(evs: list[Event]) -> None:
        assert_roundtrip(NaiveEncoder, evs)

    with pytest.raises(AssertionError):
        check()


@given(sse_texts())
def test_sse_texts_are_valid_utf8_text(text: str) -> None:
    text.encode()


def test_sse_texts_reach_the_tricky_characters() -> None:
    seen: set[str] = set()

    @settings(max_examples=300, database=None, derandomize=True)
    @given(sse_texts())
    def collect(text: str) -> None:
        seen.update(c for c in ("\r\n", "\n\n", "\r", "data: ", ":", " ") if c in text)

    collect()
    assert seen == {"\r\n", "\n\n", "\r", "data: ", ":", " "}


def test_decode_with_chunk_sizes() -> None:
    data = b"data: a\r\n\r\ndata: b\n\n"
    assert decode(data, chunk_sizes=(1, 2)) == decode(data)
    assert [sse.data for sse in decode(data)] == ["a", "b"]
