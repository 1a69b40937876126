"""WHATWG conformance of the SSE wire layer: a table of byte streams and what a browser dispatches.

Reference: HTML Living Standard, 9.2 Server-sent events, "Parsing an event stream" and
"Interpreting an event stream" (https://html.spec.whatwg.org/multipage/server-sent-events.html).
Several cases are transcribed from web-platform-tests ``eventsource/format-*`` tests.

Every stream is decoded whole, split into two chunks at every byte position, split into three
chunks at every pair of positions (short streams), and fed one byte at a time with empty chunks
in between: the dispatched events, the last event ID string and the reconnection time must not
depend on the chunking. ``retry`` is ``None`` while the stream has not set a reconnection time
(the UA default stays in force).

The expected values are written out by hand from the spec text, not computed by a second parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations, product

import pytest

from streamflow.sse import ServerSentEvent, SSEDecoder, comment, frame

Ev = tuple[str, str, str]  # (data, event type, lastEventId)


def ev(data: str, event: str = "message", id: str = "") -> Ev:  # noqa: A002 - the SSE field's name
    return (data, event, id)


@dataclass(frozen=True)
class Case:
    id: str
    stream: bytes
    events: tuple[Ev, ...] = ()
    retry: int | None = None
    last_event_id: str = ""
    notes: str = field(default="", compare=False)


HUGE_RETRY = 10**4400  # more digits than CPython's default int/str conversion limit (4300)

CASES: tuple[Case, ...] = (
    # --- basic dispatch, data buffer --------------------------------------------------------
    Case("simple", b"data: hello\n\n", (ev("hello"),)),
    Case("simple-no-space", b"data:hello\n\n", (ev("hello"),)),
    # "Otherwise, the string is not empty but does not contain a U+003A COLON character (:)":
    # "using the whole line as the field name, and the empty string as the field value."
    Case("data-no-colon", b"data\n\n", (ev(""),)),
    Case("data-no-colon-twice", b"data\ndata\n\n", (ev("\n"),)),
    Case("data-empty-colon", b"data:\n\n", (ev(""),)),
    Case("data-only-space", b"data: \n\n", (ev(""),)),
    Case("data-empty-twice", b"data:\ndata:\n\n", (ev("\n"),)),
    Case("data-multiple-lines", b"data: a\ndata:b\ndata:  c\n\n", (ev("a\nb\n c"),)),
    Case("data-trailing-empty-line", b"data: a\ndata\n\n", (ev("a\n"),)),
    Case("data-leading-empty-line", b"data\ndata: a\n\n", (ev("\na"),)),
    # "If value starts with a U+0020 SPACE character, remove it from value." -- one space only.
    Case("one-space-stripped", b"data:  two\n\n", (ev(" two"),)),
    Case("three-spaces", b"data:   x  \n\n", (ev("  x  "),)),
    Case("tab-not-stripped", b"data:\tx\n\n", (ev("\tx"),)),
    Case("colon-in-value", b"data: a:b: c\n\n", (ev("a:b: c"),)),
    Case("double-colon", b"data::x\n\n", (ev(":x"),)),
    Case("two-events", b"data: a\n\ndata: b\n\n", (ev("a"), ev("b"))),
    Case("extra-blank-lines", b"\n\ndata: a\n\n\n\n\ndata: b\n\n\n", (ev("a"), ev("b"))),
    Case("blank-lines-only", b"\n\n\r\n\r\r\n", ()),
    Case("nul-in-data", b"data: \x00\n\n", (ev("\x00"),)),
    Case("non-line-break-controls", b"data: a\x0bb\x0cc\x1cd\n\n", (ev("a\x0bb\x0cc\x1cd"),)),
    Case(
        "unicode-line-separators-are-data",
        "data: a\x85b\u2028c\u2029d\n\n".encode(),
        (ev("a\x85b\u2028c\u2029d"),),
    ),
    # --- field names: compared literally -----------------------------------------------------
    # "Field names must be compared literally, with no case folding performed."
    Case("field-name-trailing-space", b"data :x\n\n", ()),
    Case("field-name-trailing-space-then-data", b"data :x\ndata:y\n\n", (ev("y"),)),
    Case("field-name-leading-space", b" data:x\n\n", ()),
    Case("field-name-uppercase", b"Data:x\nDATA:y\n\n", ()),
    Case("field-name-with-nul", b"data\x00:x\n\n", ()),
    Case("field-name-prefix", b"dat:x\ndatax:y\nd:z\n\n", ()),
    Case("space-only-line-is-unknown-field", b" \ndata: x\n \n\n", (ev("x"),)),
    Case("unknown-fields", b"foo: bar\ndata: x\nbar\nEvent: y\nID: 3\nRetry: 5\n\n", (ev("x"),)),
    Case("event-field-name-trailing-space", b"event :a\ndata: x\n\n", (ev("x"),)),
    Case("id-field-name-trailing-space", b"id :a\ndata: x\n\n", (ev("x"),)),
    Case("retry-field-name-trailing-space", b"retry :5\n", ()),
    # WPT format-field-parsing
    Case(
        "wpt-field-parsing",
        b"data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n"
        b" data:32\ndata:4\n\n",
        (ev("\x00\n 2\n1\n3\n\n4"),),
    ),
    # --- comments -------------------------------------------------------------------------------
    # "If the line starts with a U+003A COLON character (:) / Ignore the line."
    Case("comment-only", b": keep-alive\n\n", ()),
    Case("comment-empty", b":\n\n", ()),
    Case("comment-between-data", b"data: a\n: c\ndata: b\n:\n\n", (ev("a\nb"),)),
    Case("comment-looks-like-field", b":data: evil\n:event: x\n:id: 9\n:retry: 1\ndata: ok\n\n", (ev("ok"),)),
    Case("comment-does-not-dispatch", b"data: a\n: x\n", ()),
    # WPT format-comments (shorter filler)
    Case(
        "wpt-comment-fest",
        b"data:1\r:\x00\n:\r\ndata:2\n:"
        + b"x" * 300
        + b"\rdata:3\n:data:fail\r:"
        + b"x" * 300
        + b"\ndata:4\n\n",
        (ev("1\n2\n3\n4"),),
    ),
    # --- event type -------------------------------------------------------------------------
    Case("event-type", b"event: add\ndata: 1\n\n", (ev("1", "add"),)),
    Case("event-after-data", b"data: 1\nevent: add\n\n", (ev("1", "add"),)),
    Case("event-reset-after-dispatch", b"event: add\ndata: 1\n\ndata: 2\n\n", (ev("1", "add"), ev("2"))),
    # Dispatch step 2: "If the data buffer is an empty string, set the data buffer and the event
    # type buffer to the empty string and return."
    Case("event-reset-by-blank-line-without-data", b"event: add\n\ndata: 2\n\n", (ev("2"),)),
    Case("event-empty", b"event:\ndata: x\n\n", (ev("x"),)),
    Case("wpt-event-empty-space", b"event: \ndata:data\n\n", (ev("data"),)),
    Case("event-no-colon-resets-type", b"event: a\nevent\ndata: x\n\n", (ev("x"),)),
    Case("event-last-wins", b"event: a\nevent: b\ndata: x\n\n", (ev("x", "b"),)),
    Case("event-leading-spaces", b"event:  a \ndata: x\n\n", (ev("x", " a "),)),
    Case("event-message-explicit", b"event: message\ndata: x\n\n", (ev("x"),)),
    Case("event-case-kept", b"event: Message\ndata: x\n\n", (ev("x", "Message"),)),
    Case("event-unicode-and-colon", "event: é:😀\ndata: x\n\n".encode(), (ev("x", "é:😀"),)),
    Case("event-with-nul", b"event: a\x00b\ndata: x\n\n", (ev("x", "a\x00b"),)),
    Case("event-unterminated", b"event: a\ndata: x\n", ()),
    # --- id / lastEventId ---------------------------------------------------------------------
    Case(
        "id-persists",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        (ev("a", id="1"), ev("b", id="1")),
        last_event_id="1",
    ),
    Case("id-after-data-same-event", b"data: x\nid: 3\n\n", (ev("x", id="3"),), last_event_id="3"),
    Case("id-last-wins", b"id: 1\nid: 2\ndata: x\n\n", (ev("x", id="2"),), last_event_id="2"),
    Case(
        "id-empty-resets",
        b"id: 1\ndata: a\n\nid:\ndata: b\n\ndata: c\n\n",
        (ev("a", id="1"), ev("b"), ev("c")),
    ),
    Case("id-no-colon-resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n", (ev("a", id="1"), ev("b"))),
    Case(
        "wpt-id-persists-then-changes",
        b"id: 1\ndata: 1\n\ndata: 2\n\nid: 2\ndata: 3\n\ndata: 4\n\n",
        (ev("1", id="1"), ev("2", id="1"), ev("3", id="2"), ev("4", id="2")),
        last_event_id="2",
    ),
    # "If the field value does not contain U+0000 NULL, then set the last event ID buffer to the
    # field value. Otherwise, ignore the field."
    Case(
        "id-with-nul-ignored-keeps-previous",
        b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n",
        (ev("a", id="1"), ev("b", id="1")),
        last_event_id="1",
    ),
    Case("id-nul-only", b"id: \x00\x00\ndata: x\n\n", (ev("x"),)),
    Case("id-nul-end", b"id: x\x00\ndata: x\n\n", (ev("x"),)),
    Case("id-nul-start", b"id: \x00x\ndata: x\n\n", (ev("x"),)),
    Case("id-nul-middle", b"id: x\x00x\ndata: x\n\n", (ev("x"),)),
    Case("id-nul-after-space", b"id:  \x00\ndata: x\n\n", (ev("x"),)),
    Case(
        "id-nul-does-not-reset-buffer", b"id: 5\nid: \x00\ndata: x\n\n", (ev("x", id="5"),), last_event_id="5"
    ),
    # Dispatch step 1 ("Set the last event ID string of the event source to the value of the
    # last event ID buffer") happens before step 2 returns for an empty data buffer.
    Case("id-blank-line-without-data-updates-last-event-id", b"id: 7\n\n", (), last_event_id="7"),
    Case(
        "id-blank-line-without-data-then-event",
        b"id: 7\n\ndata: x\n\n",
        (ev("x", id="7"),),
        last_event_id="7",
    ),
    Case("id-reset-by-blank-line-without-data", b"id: 1\ndata: a\n\nid\n\n", (ev("a", id="1"),)),
    # The last event ID string changes only when an event is dispatched (a blank line is seen).
    Case("id-in-unterminated-event-not-committed", b"data: a\n\nid: 9\ndata: b\n", (ev("a"),)),
    Case(
        "id-unterminated-after-committed",
        b"id: 1\ndata: a\n\nid: 2\n",
        (ev("a", id="1"),),
        last_event_id="1",
    ),
    Case("id-spaces-kept", b"id:  x \ndata: y\n\n", (ev("y", id=" x "),), last_event_id=" x "),
    Case("id-with-colon", b"id: a:b\ndata: y\n\n", (ev("y", id="a:b"),), last_event_id="a:b"),
    Case(
        "id-unicode",
        b"id: \xe2\x80\xa6\ndata: \xe2\x80\xa6\n\n",
        (ev("\u2026", id="\u2026"),),
        last_event_id="\u2026",
    ),
    Case("id-invalid-utf8", b"id: \xff\ndata: y\n\n", (ev("y", id="\ufffd"),), last_event_id="\ufffd"),
    # --- retry --------------------------------------------------------------------------------
    # "If the field value consists of only ASCII digits, then interpret the field value as an
    # integer in base ten, and set the event stream's reconnection time to that integer.
    # Otherwise, ignore the field."
    Case("retry", b"retry: 1000\n", retry=1000),
    Case("retry-no-space", b"retry:1000\n\n", retry=1000),
    Case("retry-with-data", b"retry: 1000\ndata: x\n\n", (ev("x"),), retry=1000),
    Case("retry-zero", b"retry: 0\n", retry=0),
    Case("retry-leading-zeros", b"retry: 0071\n", retry=71),
    Case("retry-last-wins", b"retry: 1\nretry: 2\n", retry=2),
    Case("wpt-retry-bogus-after-valid", b"retry:3000\nretry:1000x\ndata:x\n\n", (ev("x"),), retry=3000),
    Case("retry-two-leading-spaces", b"retry:  1000\n"),
    Case("retry-trailing-space", b"retry: 1000 \n"),
    Case("retry-trailing-garbage", b"retry: 1000x\n"),
    Case("retry-leading-garbage", b"retry: x1000\n"),
    Case("retry-words", b"retry: one thousand\n"),
    Case("retry-negative", b"retry: -1\n"),
    Case("retry-plus", b"retry: +1\n"),
    Case("retry-decimal", b"retry: 1.5\n"),
    Case("retry-exponent", b"retry: 1e3\n"),
    Case("retry-hex", b"retry: 0x10\n"),
    Case("retry-underscore", b"retry: 1_000\n"),
    Case("retry-inner-space", b"retry: 1 000\n"),
    Case("retry-tab", b"retry:\t1000\n"),
    Case("retry-empty", b"retry:\n"),
    Case("retry-empty-space", b"retry: \n"),
    Case("wpt-retry-no-colon", b"retry\ndata:test\n\n", (ev("test"),)),
    Case("retry-arabic-indic-digits", "retry: \u0661\u0662\n".encode()),
    Case("retry-fullwidth-digits", "retry: \uff11\uff12\n".encode()),
    Case("retry-superscript-digit", "retry: \u00b2\n".encode()),
    Case("retry-invalid-is-ignored-not-reset", b"retry: 5\nretry: x\n", retry=5),
    # Beyond the spec's letter, as browsers do: an overflow of an unsigned 64-bit integer
    # is ignored (and can never crash the parser).
    Case("retry-2-pow-64-minus-1", b"retry: 18446744073709551615\n", retry=2**64 - 1),
    Case("retry-2-pow-64", b"retry: 18446744073709551616\n"),
    Case("retry-many-leading-zeros", b"retry: 000000000000000000000005\n", retry=5),
    Case("retry-huge", b"retry: 1" + b"0" * 4400 + b"\ndata: x\n\n", (ev("x"),)),
    # The field is processed when its line ends, whether or not the event is ever dispatched.
    Case("retry-in-unterminated-event", b"retry: 5\ndata: x\n", retry=5),
    Case("retry-cr-terminated", b"retry: 5\r", retry=5),
    Case("retry-line-unterminated", b"retry: 5"),
    # --- line endings ---------------------------------------------------------------------
    # "a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair, a single U+000A LINE
    # FEED (LF) character not preceded by a U+000D CARRIAGE RETURN (CR) character, and a single
    # U+000D CARRIAGE RETURN (CR) character not followed by a U+000A LINE FEED (LF) character
    # being the ways in which a line can end."
    Case("crlf", b"data: a\r\ndata: b\r\n\r\n", (ev("a\nb"),)),
    Case("cr", b"data: a\rdata: b\r\r", (ev("a\nb"),)),
    Case("mixed-endings", b"data: a\r\ndata: b\rdata: c\n\r\n", (ev("a\nb\nc"),)),
    Case("cr-dispatches-immediately", b"data: a\r\r", (ev("a"),)),
    Case("lf-cr-is-two-breaks", b"data: a\n\rdata: b\n\n", (ev("a"), ev("b"))),
    Case("cr-cr-lf", b"data: a\r\r\ndata: b\n\n", (ev("a"), ev("b"))),
    Case("cr-lf-lf", b"data: a\r\n\ndata: b\r\n\r\n", (ev("a"), ev("b"))),
    Case("crlf-crlf-crlf", b"data: a\r\n\r\n\r\ndata: b\r\r", (ev("a"), ev("b"))),
    Case("cr-lf-cr-lf-split-events", b"data: a\r\n\rdata: b\r\n\n", (ev("a"), ev("b"))),
    Case("cr-before-field", b"\rdata: a\r\r", (ev("a"),)),
    Case("lf-cr-lf", b"data: a\n\r\ndata: b\n\r\n", (ev("a"), ev("b"))),
    Case("wpt-newline-fest", b"data:test\r\ndata\ndata:test\r\n\r", (ev("test\n\ntest"),)),
    Case("cr-only-line-ending-no-colon", b"data\r\r", (ev(""),)),
    Case(
        "cr-events-with-ids",
        b"id: 1\rdata: a\r\rid: 2\rdata: b\r\r",
        (ev("a", id="1"), ev("b", id="2")),
        last_event_id="2",
    ),
    # --- end of stream ------------------------------------------------------------------------
    # "Once the end of the file is reached, any pending data must be discarded. (If the file ends
    # in the middle of an event, before the final empty line, the incomplete event is not
    # dispatched.)"
    Case("eof-no-newline", b"data: a\n\ndata: b", (ev("a"),)),
    Case("eof-one-newline", b"data: a\n\ndata: b\n", (ev("a"),)),
    Case("eof-one-crlf", b"data: b\r\n", ()),
    Case("eof-one-cr", b"data: b\r", ()),
    Case(
        "wpt-data-before-final-empty-line",
        b"retry:1000\ndata:test1\n\nid:test\ndata:test",
        (ev("test1"),),
        1000,
    ),
    Case("eof-event-type-unterminated", b"event: x\ndata: b\nid: 4\n"),
    # --- BOM ----------------------------------------------------------------------------------
    # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
    Case("bom", b"\xef\xbb\xbfdata: x\n\n", (ev("x"),)),
    Case("bom-then-blank-line", b"\xef\xbb\xbf\ndata: x\n\n", (ev("x"),)),
    # WPT format-bom-2: the second BOM makes the first line's field name "\ufeffdata".
    Case("wpt-double-bom", b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3\n\n", (ev("2"), ev("3"))),
    # WPT format-bom: a BOM that is not at the start of the stream is part of the line.
    Case("wpt-bom-later", b"\xef\xbb\xbfdata:1\n\n\xef\xbb\xbfdata:2\n\ndata:3\n\n", (ev("1"), ev("3"))),
    Case("bom-not-first-no-leading-bom", b"data:1\n\n\xef\xbb\xbfdata:2\n\n", (ev("1"),)),
    Case("bom-in-value", b"data:\xef\xbb\xbfx\n\n", (ev("\ufeffx"),)),
    Case("bom-after-space-in-value", b"\xef\xbb\xbfdata: \xef\xbb\xbf\n\n", (ev("\ufeff"),)),
    Case("bom-as-comment-prefix", b"\xef\xbb\xbf: c\ndata: x\n\n", (ev("x"),)),
    Case("truncated-bom-is-invalid-utf8", b"\xef\xbbdata: x\n\ndata: y\n\n", (ev("y"),)),
    # --- UTF-8 decoding (Encoding standard "UTF-8 decode", replacement per maximal subpart) ----
    Case(
        "utf8-multibyte",
        b"data: \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n\n",
        (ev("\u00e9 \u20ac \U0001f600"),),
    ),
    Case("utf8-invalid-bytes", b"data: \xff\xfe x\n\n", (ev("\ufffd\ufffd x"),)),
    Case("utf8-lone-continuation", b"data: \x80a\n\n", (ev("\ufffda"),)),
    Case("utf8-truncated-2-before-lf", b"data: \xc3\n\n", (ev("\ufffd"),)),
    Case("utf8-truncated-3-before-lf", b"data: \xe2\x82\n\n", (ev("\ufffd"),)),
    Case("utf8-truncated-4-before-cr", b"data: \xf0\x9f\x98\rdata: x\r\r", (ev("\ufffd\nx"),)),
    Case("utf8-truncated-then-ascii", b"data: \xe2\x28\xa1\n\n", (ev("\ufffd(\ufffd"),)),
    Case("utf8-overlong-2", b"data: \xc0\xaf\n\n", (ev("\ufffd\ufffd"),)),
    Case("utf8-overlong-4", b"data: \xf0\x80\x80\x80\n\n", (ev("\ufffd" * 4),)),
    Case("utf8-surrogate", b"data: \xed\xa0\x80\n\n", (ev("\ufffd" * 3),)),
    Case("utf8-above-max", b"data: \xf4\x90\x80\x80\n\n", (ev("\ufffd" * 4),)),
    Case("utf8-f5", b"data: \xf5\x80\n\n", (ev("\ufffd\ufffd"),)),
    Case("utf8-invalid-across-data-lines", b"data: \xe2\ndata: \x82\xac\n\n", (ev("\ufffd\n\ufffd\ufffd"),)),
    Case("utf8-invalid-in-field-name", b"dat\xffa: x\n\xff\n\n", ()),
    Case("utf8-invalid-in-event", b"event: \xffx\ndata: y\n\n", (ev("y", "\ufffdx"),)),
    Case("utf8-valid-max", b"data: \xf4\x8f\xbf\xbf\n\n", (ev("\U0010ffff"),)),
    Case("utf8-invalid-then-cr-then-lf", b"data: a\r\xe2\ndata: b\n\n", (ev("a\nb"),)),
    # --- a realistic mixed stream -------------------------------------------------------------
    Case(
        "mixed-stream",
        b'\xef\xbb\xbf: hi\r\nretry: 2500\r\nid: 1\r\nevent: add\r\ndata: {"a": 1}\r\n\r\n'
        b"data: line1\rdata: line2\r\r"
        b"id: 2\nevent: del\ndata: \xe2\x82\xac\n\n"
        b": ping\n\n"
        b"id\n\n"
        b"data: last\n\n"
        b"data: never",
        (
            ev('{"a": 1}', "add", "1"),
            ev("line1\nline2", id="1"),
            ev("\u20ac", "del", "2"),
            ev("last"),
        ),
        retry=2500,
    ),
)


def _run(chunks: list[bytes]) -> tuple[list[Ev], int | None, str]:
    decoder = SSEDecoder()
    out: list[Ev] = []
    for chunk in chunks:
        for sse in decoder.feed(chunk):
            assert isinstance(sse, ServerSentEvent)
            out.append((sse.data, sse.event, sse.id))
    return out, decoder.retry, decoder.last_event_id


def _expected(case: Case) -> tuple[list[Ev], int | None, str]:
    return list(case.events), case.retry, case.last_event_id


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_decoder_whole(case: Case) -> None:
    assert _run([case.stream]) == _expected(case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_decoder_split_in_two_at_every_byte(case: Case) -> None:
    expected = _expected(case)
    bad = [i for i in range(len(case.stream) + 1) if _run([case.stream[:i], case.stream[i:]]) != expected]
    assert not bad, f"wrong result when split at byte offsets {bad[:20]}"


@pytest.mark.parametrize("case", [c for c in CASES if len(c.stream) <= 64], ids=lambda c: c.id)
def test_decoder_split_in_three_at_every_pair(case: Case) -> None:
    expected = _expected(case)
    s = case.stream
    bad = [(i, j) for i, j in combinations(range(len(s) + 1), 2) if _run([s[:i], s[i:j], s[j:]]) != expected]
    assert not bad, f"wrong result when split at byte offsets {bad[:20]}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_decoder_byte_at_a_time_with_empty_chunks(case: Case) -> None:
    chunks = [b""]
    for i in range(len(case.stream)):
        chunks += [case.stream[i : i + 1], b""]
    assert _run(chunks) == _expected(case)


def test_decoder_state_carries_across_feeds() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\nretry: 10\nevent: e\ndata: a\n") == []
    assert decoder.retry == 10
    assert decoder.last_event_id == ""  # not committed before the blank line
    assert decoder.feed(b"\n") == [ServerSentEvent("a", "e", "1")]
    assert decoder.last_event_id == "1"
    assert decoder.feed(b"data: b\n\n") == [ServerSentEvent("b", "message", "1")]


# --------------------------------------------------------------------------------------------
# frame(): SSEDecoder().feed(frame(x)) gives exactly one event whose data is x with CRLF and CR
# turned into LF.


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


PAYLOADS = (
    "",
    "x",
    " ",
    "  ",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\r\r",
    "\n\r",
    "\r\n\r\n",
    "\r\r\n",
    "a\nb",
    "a\rb",
    "a\r\nb",
    "a\n\nb",
    "a\r\n\r\nb",
    "a\n",
    "\na",
    "a\r",
    "\ra",
    "a\n ",
    "a\n b",
    "a\r\n  b",
    ":",
    ": ",
    ": not a comment",
    "\n: looks like a comment",
    "data: x",
    "data:x",
    "data",
    "\ndata: x",
    "data: x\n\nevent: evil\ndata: y",
    "id: 1\nretry: 1",
    "\n\nid: evil\n\n",
    "event: x\r\rdata: y",
    "\ufeff",
    "\ufeffdata: x",
    "\n\ufeff",
    "caf\u00e9 \u20ac \U0001f600",
    "\x00",
    "a\x00b",
    "\t",
    "\x0b\x0c\x1c\x1d\x1e",
    "\x85",
    "a\u2028b\u2029c",
    "x" * 10_000,
    "\n" * 50,
)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_frame_roundtrip(payload: str) -> None:
    wire = frame(payload)
    assert wire.endswith(b"\n\n")
    expected = ([ev(_lf(payload))], None, "")
    assert _run([wire]) == expected
    if len(wire) < 400:
        bad = [i for i in range(len(wire) + 1) if _run([wire[:i], wire[i:]]) != expected]
        assert not bad, f"wrong result when split at byte offsets {bad[:20]}"


def test_frame_roundtrip_exhaustive_small_alphabet() -> None:
    alphabet = "a :\r\n"
    failures = []
    for n in range(5):
        for chars in product(alphabet, repeat=n):
            payload = "".join(chars)
            if _run([frame(payload)]) != ([ev(_lf(payload))], None, ""):
                failures.append(payload)
    assert not failures


@pytest.mark.parametrize(
    ("event", "id", "retry"),
    [
        ("add", "1", None),
        (None, "", None),
        (None, " 1", None),
        ("  spaced ", " ", None),
        ("a:b", "c:d", None),
        ("message", "x", 0),
        ("\u00fcn\u00ef \U0001f600", "\u2026", 3000),
        ("data", "data: x", 1),
        (":", ":", None),
        ("\ufeff", "\ufeff", None),
        ("e\x00", "\u2028", 2**64 - 1),
    ],
)
def test_frame_fields_roundtrip(event: str | None, id: str, retry: int | None) -> None:  # noqa: A002
    for payload in ("x", "a\r\nb", ""):
        wire = frame(payload, event=event, id=id, retry=retry)
        assert _run([wire]) == ([ev(_lf(payload), event or "message", id)], retry, id)


@pytest.mark.parametrize("retry", [2**64, HUGE_RETRY], ids=["2**64", "10**4400"])
def test_frame_refuses_a_retry_browsers_would_ignore(retry: int) -> None:
    with pytest.raises(ValueError, match="'retry'"):
        frame("x", retry=retry)


def test_frame_sequence_and_empty_id_resets_last_event_id() -> None:
    wire = (
        frame("a", id="1")
        + comment("keep\nalive")
        + frame("b")
        + frame("c", id="")
        + frame("d", event="e", retry=5)
        + comment()
    )
    assert _run([wire]) == ([ev("a", id="1"), ev("b", id="1"), ev("c"), ev("d", "e")], 5, "")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        " x",
        "a\nb",
        "a\r\nb",
        "a\rb",
        "\n\n",
        "data: evil\n\ndata: evil",
        "\r\rid: 9\r\r",
        "retry: 1",
    ],
)
def test_comment_dispatches_nothing_and_changes_no_state(text: str) -> None:
    wire = frame("a", id="1", retry=7) + comment(text) + frame("b")
    assert _run([wire]) == ([ev("a", id="1"), ev("b", id="1")], 7, "1")
    assert _run([comment(text)]) == ([], None, "")


# --------------------------------------------------------------------------------------------
# frame(): each invalid field raises ValueError whose message names the field.

INVALID = [
    pytest.param("event", {"event": "a\nb"}, id="event-lf"),
    pytest.param("event", {"event": "a\rb"}, id="event-cr"),
    pytest.param("event", {"event": "a\r\nb"}, id="event-crlf"),
    pytest.param("event", {"event": "\n"}, id="event-only-lf"),
    pytest.param("event", {"event": "a\n"}, id="event-trailing-lf"),
    pytest.param("event", {"event": ""}, id="event-empty"),
    pytest.param("event", {"event": "\ud800"}, id="event-lone-surrogate"),
    pytest.param("id", {"id": "a\nb"}, id="id-lf"),
    pytest.param("id", {"id": "a\rb"}, id="id-cr"),
    pytest.param("id", {"id": "\r\n"}, id="id-crlf"),
    pytest.param("id", {"id": "a\x00b"}, id="id-nul"),
    pytest.param("id", {"id": "\x00"}, id="id-only-nul"),
    pytest.param("id", {"id": "\udc00"}, id="id-lone-surrogate"),
    pytest.param("retry", {"retry": -1}, id="retry-negative"),
    pytest.param("retry", {"retry": True}, id="retry-true"),
    pytest.param("retry", {"retry": False}, id="retry-false"),
    pytest.param("retry", {"retry": 1.0}, id="retry-float"),
    pytest.param("retry", {"retry": 1.5}, id="retry-float-fraction"),
    pytest.param("retry", {"retry": "1000"}, id="retry-str"),
    pytest.param("data", {"data": "\ud800"}, id="data-lone-high-surrogate"),
    pytest.param("data", {"data": "a\udfffb"}, id="data-lone-low-surrogate"),
    pytest.param("data", {"data": "a\nb\ud800"}, id="data-surrogate-after-newline"),
]


@pytest.mark.parametrize(("name", "kwargs"), INVALID)
def test_frame_invalid_field_raises_value_error_naming_it(name: str, kwargs: dict[str, object]) -> None:
    args = {"data": "x", **kwargs}
    with pytest.raises(ValueError) as info:
        frame(**args)  # type: ignore[arg-type]
    message = str(info.value)
    assert re.search(rf"\b{name}\b", message), f"message does not name {name!r}: {message!r}"
    others = {"data", "event", "id", "retry"} - {name}
    wrong = [other for other in others if re.search(rf"'{other}'|\bSSE {other}\b", message)]
    assert not wrong, f"message names {wrong} instead of {name!r}: {message!r}"


def test_comment_lone_surrogate_raises_value_error() -> None:
    with pytest.raises(ValueError, match="comment"):
        comment("\ud800")
