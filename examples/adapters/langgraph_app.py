"""A LangGraph agent streamed as Server-Sent Events with ``from_langgraph`` (offline: the model is scripted).

    python examples/adapters/langgraph_app.py            # PORT=8000 by default
    curl -N "http://127.0.0.1:8000/chat?q=Weather%20in%20Paris%3F"

Swap ``ScriptedModel()`` for a real chat model (``init_chat_model("openai:gpt-4.1")``, with its
API key) to use one.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from streamflow import EventStreamResponse
from streamflow.adapters import from_langgraph


class ScriptedModel(BaseChatModel):
    """Streams like a tool-calling chat model: first a call of ``get_weather``, then an answer."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("streaming only (LangGraph's messages mode streams every call)")

    async def _astream(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        if not isinstance(result := messages[-1], ToolMessage):
            call = tool_call_chunk(name="get_weather", args='{"city": "Paris"}', id="call_1", index=0)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[call]))
            return
        for word in re.split(r"(\s)", f"It is {result.content} in Paris."):
            await asyncio.sleep(0.05)
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))


@tool
def get_weather(city: str) -> str:
    """The current weather in ``city``."""
    return "21 °C and sunny"


model = ScriptedModel().bind_tools([get_weather])


async def agent(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await model.ainvoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("agent", agent)
builder.add_node("tools", ToolNode([get_weather]))
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", tools_condition)
builder.add_edge("tools", "agent")
graph = builder.compile()
app = FastAPI(title="streamflow + LangGraph")


@app.get("/chat", response_class=EventStreamResponse)
async def chat(q: str = "Weather in Paris?") -> EventStreamResponse:
    return EventStreamResponse(from_langgraph(graph, {"messages": [("user", q)]}))


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
