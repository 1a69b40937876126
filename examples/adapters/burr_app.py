"""The Burr + FastAPI chatbot streamed with ``from_burr`` (offline: the model is scripted).

    python examples/adapters/burr_app.py            # PORT=8000 by default
    curl -N -X POST localhost:8000/response/c1 -H 'content-type: application/json' -d '{"prompt": "Hi"}'

The graph is the one of the Burr + FastAPI + React article: prompt -> decide_mode -> a
streaming response. Replace ``scripted_model`` with your model's async token stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import uvicorn
from burr.core import Application, ApplicationBuilder, GraphBuilder, State, action, default
from burr.core.action import streaming_action
from fastapi import FastAPI
from pydantic import BaseModel

from streamflow import EventStreamResponse
from streamflow.adapters import from_burr


async def scripted_model(prompt: str) -> AsyncGenerator[str, None]:
    for word in f"You said {prompt!r}. Burr streams this answer word by word.".split(" "):
        await asyncio.sleep(0.05)
        yield word + " "


@action(reads=["chat_history"], writes=["chat_history", "prompt"])
def process_prompt(state: State, prompt: str) -> State:
    return state.update(prompt=prompt).append(
        chat_history={"role": "user", "content": prompt, "type": "text"}
    )


@action(reads=["prompt"], writes=["mode"])
async def choose_mode(state: State) -> tuple[dict[str, Any], State]:
    mode = "generate_poem" if "poem" in state["prompt"] else "answer_question"
    return {"mode": mode}, state.update(mode=mode)


@streaming_action(reads=["prompt", "chat_history"], writes=["chat_history", "response"])
async def chat_response(state: State) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
    buffer = []
    async with aclosing(scripted_model(state["prompt"])) as tokens:  # closed if the client leaves
        async for token in tokens:
            buffer.append(token)
            yield {"delta": token}, None
    response = {"role": "assistant", "content": "".join(buffer), "type": "text"}
    yield {"response": response}, state.update(response=response).append(chat_history=response)


graph = (
    GraphBuilder()
    .with_actions(prompt=process_prompt, decide_mode=choose_mode, respond=chat_response)
    .with_transitions(("prompt", "decide_mode", default), ("decide_mode", "respond", default))
    .with_transitions(("respond", "prompt", default))
    .build()
)
apps: dict[str, Application[Any]] = {}  # one Burr app per conversation (use a persister in production)
server = FastAPI(title="streamflow + Burr")


class PromptInput(BaseModel):
    prompt: str


@server.post("/response/{app_id}", response_class=EventStreamResponse)
async def respond(app_id: str, body: PromptInput) -> EventStreamResponse:
    if app_id not in apps:
        builder = ApplicationBuilder().with_graph(graph).with_entrypoint("prompt").with_state(chat_history=[])
        apps[app_id] = builder.with_identifiers(app_id=app_id).build()
    # interrupted="restart": after a failed or abandoned answer, the next prompt starts a new turn.
    events = from_burr(
        apps[app_id], halt_after=["respond"], inputs={"prompt": body.prompt}, interrupted="restart"
    )
    return EventStreamResponse(events)


if __name__ == "__main__":
    uvicorn.run(server, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
