"""The proxy's work for one request: read the upstream agent's stream, augment it, pass it on.

``relay()`` is an async generator, so ``EventStreamResponse`` streams it like any agent:

1. it opens the upstream stream with :func:`streamflow.client.connect` (typed events,
   not bytes);
2. it wraps the upstream run in a step of its own, ``proxy``;
3. it passes every upstream event on through a :class:`Redactor`, which replaces e-mail
   addresses and API keys -- in text split across deltas too;
4. it ends the ``proxy`` step with a summary: the transcript id, how many events came
   from upstream, how many things were redacted, and the timings.

When the upstream fails, the client gets a typed ``Error`` (see :func:`upstream_error`)
and then ``done`` -- never a hang, never a traceback. When the client leaves,
``EventStreamResponse`` closes ``relay()``, and its ``finally`` closes the upstream
request at once, which cancels the agent over there.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Final

import anyio
import httpx
from pydantic import JsonValue

from streamflow import (
    ChatHistory,
    Delta,
    Done,
    Error,
    Event,
    ProtocolError,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)
from streamflow.client import IncompleteStreamError, connect

__all__ = ["STEP", "Redactor", "relay", "upstream_error"]

logger = logging.getLogger("streamflow.proxy")

STEP: Final = "proxy"
"""The step the proxy wraps around the upstream run."""

CLOSE_TIMEOUT: Final = 5.0
"""Seconds the upstream request gets to close when the client has gone."""


class Redactor:
    """Replaces e-mail addresses and API keys in the events of one stream.

    Neither can contain whitespace, so a delta is passed on up to its last whitespace and
    the word after it is held back until the next delta shows where it ends (or until a
    non-text event, or ``MAX_HOLD`` characters). A model that streams ``"jane.d"``,
    ``"oe@example.com "`` is caught; text that ends in whitespace, like the demo's
    tokens, is passed on at once, in the same deltas.
    """

    PATTERNS: Final = (
        (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
        (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "[key]"),
    )
    MAX_HOLD: Final = 256

    def __init__(self) -> None:
        self.count = 0  # replacements made so far
        self._held = ""
        self._step: str | None = None

    def text(self, text: str) -> str:
        for pattern, replacement in self.PATTERNS:
            text, found = pattern.subn(replacement, text)
            self.count += found
        return text

    def json(self, value: JsonValue) -> JsonValue:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {key: self.json(item) for key, item in value.items()}
        return value

    def feed(self, event: Event) -> list[Event]:
        """The events to send for ``event``: none, one, or held-back text and then it."""
        if not isinstance(event, Delta):
            return [*self.flush(), self._event(event)]
        released = self.flush() if self._held and event.step != self._step else []
        held = self._held + event.value
        self._step = event.step
        cut = len(held)
        while cut and not held[cut - 1].isspace():
            cut -= 1
        if len(held) - cut > self.MAX_HOLD:
            cut = len(held)
        ready, self._held = held[:cut], held[cut:]
        if ready:
            released.append(Delta(value=self.text(ready), step=self._step))
        return released

    def flush(self) -> list[Event]:
        """The text held back, redacted (at the end of a run of deltas)."""
        if not self._held:
            return []
        held, self._held = self._held, ""
        return [Delta(value=self.text(held), step=self._step)]

    def _event(self, event: Event) -> Event:
        if isinstance(event, ToolCall):
            return event.model_copy(update={"arguments": self.json(event.arguments)})
        if isinstance(event, (ToolResult, StepEnd)):
            return event.model_copy(update={"output": self.json(event.output)})
        if isinstance(event, ChatHistory):
            messages = [m.model_copy(update={"content": self.text(m.content)}) for m in event.value]
            return event.model_copy(update={"value": messages})
        if isinstance(event, Error):
            return event.model_copy(update={"message": self.text(event.message)})
        return event


def upstream_error(exc: httpx.HTTPError | ProtocolError, *, opened: bool) -> Error:
    """The ``Error`` the client gets when the upstream fails; ``opened``: the upstream
    had answered with a stream. The details stay in the proxy's log."""
    if isinstance(exc, httpx.HTTPStatusError):
        message = f"The agent service refused the request (HTTP {exc.response.status_code})."
        return Error(message=message, code="upstream_status")
    if isinstance(exc, ProtocolError) and not isinstance(exc, IncompleteStreamError):
        return Error(
            message="The agent service sent something that is not a streamflow stream.",
            code="upstream_protocol",
        )
    if not opened:  # refused, unknown host, timed out connecting, dropped before answering
        return Error(message="The agent service is not available.", code="upstream_unavailable")
    if isinstance(exc, httpx.TimeoutException):
        return Error(message="The agent service stopped sending.", code="upstream_timeout")
    # IncompleteStreamError (it ended without done) or a transport error (the connection was cut)
    return Error(
        message="The agent service's stream was cut off before it finished.", code="upstream_incomplete"
    )


async def relay(
    http: httpx.AsyncClient, upstream: str, prompt: str, *, transcript: str
) -> AsyncIterator[Event]:
    """The upstream run for ``prompt``, inside a ``proxy`` step and redacted, then a summary."""
    started = time.perf_counter()
    first_event: float | None = None
    received = 0
    redactor = Redactor()
    failure: Error | None = None
    opened = False

    yield StepStart(step=STEP)
    upstream_request = AsyncExitStack()
    try:
        events = await upstream_request.enter_async_context(
            connect(http, "POST", upstream, json={"prompt": prompt})
        )
        opened = True
        async for event in events:
            if first_event is None:
                first_event = time.perf_counter()
            if isinstance(event, Done):
                break
            received += 1
            for out in redactor.feed(event):
                yield out  # an upstream Error ends the stream here: streamflow closes relay()
    except (httpx.HTTPError, ProtocolError) as exc:
        logger.warning("the upstream %s failed: %s: %s", upstream, type(exc).__name__, exc)
        failure = upstream_error(exc, opened=opened)
    finally:
        # Runs when the stream ends, fails, or the client leaves (then relay() is being
        # cancelled or closed): shielded, so the upstream connection really is closed, and
        # bounded, so a stuck close cannot hold the request.
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await upstream_request.aclose()

    for out in redactor.flush():
        yield out
    if failure is not None:
        yield failure  # streamflow names the open step in it and adds done
        return

    def ms(since: float, until: float) -> float:
        return round((until - since) * 1000, 1)

    now = time.perf_counter()
    summary: dict[str, JsonValue] = {
        "transcript": transcript,
        "upstream_events": received,
        "redacted": redactor.count,
        "first_event_ms": ms(started, first_event or now),
        "elapsed_ms": ms(started, now),
    }
    yield StepEnd(step=STEP, output=summary)
