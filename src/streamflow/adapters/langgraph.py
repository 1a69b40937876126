"""LangGraph graphs as streamflow event streams.

:func:`from_langgraph` runs ``graph.astream(input, config, stream_mode=["messages",
"updates"], subgraphs=True)`` and turns what it yields into events:

=============================================================  ==========================================
LangGraph                                                      streamflow
=============================================================  ==========================================
first message or update of a top-level node                    ``StepStart(step=node)``
``updates`` entry of that node (LangGraph sends it when the    ``StepEnd(step=node)``
node finished)
``AIMessageChunk`` text (``messages`` mode)                    ``Delta(value, step=node)``
whole ``AIMessage`` text (``messages`` mode: a node that       ``Delta(value, step=node)``, unless that
returned a message no model streamed)                          text was streamed in this step
tool calls of a streamed message (its ``tool_call_chunks``,    ``ToolCall(id, name, arguments, step)``,
aggregated), or of a whole ``AIMessage``                       once per call id
``ToolMessage`` (a ``ToolNode``'s result)                      ``ToolResult(id=tool_call_id, output=content,
                                                               is_error=status == "error", step)``
the node raises                                                ``Error`` (``on_error``), then ``Done``
=============================================================  ==========================================

Steps are the nodes of the top-level graph: the tokens, tool calls and results of a
subgraph's nodes belong to the step of the top-level node that runs the subgraph. Each
node run is one step; a node that streams no message (a router, a cached node) is a
step without deltas. Nodes running in parallel that both stream interleave: their steps
are then split (``A``, ``B``, ``A`` again...) so that steps never overlap. An update
never produces text: LangGraph repeats the whole message there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Final, TypeAlias, cast

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from streamflow.adapters._json import json_value
from streamflow.adapters.iterable import ErrorHandler, from_iterable, hide_exception
from streamflow.events import Delta, Event, StepEnd, StepStart, ToolCall, ToolResult

try:
    from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
    from langchain_core.runnables import RunnableConfig
    from langgraph.pregel import Pregel
except ImportError as exc:
    raise ImportError('from_langgraph needs langgraph: pip install "streamflow[langgraph]"') from exc

__all__ = ["from_langgraph"]

_Part: TypeAlias = tuple[tuple[str, ...], str, Any]  # (namespace, mode, payload)
_NOT_NODES: Final = frozenset({"__interrupt__", "__metadata__"})


def from_langgraph(
    graph: Pregel[Any, Any, Any, Any],
    input: Any,  # noqa: A002 -- LangGraph's own name for it
    *,
    config: RunnableConfig | None = None,
    on_error: ErrorHandler | None = hide_exception,
) -> AsyncGenerator[Event, None]:
    """Stream one run of a compiled LangGraph ``graph`` on ``input`` as events.

    ``config`` is passed to ``graph.astream`` (``thread_id``, ``recursion_limit``,
    callbacks...); ``input`` may be a ``Command`` to resume an interrupted thread. The
    module docstring has the mapping. The concatenated deltas are the models' text
    exactly once; each tool call id gets one ``ToolCall`` and one ``ToolResult``
    (a run resumed at its tools gets only the result). An interrupt ends the stream
    like the end of the run.

    An exception from the graph becomes the ``Error`` that ``on_error`` makes, then
    ``Done``; the step it happened in gets no ``StepEnd``. Closing the stream early
    (``aclose()``, a client disconnect) closes LangGraph's run, which cancels the running
    nodes and waits for them, before ``aclose()`` returns.
    """
    return from_iterable(_events(graph, input, config), on_error=on_error)


async def _events(
    graph: Pregel[Any, Any, Any, Any], graph_input: Any, config: RunnableConfig | None
) -> AsyncGenerator[Event, None]:
    # stream_mode must be a list: with a tuple LangGraph yields bare payloads, without the mode.
    stream = cast(
        AsyncGenerator[_Part, None],
        graph.astream(graph_input, config, stream_mode=["messages", "updates"], subgraphs=True),
    )
    send, receive = anyio.create_memory_object_stream[_Part](0)
    pump = asyncio.create_task(_pump(stream, send))
    run = _Run()
    try:
        with receive:
            async for namespace, mode, payload in receive:
                for event in run.handle(namespace, mode, payload):
                    yield event
        await asyncio.wait([pump])  # not `await pump`: cancelling that would cancel the pump too
        pump.result()  # the graph's exception, if it raised one
    finally:
        pump.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([pump])
        if not pump.cancelled():
            pump.exception()  # retrieved: the consumer left, nobody is told of it
    for event in run.finish():
        yield event


async def _pump(stream: AsyncGenerator[_Part, None], send: MemoryObjectSendStream[_Part]) -> None:
    """Run LangGraph's stream in a task of its own, handing its parts over one at a time.

    LangGraph's clean-up survives one ``CancelledError`` but not AnyIO's cancel scopes,
    which cancel again at every await: it then leaves its node tasks running (the model
    keeps generating) and its unwinding in orphan tasks (``Pregel.astream`` awaits its
    clean-up in ``AsyncPregelLoop.__aexit__`` and ``asyncio.shield``). So the stream runs
    here, outside the consumer's cancel scopes, and is stopped by one ``Task.cancel()``
    and closed, which cancels the running nodes and waits for them.
    """
    async with send, contextlib.aclosing(stream):
        async for part in stream:
            await send.send(part)


class _Run:
    """The translation state of one run: the open step and what was already sent."""

    def __init__(self) -> None:
        self.step: str | None = None
        self.streamed: dict[str, list[str]] = {}  # message id -> text chunks, in this step
        self.tool_chunks: dict[str, AIMessageChunk] = {}  # message id -> its tool-call chunks
        self.calls: set[str] = set()
        self.results: set[str] = set()

    def handle(self, namespace: tuple[str, ...], mode: str, payload: Any) -> Iterator[Event]:
        if mode == "messages":
            message, metadata = payload
            node = namespace[0].partition(":")[0] if namespace else metadata.get("langgraph_node")
            yield from self._enter(node)
            yield from self._message(message)
        elif mode == "updates" and not namespace:  # a subgraph's own nodes are not steps
            for node in payload:
                if node not in _NOT_NODES:
                    yield from self._enter(node)
                    yield from self._leave()

    def finish(self) -> Iterator[Event]:
        yield from self._leave()

    def _enter(self, node: str | None) -> Iterator[Event]:
        if node is None or node == self.step:
            return
        yield from self._leave()
        self.step = node
        yield StepStart(step=node)

    def _leave(self) -> Iterator[Event]:
        if self.step is None:
            return
        for chunk in self.tool_chunks.values():
            yield from self._tool_calls(chunk)
        self.tool_chunks.clear()
        self.streamed.clear()
        step, self.step = self.step, None
        yield StepEnd(step=step)

    def _message(self, message: Any) -> Iterator[Event]:
        if isinstance(message, AIMessageChunk):
            text = str(message.text)
            key = message.id or ""
            if text:
                self.streamed.setdefault(key, []).append(text)
                yield Delta(value=text, step=self.step)
            if message.tool_call_chunks:
                pending = self.tool_chunks.get(key)
                self.tool_chunks[key] = message if pending is None else pending + message
            if message.chunk_position == "last" and key in self.tool_chunks:
                yield from self._tool_calls(self.tool_chunks.pop(key))
        elif isinstance(message, AIMessage):
            text = str(message.text)
            if text and text not in ("".join(chunks) for chunks in self.streamed.values()):
                yield Delta(value=text, step=self.step)
            yield from self._tool_calls(message)
        elif isinstance(message, ToolMessage) and message.tool_call_id not in self.results:
            self.results.add(message.tool_call_id)
            yield ToolResult(
                id=message.tool_call_id,
                output=_to_json(message.content),
                is_error=message.status == "error",
                step=self.step,
            )

    def _tool_calls(self, message: AIMessage) -> Iterator[Event]:
        for call in message.tool_calls:
            call_id = call.get("id")
            if call_id and call_id not in self.calls:
                self.calls.add(call_id)
                arguments = _to_json(call["args"])
                yield ToolCall(
                    id=call_id,
                    name=call["name"],
                    arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
                    step=self.step,
                )


_to_json = json_value
