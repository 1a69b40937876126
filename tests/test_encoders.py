from __future__ import annotations

import pytest

from streamflow import (
    ERROR_EVENT_NAME,
    Delta,
    Done,
    Encoder,
    Error,
    Event,
    JSONEncoder,
    NamedEventEncoder,
    SSEDecoder,
)


def test_json_encoder_writes_plain_message_frames() -> None:
    encoder = JSONEncoder()
    assert encoder.encode(Delta(value="Hi")) == b'data: {"type":"delta","value":"Hi"}\n\n'
    assert encoder.encode(Done(), id="3") == b'id: 3\ndata: {"type":"done"}\n\n'
    assert encoder.open() == encoder.close() == b""
    assert encoder.media_type == "text/event-stream"
    assert dict(encoder.headers) == {}


def test_payload_line_breaks_stay_inside_the_json() -> None:
    frame = JSONEncoder().encode(Delta(value="a\n\nb\r\nc\rd"))
    assert frame.count(b"\n") == 2
    [sse] = SSEDecoder().feed(frame)
    assert sse.data == '{"type":"delta","value":"a\\n\\nb\\r\\nc\\rd"}'


def test_named_encoder_never_names_an_event_error() -> None:
    encoder = NamedEventEncoder()
    assert ERROR_EVENT_NAME == "stream_error"
    assert encoder.encode(Error(message="x")).startswith(b"event: stream_error\n")
    assert encoder.encode(Delta(value="x")).startswith(b"event: delta\n")
    assert encoder.names["done"] == "done"


def test_named_encoder_custom_names() -> None:
    encoder = NamedEventEncoder({"delta": "token"})
    assert encoder.encode(Delta(value="x")).startswith(b"event: token\n")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({"error": "error"}, "reserved"),
        ({"delta": "error"}, "reserved"),
        ({"delta": "a\nb"}, "one-line"),
        ({"delta": ""}, "one-line"),
        ({"bogus": "x"}, "unknown event type 'bogus'"),
    ],
)
def test_named_encoder_refuses_bad_names(names: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NamedEventEncoder(names)


def test_encoders_satisfy_the_protocol() -> None:
    assert isinstance(JSONEncoder(), Encoder)
    assert isinstance(NamedEventEncoder(), Encoder)


def test_unencodable_text_is_a_value_error_naming_data() -> None:
    with pytest.raises(ValueError, match="data is not encodable as UTF-8"):
        JSONEncoder().encode(Delta(value="\ud800"))


def test_encode_pairs_sends_stored_json_as_it_is_and_refuses_a_bad_id() -> None:
    encoder = JSONEncoder()
    stored = Delta(value="a\nb").to_json()
    assert encoder.encode_pairs([("r.1", stored), ("r.2", Done())]) == (
        b'id: r.1\ndata: {"type":"delta","value":"a\\nb"}\n\nid: r.2\ndata: {"type":"done"}\n\n'
    )
    for bad in ("r\n1", "r\r1", "r\x001"):
        with pytest.raises(ValueError, match="'id'"):
            encoder.encode_pairs([("r.0", stored), (bad, stored)])
    with pytest.raises(ValueError, match="id"):
        encoder.encode_pairs([(7, stored)])  # type: ignore[list-item]


def test_encode_pairs_of_a_subclass_goes_through_its_encode() -> None:
    class Tagged(JSONEncoder):
        def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
            return b": tagged\n" + super().encode(event, id=id)

    stored = Delta(value="x").to_json()
    assert (
        Tagged().encode_pairs([("1", stored)]) == b': tagged\nid: 1\ndata: {"type":"delta","value":"x"}\n\n'
    )
    assert NamedEventEncoder().encode_pairs([("1", stored)]) == (
        b'id: 1\nevent: delta\ndata: {"type":"delta","value":"x"}\n\n'
    )
