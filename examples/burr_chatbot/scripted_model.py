"""The scripted model: what the chatbot's actions would ask an LLM, answered from a script.

It lets the example run offline, with no API key, and lets the tests know every answer to the
character. Each method stands for one model call of the Burr + FastAPI + React chatbot:

- :meth:`ScriptedModel.is_safe`: the safety check (a moderation model);
- :meth:`ScriptedModel.classify`: the mode decision (a short, non-streamed completion);
- :meth:`ScriptedModel.stream`: the answer, streamed token by token (a streamed completion).

To use a real model, give the actions in ``chatbot.py`` an object with these three methods
that calls your provider (for a stream, an async generator of text pieces).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Final

DEFAULT_DELAY: Final = 0.03  # seconds per streamed token

MODES: Final = ("answer_question", "generate_poem", "generate_code")
"""The modes the classifier knows; anything else is ``"unknown"``."""

UNSAFE_WORDS: Final = ("unsafe", "steal", "malware")
"""The safety check's whole policy (the article's checks for ``"unsafe"``); a real app asks a
moderation model."""

FAIL_COMMAND: Final = "/fail"
"""A prompt containing this makes the model fail after a few tokens, to show what a client sees."""

FAIL_AFTER: Final = 6  # tokens streamed before a /fail answer breaks off

POEM: Final = (
    "A token leaves the server, small and bright,\n"
    "framed as an event, and flushed into the night.\n"
    "\n"
    "The browser reads it byte by careful byte,\n"
    "and no blank line can cut this rhyme from sight."
)

SSE_BY_HAND: Final = (
    "Here is a Server-Sent Events response body, written out by hand with CRLF line ends:\r\n"
    "\r\n"
    'data: {"type":"delta","value":"Hi"}\r\n'
    "\r\n"
    'data: {"type":"done"}\r\n'
    "\r\n"
    "Each event ends with a blank line.\n"
    "\n"
    'A reader that splits the stream on "data: " breaks on this very answer; an SSE parser does not.'
)
"""The ``generate_code`` answer: it holds what breaks naive SSE readers (``data: `` and a fake
``done`` event, CRLF, blank lines), and must still arrive exactly."""

_TOKEN: Final = re.compile(r"data: |(?:\r\n)+|\n+|\r+| ?[^\s]+|\s")


class ModelError(RuntimeError):
    """The model provider failed (here: on purpose, for prompts with ``/fail``)."""


def tokenize(text: str) -> list[str]:
    """``text`` in the pieces the model streams: words with their leading space, runs of line
    breaks (``"\\r\\n\\r\\n"`` and ``"\\n\\n"`` are one piece each) and ``"data: "`` at the start of
    a line."""
    return _TOKEN.findall(text)


def classify(prompt: str) -> str:
    """The mode for ``prompt``: a poem, code, an answer to a question, or ``"unknown"``."""
    words = prompt.lower()
    if "poem" in words:
        return "generate_poem"
    if "code" in words:
        return "generate_code"
    if prompt.rstrip().endswith("?"):
        return "answer_question"
    return "unknown"


def is_safe(prompt: str) -> bool:
    words = prompt.lower()
    return not any(word in words for word in UNSAFE_WORDS)


def answer(mode: str, messages: Sequence[Mapping[str, str]]) -> str:
    """The scripted answer in ``mode`` to a conversation whose last message is the prompt."""
    prompt = messages[-1]["content"]
    if mode == "generate_poem":
        return POEM
    if mode == "generate_code":
        return SSE_BY_HAND
    return (
        f"You asked: {prompt}\n\n"
        f"I am a scripted model, so this is no real answer, only the path it took: check_safety "
        f"passed, decide_mode chose {mode}, and this text streamed token by token. "
        f"It is message {len(messages) + 1} of this conversation."
    )


class ScriptedModel:
    """A stand-in for an LLM client; ``delay`` is the seconds each streamed token takes."""

    def __init__(self, delay: float = DEFAULT_DELAY) -> None:
        self.delay = delay

    async def is_safe(self, prompt: str) -> bool:
        await asyncio.sleep(3 * self.delay)
        return is_safe(prompt)

    async def classify(self, prompt: str) -> str:
        await asyncio.sleep(5 * self.delay)
        return classify(prompt)

    async def stream(self, mode: str, messages: Sequence[Mapping[str, str]]) -> AsyncGenerator[str, None]:
        """The answer's tokens, one every ``delay`` seconds. ``messages`` is the chat history in
        the usual ``{"role", "content"}`` form, the prompt last."""
        fail = FAIL_COMMAND in messages[-1]["content"]
        for index, token in enumerate(tokenize(answer(mode, messages))):
            if fail and index == FAIL_AFTER:
                # The kind of text a provider's exception carries: never for the browser.
                raise ModelError("upstream timeout for request req_81f3 (api key sk-scripted-4242)")
            await asyncio.sleep(self.delay)
            yield token
