"""Google ADK runs as streamflow events: ``from_adk(runner, user_id=..., session_id=..., new_message=...)``.

The mapping (one ADK :class:`~google.adk.events.Event` can give several streamflow events, in part order):

- **Steps.** The step of an ADK event is its workflow node, ``event.node_info.path`` (``"root@1"``,
  ``"root@1/helper@1"`` after a transfer, ``"pipeline@1/drafter@1"`` in a ``Workflow``), or, for events
  without a path (``SequentialAgent`` and the other 1.x-style agents), its ``author``. When the step of an
  event that produces output differs from the current one, the current step gets its ``StepEnd`` and the new
  one a ``StepStart``; the step is named by the node name without its run id (``"helper"``,
  ``"drafter"``) or the author. Steps are therefore flat and strictly ordered, one open at a time; the last
  one is closed before the stream ends, unless an ``Error`` ends it (it names the step). A node's
  ``event.output`` (a ``FunctionNode``'s return value) becomes its ``StepEnd.output``.
- **Text.** A non-thought text part of a ``partial=True`` event is a ``Delta``. The non-partial event that
  follows repeats the text streamed so far: ADK gives it the *same* ``Event.id`` as its partial chunks
  (``flows/llm_flows/base_llm_flow.py``, "Partial chunks of one streaming response share the base id"), so
  its text is matched against what was streamed under that id and only a remainder that was never streamed
  is sent. A non-partial event whose id had no partial chunks (``StreamingMode.NONE``, or a model that does
  not stream) sends its text once. Thought parts (``part.thought``, reasoning tokens) are not answer text
  and are never sent.
- **Tools.** A ``function_call`` part of a non-partial event is a ``ToolCall(id, name, arguments)``
  (partial events may preview calls that ADK does not execute); a ``function_response`` part is a
  ``ToolResult(id, output)``, with ``is_error`` when the response is a dict with a truthy ``"error"`` (how
  ADK's ``FunctionTool`` reports a failed call). Arguments and outputs become JSON with
  :func:`pydantic_core.to_jsonable_python` (models, dataclasses, dates, sets...), anything else ``str()``.
- **Errors.** An event with ``error_code`` or ``error_message`` (a model that stopped for ``SAFETY``,
  ``MAX_TOKENS``...; or a node that raised, reported by ADK with the exception's class name or API status
  as code and ``str(exception)`` as message) ends the stream with one ``Error`` whose ``code`` is ADK's
  ``error_code`` and whose ``message`` is the one ``on_error`` makes of an :class:`AdkError` carrying
  ADK's message: the generic text of :func:`~streamflow.adapters.iterable.hide_exception` by default
  (the message can hold a tool's exception text), ADK's own message with ``on_error=expose_exception``;
  its ``step`` names the failed step (started for the error event if needed; no ``StepEnd`` follows).
  ADK can go on after an error event -- a node retried by its ``RetryConfig``, a ``Workflow`` running
  its next node after a model's ``MAX_TOKENS`` -- so the error is held back: sent once if ADK then
  raises the same failure (or re-raises it while its run is closed: swallowed, logged at debug level)
  or the run ends; dropped (logged at info level) as soon as ADK produces output again. A node that
  streamed text, failed and was retried streams its text again. Exceptions ADK raises without an error
  event (a missing session...) go to ``on_error`` as usual.
- Then ``Done``, exactly once, from :func:`~streamflow.adapters.from_iterable`.

ADK runs the root node in a background task. ``runner.run_async`` is closed explicitly (``aclose()``)
whenever the stream stops, so the task is cancelled and awaited and the model's generator is finalized
before the stream's own ``aclose()`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from enum import Enum
from typing import Final

try:
    from google.adk.agents.run_config import RunConfig, StreamingMode  # type: ignore[attr-defined]
    from google.adk.events.event import Event as AdkEvent
    from google.adk.runners import Runner
    from google.genai import types
except ImportError as exc:
    raise ImportError('from_adk needs google-adk: pip install "streamflow[adk]"') from exc

import anyio
from pydantic import JsonValue

from streamflow.adapters._json import json_value as _json
from streamflow.adapters.iterable import ErrorHandler, from_iterable, hide_exception
from streamflow.events import Delta, Error, Event, StepEnd, StepStart, ToolCall, ToolResult

_CLOSE_TIMEOUT: Final = 5.0  # seconds a cancelled run gets to close the model's stream

__all__ = ["AdkError", "from_adk"]

logger = logging.getLogger("streamflow")


class AdkError(Exception):
    """An ADK event with ``error_code``/``error_message``, as the exception ``on_error`` receives.

    ``str()`` is ADK's ``error_message`` (or the code when there is none): model provider text or a tool's
    exception text, not necessarily safe to show. ``code`` is ADK's ``error_code``; ``event`` the ADK event.
    """

    def __init__(self, code: str | None, message: str | None, event: AdkEvent) -> None:
        super().__init__(message or code or "ADK error")
        self.code = code
        self.message = message
        self.event = event


def from_adk(
    runner: Runner,
    *,
    user_id: str,
    session_id: str,
    new_message: types.Content | str,
    run_config: RunConfig | None = None,
    on_error: ErrorHandler | None = hide_exception,
) -> AsyncGenerator[Event, None]:
    """Stream one ``runner.run_async`` turn as events ending in exactly one ``Done``.

    ``new_message`` is a ``google.genai.types.Content`` or text (sent as a user message); ``run_config``
    defaults to ``RunConfig(streaming_mode=StreamingMode.SSE)``, without which the model does not stream.
    The session must exist (or the runner must have ``auto_create_session=True``). See the module
    docstring for the mapping; ``on_error`` works as in :func:`~streamflow.adapters.from_iterable` and
    also decides the message of an ADK error event (see :class:`AdkError`).

    Closing the returned generator (``aclose()``, as ``EventStreamResponse`` does on a disconnect) closes
    ADK's run before it returns; to stop iterating early yourself, use ``contextlib.aclosing``.
    """
    if isinstance(new_message, str):
        new_message = types.Content(role="user", parts=[types.Part(text=new_message)])
    if run_config is None:
        run_config = RunConfig(streaming_mode=StreamingMode.SSE)
    source = _events(runner, user_id, session_id, new_message, run_config, on_error)
    return from_iterable(source, on_error=on_error)


async def _events(
    runner: Runner,
    user_id: str,
    session_id: str,
    new_message: types.Content,
    run_config: RunConfig,
    on_error: ErrorHandler | None,
) -> AsyncGenerator[Event, None]:
    mapper = _Mapper()
    # An error event is held back, because ADK may go on after it: a node retried by its
    # RetryConfig, a Workflow's next node after a model's MAX_TOKENS. It is sent if ADK then
    # raises (the same failure: one Error, not two) or the run ends; dropped if ADK goes on.
    failure: tuple[AdkEvent, str | None] | None = None
    stream = runner.run_async(
        user_id=user_id, session_id=session_id, new_message=new_message, run_config=run_config
    )
    try:
        async for adk_event in stream:
            events = list(mapper.map(adk_event))
            if adk_event.error_code or adk_event.error_message:
                failure = (adk_event, mapper.step)
            elif failure is not None and (events or adk_event.output is not None):
                logger.info("streamflow: ADK went on after error event %s", _text(failure[0].error_code))
                failure = None
            for event in events:
                yield event
    except Exception:
        if failure is None:
            raise  # from_iterable makes it the Error; it names the open step
        logger.debug("streamflow: ADK raised the failure its error event reported", exc_info=True)
    finally:
        # Shielded and bounded: runs even when the consumer is being cancelled.
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await _close(stream, after_error=failure is not None)
    if failure is not None:
        yield _error(failure[0], on_error, step=failure[1])  # an Error ends the open step
    elif (end := mapper.end_step()) is not None:
        yield end


async def _close(stream: AsyncGenerator[AdkEvent, None], *, after_error: bool) -> None:
    """Close ADK's run: cancels and awaits its background task, which may re-raise a node's failure."""
    try:
        await stream.aclose()
    except Exception:
        if after_error:  # the failure ADK already reported as an error event
            logger.debug("streamflow: ADK re-raised a reported failure while closing", exc_info=True)
        else:  # the client stopped reading before the failure's error event reached it
            logger.warning("streamflow: ADK failed while its run was being closed", exc_info=True)


def _error(event: AdkEvent, on_error: ErrorHandler | None, *, step: str | None) -> Error:
    code = _text(event.error_code)
    error = AdkError(code, _text(event.error_message), event)
    if on_error is None:
        raise error
    try:
        message = on_error(error).message
    except Exception:
        logger.exception("streamflow: the on_error handler failed")
        message = hide_exception(error).message
    return Error(message=message, code=code, step=step)


class _Mapper:
    """The per-run state: the open step, the text streamed per ADK event id, the tool call ids seen."""

    def __init__(self) -> None:
        self.step_key: str | None = None
        self.step: str | None = None
        self.output: JsonValue = None
        self.streamed: dict[str, str] = {}
        self.tool_ids: set[str] = set()

    def map(self, event: AdkEvent) -> Iterator[Event]:
        """The streamflow events of one ADK event, after a step change if it has any or is an error."""
        key, step = _step_of(event)
        if not key or key == self.step_key:
            key, step = self.step_key, self.step
        events = list(self._parts(event, step))
        failed = bool(event.error_code or event.error_message)
        if not events and event.output is None and not failed:
            return
        if key != self.step_key and key is not None and step is not None:
            if (end := self.end_step()) is not None:
                yield end
            self.step_key, self.step = key, step
            yield StepStart(step=step)
        if event.output is not None:
            self.output = _json(event.output)
        yield from events

    def end_step(self) -> StepEnd | None:
        """The ``StepEnd`` of the open step, if one is open; closes it."""
        if self.step is None:
            return None
        end = StepEnd(step=self.step, output=self.output)
        self.step_key = self.step = None
        self.output = None
        return end

    def _parts(self, event: AdkEvent, step: str | None) -> Iterator[Delta | ToolCall | ToolResult]:
        parts = event.content.parts if event.content and event.content.parts else []
        if event.partial:
            for part in parts:
                if part.text and not part.thought:
                    self.streamed[event.id] = self.streamed.get(event.id, "") + part.text
                    yield Delta(value=part.text, step=step)
            return
        # A non-partial event repeats the text its partial chunks (same id) streamed: skip that prefix.
        streamed = self.streamed.pop(event.id, "")
        diverged = False
        for part in parts:
            if part.text and not part.thought:
                text = part.text
                if streamed.startswith(text):
                    streamed = streamed[len(text) :]
                    continue
                if not text.startswith(streamed) or diverged:
                    # Rewritten after streaming (an after_model_callback): the streamed text stands.
                    diverged = True
                    continue
                text, streamed = text[len(streamed) :], ""
                yield Delta(value=text, step=step)
            elif (call := part.function_call) is not None:
                call_id = call.id or call.name or ""
                if call_id not in self.tool_ids:
                    self.tool_ids.add(call_id)
                    arguments = _json(call.args or {})
                    if not isinstance(arguments, dict):
                        arguments = {"value": arguments}
                    yield ToolCall(id=call_id, name=call.name or "", arguments=arguments, step=step)
            elif (response := part.function_response) is not None:
                output = response.response
                is_error = isinstance(output, dict) and bool(output.get("error"))
                result_id = response.id or response.name or ""
                yield ToolResult(id=result_id, output=_json(output), is_error=is_error, step=step)


def _step_of(event: AdkEvent) -> tuple[str | None, str | None]:
    """The step key (workflow node path, else author) and step name (node name, else author) of ``event``."""
    path: str = getattr(getattr(event, "node_info", None), "path", "") or ""
    if path:
        return path, event.node_info.name
    return event.author or None, event.author or None


def _text(value: object) -> str | None:
    if value is None:
        return None
    return str(value.value) if isinstance(value, Enum) else str(value)
