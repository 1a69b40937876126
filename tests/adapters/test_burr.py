"""from_burr with the real Burr, offline: the chatbot graph of the Burr + FastAPI + React
article (prompt -> decide_mode -> respond), its model replaced by a scripted async generator."""

from __future__ import annotations

import os

os.environ.setdefault("BURR_TELEMETRY_ENABLED", "false")  # Burr < 0.43 had telemetry; 0.43 has none

import asyncio
import datetime
import gc
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from burr.core import ApplicationBuilder, GraphBuilder, State, action, default
from burr.core.action import streaming_action
from burr.core.application import Application
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from streamflow import (
    ChatHistory,
    ChatMessage,
    Delta,
    Done,
    Error,
    Event,
    EventStreamResponse,
    StepEnd,
    StepStart,
)
from streamflow.adapters import expose_exception, from_burr, hide_exception
from streamflow.adapters.burr import BurrInterruptedError
from streamflow.client import aiter_events
from tests.conftest import serve

pytestmark = pytest.mark.anyio

TOKENS = ["Hel", "lo", ", ", "Burr", "!"]
TEXT = "".join(TOKENS)


class ScriptedModel:
    """Streams its tokens; records what it was asked and where its ``finally`` ran."""

    def __init__(
        self, tokens: Iterable[str] = TOKENS, fail_after: int | None = None, delay: float | None = 0.0
    ) -> None:
        self.tokens = tokens
        self.fail_after = fail_after
        self.delay = delay
        self.asked: list[str] = []
        self.started_in: asyncio.Task[Any] | None = None
        self.closed_in: asyncio.Task[Any] | None = None
        self.closed = threading.Event()
        self.task_done = threading.Event()
        self.action_finally = 0

    async def stream(self, prompt: str) -> AsyncGenerator[str, None]:
        self.asked.append(prompt)
        self.started_in = asyncio.current_task()
        assert self.started_in is not None
        self.started_in.add_done_callback(lambda _: self.task_done.set())
        try:
            for i, token in enumerate(self.tokens):
                if i == self.fail_after:
                    raise RuntimeError("the model failed (sk-secret)")
                if self.delay is not None:  # None: never wait, like a model whose tokens are all there
                    await asyncio.sleep(self.delay)
                yield token
        finally:
            self.closed_in = asyncio.current_task()
            self.closed.set()


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
async def chat_response(
    state: State, model: ScriptedModel
) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
    buffer = []
    try:
        async with aclosing(model.stream(state["prompt"])) as tokens:
            async for token in tokens:
                buffer.append(token)
                yield {"delta": token}, None
    finally:
        model.action_finally += 1
    response = {"content": "".join(buffer), "type": "text", "role": "assistant"}
    yield {"response": response}, state.update(response=response).append(chat_history=response)


def chatbot(model: ScriptedModel) -> Application[Any]:
    graph = (
        GraphBuilder()
        .with_actions(prompt=process_prompt, decide_mode=choose_mode, respond=chat_response.bind(model=model))
        .with_transitions(("prompt", "decide_mode", default), ("decide_mode", "respond", default))
        .with_transitions(("respond", "prompt", default))
        .build()
    )
    return (
        ApplicationBuilder()
        .with_graph(graph)
        .with_entrypoint("prompt")
        .with_state(chat_history=[])
        .with_identifiers(app_id="chat-1")
        .build()
    )


async def collect(app: Application[Any], prompt: str, **kwargs: Any) -> list[Event]:
    events = from_burr(app, halt_after=["respond"], inputs={"prompt": prompt}, **kwargs)
    return [event async for event in events]


async def burr_turn(app: Application[Any], prompt: str) -> list[str]:
    """A turn with plain Burr, as the article's server runs it; the names of the actions run."""
    ran = []
    async for step, container in app.astream_iterate(halt_after=["respond"], inputs={"prompt": prompt}):
        ran.append(step.name)
        await container.get()
    return ran


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def turn(*, mode: str = "answer_question", deltas: list[str] = TOKENS) -> list[Event]:
    return [
        StepStart(step="prompt"),
        StepEnd(step="prompt"),
        StepStart(step="decide_mode"),
        StepEnd(step="decide_mode", output={"mode": mode}),
        StepStart(step="respond"),
        *[Delta(value=token, step="respond") for token in deltas],
        StepEnd(step="respond"),
    ]


# --- the run ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_turn_is_steps_deltas_and_the_history_at_the_start() -> None:
    model = ScriptedModel()
    app = chatbot(model)

    events = await collect(app, "Hi")

    assert events == [ChatHistory(value=[]), *turn(), Done()]
    assert "".join(e.value for e in events if isinstance(e, Delta)) == TEXT  # exactly once
    assert app.state["chat_history"][-1] == {"content": TEXT, "type": "text", "role": "assistant"}
    assert model.closed_in is model.started_in  # closed by its own task, not by the GC


@pytest.mark.slow
async def test_second_turn_with_the_history_at_both_ends() -> None:
    app = chatbot(ScriptedModel())
    await collect(app, "Hi")

    events = await collect(app, "a poem please", chat_history="both")

    first = [user("Hi"), assistant(TEXT)]
    assert events == [
        ChatHistory(value=first),
        *turn(mode="generate_poem"),
        ChatHistory(value=[*first, user("a poem please"), assistant(TEXT)]),
        Done(),
    ]
    assert (await collect(app, "x", chat_history=None))[0] == StepStart(step="prompt")


@pytest.mark.slow
async def test_step_outputs_are_json() -> None:
    class Hit(BaseModel):
        score: float

    @action(reads=[], writes=[])
    def search(state: State) -> tuple[dict[str, Any], State]:
        when = datetime.datetime(2024, 7, 25, tzinfo=datetime.UTC)
        return {"hits": [Hit(score=0.5)], "at": when, "ids": (1, 2)}, state

    app = (
        ApplicationBuilder().with_actions(search=search).with_transitions().with_entrypoint("search").build()
    )
    events = [e async for e in from_burr(app, halt_after="search", chat_history=None)]
    assert events == [
        StepStart(step="search"),
        StepEnd(
            step="search", output={"hits": [{"score": 0.5}], "at": "2024-07-25T00:00:00Z", "ids": [1, 2]}
        ),
        Done(),
    ]


@pytest.mark.slow
async def test_an_item_without_a_delta_is_an_error_and_delta_key_reads_another_key() -> None:
    @streaming_action(reads=[], writes=["text"])
    async def speak(state: State) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
        yield {"text": "hi"}, None
        yield {"text": "hi"}, state.update(text="hi")

    def app() -> Application[Any]:
        return (
            ApplicationBuilder().with_actions(speak=speak).with_transitions().with_entrypoint("speak").build()
        )

    bad = [
        e async for e in from_burr(app(), halt_after=["speak"], chat_history=None, on_error=expose_exception)
    ]
    assert bad == [
        StepStart(step="speak"),
        Error(
            message="Burr action 'speak' streamed a dict with keys ['text']; expected a str under 'delta'",
            code="InvalidItemError",
            step="speak",
        ),
        Done(),
    ]
    good = [e async for e in from_burr(app(), halt_after=["speak"], chat_history=None, delta_key="text")]
    assert good == [StepStart(step="speak"), Delta(value="hi", step="speak"), StepEnd(step="speak"), Done()]


@pytest.mark.slow
def test_bad_arguments_are_refused_at_once() -> None:
    app = chatbot(ScriptedModel())
    with pytest.raises(ValueError, match="'reply', which is not an action"):
        from_burr(app, halt_after=["reply"])
    with pytest.raises(ValueError, match="at least one action"):
        from_burr(app, halt_after=[])
    with pytest.raises(ValueError, match="chat_history must be"):
        from_burr(app, halt_after=["respond"], chat_history="always")  # type: ignore[arg-type]


# --- errors ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_an_error_mid_stream_gives_the_deltas_before_it_then_one_error_then_done() -> None:
    model = ScriptedModel(fail_after=2)
    app = chatbot(model)

    events = await collect(app, "Hi")

    assert events == [
        ChatHistory(value=[]),
        *turn(deltas=TOKENS[:2])[:-1],
        hide_exception(RuntimeError()).model_copy(update={"step": "respond"}),
        Done(),
    ]
    assert [type(e) for e in events].count(Error) == 1
    assert "sk-secret" not in str(events)
    assert model.action_finally == 1


@pytest.mark.slow
async def test_burr_quirk_after_an_error_the_next_prompt_is_silently_dropped() -> None:
    """Plain Burr, no streamflow: the failed action's state update never happens, so
    ``__PRIOR_STEP`` still names the action before it and the next run starts at the
    failed action, which does not take ``prompt``: Burr drops it without a word and
    answers the previous prompt again."""
    model = ScriptedModel(fail_after=2)
    app = chatbot(model)
    with pytest.raises(RuntimeError, match="the model failed"):
        await burr_turn(app, "first")
    assert app.state["__PRIOR_STEP"] == "decide_mode"
    assert app.get_next_action().name == "respond"  # type: ignore[union-attr]

    model.fail_after = None
    assert await burr_turn(app, "second") == ["respond"]
    assert model.asked == ["first", "first"]  # "second" was never seen
    assert [m["content"] for m in app.state["chat_history"]] == ["first", TEXT]


@pytest.mark.slow
async def test_after_an_error_from_burr_refuses_inputs_burr_would_drop() -> None:
    model = ScriptedModel(fail_after=2)
    app = chatbot(model)
    await collect(app, "first")
    model.fail_after = None

    with pytest.raises(BurrInterruptedError, match="would resume at 'respond'") as info:
        from_burr(app, halt_after=["respond"], inputs={"prompt": "second"})

    assert (info.value.prior_step, info.value.next_step, info.value.inputs) == (
        "decide_mode",
        "respond",
        ["prompt"],
    )
    assert model.asked == ["first"]  # nothing ran
    # Without inputs nothing would be dropped: Burr retries the failed action.
    events = [e async for e in from_burr(app, halt_after=["respond"], chat_history=None)]
    assert events == [*turn()[4:], Done()]
    assert model.asked == ["first", "first"]


@pytest.mark.slow
async def test_after_an_error_restart_takes_the_new_prompt_and_resume_is_burrs_behaviour() -> None:
    model = ScriptedModel(fail_after=2)
    app = chatbot(model)
    await collect(app, "first")
    model.fail_after = None
    resumed = chatbot(model)
    resumed.update_state(app.state)

    events = await collect(app, "second", interrupted="restart")

    assert events == [ChatHistory(value=[user("first")]), *turn(), Done()]
    assert model.asked == ["first", "second"]
    assert [m["content"] for m in app.state["chat_history"]] == ["first", "second", TEXT]

    events = await collect(resumed, "second", interrupted="resume", chat_history=None)
    assert events == [*turn()[4:], Done()]
    assert model.asked == ["first", "second", "first"]


# --- closing ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_consumer_stopping_after_two_deltas_closes_the_model_before_aclose_returns() -> None:
    model = ScriptedModel()
    app = chatbot(model)
    received: list[Event] = []
    tasks_before = asyncio.all_tasks()

    async with aclosing(from_burr(app, halt_after=["respond"], inputs={"prompt": "Hi"})) as events:
        async for event in events:
            received.append(event)
            if sum(isinstance(e, Delta) for e in received) == 2:
                break
    closed = model.closed.is_set()

    assert closed, "the model's finally had not run when aclose returned"
    assert model.closed_in is model.started_in, "closed by a garbage-collector task, not by aclose"
    assert model.action_finally == 1
    assert received[-2:] == [Delta(value="Hel", step="respond"), Delta(value="lo", step="respond")]
    assert asyncio.all_tasks() == tasks_before, "a task was left behind"
    # The stopped turn counts as interrupted, like an error.
    with pytest.raises(BurrInterruptedError):
        from_burr(app, halt_after=["respond"], inputs={"prompt": "again"})


@pytest.mark.slow
async def test_burr_quirk_closing_burrs_stream_leaves_the_model_to_the_garbage_collector() -> None:
    """Why the adapter closes the generator chain itself: Burr's container does not."""
    model = ScriptedModel()
    app = chatbot(model)
    async with aclosing(app.astream_iterate(halt_after=["respond"], inputs={"prompt": "Hi"})) as steps:
        async for step, container in steps:
            if step.name == "respond":
                async with aclosing(aiter(container)) as items:  # type: ignore[type-var]
                    await anext(items)
                break
            await container.get()
    assert not model.closed.is_set()
    del step, container, steps, items
    gc.collect()
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.closed.is_set()
    assert model.closed_in is not model.started_in  # a finalizer task did it


# --- a real server -----------------------------------------------------------------------


class Server:
    """An endless model behind a one-event buffer: a disconnect finds the stream either
    waiting for the model (``delay``: it is cancelled there) or, with a model that never
    waits, suspended at a yield while the transport waits to send (it is closed there)."""

    def __init__(self, delay: float | None) -> None:
        self.model = ScriptedModel(tokens=(f"t{i} " for i in itertools.count()), delay=delay)
        self.app = chatbot(self.model)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def chat(self, request: Request) -> EventStreamResponse:
        self.loop = asyncio.get_running_loop()
        prompt = (await request.json())["prompt"]
        events = from_burr(self.app, halt_after=["respond"], inputs={"prompt": prompt})
        return EventStreamResponse(events, buffer_size=1)

    def tasks(self) -> list[str]:
        async def others() -> list[str]:
            return [repr(t.get_coro()) for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(others(), self.loop).result(5)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.01, None], ids=["model-waiting", "stream-at-a-yield"])
async def test_a_client_disconnect_closes_the_model_within_a_second(delay: float | None) -> None:
    state = Server(delay)
    with serve(Starlette(routes=[Route("/chat", state.chat, methods=["POST"])])) as url:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("POST", f"{url}/chat", json={"prompt": "Hi"}) as response,
        ):
            events = aiter_events(response.aiter_bytes())
            received = [await anext(events) for _ in range(8)]
            await events.aclose()
        closed_at = time.monotonic()
        assert state.model.closed.wait(1.0), "the model's finally did not run within 1 s"
        assert time.monotonic() - closed_at < 1.0
        assert state.model.task_done.wait(1.0), "the task that ran the stream is still alive"
        leftovers = [t for t in state.tasks() if "athrow" in t or "aclose" in t]

    assert received[-2:] == [Delta(value="t0 ", step="respond"), Delta(value="t1 ", step="respond")]
    assert state.model.closed_in is state.model.started_in, "closed by a garbage-collector task"
    assert leftovers == [], "a generator finalizer task"


# --- packaging ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_missing_burr_is_an_import_error_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['burr'] = None\n"
        "for how in ('from streamflow.adapters import from_burr', 'import streamflow.adapters.burr'):\n"
        "    try:\n"
        "        exec(how)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
        "    else:\n"
        "        print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ['from_burr needs apache-burr: pip install "streamflow[burr]"'] * 2
