"""HTML fragments for htmx's SSE extension (``hx-ext="sse"``, ``sse-swap``).

Every protocol event becomes a *named* SSE event whose data is a small HTML fragment that
htmx swaps into the page. All text that comes from the run (deltas, step and tool names,
arguments, outputs, chat messages, error messages) is HTML-escaped, so model output is shown
as text and can never add an element, an attribute, a ``<script>``, an ``hx-*`` attribute
or an ``hx-swap-oob`` target to the page. Multi-line fragments are written over several
``data:`` lines by :func:`~streamflow.sse.frame`, and the browser joins them back with LF:
no newline is ever rewritten to ``<br/>``.

Mapping (default event names; every piece of run text is escaped; ``...`` continues a line)::

    Delta, mode="replace"  message       <div class="sf-message">TEXT SO FAR</div>
                                         or <div class="sf-message">render(TEXT SO FAR)</div>
    Delta, mode="append"   delta         NEW TEXT (no tags; an empty delta sends nothing)
    StepStart              step          <div class="sf-step sf-step-start">
                                         ...<span class="sf-step-name">NAME</span>
                                         ... <span class="sf-step-progress">2/5</span></div>
    StepEnd                step          <div class="sf-step sf-step-end">
                                         ...<span class="sf-step-name">NAME</span>
                                         ...<pre class="sf-step-output">OUTPUT</pre></div>
    ToolCall               tool          <div class="sf-tool sf-tool-call">
                                         ...<span class="sf-tool-name">NAME</span>
                                         ...<pre class="sf-tool-arguments">ARGUMENTS</pre></div>
    ToolResult             tool          <div class="sf-tool sf-tool-result"> (+ " sf-tool-error")
                                         ...<span class="sf-tool-name">NAME OF THE CALL</span>
                                         ...<pre class="sf-tool-output">OUTPUT</pre></div>
    ChatHistory            chat_history  <div class="sf-chat-history">, then for each message
                                         ...<div class="sf-chat-message">
                                         ...<span class="sf-chat-role">ROLE</span>
                                         ...<div class="sf-chat-content">CONTENT</div></div>
                                         ...</div>
    Error                  stream_error  <div class="sf-error" role="alert">
                                         ...<span class="sf-error-message">MESSAGE</span></div>
    Done                   done          empty data: close the EventSource with sse-close="done"

OUTPUT and ARGUMENTS are a string as is, or any other JSON value as indented JSON. Parts
are left out when the event has no value for them (no progress, no output, no arguments, a
result whose call was not seen). The only whitespace between tags is the space before the
progress. Text keeps its line breaks (CR and CRLF become LF): style ``.sf-message`` and
``.sf-chat-content`` with ``white-space: pre-wrap`` to show them. No SSE event is ever
named ``error``: ``EventSource`` and htmx-ext-sse fire their own connection-failure event
under that name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from html import escape
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from pydantic import JsonValue

from streamflow.encoders.json_events import ERROR_EVENT_NAME
from streamflow.events import (
    ChatHistory,
    Delta,
    Done,
    Error,
    Event,
    Gap,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)
from streamflow.sse import frame

__all__ = ["HTMX_EVENT_NAMES", "HTMXEncoder", "HTMXMode", "Renderer"]

HTMXMode: TypeAlias = Literal["replace", "append"]

Renderer: TypeAlias = Callable[[str], str]
"""Turns the message text so far into **trusted** HTML (it must escape the text itself)."""

HTMX_EVENT_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "message": "message",  # mode="replace": the whole message so far
        "delta": "delta",  # mode="append": the new text only
        "step": "step",
        "tool": "tool",
        "chat_history": "chat_history",
        "error": ERROR_EVENT_NAME,
        "done": "done",
    }
)
"""The fragment kinds and their default SSE event names (``names=`` overrides them)."""

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


class HTMXEncoder:
    """Named SSE events carrying escaped HTML fragments, for ``hx-ext="sse"`` pages.

    ``mode="replace"`` (the default) sends, for each delta, the whole message so far as a
    ``message`` event: swap it with ``hx-swap="innerHTML"`` into the message's container.
    ``mode="append"`` sends only the new text, escaped, as a ``delta`` event: swap it with
    ``hx-swap="beforeend"``; each delta costs its own size, not the whole message's.
    A run has one message: the concatenation of all its deltas, whatever their step.

    ``render`` (replace mode only) receives the message text so far, with LF line endings,
    and returns the HTML to put inside ``<div class="sf-message">`` instead of the escaped
    text -- for example markdown with raw HTML disabled. Its output is **trusted**: it is sent
    as is, and htmx will run any ``<script>``, ``hx-on:*`` or ``hx-swap-oob`` in it, so the
    renderer must escape the model's text itself.

    ``names`` maps fragment kinds (the keys of :data:`HTMX_EVENT_NAMES`) to other SSE event
    names. A name must be usable in ``sse-swap`` (no whitespace, no comma) and must not be
    ``error``; :class:`ValueError` otherwise. Several kinds may share a name (one
    ``beforeend`` log for ``delta``, ``step`` and ``tool``, say).

    An instance writes one stream: :meth:`open` a second time, or :meth:`encode` after
    ``Done``, raises :class:`RuntimeError`.
    """

    media_type: str = "text/event-stream"
    headers: Mapping[str, str] = _EMPTY

    def __init__(
        self,
        *,
        mode: HTMXMode = "replace",
        render: Renderer | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in ("replace", "append"):
            raise ValueError(f"mode must be 'replace' or 'append', not {mode!r}")
        if render is not None:
            if mode != "replace":
                raise ValueError("render needs mode='replace': append mode sends escaped text only")
            if not callable(render):
                raise TypeError(f"render must be a function from str to str, not {render!r}")
        chosen = dict(HTMX_EVENT_NAMES)
        for kind, name in (names or {}).items():
            if kind not in HTMX_EVENT_NAMES:
                raise ValueError(
                    f"names: unknown fragment kind {kind!r}; expected one of {', '.join(chosen)}"
                )
            if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
                raise ValueError(
                    f"names[{kind!r}]: an SSE event name for sse-swap needs no whitespace or comma: {name!r}"
                )
            if name == "error":
                raise ValueError(
                    f"names[{kind!r}]: 'error' is reserved by EventSource and htmx-ext-sse for "
                    "connection failures; choose another name"
                )
            chosen[kind] = name
        self.mode: HTMXMode = mode
        self.render = render
        self.names: Mapping[str, str] = MappingProxyType(chosen)
        self._started = False
        self._done = False
        self._text = ""  # replace mode: the message so far (LF line endings)
        self._after_cr = False  # the last text ended with CR: an LF next is the same line break
        self._tools: dict[str, str] = {}  # tool call id -> tool name

    def open(self) -> bytes:
        if self._started:
            raise RuntimeError("an HTMXEncoder writes one stream; create a new one for each response")
        self._started = True
        return b""

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        if self._done:
            raise RuntimeError("this HTMXEncoder's stream has ended (Done); create a new one")
        self._started = True
        if type(event) is Delta:
            return self._delta(event.value, id)
        if type(event) is StepStart:
            html = _step(event.step, "sf-step-start", _progress(event.index, event.total))
            return frame(html, event=self.names["step"], id=id)
        if type(event) is StepEnd:
            output = "" if event.output is None else _pre("sf-step-output", _show(event.output))
            return frame(_step(event.step, "sf-step-end", output), event=self.names["step"], id=id)
        if type(event) is ToolCall:
            self._tools[event.id] = event.name
            html = _name("sf-tool-name", event.name)
            if event.arguments:
                html += _pre("sf-tool-arguments", _show(event.arguments))
            return frame(f'<div class="sf-tool sf-tool-call">{html}</div>', event=self.names["tool"], id=id)
        if type(event) is ToolResult:
            return frame(self._tool_result(event), event=self.names["tool"], id=id)
        if type(event) is ChatHistory:
            html = "".join(
                '<div class="sf-chat-message">'
                f'{_name("sf-chat-role", m.role)}<div class="sf-chat-content">{escape(m.content)}</div>'
                "</div>"
                for m in event.value
            )
            return frame(
                f'<div class="sf-chat-history">{html}</div>', event=self.names["chat_history"], id=id
            )
        if type(event) is Error:
            html = _name("sf-error-message", event.message)
            return frame(f'<div class="sf-error" role="alert">{html}</div>', event=self.names["error"], id=id)
        if type(event) is Done:
            self._done = True
            return frame("", event=self.names["done"], id=id)
        if type(event) is Gap:  # nothing to show: the page renders what follows
            return b""
        raise TypeError(f"HTMXEncoder cannot encode {event!r}")  # pragma: no cover - the union is closed

    def close(self) -> bytes:
        return b""

    def _delta(self, value: str, id: str | None) -> bytes:  # noqa: A002
        text = self._lf(value)
        if not text and id is None:
            return b""  # nothing new to show
        if self.mode == "append":
            return frame(escape(text), event=self.names["delta"], id=id)
        self._text += text
        if self.render is None:
            body = escape(self._text)
        else:
            body = self.render(self._text)
            if type(body) is not str:
                raise TypeError(f"render must return a str of HTML, not {type(body).__name__}")
        return frame(f'<div class="sf-message">{body}</div>', event=self.names["message"], id=id)

    def _lf(self, value: str) -> str:
        """``value`` with LF line endings, a CRLF split across two deltas counted once."""
        if not value:
            return value
        if self._after_cr and value[0] == "\n":
            value = value[1:]
        self._after_cr = value[-1:] == "\r"
        return value.replace("\r\n", "\n").replace("\r", "\n")

    def _tool_result(self, event: ToolResult) -> str:
        classes = "sf-tool sf-tool-result sf-tool-error" if event.is_error else "sf-tool sf-tool-result"
        name = self._tools.get(event.id)
        html = "" if name is None else _name("sf-tool-name", name)
        if event.output is not None:
            html += _pre("sf-tool-output", _show(event.output))
        return f'<div class="{classes}">{html}</div>'


def _name(css_class: str, text: str) -> str:
    return f'<span class="{css_class}">{escape(text)}</span>'


def _pre(css_class: str, text: str) -> str:
    # An HTML parser drops one line break right after <pre>: add one to keep the text's own.
    lead = "\n" if text[:1] in ("\n", "\r") else ""
    return f'<pre class="{css_class}">{lead}{escape(text)}</pre>'


def _step(step: str, css_class: str, extra: str) -> str:
    return f'<div class="sf-step {css_class}">{_name("sf-step-name", step)}{extra}</div>'


def _progress(index: int | None, total: int | None) -> str:
    if index is None and total is None:
        return ""
    shown = f"{index or '?'}/{total}" if total is not None else str(index)
    return f' <span class="sf-step-progress">{shown}</span>'


def _show(value: JsonValue) -> str:
    """A string as itself; any other JSON value as indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2)
