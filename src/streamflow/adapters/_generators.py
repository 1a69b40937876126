"""Generator plumbing the adapters share: sync iterables off the event loop, and closing the
generators a framework iterates but never closes."""

from __future__ import annotations

import gc
import logging
import types
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

__all__ = ["close_chain", "iterate_in_thread", "suspended_chain"]

logger = logging.getLogger("streamflow")
T = TypeVar("T")
_END: Final = object()


async def iterate_in_thread(iterable: Iterable[T]) -> AsyncGenerator[T, None]:
    """``iterable`` advanced in worker threads, so a blocking ``next()`` never blocks the event
    loop; closed (``close()``) in a worker thread too. Lists and tuples are read directly."""
    if isinstance(iterable, (list, tuple)):
        for item in iterable:
            yield item
        return
    iterator: Iterator[T] = iter(iterable)
    try:
        while (item := await anyio.to_thread.run_sync(_advance, iterator)) is not _END:
            if type(item) is _Raised:
                raise item.exc  # raised here, in this frame (see _advance)
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _advance(iterator: Iterator[T]) -> T | object:
    """``next(iterator, _END)``, in a worker thread. A ``BaseException`` that is not an
    ``Exception`` (``GeneratorExit``, a custom one) comes back as a value: asyncio would throw
    it into the awaiting task, and a ``GeneratorExit`` thrown into a chain of awaits closes
    the generators on the way instead of reaching their ``except`` clauses."""
    try:
        return next(iterator, _END)
    except Exception:
        raise
    except BaseException as exc:
        return _Raised(exc)


def suspended_chain(outer: object, *, inside: str) -> list[types.AsyncGeneratorType[Any, Any]]:
    """The suspended async generators under ``outer``, outermost first.

    Frameworks (Burr, Agno) iterate their inner generators with a bare ``async for`` and never
    close them: closing the outermost leaves the inner ones -- down to the model's stream -- to
    the garbage collector, which finalizes them later in a task of its own. The inner ones are
    found among the referents of the generator iterating them (its frame's locals and value
    stack: CPython; elsewhere only ``outer`` is found and the collector stays the fallback).
    The walk descends only through generators whose code lives under the directory
    ``inside`` (the framework's); the first generator outside it -- the user's action, the
    model -- is included but not entered: what it iterates is its own business.
    """
    chain: list[types.AsyncGeneratorType[Any, Any]] = []
    found: list[object] = [outer]
    while found:
        generator = found.pop(0)
        if (
            not isinstance(generator, types.AsyncGeneratorType)
            or generator.ag_frame is None  # finished
            or generator.ag_running
            or any(generator is seen for seen in chain)
        ):
            continue
        chain.append(generator)
        if generator.ag_code.co_filename.startswith(inside):
            found.extend(gc.get_referents(generator))
    return chain


async def close_chain(outer: object, *, inside: str) -> None:
    """Close every generator of :func:`suspended_chain` now, outermost first. An exception a
    generator raises while closing is logged (debug) and the rest are closed anyway."""
    for generator in suspended_chain(outer, inside=inside):
        try:
            await generator.aclose()
        except Exception:
            logger.debug("streamflow: a generator failed while being closed", exc_info=True)
