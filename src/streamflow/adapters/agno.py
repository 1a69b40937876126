"""Agno runs as streamflow events: ``from_agno(workflow.arun(input, stream=True, stream_events=True))``.

``stream`` is what ``Workflow.arun``/``Agent.arun`` return with ``stream=True`` (an async iterator of Agno
run events) or, read in worker threads, what ``Workflow.run``/``Agent.run`` return. Pass
``stream_events=True``: without it only the text streams, as Agno sends neither steps nor tool calls (its
2.x name ``stream_intermediate_steps`` is swallowed by ``**kwargs`` in Agno 3 and does nothing).

The mapping:

- **Steps.** ``StepStarted``/``StepCompleted`` are ``StepStart``/``StepEnd``. ``StepStart.index`` is Agno's
  0-based ``step_index`` + 1; Agno does not send the number of steps, so ``StepStart.total`` is the
  ``total_steps`` you pass (``len(workflow.steps)``), for top-level steps only. Steps of a nested workflow
  nest inside their step. A ``Parallel`` is one step (its ``ParallelExecutionStarted``/``Completed``): its
  branches run concurrently, so they get no steps of their own (their deltas carry the branch's name).
- **Text, exactly once.** A ``RunContent`` with text (an agent's token) is a ``Delta``; ``RunCompleted``,
  ``StepCompleted`` and ``WorkflowCompleted`` repeat that text and are never sent again. A step that
  streamed no text -- a function step, or any step with ``Workflow(stream_executor_events=False)`` -- sends
  its text output once, as one ``Delta``, when Agno reports it (``StepOutput``, else ``StepCompleted``).
  A non-text output (a dict, a pydantic model, a dataclass) is the step's ``StepEnd.output`` instead.
  Reasoning content and non-text ``RunContent`` (structured output) are not answer text and not sent.
- **Tools.** ``ToolCallStarted``/``ToolCallCompleted`` are ``ToolCall``/``ToolResult`` with Agno's
  ``tool_call_id``; the arguments are the tool's ``tool_args``, the output Agno's ``tool.result``: a
  string, ``str()`` of what the tool returned (a dict arrives as its Python repr), or the exception's text
  with ``is_error`` (``tool_call_error``) when the tool raised. ``ToolCallCompleted.content`` is only a log
  line; ``ToolCallError``, which repeats a failed ``ToolCallCompleted``, is skipped. Arguments and outputs
  are made JSON with :func:`pydantic_core.to_jsonable_python`, anything else ``str()``.
- **Errors** end the stream and every open step (no ``StepEnd`` follows; ``Error.step`` names the
  innermost): one ``Error`` that ``on_error`` makes of an :class:`AgnoError` carrying Agno's text (by
  default the generic message and code of :func:`~streamflow.adapters.iterable.hide_exception`), then
  ``Done``. They are
  ``WorkflowError``; ``StepError`` (the step failed with ``on_error="fail"``, or paused for a decision with
  ``"pause"``); the ``RunError`` of a standalone agent; ``WorkflowCancelled`` and a standalone agent's
  ``RunCancelled`` (always ``code="cancelled"``). With ``on_error=None`` the ``AgnoError`` is raised.
- **Failed steps that Agno skips.** Agno retries a failed step (``Step.max_retries``, default 3) and then,
  by default (``HumanReview.on_error="skip"``), *skips* it silently: no event says so, the run ends
  ``WorkflowCompleted``, and the next step gets ``"Step skipped due to error: ..."`` as its input. A
  ``Steps`` container swallows a failed inner step the same way. The adapter notices a step that never
  completed when the next sibling step starts or its workflow completes, and with
  ``skipped_steps="error"`` (the default) ends the stream there with ``Error(code="step_skipped")``
  (:class:`AgnoStepSkipped`); with ``skipped_steps="ignore"`` it ends the step with
  ``StepEnd(output={"skipped": True})`` and streams on.
- **Retries.** An agent's ``RunError`` inside a step is a failed attempt that Agno may retry from the start.
  If the step has not streamed text yet, the stream goes on (a successful retry is invisible; a skip or a
  failure is reported as above). If it has, the stream ends with an ``Error`` then, because the retry
  would send that text again.
- Everything else (``RunStarted``, ``ModelRequest*``, memory, hooks, containers...) is not sent. Team runs,
  human-in-the-loop pauses and a ``Workflow(agent=...)`` are not mapped.
- Then ``Done``, exactly once, from :func:`~streamflow.adapters.from_iterable`.

**Closing.** When the stream stops early (the client went away, or an ``Error``), Agno's run is closed
before the stream's ``aclose()`` returns: every generator of the run -- workflow, step, agent, model --
outermost first, so each one's ``finally`` runs now (Agno never closes the generators it iterates, so
closing the outermost one alone would leave the model's stream to the garbage collector). A cancellation
that reaches the run while it awaits the model unwinds it the same way. The tasks Agno then starts to
persist the cancelled run are awaited too (up to 5 s; they are not cancelled).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import types
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio

try:
    import agno
    from agno.run.agent import (
        RunCancelledEvent,
        RunContentEvent,
        RunErrorEvent,
        ToolCallCompletedEvent,
        ToolCallStartedEvent,
    )
    from agno.run.workflow import (
        ConditionExecutionStartedEvent,
        LoopExecutionStartedEvent,
        ParallelExecutionCompletedEvent,
        ParallelExecutionStartedEvent,
        RouterExecutionStartedEvent,
        StepCompletedEvent,
        StepErrorEvent,
        StepOutputEvent,
        StepsExecutionStartedEvent,
        StepStartedEvent,
        WorkflowCancelledEvent,
        WorkflowCompletedEvent,
        WorkflowErrorEvent,
    )
except ImportError as exc:
    raise ImportError('from_agno needs agno: pip install "streamflow[agno]"') from exc


from streamflow.adapters._generators import close_chain, iterate_in_thread
from streamflow.adapters._json import json_value as _json
from streamflow.adapters.iterable import ErrorHandler, from_iterable, hide_exception
from streamflow.events import Delta, Error, Event, StepEnd, StepStart, ToolCall, ToolResult

__all__ = ["AgnoError", "AgnoStepSkipped", "SkippedSteps", "from_agno"]

logger = logging.getLogger("streamflow")

SkippedSteps = Literal["error", "ignore"]
"""What a step that Agno skipped after it failed becomes: see :func:`from_agno`."""

_SETTLE_TIMEOUT: Final = 5.0
"""Seconds to wait, after closing a run, for the tasks Agno started to persist it."""
_AGNO_DIR: Final = os.path.dirname(agno.__file__) + os.sep
_CONTAINER_STARTS: Final = (
    StepsExecutionStartedEvent,
    LoopExecutionStartedEvent,
    ConditionExecutionStartedEvent,
    RouterExecutionStartedEvent,
)


class AgnoError(Exception):
    """A failure Agno reported as an event, as the exception ``on_error`` receives.

    ``str()`` is Agno's error text (often an exception's text: not necessarily safe to show); ``event`` the
    Agno event; ``error_type`` Agno's ``error_type`` (a slug like ``"model_provider_error"``, or the
    exception's class name), if any. ``code``, when set, is the ``Error.code`` the client gets whatever
    ``on_error`` says (``"cancelled"``, ``"step_skipped"``); otherwise ``on_error`` makes the code too.
    """

    def __init__(self, message: str, event: object, *, code: str | None = None) -> None:
        super().__init__(message)
        self.event = event
        self.code = code
        self.error_type: str | None = getattr(event, "error_type", None)


class AgnoStepSkipped(AgnoError):
    """Agno skipped a failed step and went on as if it had passed (``HumanReview.on_error="skip"``,
    ``Step(skip_on_failure=True)``, or a step inside a ``Steps`` container).

    ``step`` is the step's name, ``event`` its ``StepStarted``.
    """

    def __init__(self, step: str, event: object) -> None:
        super().__init__(f"Agno skipped the step {step!r} after it failed", event, code="step_skipped")
        self.step = step


def from_agno(
    stream: AsyncIterable[Any] | Iterable[Any],
    *,
    on_error: ErrorHandler | None = hide_exception,
    skipped_steps: SkippedSteps = "error",
    total_steps: int | None = None,
) -> AsyncGenerator[Event, None]:
    """Stream an Agno workflow or agent run as events ending in exactly one ``Done``.

    ``stream`` is ``workflow.arun(input, stream=True, stream_events=True)`` or
    ``agent.arun(input, stream=True, stream_events=True)`` (or the sync ``.run(...)``, iterated in a
    worker thread). ``skipped_steps`` says what a step that Agno skipped after it failed becomes:
    ``"error"`` (default) ends the stream with an ``Error``; ``"ignore"`` ends the step with
    ``StepEnd(output={"skipped": True})`` and goes on. ``total_steps`` is ``StepStart.total`` of top-level
    steps (``len(workflow.steps)``). ``on_error`` works as in :func:`~streamflow.adapters.from_iterable`
    and also makes the message of an error Agno reports (see :class:`AgnoError`). See the module
    docstring for the mapping and how the run is closed.
    """
    if skipped_steps not in ("error", "ignore"):
        raise ValueError(f"skipped_steps must be 'error' or 'ignore', not {skipped_steps!r}")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, not {total_steps!r}")
    if inspect.iscoroutine(stream):
        stream.close()
        raise TypeError("from_agno needs a stream: call arun(..., stream=True, stream_events=True)")
    if isinstance(stream, (str, bytes)) or not isinstance(stream, (AsyncIterable, Iterable)):
        raise TypeError(
            f"from_agno needs the stream of an Agno run, not {type(stream).__name__}: "
            "pass workflow.arun(input, stream=True, stream_events=True)"
        )
    mapper = _Mapper(on_error, skipped_steps, total_steps)
    return from_iterable(_events(stream, mapper), on_error=on_error)


async def _events(stream: AsyncIterable[Any] | Iterable[Any], mapper: _Mapper) -> AsyncGenerator[Event, None]:
    run: AsyncIterator[Any] = (
        aiter(stream) if isinstance(stream, AsyncIterable) else iterate_in_thread(stream)
    )
    tasks_before = _agno_tasks()
    try:
        while mapper.failure is None:
            try:
                item = await anext(run)
            except StopAsyncIteration:
                break
            for event in mapper.map(item):
                yield event
        # An Error ends the open steps (from_iterable names the innermost in Error.step).
        if mapper.failure is not None:
            yield mapper.error_event()
        else:
            for end in mapper.end_steps():
                yield end
    finally:
        # Shielded: also when the consumer's task is being cancelled (a client disconnect).
        with anyio.move_on_after(_SETTLE_TIMEOUT, shield=True):
            await _close(run)
            await _settle(tasks_before)


@dataclass
class _Step:
    id: str | None
    name: str
    event: object  # its StepStarted (or ParallelExecutionStarted)
    text: bool = False


class _Mapper:
    """The state of one run: the open steps (a stack), the step tree seen so far, the steps with text."""

    def __init__(self, on_error: ErrorHandler | None, skipped_steps: SkippedSteps, total: int | None) -> None:
        self.on_error = on_error
        self.skipped_steps = skipped_steps
        self.total = total
        self.open: list[_Step] = []
        self.parents: dict[str, str | None] = {}  # step and container ids -> their parent's id
        self.parallel: set[str] = set()  # ids of Parallel containers
        self.texted: set[str] = set()  # ids of the steps (parallel branches too) that streamed text
        self.failure: AgnoError | None = None  # set: the stream ends with its Error

    def map(self, event: object) -> Iterator[Event]:
        """The streamflow events of one Agno event; sets ``failure`` when the stream must end."""
        if isinstance(event, RunContentEvent):
            if isinstance(event.content, str) and event.content:
                self._mark_text(event.step_id)
                yield Delta(value=event.content, step=event.step_name)
        elif isinstance(event, ToolCallStartedEvent) and event.tool is not None:
            arguments = _json(event.tool.tool_args or {})
            yield ToolCall(
                id=_tool_id(event.tool.tool_call_id, event.tool.tool_name),
                name=event.tool.tool_name or "",
                arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
                step=event.step_name,
            )
        elif isinstance(event, ToolCallCompletedEvent) and event.tool is not None:
            yield ToolResult(
                id=_tool_id(event.tool.tool_call_id, event.tool.tool_name),
                output=_json(event.tool.result),
                is_error=bool(event.tool.tool_call_error),
                step=event.step_name,
            )
        elif isinstance(event, StepStartedEvent):
            yield from self._step_started(event)
        elif isinstance(event, StepOutputEvent):
            yield from self._step_output(event)
        elif isinstance(event, StepCompletedEvent):
            yield from self._step_completed(event)
        elif isinstance(event, ParallelExecutionStartedEvent):
            if event.step_id is not None:
                self.parallel.add(event.step_id)
            yield from self._open(event, event.step_name or "parallel", event.step_index)
        elif isinstance(event, ParallelExecutionCompletedEvent):
            yield from self._close_step(event.step_id, None)
        elif isinstance(event, _CONTAINER_STARTS):
            if event.step_id is not None:
                self.parents[event.step_id] = event.parent_step_id
        elif isinstance(event, WorkflowCompletedEvent):
            yield from self._abandon(self._lineage(event.parent_step_id))
        elif isinstance(event, (WorkflowErrorEvent, StepErrorEvent)):
            self._fail(AgnoError(event.error or "Agno reported an error", event))
        elif isinstance(event, WorkflowCancelledEvent):
            self._fail(AgnoError(event.reason or "The Agno run was cancelled", event, code="cancelled"))
        elif isinstance(event, RunErrorEvent):
            # In a step: a failed attempt, which Agno retries, skips or fails -- unless text already went out.
            if event.step_id is None or event.step_id in self.texted:
                self._fail(AgnoError(event.content or "Agno reported an error", event))
        elif isinstance(event, RunCancelledEvent) and event.step_id is None:
            self._fail(AgnoError(event.reason or "The Agno run was cancelled", event, code="cancelled"))

    def end_steps(self) -> Iterator[StepEnd]:
        """``StepEnd`` for every step still open, innermost first (at the end of a run)."""
        while self.open:
            yield StepEnd(step=self.open.pop().name)

    def _step_started(self, event: StepStartedEvent) -> Iterator[Event]:
        if event.step_id is not None:
            self.parents[event.step_id] = event.parent_step_id
            self.texted.discard(event.step_id)
        if event.parent_step_id in self.parallel:
            return  # a parallel branch: concurrent, so not a step of its own
        yield from self._abandon(self._lineage(event.parent_step_id))
        if self.failure is None:
            yield from self._open(event, event.step_name or "step", event.step_index)

    def _open(
        self, event: StepStartedEvent | ParallelExecutionStartedEvent, name: str, index: object
    ) -> Iterator[Event]:
        top_level = event.nested_depth == 0 and event.parent_step_id is None
        self.open.append(_Step(event.step_id, name, event))
        yield StepStart(
            step=name,
            index=index + 1 if isinstance(index, int) else None,
            total=self.total if top_level and isinstance(index, int) else None,
        )

    def _step_output(self, event: StepOutputEvent) -> Iterator[Event]:
        """A function step's output: its text goes out here (once); ``stop=True`` ends the step now."""
        if not event.success:
            return  # followed by an error or, when skipped, detected later
        if not self.open and isinstance(event.content, str) and event.content:
            yield Delta(value=event.content, step=event.step_name)  # without stream_events: no steps
            return
        step = self.open[-1] if self.open else None
        if step is None or step.name != event.step_name:
            return
        yield from self._text_once(step, event.content)
        if event.stop:  # Agno ends the run here, without StepCompleted
            yield from self._close_step(step.id, event.content)

    def _step_completed(self, event: StepCompletedEvent) -> Iterator[Event]:
        if event.parent_step_id in self.parallel:
            return
        yield from self._close_step(event.step_id, event.content)

    def _close_step(self, step_id: str | None, content: object) -> Iterator[Event]:
        if not any(step.id == step_id for step in self.open):
            return
        yield from self._abandon({step_id} | self._lineage(step_id))
        if self.failure is not None:
            return
        step = self.open[-1]
        yield from self._text_once(step, content)
        self.open.pop()
        yield StepEnd(step=step.name, output=None if isinstance(content, str) else _json(content))

    def _text_once(self, step: _Step, content: object) -> Iterator[Event]:
        if not step.text and isinstance(content, str) and content:
            self._mark_text(step.id)
            yield Delta(value=content, step=step.name)

    def _abandon(self, lineage: set[str | None]) -> Iterator[Event]:
        """End the open steps that are not in ``lineage``: they failed and Agno skipped them."""
        while self.open and self.open[-1].id not in lineage:
            step = self.open[-1]
            if self.skipped_steps == "error":
                self._fail(AgnoStepSkipped(step.name, step.event))
                return
            self.open.pop()
            yield StepEnd(step=step.name, output={"skipped": True})

    def _lineage(self, step_id: str | None) -> set[str | None]:
        """``step_id`` and the ids of its ancestors (steps and containers)."""
        lineage: set[str | None] = set()
        while step_id is not None and step_id not in lineage:
            lineage.add(step_id)
            step_id = self.parents.get(step_id)
        return lineage

    def _mark_text(self, step_id: str | None) -> None:
        if step_id is not None:
            self.texted.add(step_id)
        for step in self.open:  # the text is every enclosing step's text too
            step.text = True
            if step.id is not None:
                self.texted.add(step.id)

    def _fail(self, failure: AgnoError) -> None:
        logger.warning("streamflow: the Agno run failed: %s", failure)
        self.failure = failure

    def error_event(self) -> Error:
        """The ``Error`` of ``failure``: ``on_error`` makes its message (``None``: ``failure`` is raised)."""
        assert self.failure is not None
        if self.on_error is None:
            raise self.failure
        try:
            error = self.on_error(self.failure)
        except Exception:
            logger.exception("streamflow: the on_error handler failed")
            error = hide_exception(self.failure)
        return Error(message=error.message, code=self.failure.code or error.code)


def _tool_id(tool_call_id: str | None, name: str | None) -> str:
    return tool_call_id or name or "tool"


async def _close(run: AsyncIterator[Any]) -> None:
    """Close every suspended generator of ``run`` now, outermost first, then ``run`` itself.

    A workflow's generator iterates its step's, which iterates the agent's, then the model's (nine deep
    for a workflow): Agno never closes the generators it iterates, so ``aclose()`` on the outermost one
    alone would leave the model's stream to the garbage collector
    (:func:`~streamflow.adapters._generators.close_chain`).
    """
    await close_chain(run, inside=_AGNO_DIR)
    if not isinstance(run, types.AsyncGeneratorType) and (aclose := getattr(run, "aclose", None)) is not None:
        await aclose()


def _agno_tasks() -> set[asyncio.Task[Any]]:
    """The tasks Agno keeps to persist cancelled runs (the sets its own server drains on shutdown)."""
    tasks: set[asyncio.Task[Any]] = set()
    for module, name in (
        ("agno.run.background", "_background_tasks"),
        ("agno.workflow.workflow", "_workflow_background_tasks"),
    ):
        registry = getattr(sys.modules.get(module), name, None)
        if isinstance(registry, set):
            tasks |= registry
    return tasks


async def _settle(tasks_before: set[asyncio.Task[Any]]) -> None:
    pending = [task for task in _agno_tasks() - tasks_before if not task.done()]
    if pending:
        await asyncio.wait(pending)
