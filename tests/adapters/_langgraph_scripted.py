"""A scripted chat model for the LangGraph adapter tests: LangChain's own
``GenericFakeChatModel``, streamed natively in async, with tool calls and a recorded ``finally``.

``GenericFakeChatModel`` alone is not enough: it has no ``bind_tools`` (``BaseChatModel.bind_tools``
raises ``NotImplementedError``), it never streams ``tool_calls`` (only ``content`` and
``additional_kwargs``), and it only implements the sync ``_stream``, which LangChain's default
``_astream`` iterates in a worker thread without ever closing it -- so its ``finally`` would run at
garbage collection, whatever the caller does.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from pydantic import Field


def split(text: str) -> list[str]:
    """The chunks ``GenericFakeChatModel`` streams ``text`` in: split on whitespace, each
    whitespace character its own chunk, with empty strings between consecutive ones."""
    return re.split(r"(\s)", text) if text else []


class ScriptedChatModel(GenericFakeChatModel):
    """Answers with the next of ``messages``, streaming its text as ``split`` does and each
    tool call as two ``tool_call_chunks`` (the arguments' JSON cut in half).

    ``hang_after``: after that many text chunks, wait forever (until cancelled).
    ``log`` records ``start``, ``end`` (all chunks sent) and ``finally``; ``finalized`` is set
    in the ``finally``; ``tasks`` are the tasks that ran the stream.
    """

    delay: float = 0.0
    hang_after: int | None = None
    log: list[str] = Field(default_factory=list)
    finalized: threading.Event = Field(default_factory=threading.Event)
    tasks: list[asyncio.Task[Any]] = Field(default_factory=list)

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any], **kwargs: Any
    ) -> ScriptedChatModel:
        return self

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        message = self._generate(messages).generations[0].message
        assert isinstance(message, AIMessage)
        assert isinstance(message.content, str)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.log.append("start")
        try:
            for index, token in enumerate(split(message.content)):
                if index == self.hang_after:
                    await asyncio.Event().wait()
                await asyncio.sleep(self.delay)
                yield ChatGenerationChunk(message=AIMessageChunk(content=token, id=message.id))
            for index, call in enumerate(message.tool_calls):
                args = json.dumps(call["args"])
                half = len(args) // 2
                first = tool_call_chunk(name=call["name"], args=args[:half], id=call["id"], index=index)
                rest = tool_call_chunk(name=None, args=args[half:], id=None, index=index)
                for part in (first, rest):
                    await asyncio.sleep(self.delay)
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(content="", id=message.id, tool_call_chunks=[part])
                    )
            self.log.append("end")
        finally:
            self.log.append("finally")
            self.finalized.set()
