"""The Burr state machine of the chatbot: the graph of the Burr + FastAPI + React article.

::

    prompt -> check_safety --safe--> decide_mode --> answer_question | generate_poem | generate_code
                          |                     `--> prompt_for_more        (unknown mode)
                          `--unsafe--> unsafe_response

Every answer action is a Burr streaming action tagged ``answer``; a turn runs from ``prompt`` up
to and including one of them (``halt_after=["@tag:answer"]``), then the graph goes back to
``prompt`` for the next turn. ``chat_history`` holds the conversation as
``{"role", "content", "type"}`` dicts, the shape streamflow's ``ChatHistory`` event carries.
"""

from __future__ import annotations

import os

os.environ.setdefault("BURR_TELEMETRY_ENABLED", "false")  # offline: Burr before 0.43 had telemetry

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Final

from burr.core import Application, ApplicationBuilder, GraphBuilder, State, action, default, when
from burr.core.action import streaming_action
from burr.core.graph import Graph
from scripted_model import MODES, ScriptedModel  # the module next to this file

ANSWER_TAG: Final = "answer"
HALT_AFTER: Final = [f"@tag:{ANSWER_TAG}"]  # what from_burr runs a turn up to

UNSAFE_REPLY: Final = "I can't help with that: the safety check flagged the prompt, so no model was asked."
PROMPT_FOR_MORE_REPLY: Final = (
    "None of my modes fits that. Ask a question (end it with ?), ask for a poem, or ask for code."
)

Message = dict[str, str]


def message(role: str, content: str) -> Message:
    return {"role": role, "content": content, "type": "text"}


@action(reads=["chat_history"], writes=["chat_history", "prompt"])
def process_prompt(state: State, prompt: str) -> State:
    """Take the user's prompt (the only input of a turn) into the state and the history."""
    return state.update(prompt=prompt).append(chat_history=message("user", prompt))


@action(reads=["prompt"], writes=["safe"])
async def check_safety(state: State, model: ScriptedModel) -> tuple[dict[str, Any], State]:
    safe = await model.is_safe(state["prompt"])
    return {"safe": safe}, state.update(safe=safe)


@action(reads=["prompt"], writes=["mode"])
async def choose_mode(state: State, model: ScriptedModel) -> tuple[dict[str, Any], State]:
    mode = await model.classify(state["prompt"])
    return {"mode": mode}, state.update(mode=mode)


@streaming_action(reads=["chat_history"], writes=["chat_history", "response"], tags=[ANSWER_TAG])
async def model_answer(
    state: State, model: ScriptedModel, mode: str
) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
    """Stream the model's answer: ``({"delta": token}, None)`` per token, then the result and
    the new state (Burr's streaming convention, which ``from_burr`` maps to ``Delta`` events)."""
    history = [{"role": item["role"], "content": item["content"]} for item in state["chat_history"]]
    buffer = []
    # aclosing: when the client leaves, streamflow closes this generator, and this closes the
    # model's stream (with a real provider: the HTTP request that is spending tokens).
    async with aclosing(model.stream(mode, history)) as tokens:
        async for token in tokens:
            buffer.append(token)
            yield {"delta": token}, None
    response = message("assistant", "".join(buffer))
    yield {"response": response}, state.update(response=response).append(chat_history=response)


@streaming_action(reads=["chat_history"], writes=["chat_history", "response"], tags=[ANSWER_TAG])
async def fixed_answer(state: State, text: str) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
    """A reply that needs no model. It is all there at once, so it goes out as one delta (the
    article's version sleeps between words to look streamed)."""
    yield {"delta": text}, None
    response = message("assistant", text)
    yield {"response": response}, state.update(response=response).append(chat_history=response)


def build_graph(model: ScriptedModel) -> Graph:
    """The chatbot's graph; build it once and share it between conversations."""
    answers = {mode: model_answer.bind(model=model, mode=mode) for mode in MODES}
    return (
        GraphBuilder()
        .with_actions(
            prompt=process_prompt,
            check_safety=check_safety.bind(model=model),
            decide_mode=choose_mode.bind(model=model),
            unsafe_response=fixed_answer.bind(text=UNSAFE_REPLY),
            prompt_for_more=fixed_answer.bind(text=PROMPT_FOR_MORE_REPLY),
            **answers,
        )
        .with_transitions(
            ("prompt", "check_safety", default),
            ("check_safety", "decide_mode", when(safe=True)),
            ("check_safety", "unsafe_response", default),
            *[("decide_mode", mode, when(mode=mode)) for mode in MODES],
            ("decide_mode", "prompt_for_more", default),
            ([*MODES, "unsafe_response", "prompt_for_more"], "prompt", default),
        )
        .build()
    )


def new_conversation(graph: Graph, conversation_id: str) -> Application[Any]:
    """A Burr application for one conversation: its state is that conversation's history."""
    return (
        ApplicationBuilder()
        .with_graph(graph)
        .with_entrypoint("prompt")
        .with_state(chat_history=[])
        .with_identifiers(app_id=conversation_id)
        .build()
    )
