"""The demo's agent: scripted (no model, no API key, no network), or with a real model
for the answer. Your workflow goes here.

``run_agent`` is an ordinary async generator. It yields streamflow events (``StepStart``,
``ToolCall``...) and plain ``str`` pieces of text, which become ``Delta`` events; the app
hands it to a ``StreamHub`` (or an ``EventStreamResponse``), which turns it into
Server-Sent Events and adds the final ``done``. Swap the scripted parts for your model and
tools and nothing else changes.

The run has three steps:

1. ``route``  -- decide what to do with the prompt (here: always search the docs);
2. ``lookup`` -- call a tool (a fake docs search) and get its result;
3. ``answer`` -- stream the answer token by token: a scripted answer with a code block, or,
   given a :class:`~llm.ModelConfig` (``OPENAI_API_KEY`` is set), the model's answer,

then a ``ChatHistory`` with the conversation for the UI to keep.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Final

import anyio
from llm import ModelConfig, ModelError, stream_chat  # the module next to this file
from pydantic import JsonValue

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Error,
    Event,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
)

__all__ = [
    "DEFAULT_DELAY",
    "STEPS",
    "model_messages",
    "run_agent",
    "scripted_answer",
    "search_docs",
    "tokenize",
]

DEFAULT_DELAY: Final = 0.03
"""Seconds between two streamed tokens; the scripted "thinking" and tool latency are
multiples of it, so ``delay=0`` runs the whole script at once."""

STEPS: Final = ("route", "lookup", "answer")

_DOCS: Final[list[dict[str, JsonValue]]] = [
    {
        "title": "Streaming an agent with EventStreamResponse",
        "url": "/docs/streaming",
        "snippet": "Return EventStreamResponse(generator) from any Starlette or FastAPI route.",
    },
    {
        "title": "The event protocol",
        "url": "/docs/events",
        "snippet": "step_start, delta, step_end, tool_call, tool_result, chat_history, error, done.",
    },
]

# The answer has what naive SSE code gets wrong: line breaks, blank lines (three in a
# row inside the code block), indentation and a fenced code block.
_ANSWER_BODY: Final = """streamflow turns any async generator into a Server-Sent Events stream. \
From the docs search, the short version:

```python
from fastapi import FastAPI
from streamflow import EventStreamResponse

app = FastAPI()


@app.post("/chat")
async def chat(prompt: str) -> EventStreamResponse:
    return EventStreamResponse(my_agent(prompt))
```

Yield `str` for text, or events such as `StepStart` and `ToolCall`.

Every event before a failure is still delivered, and the stream always ends with `done`."""


def scripted_answer(prompt: str) -> str:
    """The full text the ``answer`` step streams for ``prompt``."""
    return f"You asked: {prompt}\n\n{_ANSWER_BODY}"


def model_messages(prompt: str, hits: list[dict[str, JsonValue]]) -> list[dict[str, str]]:
    """What the ``answer`` step sends a real model: the prompt and the tool's results."""
    return [
        {
            "role": "system",
            "content": "You answer questions about streamflow, a Python library that streams agent "
            "workflows as Server-Sent Events. Answer briefly, with one short fenced code example. "
            "Pages found by the docs search:\n" + json.dumps(hits, indent=2),
        },
        {"role": "user", "content": prompt},
    ]


def search_docs(query: str, limit: int = 2) -> list[dict[str, JsonValue]]:
    """The fake tool: always finds the same pages."""
    return _DOCS[:limit]


def tokenize(text: str) -> list[str]:
    """Split ``text`` into model-like tokens (a word and the whitespace after it).

    ``"".join(tokenize(text)) == text`` always holds: nothing is dropped.
    """
    return re.findall(r"\S+\s*|\s+", text)


async def run_agent(
    prompt: str, *, delay: float = DEFAULT_DELAY, model: ModelConfig | None = None
) -> AsyncIterator[Event | str]:
    """Answer ``prompt`` in three steps, streaming the answer token by token (``model``: the
    answer comes from that model instead of the script)."""
    total = len(STEPS)

    yield StepStart(step="route", index=1, total=total)
    await anyio.sleep(delay * 5)  # a model deciding which tool to use
    yield StepEnd(step="route", output={"intent": "docs_question", "tool": "search_docs"})

    yield StepStart(step="lookup", index=2, total=total)
    call_id = f"call_{secrets.token_hex(4)}"
    arguments: dict[str, JsonValue] = {"query": prompt, "limit": 2}
    yield ToolCall(id=call_id, name="search_docs", arguments=arguments, step="lookup")
    await anyio.sleep(delay * 15)  # the tool's latency
    hits = search_docs(prompt, limit=2)
    yield ToolResult(id=call_id, output={"hits": hits}, step="lookup")
    yield StepEnd(step="lookup", output={"hits": len(hits)})

    yield StepStart(step="answer", index=3, total=total)
    pieces: list[str] = []
    if model is None:
        for token in tokenize(scripted_answer(prompt)):
            await anyio.sleep(delay)  # a model producing the next token
            pieces.append(token)
            yield Delta(value=token, step="answer")  # a plain `yield token` works too (no step)
    else:
        try:
            async for token in stream_chat(model, model_messages(prompt, hits)):
                pieces.append(token)
                yield Delta(value=token, step="answer")
        except ModelError as exc:  # its message is safe to show; the details are in the log
            yield Error(message=str(exc), code="model_error", step="answer")
            return
    yield StepEnd(step="answer", output={"answered_by": "scripted" if model is None else model.model})

    answer = "".join(pieces)
    yield ChatHistory(
        value=[ChatMessage(role="user", content=prompt), ChatMessage(role="assistant", content=answer)]
    )
