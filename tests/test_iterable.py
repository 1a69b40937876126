from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from streamflow import (
    Delta,
    Done,
    Error,
    Event,
    StepEnd,
    StepStart,
    expose_exception,
    from_iterable,
    hide_exception,
)
from streamflow.adapters import InvalidItemError

pytestmark = pytest.mark.anyio


async def collect(source: Any, **kwargs: Any) -> list[Event]:
    return [event async for event in from_iterable(source, **kwargs)]


async def test_items_become_events_and_one_done_ends_the_stream() -> None:
    items = [
        "plain text",
        StepStart(step="s"),
        {"type": "step_end", "step": "s"},
        ({"delta": "burr"}, None),
        ({"response": {"content": "final"}}, {"state": 1}),  # Burr's final tuple: skipped
    ]
    assert await collect(items) == [
        Delta(value="plain text"),
        StepStart(step="s"),
        StepEnd(step="s"),
        Delta(value="burr"),
        Done(),
    ]


async def test_a_done_from_the_source_ends_it_and_closes_it() -> None:
    closed = []

    async def source() -> AsyncIterator[Any]:
        try:
            yield "a"
            yield Done()
            yield "never"
        finally:
            closed.append(True)

    assert await collect(source()) == [Delta(value="a"), Done()]
    assert closed == [True]


async def test_sync_generator_runs_off_the_event_loop() -> None:
    ticks = 0

    def slow() -> Iterator[str]:
        for word in ["a", "b"]:
            time.sleep(0.15)
            yield word

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker)
        events = await collect(slow())
        tasks.cancel_scope.cancel()
    assert events == [Delta(value="a"), Delta(value="b"), Done()]
    assert ticks >= 10, "the loop was blocked while the sync generator slept"


async def test_early_stop_closes_an_async_source_deterministically() -> None:
    finalized = anyio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            while True:
                yield "tick"
                await anyio.lowlevel.checkpoint()
        finally:
            finalized.set()

    async with aclosing(from_iterable(source())) as events:
        async for _ in events:
            break
    assert finalized.is_set(), "the source's finally did not run when the stream was closed"


async def test_early_stop_closes_a_sync_source() -> None:
    finalized = threading.Event()

    def source() -> Iterator[str]:
        try:
            while True:
                yield "tick"
        finally:
            finalized.set()

    async with aclosing(from_iterable(source())) as events:
        async for _ in events:
            break
    assert finalized.is_set()


async def test_exception_becomes_a_hidden_error_then_done(caplog: pytest.LogCaptureFixture) -> None:
    async def source() -> AsyncIterator[str]:
        yield "before"
        raise RuntimeError("api key sk-123 rejected")

    events = await collect(source())
    assert events == [Delta(value="before"), hide_exception(RuntimeError()), Done()]
    assert "sk-123" not in repr(events)
    assert "api key sk-123 rejected" in caplog.text, "the traceback goes to logging"


async def test_expose_exception_opts_in_to_the_text() -> None:
    async def source() -> AsyncIterator[str]:
        raise ValueError("shown")
        yield "unreachable"

    assert await collect(source(), on_error=expose_exception) == [
        Error(message="shown", code="ValueError"),
        Done(),
    ]


async def test_custom_handler_and_a_failing_handler() -> None:
    def boom() -> Iterator[str]:
        raise KeyError("k")
        yield "unreachable"

    assert await collect(boom(), on_error=lambda exc: Error(message="try again", code="busy")) == [
        Error(message="try again", code="busy"),
        Done(),
    ]

    def broken(exc: Exception) -> Error:
        raise RuntimeError("handler bug")

    assert await collect(boom(), on_error=broken) == [hide_exception(KeyError()), Done()]


async def test_on_error_none_propagates() -> None:
    async def source() -> AsyncIterator[str]:
        raise LookupError("up")
        yield "unreachable"

    with pytest.raises(LookupError):
        await collect(source(), on_error=None)


@pytest.mark.parametrize(
    "bad",
    [object(), 42, None, b"bytes", ({"delta": 3}, None), ({"no": "delta"}, None), {"type": "nope"}],
)
async def test_a_bad_item_is_an_error_event_and_ends_the_stream(bad: object) -> None:
    closed = []

    async def source() -> AsyncIterator[Any]:
        try:
            yield "ok"
            yield bad
            yield "never"
        finally:
            closed.append(True)

    events = await collect(source(), on_error=expose_exception)
    assert events[0] == Delta(value="ok")
    assert isinstance(events[1], Error)
    assert events[2:] == [Done()]
    assert closed == [True]


async def test_bad_item_error_is_typed() -> None:
    events = await collect([1.5], on_error=expose_exception)
    assert events[0] == Error(
        message="a source yielded a float; expected str, Event, dict or (dict, state)",
        code=InvalidItemError.__name__,
    )


@pytest.mark.parametrize("bad", ["text", b"bytes", {"type": "delta"}, 3, None])
def test_a_non_iterable_source_is_refused_at_once(bad: object) -> None:
    with pytest.raises(TypeError, match="source must be an iterable of items"):
        from_iterable(bad)  # type: ignore[arg-type]


async def test_async_iterable_that_is_not_a_generator() -> None:
    class Numbers:
        def __aiter__(self) -> Numbers:
            self.n = 0
            return self

        async def __anext__(self) -> str:
            self.n += 1
            if self.n > 2:
                raise StopAsyncIteration
            return str(self.n)

    assert await collect(Numbers()) == [Delta(value="1"), Delta(value="2"), Done()]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_works_under_trio() -> None:
    def sync_words() -> Iterator[str]:
        yield from ["x", "y"]

    assert await collect(sync_words()) == [Delta(value="x"), Delta(value="y"), Done()]


async def test_an_error_names_the_innermost_open_step() -> None:
    async def source() -> AsyncIterator[Any]:
        yield StepStart(step="outer")
        yield StepStart(step="done-already")
        yield StepEnd(step="done-already")
        yield StepStart(step="inner")
        raise RuntimeError("x")

    events = await collect(source())
    assert events[-2:] == [hide_exception(RuntimeError()).model_copy(update={"step": "inner"}), Done()]
    assert not any(isinstance(e, StepEnd) and e.step == "inner" for e in events), "no fake StepEnd"


async def test_an_error_from_the_source_is_terminal_and_named_after_the_open_step() -> None:
    closed = []

    async def source() -> AsyncIterator[Any]:
        try:
            yield StepStart(step="a")
            yield Error(message="m")
            yield "never"
        finally:
            closed.append(True)

    assert await collect(source()) == [StepStart(step="a"), Error(message="m", step="a"), Done()]
    assert closed == [True]
    assert await collect([StepStart(step="b"), Error(message="n", step="own")]) == [
        StepStart(step="b"),
        Error(message="n", step="own"),
        Done(),
    ]


async def test_no_step_when_none_is_open() -> None:
    events = await collect([StepStart(step="a"), StepEnd(step="a"), Error(message="m")])
    assert events[2] == Error(message="m")


async def test_a_handler_that_returns_no_error_falls_back_to_the_generic_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sloppy(exc: Exception) -> Error:
        return None  # type: ignore[return-value]

    def boom() -> Iterator[str]:
        raise KeyError("k")
        yield "unreachable"

    assert await collect(boom(), on_error=sloppy) == [hide_exception(KeyError()), Done()]
    assert "returned None, not an Error" in caplog.text


async def test_a_step_whose_start_was_refused_downstream_is_not_named() -> None:
    events = from_iterable([StepStart(step="outer"), StepStart(step="inner"), "x"])
    assert await anext(events) == StepStart(step="outer")
    assert await anext(events) == StepStart(step="inner")
    error = await events.athrow(ValueError("the consumer could not send it"))
    assert error == hide_exception(ValueError()).model_copy(update={"step": "outer"})
    assert [e async for e in events] == [Done()]


async def test_a_source_whose_clean_up_raises_still_ends_with_error_and_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def source() -> AsyncIterator[Any]:
        try:
            yield "hi"
            yield Done()
        finally:
            raise RuntimeError("cleanup failed")

    assert await collect(source()) == [Delta(value="hi"), hide_exception(RuntimeError()), Done()]
    assert "failed while being closed" in caplog.text


async def test_a_clean_up_failure_while_the_consumer_closes_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def source() -> AsyncIterator[str]:
        try:
            yield "hi"
            yield "more"
        finally:
            raise RuntimeError("cleanup failed")

    async with aclosing(from_iterable(source())) as events:
        assert await anext(events) == Delta(value="hi")
    assert "failed while being closed" in caplog.text


async def test_a_str_subclass_is_text() -> None:
    from enum import StrEnum

    class Mood(StrEnum):
        HAPPY = "happy"

    assert await collect([Mood.HAPPY]) == [Delta(value="happy"), Done()]


def test_an_adapters_stream_is_not_wrapped_twice() -> None:
    stream = from_iterable(["x"])
    assert from_iterable(stream) is stream
    assert from_iterable(["x"]) is not stream
