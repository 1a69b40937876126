"""Burr applications as streamflow event streams.

:func:`from_burr` runs a Burr :class:`~burr.core.application.Application` with
``astream_iterate`` until an action of ``halt_after`` has run, and maps what happens:

=====================================================  ==========================================
Burr                                                   streamflow
=====================================================  ==========================================
``state[chat_history_key]`` before the run             ``ChatHistory`` (``chat_history="start"``)
an action is about to run                              ``StepStart(step=<action name>)``
a streaming action yields ``({"delta": text}, None)``  ``Delta(value=text, step=<action name>)``
the action's final result                              ``StepEnd(step, output=<result as JSON>)``
                                                       (non-streaming actions; a streaming
                                                       action's result repeats its text, so
                                                       ``output`` is left out)
an action raises                                       ``Error(step=<action name>)``, ``Done``
``state[chat_history_key]`` after the run              ``ChatHistory`` (``chat_history="end"``)
=====================================================  ==========================================

A Burr quirk the adapter guards against: when a run stops before reaching a ``halt_after``
action (an action raised, or the consumer went away mid-stream), Burr keeps the state of the
last *completed* action, so the next run resumes at the action that failed and silently
ignores inputs that action does not take -- in a chatbot, the user's next prompt is dropped
and the old one answered again. :func:`from_burr` detects that situation; see ``interrupted``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias, cast

import anyio
from pydantic import JsonValue

try:
    import burr
    from burr.core.action import Action
    from burr.core.application import Application
except ImportError as exc:
    raise ImportError('from_burr needs apache-burr: pip install "streamflow[burr]"') from exc

from streamflow.adapters._generators import close_chain
from streamflow.adapters._json import json_value
from streamflow.adapters.iterable import ErrorHandler, InvalidItemError, from_iterable, hide_exception
from streamflow.events import ChatHistory, ChatMessage, Delta, Event, StepEnd, StepStart

_CLOSE_TIMEOUT: Final = 5.0  # seconds a cancelled run gets to close the model's stream

__all__ = ["BurrInterruptedError", "from_burr"]

ChatHistoryWhen: TypeAlias = Literal["start", "end", "both"] | None
Interrupted: TypeAlias = Literal["raise", "restart", "resume"]

_PRIOR_STEP: Final = "__PRIOR_STEP"  # where Burr records the last completed action
_BURR_DIR: Final = os.path.dirname(os.path.abspath(burr.__file__)) + os.sep


class BurrInterruptedError(RuntimeError):
    """The app's previous run stopped before a ``halt_after`` action, and Burr would now
    resume at ``next_step`` and silently ignore ``inputs`` (none of which it takes).

    Raised by :func:`from_burr` (before anything runs) with ``interrupted="raise"``.
    Recover with ``interrupted="restart"`` (start again at the entrypoint),
    ``interrupted="resume"`` (Burr's own behaviour), or by repairing the state yourself
    (``app.reset_to_entrypoint()``, ``app.update_state(...)``).
    """

    def __init__(self, app_id: str, prior_step: str, next_step: str, inputs: Sequence[str]) -> None:
        self.app_id = app_id
        self.prior_step = prior_step
        self.next_step = next_step
        self.inputs = list(inputs)
        super().__init__(
            f"the previous run of Burr app {app_id!r} stopped after {prior_step!r} without reaching "
            f"halt_after (an action raised, or the stream was closed early). Burr would resume at "
            f"{next_step!r}, which takes none of the inputs {self.inputs}, and silently ignore them. "
            f"Pass interrupted='restart' to start again at the entrypoint, interrupted='resume' to "
            f"continue at {next_step!r} anyway, or repair the state (app.reset_to_entrypoint())."
        )


def from_burr(
    app: Application[Any],
    *,
    halt_after: str | Sequence[str],
    inputs: Mapping[str, Any] | None = None,
    chat_history: ChatHistoryWhen = "start",
    chat_history_key: str = "chat_history",
    delta_key: str = "delta",
    interrupted: Interrupted = "raise",
    on_error: ErrorHandler | None = hide_exception,
) -> AsyncGenerator[Event, None]:
    """The events of one run of ``app``, up to and including a ``halt_after`` action.

    ``halt_after`` holds action names or ``"@tag:<tag>"``; ``inputs`` go to the actions that
    declare them (as with Burr's ``astream_iterate``). Streaming actions must be async and
    yield ``({delta_key: text}, None)`` items, then ``(result, state)`` (the Burr convention);
    an item without a ``str`` under ``delta_key`` ends the stream with an ``Error``.

    ``chat_history``: when to send ``state[chat_history_key]`` (a list of ``{"role",
    "content", "type"}`` dicts, or objects with those attributes) as a ``ChatHistory``:
    ``"start"`` (before anything runs, as the Burr + FastAPI + React article does),
    ``"end"`` (after the ``halt_after`` action; not sent after an error), ``"both"`` or
    ``None``. A missing key is an empty history.

    ``interrupted``: what to do when the previous run stopped before a ``halt_after``
    action (``state["__PRIOR_STEP"]`` is set and is not one of them), i.e. an action raised
    or the stream was closed early:

    - ``"raise"`` (default): if ``inputs`` are given and the action Burr would resume at
      takes none of them, raise :class:`BurrInterruptedError` now, before any event --
      rather than let Burr drop them silently. Without inputs, Burr retries that action.
    - ``"restart"``: call ``app.reset_to_entrypoint()`` now, so the run starts at the
      entrypoint with the new ``inputs`` (right for a chatbot whose entrypoint takes the
      prompt; other state, such as the unanswered user message, is kept).
    - ``"resume"``: Burr's behaviour: continue at the next action.

    ``ValueError`` (unknown ``halt_after`` action or tag, bad option) is also raised at
    once. Everything else -- an exception in an action, a missing input, an unreadable
    chat history -- becomes the ``Error`` that ``on_error`` makes, then ``Done``.

    Closing the stream early (``aclose()``, a client disconnect) closes Burr's generators
    and the running streaming action's own async generator before ``aclose()`` returns, so
    the action's ``finally`` has run; an action should itself close what it iterates
    (``async with contextlib.aclosing(model_stream)``) for that to reach the model.
    """
    if chat_history not in ("start", "end", "both", None):
        raise ValueError(f"chat_history must be 'start', 'end', 'both' or None, not {chat_history!r}")
    if interrupted not in ("raise", "restart", "resume"):
        raise ValueError(f"interrupted must be 'raise', 'restart' or 'resume', not {interrupted!r}")
    halts = [halt_after] if isinstance(halt_after, str) else list(halt_after)
    halt_names = _halt_names(app, halts)
    run_inputs = dict(inputs or {})
    _check_interrupted(app, halt_names, run_inputs, interrupted)
    events = _events(app, halts, halt_names, run_inputs, chat_history, chat_history_key, delta_key)
    return from_iterable(events, on_error=on_error)


async def _events(
    app: Application[Any],
    halts: list[str],
    halt_names: set[str],
    inputs: dict[str, Any],
    chat_history: ChatHistoryWhen,
    chat_history_key: str,
    delta_key: str,
) -> AsyncGenerator[Event, None]:
    if chat_history in ("start", "both"):
        yield _chat_history(app, chat_history_key)
    steps = app.astream_iterate(halt_after=halts, inputs=inputs)
    async with contextlib.aclosing(steps):
        # astream_iterate runs the next action (a non-streaming one completely) before it
        # yields it, so StepStart is sent from the same prediction it makes: the app's
        # next action, until an action of halt_after has run.
        # A failing action gets no StepEnd: from_iterable turns the exception into the
        # Error, which ends every open step and names this one.
        while (upcoming := app.get_next_action()) is not None:
            name = upcoming.name
            yield StepStart(step=name)
            pair = await anext(steps, None)
            if pair is None or pair[0].name != name:
                raise RuntimeError(f"Burr did not run the expected next action {name!r}")
            action, container = pair
            stream = cast(AsyncGenerator[Any, None], aiter(container))
            try:
                async for item in stream:
                    delta = _delta(item, name, delta_key)
                    if delta.value:
                        yield delta
            finally:
                # Shielded and bounded: runs even when the consumer is being cancelled.
                with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await _close_stream(container.streaming_result_generator, stream)
            result, _ = await container.get()
            yield StepEnd(step=name, output=None if action.streaming else _json(result))
            if name in halt_names:
                break
    if chat_history in ("end", "both"):
        yield _chat_history(app, chat_history_key)


def _halt_names(app: Application[Any], halts: list[str]) -> set[str]:
    """The action names ``halts`` (names and ``@tag:`` entries) stand for, as Burr expands them."""
    known = {action.name for action in app.graph.actions}
    names: set[str] = set()
    for entry in halts:
        if entry.startswith("@tag:"):
            names.update(action.name for action in app.graph.get_actions_by_tag(entry[len("@tag:") :]))
        elif entry in known:
            names.add(entry)
        else:
            raise ValueError(
                f"halt_after names {entry!r}, which is not an action of the app: {sorted(known)}"
            )
    if not names:
        raise ValueError("halt_after must name at least one action: without it a Burr run may never end")
    return names


def _check_interrupted(
    app: Application[Any], halt_names: set[str], inputs: dict[str, Any], interrupted: Interrupted
) -> None:
    prior = app.state.get(_PRIOR_STEP)
    if interrupted == "resume" or prior is None or prior in halt_names:
        return
    if interrupted == "restart":
        app.reset_to_entrypoint()
        return
    upcoming: Action | None = app.get_next_action()
    if upcoming is None or not inputs:
        return
    required, optional = upcoming.optional_and_required_inputs
    if not (required | optional) & inputs.keys():
        raise BurrInterruptedError(app.uid, prior, upcoming.name, sorted(inputs))


def _delta(item: object, step: str, delta_key: str) -> Delta:
    value = item.get(delta_key) if isinstance(item, Mapping) else None
    if not isinstance(value, str):
        shape = (
            f"a dict with keys {sorted(map(str, item))}" if isinstance(item, Mapping) else type(item).__name__
        )
        raise InvalidItemError(f"Burr action {step!r} streamed {shape}; expected a str under {delta_key!r}")
    return Delta(value=value, step=step)


def _chat_history(app: Application[Any], key: str) -> ChatHistory:
    messages = app.state.get(key) or []
    return ChatHistory(value=[ChatMessage.model_validate(m, from_attributes=True) for m in messages])


def _json(value: Any) -> JsonValue:
    """``value`` as JSON (:func:`~streamflow.adapters._json.json_value`); an empty result
    (Burr's ``{}`` for an action that returns only state) is ``None``."""
    if value is None or (isinstance(value, dict) and not value):
        return None
    return json_value(value)


async def _close_stream(burr_generator: object, stream: AsyncGenerator[Any, None]) -> None:
    """Close a streaming action's generators now, the model's first, then Burr's hooks.

    Burr never closes the generators it wraps: ``_arun_single_step_streaming_action`` and
    ``_arun_multi_step_streaming_action`` (burr/core/application.py) iterate the action's
    generator with a bare ``async for``, as does ``_a_stream_run_and_update``
    (burr/core/action.py), and the container's ``__aiter__`` does not close
    ``streaming_result_generator``. So the chain under it is closed down to the action's own
    generator (:func:`~streamflow.adapters._generators.close_chain`), then the container's
    iterator, whose ``finally`` calls Burr's post-step hooks.
    """
    try:
        await close_chain(burr_generator, inside=_BURR_DIR)
    finally:
        await stream.aclose()
