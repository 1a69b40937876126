"""A scripted, offline ADK model and small builders for the ADK adapter tests.

:class:`ScriptedLlm` is a real ``google.adk.models.base_llm.BaseLlm`` subclass, handed to an agent as an
instance (``LlmAgent(model=ScriptedLlm(...))``), so ADK never resolves a model name, never needs
credentials and never opens a connection. Each call plays the next *turn* of its script the way ADK's
Gemini model streams in ``StreamingMode.SSE``: ``partial=True`` chunks, then the non-partial aggregate of
the turn. Without streaming it yields only the non-partial responses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types
from pydantic import Field

HANG = "hang"
"""A script item: wait forever (until cancelled), like a model that is still generating."""


class ScriptedLlm(BaseLlm):
    model: str = "scripted"
    turns: list[list[Any]] = Field(default_factory=list)
    """One list per model call: ``LlmResponse``s to yield, an exception to raise, or :data:`HANG`."""
    calls: int = 0
    hanging: threading.Event = Field(default_factory=threading.Event)
    """Set when the model reaches :data:`HANG` (readable from another thread)."""
    finalized: threading.Event = Field(default_factory=threading.Event)
    """Set by the ``finally`` of the model's generator (readable from another thread)."""
    tasks: list[asyncio.Task[Any]] = Field(default_factory=list)
    """The asyncio task each call ran in: ADK's background task for the root node."""

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        turn = self.turns[self.calls]
        self.calls += 1
        if (task := asyncio.current_task()) is not None:
            self.tasks.append(task)
        try:
            for item in turn:
                await asyncio.sleep(0)
                if item == HANG:
                    self.hanging.set()
                    await asyncio.Event().wait()
                elif isinstance(item, BaseException):
                    raise item
                elif stream or not item.partial:
                    yield item
        finally:
            self.finalized.set()


def chunk(text: str, *, thought: bool = False) -> LlmResponse:
    """A partial (streamed) text chunk."""
    return LlmResponse(
        content=types.ModelContent(parts=[types.Part(text=text, thought=thought)]), partial=True
    )


def final(*parts: types.Part | str, **fields: Any) -> LlmResponse:
    """The non-partial aggregate of a turn: text (``str``) and other parts, in order."""
    content = [types.Part(text=p) if isinstance(p, str) else p for p in parts]
    return LlmResponse(content=types.ModelContent(parts=content) if content else None, **fields)


def call(name: str, call_id: str | None = None, **args: Any) -> types.Part:
    """A function call part (ADK fills in an ``adk-...`` id when ``call_id`` is None)."""
    return types.Part(function_call=types.FunctionCall(id=call_id, name=name, args=args))


def streamed(*pieces: str) -> list[LlmResponse]:
    """A text turn streamed in ``pieces``: the chunks and their aggregate."""
    return [*(chunk(piece) for piece in pieces), final("".join(pieces))]
