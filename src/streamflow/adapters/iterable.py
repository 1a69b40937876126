"""Any async or sync iterable as a well-formed stream of events."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Mapping,
)
from typing import Any, Final, TypeAlias

import anyio

from streamflow.adapters._generators import iterate_in_thread
from streamflow.events import EVENT_CLASSES, Delta, Done, Error, Event, StepEnd, StepStart, parse_event

__all__ = [
    "ErrorHandler",
    "InvalidItemError",
    "Item",
    "Source",
    "SourceAbortedError",
    "expose_exception",
    "from_iterable",
    "hide_exception",
]

logger = logging.getLogger("streamflow")

Item: TypeAlias = str | Event | Mapping[str, Any] | tuple[Mapping[str, Any], Any]
"""What a source may yield: text, an event, an event as a dict, or Burr's
``(result, state)`` streaming tuple."""

Source: TypeAlias = AsyncIterable[Item] | Iterable[Item]

ErrorHandler: TypeAlias = Callable[[Exception], Error]
"""Turns an exception raised by a source into the :class:`~streamflow.events.Error`
event the client sees."""


class InvalidItemError(TypeError):
    """A source yielded something that is not a streamable item."""


def hide_exception(exc: Exception) -> Error:
    """The default :data:`ErrorHandler`: a generic message, nothing from the exception.

    Exception text can hold prompts, keys, SQL or paths; it is logged (logger
    ``streamflow``) with its traceback, not sent.
    """
    return Error(message="The stream failed because of an internal error.", code="internal_error")


def expose_exception(exc: Exception) -> Error:
    """An :data:`ErrorHandler` that sends the exception's text and class name.

    Opt in with ``on_error=expose_exception`` where the text is known to be safe to show
    (development, internal tools).
    """
    return Error(message=str(exc) or type(exc).__name__, code=type(exc).__name__)


def from_iterable(
    source: Source, *, on_error: ErrorHandler | None = hide_exception
) -> AsyncGenerator[Event, None]:
    """The events of ``source``, as a well-formed stream ending in exactly one ``Done``.

    Items become events: a ``str`` a :class:`~streamflow.events.Delta`, an event itself, a
    ``dict`` the event :func:`~streamflow.events.parse_event` makes of it, and Burr's
    ``(result, state)`` tuple a ``Delta`` of ``result["delta"]`` (the final tuple of a Burr
    streaming action, with a state and no ``"delta"``, carries no text and is skipped).

    A ``Done`` from the source ends the stream, and so does an ``Error``: it is followed by
    ``Done`` alone. An exception from the source, or an item that is none of the above (or
    one thrown in with ``athrow()``, as the transport does for an event it cannot encode),
    ends it with the :class:`~streamflow.events.Error` that ``on_error`` makes (logged with
    its traceback) and then ``Done``; with ``on_error=None`` the exception propagates
    instead. An ``Error`` ends every step still open -- no ``StepEnd`` follows -- and names
    the innermost one in ``Error.step`` unless it names a step itself.

    Sync iterables are advanced in a worker thread so a blocking generator never blocks
    the event loop (lists and tuples are read directly). The source is closed (``aclose()``
    or ``close()``) as soon as the stream ends or its consumer closes it -- use
    :func:`contextlib.aclosing` when you stop iterating early yourself; an exception its
    clean-up raises is the stream's failure (or, when the consumer closed it, logged).

    A stream ``from_iterable`` already made (what the adapters return) is returned as it
    is: it is well-formed already, and its own ``on_error`` has handled its failures.
    """
    text_or_mapping = isinstance(source, (str, bytes, bytearray, Mapping))
    if text_or_mapping or not isinstance(source, (AsyncIterable, Iterable)):
        raise TypeError(f"source must be an iterable of items, not {type(source).__name__}")
    if source in _WELL_FORMED:  # an adapter's stream: already well-formed, no second pass
        return source  # type: ignore[return-value]
    stream = _events(source, on_error)
    _WELL_FORMED.add(stream)
    return stream


_WELL_FORMED: weakref.WeakSet[object] = weakref.WeakSet()


async def _events(source: Source, on_error: ErrorHandler | None) -> AsyncGenerator[Event, None]:
    items = aiter(source) if isinstance(source, AsyncIterable) else iterate_in_thread(source)
    failure: BaseException | None = None
    open_steps: list[str] = []  # to name the failing step in an Error
    at_yield = False  # a BaseException arriving at our yield is the consumer's (aclose), not the source's
    try:
        async for item in items:
            event = _to_event(item)
            del item  # neither it nor its event is held while the source works on the next
            if event is None:
                continue
            if type(event) is Delta:
                pass  # the common case first
            elif type(event) is StepStart:
                open_steps.append(event.step)
            elif type(event) is StepEnd:
                _close_step(open_steps, event.step)
            elif type(event) is Error:  # terminal, like Done: the run failed
                at_yield = True
                yield _with_step(event, open_steps)
                break
            elif type(event) is Done:
                break
            at_yield = True
            try:
                yield event
            except Exception:  # thrown in by the consumer: this event never reached the client
                if type(event) is StepStart:
                    open_steps.pop()
                raise
            at_yield = False
            del event
    except Exception as exc:
        if on_error is None:
            raise
        failure = exc
    except BaseException as exc:
        if at_yield or on_error is None or not is_failure(exc):
            raise
        failure = exc
    finally:
        closing_failure = await _close(items)
    if failure is None and closing_failure is not None:  # the source's own clean-up raised
        if on_error is None:
            raise closing_failure
        failure = closing_failure
    if failure is not None:
        logger.error("streamflow: the stream failed", exc_info=failure)
        error = _with_step(_error_event(on_error, failure), open_steps)
        try:
            yield error
        except Exception:  # thrown in by the consumer: it cannot write this Error (e.g. its text)
            yield _with_step(hide_exception(as_exception(failure)), open_steps)
    yield _DONE


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a source, is that source's failure (to end its stream with
    an ``Error``) rather than something to let through: ``KeyboardInterrupt`` and
    ``SystemExit``, and the cancellation of the task that runs the stream (a disconnect, a
    shutdown, a policy). Every other exception fails the source: an ``Exception``,
    ``GeneratorExit``, a custom ``BaseException``, and a ``CancelledError`` the source
    raised on its own (an SDK's future cancelled under it) while nobody cancelled us."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop here (trio): asyncio's cancellation is foreign
            return True
        return task is None or not task.cancelling()
    if isinstance(exc, BaseExceptionGroup):
        return all(is_failure(inner) for inner in exc.exceptions)
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except Exception:  # no async library running
        return True
    return not isinstance(exc, cancelled)  # trio.Cancelled: only trio raises it, for our scopes


class SourceAbortedError(RuntimeError):
    """A source raised a ``BaseException`` that is not an ``Exception`` (``GeneratorExit``, a
    custom one, a ``CancelledError`` of its own): what ``on_error`` receives for it, with the
    original as its ``__cause__``."""


def as_exception(exc: BaseException) -> Exception:
    """``exc`` as an ``Exception`` an :data:`ErrorHandler` can take."""
    if isinstance(exc, Exception):
        return exc
    wrapped = SourceAbortedError(f"the source raised {type(exc).__name__}")
    wrapped.__cause__ = exc
    return wrapped


async def _close(items: AsyncIterable[Item]) -> BaseException | None:
    """Close the source; an exception its clean-up raises is logged and returned, so that the
    stream still ends with an Error and Done (or, if the consumer is closing it, ends)."""
    aclose = getattr(items, "aclose", None)
    if aclose is None:
        return None
    try:
        await aclose()
    except Exception as exc:
        logger.error("streamflow: the source failed while being closed", exc_info=exc)
        return exc
    except BaseException as exc:
        if not is_failure(exc):
            raise
        logger.error("streamflow: the source failed while being closed", exc_info=exc)
        return exc
    return None


def _close_step(open_steps: list[str], step: str) -> None:
    for index in range(len(open_steps) - 1, -1, -1):
        if open_steps[index] == step:
            del open_steps[index]
            return


def _with_step(error: Error, open_steps: list[str]) -> Error:
    """An error ends every open step; it names the innermost one unless it names its own."""
    if error.step is None and open_steps:
        return error.model_copy(update={"step": open_steps[-1]})
    return error


def _error_event(on_error: ErrorHandler | None, failure: BaseException) -> Error:
    exc = as_exception(failure)
    if on_error is not None:
        try:
            error = on_error(exc)
        except Exception:
            logger.exception("streamflow: the on_error handler failed")
        else:
            if isinstance(error, Error):
                return error
            logger.error("streamflow: the on_error handler returned %r, not an Error", error)
    return hide_exception(exc)


def _to_event(item: object) -> Event | None:
    if type(item) is str:
        return Delta(value=item)
    if isinstance(item, EVENT_CLASSES):
        return item
    if isinstance(item, str):  # a str subclass: StrEnum, numpy.str_...
        return Delta(value=str(item))
    if isinstance(item, Mapping):
        return parse_event(item if isinstance(item, dict) else dict(item))
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Mapping):
        result, state = item
        delta = result.get("delta")
        if isinstance(delta, str):
            return Delta(value=delta)
        if state is not None:
            return None
        raise InvalidItemError("a (result, None) streaming tuple needs a str result['delta']")
    raise InvalidItemError(
        f"a source yielded a {type(item).__name__}; expected str, Event, dict or (dict, state)"
    )


_DONE: Final = Done()
