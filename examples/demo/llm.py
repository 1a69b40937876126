"""A real model for the demo's ``answer`` step: OpenAI-compatible chat completions, streamed.

Used only when ``OPENAI_API_KEY`` is set (see :meth:`ModelConfig.from_env`); without it the
demo's agent is fully scripted. Any server that speaks the chat completions API with
``"stream": true`` works (OpenAI, a proxy, vLLM, Ollama, LM Studio...):

- ``OPENAI_API_KEY``         the key, sent as ``Authorization: Bearer ...``;
- ``OPENAI_BASE_URL``        default ``https://api.openai.com/v1`` (``/chat/completions`` is appended);
- ``STREAMFLOW_DEMO_MODEL``  default ``gpt-4o-mini``.

The response is Server-Sent Events (``data: {chunk}`` ... ``data: [DONE]``), read with
streamflow's own WHATWG decoder (:func:`streamflow.client.aiter_sse`) over httpx.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from streamflow.client import aiter_sse

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "ModelConfig", "ModelError", "stream_chat"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MODEL: Final = "gpt-4o-mini"
TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)

logger = logging.getLogger("streamflow.demo")


class ModelError(Exception):
    """The model API failed. The message is safe to show a user: it holds no key and no
    response body (those go to the log)."""


@dataclass(frozen=True)
class ModelConfig:
    api_key: str
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelConfig | None:
        """The model the environment names, or ``None`` (no ``OPENAI_API_KEY``: scripted)."""
        env = os.environ if environ is None else environ
        api_key = env.get("OPENAI_API_KEY", "").strip()
        if not api_key:
            return None
        base_url = env.get("OPENAI_BASE_URL", "").strip().rstrip("/") or DEFAULT_BASE_URL
        model = env.get("STREAMFLOW_DEMO_MODEL", "").strip() or DEFAULT_MODEL
        return cls(api_key=api_key, base_url=base_url, model=model)

    def __repr__(self) -> str:  # never print the key
        return f"ModelConfig(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"


async def stream_chat(config: ModelConfig, messages: list[dict[str, str]]) -> AsyncIterator[str]:
    """The text of the model's reply to ``messages``, piece by piece as it streams.

    Raises :class:`ModelError` when the API cannot be reached, answers an error status,
    reports an error in the stream, or ends it before ``[DONE]`` or a ``finish_reason``.
    Closing the generator (the client left, the run was cancelled) closes the HTTP request,
    so the model stops generating.
    """
    body = {"model": config.model, "messages": messages, "stream": True}
    headers = {"Authorization": f"Bearer {config.api_key}", "Accept": "text/event-stream"}
    finished = False
    try:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT) as http,
            http.stream("POST", config.url, json=body, headers=headers) as response,
        ):
            if response.status_code != 200:
                detail = (await response.aread())[:500].decode(errors="replace")
                detail = detail.replace(config.api_key, "***")  # an error may quote the key
                logger.warning("model API %s answered %s: %s", config.url, response.status_code, detail)
                raise ModelError(f"The model API answered HTTP {response.status_code}.")
            async for sse in aiter_sse(response.aiter_bytes()):
                if sse.data == "[DONE]":
                    return
                chunk = _parse(sse.data.replace(config.api_key, "***"))
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
                    if choice.get("finish_reason"):
                        finished = True
    except httpx.HTTPError as exc:
        logger.warning("model API %s failed: %r", config.url, exc)
        raise ModelError(f"The model API could not be reached ({type(exc).__name__}).") from exc
    if not finished:
        raise ModelError("The model's stream ended early.")


def _parse(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        logger.warning("model API sent a chunk that is not JSON: %.200r", data)
        raise ModelError("The model API sent something that is not a chat completion chunk.") from None
    if not isinstance(chunk, dict):
        raise ModelError("The model API sent something that is not a chat completion chunk.")
    if chunk.get("error"):
        logger.warning("model API reported an error: %.500r", chunk["error"])
        raise ModelError("The model API reported an error in the middle of its answer.")
    return chunk
