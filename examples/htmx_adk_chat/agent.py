"""The chat's Google ADK agent: an ``LlmAgent`` with one tool, ``get_weather``, and a scripted model.

``ScriptedModel`` is a real ADK model (a ``BaseLlm`` subclass), so ADK runs the agent exactly as it
runs Gemini -- the request, the tool call, the tool's response, the streamed answer -- but offline,
with no API key. It streams the way Gemini does under ``StreamingMode.SSE``: ``partial=True`` chunks,
then one non-partial response that repeats the whole text. What it answers:

- "... weather in <city> ..."  -> it calls ``get_weather(city=...)``, then answers from the result
  (Paris, Tokyo and Cairo are known; any other city is a failed tool call);
- "... code ..."               -> a short answer with a fenced Python block (blank line, indentation,
  ``<`` and quotes in it);
- anything else                -> it repeats your message and says what it can do. Whatever markup
  you type comes back *inside the model's answer*, which is how the example shows that model
  output is escaped.

``build_runner("gemini-2.5-flash")`` uses a real model instead (set ``GOOGLE_API_KEY``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Final

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

__all__ = [
    "APP_NAME",
    "CITIES",
    "CODE_ANSWER",
    "DEFAULT_DELAY",
    "ScriptedModel",
    "answer_for",
    "build_runner",
    "get_weather",
]

APP_NAME: Final = "htmx_adk_chat"
DEFAULT_DELAY: Final = 0.05
"""Seconds the scripted model waits before each streamed chunk (and before a tool call)."""

CITIES: Final[dict[str, dict[str, object]]] = {
    "paris": {"city": "Paris", "celsius": 21, "sky": "sunny", "wind_kmh": 12},
    "tokyo": {"city": "Tokyo", "celsius": 17, "sky": "light rain", "wind_kmh": 20},
    "cairo": {"city": "Cairo", "celsius": 34, "sky": "clear", "wind_kmh": 8},
}

CODE_ANSWER: Final = (
    "Here is a loop that skips the odd numbers:\n"
    "\n"
    "```python\n"
    "for n in range(6):\n"
    "    if n % 2:\n"
    "        continue  # odd: skip\n"
    "\n"
    '    print(n, "<", 6)\n'
    "```\n"
    "\n"
    "It prints 0, 2 and 4."
)

_WEATHER: Final = re.compile(r"\bweather\s+in\s+([^?!.,;\n]+)", re.IGNORECASE)
_CODE: Final = re.compile(r"\bcode\b", re.IGNORECASE)
_CHUNK: Final = re.compile(r"\S+\s*|\s+")  # words with their trailing whitespace: they join to the text


def get_weather(city: str) -> dict[str, object]:
    """Return the current weather in ``city``: temperature (°C), sky and wind (km/h)."""
    found = CITIES.get(city.strip().lower())
    if found is None:
        return {"error": f"no weather data for {city}"}
    return dict(found)


def answer_for(result: dict[str, object]) -> str:
    """The scripted model's answer to a ``get_weather`` result."""
    if "error" in result:
        known = ", ".join(str(c["city"]) for c in CITIES.values())
        return f"Sorry, the weather service has {result['error']}.\nI know {known}."
    return (
        f"In {result['city']} it is {result['celsius']} °C, {result['sky']}.\n"
        f"Wind: {result['wind_kmh']} km/h."
    )


class ScriptedModel(BaseLlm):
    """An offline model for the chat: it decides from the last message what a real model would do."""

    model: str = "scripted"
    delay: float = DEFAULT_DELAY

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        contents = llm_request.contents
        last = (contents[-1].parts or []) if contents else []
        responses = [p.function_response for p in last if p.function_response is not None]
        text = "".join(p.text or "" for p in last if not p.thought)
        prompt_tokens = sum(len((p.text or "").split()) for c in contents for p in c.parts or [])
        if responses:  # the tool answered: say it in words
            text = answer_for(dict(responses[0].response or {}))
        elif found := _WEATHER.search(text):  # ask the tool
            await asyncio.sleep(self.delay)
            call = types.FunctionCall(name="get_weather", args={"city": found[1].strip()})
            content = types.ModelContent(parts=[types.Part(function_call=call)])
            yield LlmResponse(content=content, usage_metadata=_usage(prompt_tokens, 1))
            return
        elif _CODE.search(text):
            text = CODE_ANSWER
        else:
            text = (
                f"You said: {text}\n\n"
                "I am a scripted model, so I know two things: the weather in Paris, Tokyo or Cairo, "
                "and a code example. Ask me for either."
            )
        if stream:
            for piece in _CHUNK.findall(text):
                await asyncio.sleep(self.delay)
                yield LlmResponse(content=types.ModelContent(parts=[types.Part(text=piece)]), partial=True)
        content = types.ModelContent(parts=[types.Part(text=text)])
        yield LlmResponse(content=content, usage_metadata=_usage(prompt_tokens, len(text.split())))


def _usage(prompt: int, answer: int) -> types.GenerateContentResponseUsageMetadata:
    """Token counts, as a real model reports them (ADK records them; here a token is a word)."""
    usage = types.GenerateContentResponseUsageMetadata
    return usage(prompt_token_count=prompt, candidates_token_count=answer)


def build_runner(model: str | BaseLlm | None = None, *, delay: float = DEFAULT_DELAY) -> InMemoryRunner:
    """The agent and its runner. ``model``: a model name (``"gemini-2.5-flash"``) or instance;
    ``None`` or ``"scripted"`` is the offline :class:`ScriptedModel` with ``delay``."""
    if model is None or model == "scripted":
        model = ScriptedModel(delay=delay)
    agent = LlmAgent(
        name="assistant",
        model=model,
        instruction=(
            "You are a concise assistant. Use get_weather for any question about the weather; "
            "answer in plain text, with fenced code blocks for code."
        ),
        tools=[get_weather],
    )
    return InMemoryRunner(agent=agent, app_name=APP_NAME)
