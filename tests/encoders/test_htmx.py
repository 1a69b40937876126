"""HTMXEncoder: named events of escaped HTML fragments, checked against the documented shapes.

The fragments are parsed with :mod:`html.parser` into trees and compared with the shapes the
encoder's docstring documents, built here from the events themselves: a tree equal to the
expected one has no element or attribute that came from model text, and its text is the
model's text (line endings as a browser sees them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser
from typing import Any, TypeAlias

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Encoder,
    Error,
    Event,
    EventStreamResponse,
    Gap,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)
from streamflow.encoders.htmx import HTMX_EVENT_NAMES, HTMXEncoder
from streamflow.sse import ServerSentEvent
from streamflow.testing import decode, events, json_values, sse_texts

# --- an HTML tree, as a browser would build it from a fragment ---------------------------

Node: TypeAlias = tuple[str, tuple[tuple[str, str | None], ...], tuple["Node | str", ...]]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[tuple[str, str | None], ...], list[Any]]] = [("#fragment", (), [])]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node: tuple[str, tuple[tuple[str, str | None], ...], list[Any]] = (tag, tuple(attrs), [])
        self.stack[-1][2].append(node)
        self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert len(self.stack) > 1, f"</{tag}> closes nothing"
        assert self.stack[-1][0] == tag, f"</{tag}> closes <{self.stack[-1][0]}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1][2].append(data)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise AssertionError(f"a self-closing <{tag}/> in a fragment")

    def handle_comment(self, data: str) -> None:
        raise AssertionError(f"a comment in a fragment: {data!r}")

    def handle_decl(self, decl: str) -> None:
        raise AssertionError(f"a declaration in a fragment: {decl!r}")

    def handle_pi(self, data: str) -> None:
        raise AssertionError(f"a processing instruction in a fragment: {data!r}")

    def unknown_decl(self, data: str) -> None:
        raise AssertionError(f"a CDATA/unknown declaration in a fragment: {data!r}")


def _freeze(tag: str, attrs: tuple[tuple[str, str | None], ...], children: Sequence[Any]) -> Node:
    merged: list[Node | str] = []
    for child in children:
        if isinstance(child, str):
            if merged and isinstance(merged[-1], str):
                merged[-1] += child
            else:
                merged.append(child)
        else:
            merged.append(_freeze(*child))
    if tag == "pre" and merged and isinstance(merged[0], str) and merged[0].startswith("\n"):
        merged[0] = merged[0][1:]  # HTML drops one line break right after <pre>
    return (tag, attrs, tuple(c for c in merged if c != ""))


def parse_fragment(html: str) -> tuple[Node | str, ...]:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    assert len(builder.stack) == 1, f"unclosed <{builder.stack[-1][0]}> in {html!r}"
    return _freeze(*builder.stack[0])[2]


def el(tag: str, css: str, *children: Node | str, role: str | None = None) -> Node:
    attrs: tuple[tuple[str, str | None], ...] = (("class", css),)
    if role is not None:
        attrs += (("role", role),)
    return _freeze(tag, attrs, children)


def lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def shown(value: Any) -> str:
    """What a <pre> of a JSON value shows, per the docs: a string as is, else indented JSON.
    (Compared by value below, so only the documented rule matters, not json.dumps options.)"""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)


def same_json_text(expected: Any, actual: str) -> bool:
    return lf(expected) == actual if isinstance(expected, str) else json.loads(actual) == expected


# --- what each event must become ---------------------------------------------------------


@dataclass
class Expected:
    name: str  # the SSE event name
    tree: tuple[Node | str, ...]
    json_pre: dict[str, Any]  # <pre> class -> the JSON value it shows (compared by value)


def expected_fragment(event: Event, encoder: HTMXEncoder, tools: dict[str, str]) -> Expected:
    names = encoder.names
    if isinstance(event, StepStart):
        progress: list[Node | str] = []
        if event.index is not None or event.total is not None:
            shown_progress = (
                f"{event.index or '?'}/{event.total}" if event.total is not None else str(event.index)
            )
            progress = [" ", el("span", "sf-step-progress", shown_progress)]
        tree = el("div", "sf-step sf-step-start", el("span", "sf-step-name", lf(event.step)), *progress)
        return Expected(names["step"], (tree,), {})
    if isinstance(event, StepEnd):
        parts: list[Node | str] = [el("span", "sf-step-name", lf(event.step))]
        pres = {}
        if event.output is not None:
            parts.append(el("pre", "sf-step-output", lf(shown(event.output))))
            pres["sf-step-output"] = event.output
        return Expected(names["step"], (el("div", "sf-step sf-step-end", *parts),), pres)
    if isinstance(event, ToolCall):
        tools[event.id] = event.name
        parts = [el("span", "sf-tool-name", lf(event.name))]
        pres = {}
        if event.arguments:
            parts.append(el("pre", "sf-tool-arguments", lf(shown(event.arguments))))
            pres["sf-tool-arguments"] = event.arguments
        return Expected(names["tool"], (el("div", "sf-tool sf-tool-call", *parts),), pres)
    if isinstance(event, ToolResult):
        css = "sf-tool sf-tool-result" + (" sf-tool-error" if event.is_error else "")
        parts = [el("span", "sf-tool-name", lf(tools[event.id]))] if event.id in tools else []
        pres = {}
        if event.output is not None:
            parts.append(el("pre", "sf-tool-output", lf(shown(event.output))))
            pres["sf-tool-output"] = event.output
        return Expected(names["tool"], (el("div", css, *parts),), pres)
    if isinstance(event, ChatHistory):
        messages = [
            el(
                "div",
                "sf-chat-message",
                el("span", "sf-chat-role", lf(m.role)),
                el("div", "sf-chat-content", lf(m.content)),
            )
            for m in event.value
        ]
        return Expected(names["chat_history"], (el("div", "sf-chat-history", *messages),), {})
    if isinstance(event, Error):
        tree = el("div", "sf-error", el("span", "sf-error-message", lf(event.message)), role="alert")
        return Expected(names["error"], (tree,), {})
    assert isinstance(event, Done)
    return Expected(names["done"], (), {})


def find_pres(nodes: Sequence[Node | str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, tuple):
            tag, attrs, children = node
            if tag == "pre":
                found[str(dict(attrs)["class"])] = "".join(c for c in children if isinstance(c, str))
            found.update(find_pres(children))
    return found


def mask_pres(nodes: Sequence[Node | str]) -> tuple[Node | str, ...]:
    """The tree with the text of every <pre> taken out (it is compared as JSON instead)."""
    return tuple(
        (n[0], n[1], () if n[0] == "pre" else mask_pres(n[2])) if isinstance(n, tuple) else n for n in nodes
    )


def check_stream(encoder: HTMXEncoder, evs: Sequence[Event]) -> list[ServerSentEvent]:
    """Encode ``evs`` and check every frame against the documented shapes; return the frames."""
    documented = set(HTMX_EVENT_NAMES.values()) | set(encoder.names.values())
    tools: dict[str, str] = {}
    raw = ""  # the deltas so far
    text = ""  # the message so far, as the page shows it
    out: list[ServerSentEvent] = []
    chunks = [encoder.open()]
    for event in evs:
        chunk = encoder.encode(event)
        chunks.append(chunk)
        frames = decode(chunk)
        assert all(sse.event in documented and sse.event != "error" for sse in frames), frames
        if isinstance(event, Delta):
            # CR and CRLF show as one LF, also a CRLF split across two deltas: lf() of all
            # the raw text so far, which only grows (a CR already shown as LF absorbs the LF).
            raw += event.value
            longer = lf(raw)
            assert longer.startswith(text)
            added, text = longer[len(text) :], longer
            if not added:
                assert frames == [], f"an empty delta wrote {frames!r}"
                continue
            [sse] = frames
            if encoder.mode == "append":
                assert sse.event == encoder.names["delta"]
                assert sse.data == escape(added), "append mode sends the new text, escaped"
                assert parse_fragment(sse.data) == (added,)
            else:
                assert sse.event == encoder.names["message"]
                assert parse_fragment(sse.data) == (el("div", "sf-message", text),)
            out.append(sse)
            continue
        if isinstance(event, Gap):
            assert frames == [], "a gap shows nothing: the page renders what follows"
            continue
        expected = expected_fragment(event, encoder, tools)
        [sse] = frames
        assert sse.event == expected.name, (event, sse)
        tree = parse_fragment(sse.data)
        assert mask_pres(tree) == mask_pres(expected.tree), f"\n{event!r}\n{sse.data!r}"
        pres = find_pres(tree)
        assert pres.keys() == expected.json_pre.keys()
        for css, value in expected.json_pre.items():
            assert same_json_text(value, pres[css]), (css, value, pres[css])
        out.append(sse)
    chunks.append(encoder.close())
    data = b"".join(chunks)
    assert decode(data) == out, "the frames of the whole stream are the frames of its events"
    assert decode(data, chunk_sizes=(1,)) == out, "fed byte by byte, the stream decodes the same"
    return out


# --- strategies ---------------------------------------------------------------------------

_HTML_PIECES = (
    '<img src=x onerror="window.__pwned=1">',
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "</div>",
    "<div>",
    "</pre>",
    "<pre>",
    '" onmouseover="x',
    "' x='",
    "&amp;",
    "&lt;",
    "&#60;",
    "&",
    "<",
    ">",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    '<div hx-get="/x" hx-trigger="load">',
    '<p hx-swap-oob="true" id="answer">',
    '<button hx-on:click="alert(1)">',
    "<hx-partial>",
    "<title>t</title>",
    "<html><body>",
    "<br/>",
)


def html_texts() -> st.SearchStrategy[str]:
    """Text full of markup, entities and SSE line breaks."""
    return st.lists(st.sampled_from(_HTML_PIECES) | sse_texts(max_pieces=3), max_size=8).map("".join)


def html_events() -> st.SearchStrategy[Event]:
    """Non-terminal events with markup in every text field, step names and tool ids from
    small sets so that steps nest, close, or stay open and results meet their calls or not."""
    text = html_texts()
    step = st.sampled_from(["a", "b", "<b>"]) | text
    tool_id = st.sampled_from(["1", "2"]) | text
    optional = st.none() | step
    counts = st.none() | st.integers(min_value=1, max_value=9)
    message = st.builds(ChatMessage, role=text, content=text, type=text)
    return st.one_of(
        st.builds(StepStart, step=step, index=counts, total=counts),
        st.builds(Delta, value=text, step=optional),
        st.builds(Delta, value=st.sampled_from(["\r", "\n", "\r\n", "", "x\r"])),
        st.builds(StepEnd, step=step, output=st.none() | json_values() | text),
        st.builds(ChatHistory, value=st.lists(message, max_size=3)),
        st.builds(
            ToolCall,
            id=tool_id,
            name=text,
            arguments=st.dictionaries(text, json_values(), max_size=3),
            step=optional,
        ),
        st.builds(ToolResult, id=tool_id, output=st.none() | json_values() | text, is_error=st.booleans()),
    )


def streams() -> st.SearchStrategy[list[Event]]:
    """Streams as :func:`~streamflow.adapters.from_iterable` makes them: any events (steps
    unbalanced, results without calls), then at most one Error, then exactly one Done."""
    body = st.lists(
        (events() | html_events()).filter(lambda e: not isinstance(e, Done | Error)),
        max_size=14,
    )
    error = (
        st.none()
        | st.builds(Error, message=html_texts(), code=st.none() | html_texts())
        | st.builds(Error, message=sse_texts(), code=st.none() | sse_texts(), step=st.none() | sse_texts())
    )
    return st.builds(lambda b, e: [*b, *([e] if e is not None else []), Done()], body, error)


modes = st.sampled_from(["replace", "append"])


# --- properties ---------------------------------------------------------------------------


@given(streams(), modes)
def test_every_frame_is_a_documented_named_event_of_escaped_html(evs: list[Event], mode: str) -> None:
    frames = check_stream(HTMXEncoder(mode=mode), evs)  # type: ignore[arg-type]
    assert frames[-1] == ServerSentEvent("", "done"), "the stream ends with the (empty) done event"
    assert all(sse.event != "error" for sse in frames)


@given(streams())
def test_appended_text_is_the_escaped_deltas(evs: list[Event]) -> None:
    encoder = HTMXEncoder(mode="append")
    frames = decode(encoder.open() + b"".join(encoder.encode(e) for e in evs) + encoder.close())
    appended = "".join(sse.data for sse in frames if sse.event == "delta")
    text = "".join(e.value for e in evs if isinstance(e, Delta))
    assert appended == escape(lf(text))
    assert "".join(str(c) for c in parse_fragment(appended)) == lf(text)


@given(streams())
def test_replace_mode_ends_with_the_whole_message(evs: list[Event]) -> None:
    encoder = HTMXEncoder()
    frames = decode(b"".join(encoder.encode(e) for e in evs))
    messages = [sse.data for sse in frames if sse.event == "message"]
    text = lf("".join(e.value for e in evs if isinstance(e, Delta)))
    assert messages[-1:] == ([f'<div class="sf-message">{escape(text)}</div>'] if text else [])


def code_blocks(text: str) -> str:
    """A renderer as the docs ask for one: it escapes the text itself."""
    parts = text.split("```")
    return "".join(
        f"<pre><code>{escape(part)}</code></pre>" if i % 2 else f"<p>{escape(part)}</p>"
        for i, part in enumerate(parts)
    )


@given(streams())
def test_the_renderer_gets_the_text_so_far_and_its_html_is_sent_as_is(evs: list[Event]) -> None:
    seen: list[str] = []

    def render(text: str) -> str:
        seen.append(text)
        return code_blocks(text)

    encoder = HTMXEncoder(render=render)
    frames = decode(b"".join(encoder.encode(e) for e in evs))
    messages = [sse.data for sse in frames if sse.event == "message"]
    assert messages == [f'<div class="sf-message">{code_blocks(t)}</div>' for t in seen]
    raw = ""
    expected_texts = []
    for e in evs:
        if isinstance(e, Delta) and lf(raw + e.value) != lf(raw):
            expected_texts.append(lf(raw + e.value))
        if isinstance(e, Delta):
            raw += e.value
    assert seen == expected_texts, "the renderer sees the whole message so far, with LF line breaks"
    for html in messages:
        [root] = parse_fragment(html)
        assert isinstance(root, tuple)
        tag, attrs, children = root
        assert (tag, attrs) == ("div", (("class", "sf-message"),))
        assert {c[0] for c in children if isinstance(c, tuple)} <= {"p", "pre"}


names_ok = st.text(st.characters(codec="utf-8", exclude_characters=","), min_size=1, max_size=8).filter(
    lambda s: s != "error" and not any(c.isspace() for c in s)
)


@given(st.dictionaries(st.sampled_from(sorted(HTMX_EVENT_NAMES)), names_ok), streams(), modes)
def test_custom_names_are_used_and_checked(names: dict[str, str], evs: list[Event], mode: str) -> None:
    encoder = HTMXEncoder(mode=mode, names=names)  # type: ignore[arg-type]
    assert {**HTMX_EVENT_NAMES, **names} == dict(encoder.names)
    check_stream(encoder, evs)


# --- examples -----------------------------------------------------------------------------

RUN: list[Event] = [
    ChatHistory(value=[ChatMessage(role="user", content="a loop?")]),
    StepStart(step="answer", index=1, total=2),
    Delta(value="Here:\n\n```\nfor i in x:\n"),
    ToolCall(id="c1", name="search", arguments={"q": "<loop>"}),
    ToolResult(id="c1", output="2 hits"),
    Delta(value="<img src=x onerror=alert(1)>"),
    StepEnd(step="answer", output={"ok": True}),
    Error(message="over <quota>", code="quota", step="answer"),
    Done(),
]


def test_replace_mode_frames() -> None:
    encoder = HTMXEncoder()
    assert isinstance(encoder, Encoder)
    assert (encoder.media_type, dict(encoder.headers), encoder.open()) == ("text/event-stream", {}, b"")
    data = b"".join(encoder.encode(e) for e in RUN) + encoder.close()
    assert data.decode() == (
        "event: chat_history\n"
        'data: <div class="sf-chat-history"><div class="sf-chat-message"><span class="sf-chat-role">user'
        '</span><div class="sf-chat-content">a loop?</div></div></div>\n\n'
        "event: step\n"
        'data: <div class="sf-step sf-step-start"><span class="sf-step-name">answer</span> '
        '<span class="sf-step-progress">1/2</span></div>\n\n'
        "event: message\n"
        'data: <div class="sf-message">Here:\n'
        "data: \n"
        "data: ```\n"
        "data: for i in x:\n"
        "data: </div>\n\n"
        "event: tool\n"
        'data: <div class="sf-tool sf-tool-call"><span class="sf-tool-name">search</span>'
        '<pre class="sf-tool-arguments">{\n'
        "data:   &quot;q&quot;: &quot;&lt;loop&gt;&quot;\n"
        "data: }</pre></div>\n\n"
        "event: tool\n"
        'data: <div class="sf-tool sf-tool-result"><span class="sf-tool-name">search</span>'
        '<pre class="sf-tool-output">2 hits</pre></div>\n\n'
        "event: message\n"
        'data: <div class="sf-message">Here:\n'
        "data: \n"
        "data: ```\n"
        "data: for i in x:\n"
        "data: &lt;img src=x onerror=alert(1)&gt;</div>\n\n"
        "event: step\n"
        'data: <div class="sf-step sf-step-end"><span class="sf-step-name">answer</span>'
        '<pre class="sf-step-output">{\n'
        "data:   &quot;ok&quot;: true\n"
        "data: }</pre></div>\n\n"
        "event: stream_error\n"
        'data: <div class="sf-error" role="alert"><span class="sf-error-message">over &lt;quota&gt;'
        "</span></div>\n\n"
        "event: done\n"
        "data: \n\n"
    )


def test_append_mode_sends_only_the_new_text() -> None:
    encoder = HTMXEncoder(mode="append")
    frames = decode(b"".join(encoder.encode(e) for e in RUN))
    assert [(sse.event, sse.data) for sse in frames if sse.event == "delta"] == [
        ("delta", "Here:\n\n```\nfor i in x:\n"),
        ("delta", "&lt;img src=x onerror=alert(1)&gt;"),
    ]


def test_line_breaks_are_lf_and_a_split_crlf_is_one_break() -> None:
    encoder = HTMXEncoder(mode="append")
    chunks = [encoder.encode(Delta(value=v)) for v in ["a\r", "\nb\r\nc\rd", "\n", "", "\r\n"]]
    assert chunks[3] == b"", "an empty delta writes nothing"
    assert [decode(c)[0].data if c else None for c in chunks] == ["a\n", "b\nc\nd", "\n", None, "\n"]
    assert b"\r" not in b"".join(chunks)


def test_a_pre_keeps_a_leading_line_break() -> None:
    [sse] = decode(HTMXEncoder().encode(ToolResult(id="x", output="\nindented")))
    assert (
        sse.data == '<div class="sf-tool sf-tool-result"><pre class="sf-tool-output">\n\nindented</pre></div>'
    )


def test_progress_variants() -> None:
    def progress(index: int | None, total: int | None) -> str:
        return decode(HTMXEncoder().encode(StepStart(step="s", index=index, total=total)))[0].data

    assert "sf-step-progress" not in progress(None, None)
    assert progress(2, None).endswith(' <span class="sf-step-progress">2</span></div>')
    assert progress(None, 5).endswith(' <span class="sf-step-progress">?/5</span></div>')


def test_ids_go_on_the_frame_and_an_empty_delta_with_an_id_still_carries_it() -> None:
    encoder = HTMXEncoder(mode="append")
    assert decode(encoder.encode(Delta(value=""), id="4")) == [ServerSentEvent("", "delta", "4")]
    assert decode(encoder.encode(Done(), id="5")) == [ServerSentEvent("", "done", "5")]


def test_one_stream_per_instance() -> None:
    encoder = HTMXEncoder()
    encoder.open()
    with pytest.raises(RuntimeError, match="one stream"):
        encoder.open()
    encoder.encode(Done())
    with pytest.raises(RuntimeError, match="has ended"):
        encoder.encode(Delta(value="x"))
    used = HTMXEncoder()
    used.encode(Delta(value="x"))
    with pytest.raises(RuntimeError, match="one stream"):
        used.open()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"names": {"done": "error"}}, ValueError, "'error' is reserved"),
        ({"names": {"error": "error"}}, ValueError, "'error' is reserved"),
        ({"names": {"step": "a b"}}, ValueError, "no whitespace or comma"),
        ({"names": {"step": "a,b"}}, ValueError, "no whitespace or comma"),
        ({"names": {"step": "a\nb"}}, ValueError, "no whitespace or comma"),
        ({"names": {"step": ""}}, ValueError, "no whitespace or comma"),
        ({"names": {"nope": "x"}}, ValueError, "unknown fragment kind 'nope'"),
        ({"mode": "prepend"}, ValueError, "mode must be"),
        ({"mode": "append", "render": str}, ValueError, "render needs mode='replace'"),
        ({"render": "markdown"}, TypeError, "render must be a function"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        HTMXEncoder(**kwargs)


def test_a_renderer_must_return_a_str() -> None:
    encoder = HTMXEncoder(render=lambda text: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="render must return a str"):
        encoder.encode(Delta(value="x"))


def test_a_failing_renderer_ends_the_stream_with_a_stream_error() -> None:
    def render(text: str) -> str:
        if "boom" in text:
            raise ValueError("bad markdown")
        return escape(text)

    sent: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    response = EventStreamResponse(["fine ", "boom", "never"], encoder=HTMXEncoder(render=render))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    anyio.run(response, scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert [(sse.event, sse.data) for sse in decode(body)] == [
        ("message", '<div class="sf-message">fine </div>'),
        (
            "stream_error",
            '<div class="sf-error" role="alert"><span class="sf-error-message">'
            "The stream failed because of an internal error.</span></div>",
        ),
        ("done", ""),
    ]
