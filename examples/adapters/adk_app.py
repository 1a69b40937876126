"""A Google ADK agent streamed as Server-Sent Events with ``from_adk`` (offline: the model is scripted).

    python examples/adapters/adk_app.py            # PORT=8000 by default
    curl -N "http://127.0.0.1:8000/chat?q=Weather%20in%20Paris%3F&session=s1"

Swap ``ScriptedGemini()`` for ``"gemini-2.5-flash"`` (and set GOOGLE_API_KEY) to use a real model.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator

import uvicorn
from fastapi import FastAPI
from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

from streamflow import EventStreamResponse
from streamflow.adapters import from_adk


class ScriptedGemini(BaseLlm):
    """Streams like Gemini with SSE: a tool call, then the answer in chunks and their aggregate."""

    model: str = "scripted-gemini"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1].parts or []
        result = next((p.function_response.response for p in last if p.function_response), None)
        if result is None:
            call = types.FunctionCall(name="get_weather", args={"city": "Paris"})
            yield LlmResponse(content=types.ModelContent(parts=[types.Part(function_call=call)]))
            return
        words = f"It is {result['celsius']} °C and {result['sky']} in {result['city']}.".split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0.05)
            piece = word if i == len(words) - 1 else word + " "
            yield LlmResponse(content=types.ModelContent(parts=[types.Part(text=piece)]), partial=True)
        yield LlmResponse(content=types.ModelContent(parts=[types.Part(text=" ".join(words))]))


def get_weather(city: str) -> dict[str, object]:
    """The current weather in ``city``."""
    return {"city": city, "celsius": 21, "sky": "sunny"}


agent = LlmAgent(name="weather_agent", model=ScriptedGemini(), tools=[get_weather])
runner = InMemoryRunner(agent=agent, app_name="weather")
app = FastAPI(title="streamflow + Google ADK")


@app.get("/chat", response_class=EventStreamResponse)
async def chat(q: str = "Weather in Paris?", session: str = "default") -> EventStreamResponse:
    service = runner.session_service
    if await service.get_session(app_name=runner.app_name, user_id="user", session_id=session) is None:
        await service.create_session(app_name=runner.app_name, user_id="user", session_id=session)
    return EventStreamResponse(from_adk(runner, user_id="user", session_id=session, new_message=q))


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
