"""A scripted, offline Agno model for the Agno adapter tests.

:class:`ScriptedModel` is a real ``agno.models.base.Model`` subclass handed to an ``Agent`` as an instance,
so Agno never resolves a provider, never needs an API key and never opens a connection. Agno's streaming
runs (``arun``/``run`` with ``stream=True``) call only ``ainvoke_stream``/``invoke_stream``; each call plays
the next *turn* of its :class:`Script`: a ``str`` is a content chunk, a :class:`Call` a tool call, an
exception is raised, :data:`HANG` waits until cancelled. The script is shared, never copied, so a test
reads ``calls``/``finalized`` on the object it made even if Agno deep-copies the model.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from agno.models.base import Model
from agno.models.response import ModelResponse

HANG: Final = "<hang>"
"""A script item: wait forever (until cancelled), like a model that is still generating."""


@dataclass(frozen=True)
class Call:
    """A script item: the model calls tool ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any]
    id: str


class Script:
    """The turns of a scripted model and what happened to them (readable from another thread)."""

    def __init__(self, *turns: Iterable[Any], delay: float | None = 0.0) -> None:
        self.turns = list(turns)
        self.delay = delay
        self.calls = 0
        self.hanging = threading.Event()
        self.finalized = threading.Event()
        """Set by the ``finally`` of the model's stream."""
        self.started_in: asyncio.Task[Any] | None = None
        self.finalized_in: asyncio.Task[Any] | None = None

    def next_turn(self) -> Iterable[Any]:
        turn = self.turns[self.calls]
        self.calls += 1
        return turn

    def __copy__(self) -> Script:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Script:
        return self


def _response(item: Any) -> ModelResponse:
    if isinstance(item, str):
        return ModelResponse(role="assistant", content=item)
    if isinstance(item, Call):
        function = {"name": item.name, "arguments": json.dumps(item.arguments)}
        return ModelResponse(
            role="assistant", tool_calls=[{"id": item.id, "type": "function", "function": function}]
        )
    raise TypeError(f"not a script item: {item!r}")


@dataclass
class ScriptedModel(Model):
    id: str = "scripted"
    name: str = "Scripted"
    provider: str = "Scripted"
    script: Script = field(default_factory=Script)

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        turn = self.script.next_turn()
        self.script.started_in = asyncio.current_task()
        try:
            for item in turn:
                if self.script.delay is not None:  # None: a model that never waits
                    await asyncio.sleep(self.script.delay)
                if item == HANG:
                    self.script.hanging.set()
                    await asyncio.Event().wait()
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield _response(item)
        finally:
            self.script.finalized_in = asyncio.current_task()
            self.script.finalized.set()

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        try:
            for item in self.script.next_turn():
                if isinstance(item, BaseException):
                    raise item
                yield _response(item)
        finally:
            self.script.finalized.set()

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError("the scripted model only streams")

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError("the scripted model only streams")

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]


def scripted(*turns: Iterable[Any], delay: float | None = 0.0) -> tuple[ScriptedModel, Script]:
    """A scripted model and its script."""
    script = Script(*turns, delay=delay)
    return ScriptedModel(script=script), script
