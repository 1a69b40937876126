"""``from_adk``: the real Google ADK runner with a scripted model, fully offline."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import Any

import anyio.to_thread
import httpx
import pytest
from google.adk.agents import LlmAgent, RunConfig, SequentialAgent
from google.adk.agents.run_config import StreamingMode  # type: ignore[attr-defined]
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.adk.tools.agent_tool import AgentTool
from google.adk.workflow import START, Workflow
from google.genai import types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from streamflow import (
    Delta,
    Done,
    Error,
    Event,
    EventStreamResponse,
    StepEnd,
    StepStart,
    ToolCall,
    ToolResult,
    expose_exception,
    hide_exception,
)
from streamflow.adapters.adk import AdkError, from_adk
from streamflow.client import aiter_events
from tests.adapters._adk_scripted import HANG, ScriptedLlm, call, chunk, final, streamed
from tests.conftest import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HIDDEN = hide_exception(RuntimeError()).message


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, loopback_only: None) -> None:
    """No credentials, no telemetry, and no connection beyond loopback (``loopback_only``)."""
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")


def weather(city: str) -> dict[str, Any]:
    """The weather in ``city``."""
    return {"city": city, "celsius": 21}


def failing_tool(city: str) -> dict[str, Any]:
    """A tool that raises with a secret in its message."""
    raise ValueError("db password=hunter2 refused")


async def runner_for(agent: Any) -> InMemoryRunner:
    runner = InMemoryRunner(node=agent) if isinstance(agent, Workflow) else InMemoryRunner(agent=agent)
    await runner.session_service.create_session(app_name=runner.app_name, user_id="u", session_id="s")
    return runner


async def run(agent: Any, message: str = "hi", **kwargs: Any) -> list[Event]:
    runner = await runner_for(agent)
    return [
        event async for event in from_adk(runner, user_id="u", session_id="s", new_message=message, **kwargs)
    ]


def adk_tasks() -> list[asyncio.Task[Any]]:
    """The live asyncio tasks running ADK code (ADK starts one per run for its root node)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "google/adk" in code.co_filename:
            found.append(task)
    return found


# --- 1. the exact event sequence -----------------------------------------------------------------


async def test_a_tool_calling_run_gives_the_exact_sequence() -> None:
    model = ScriptedLlm(
        turns=[
            [
                chunk("Let me "),
                chunk("check."),
                final("Let me check.", call("weather", "call-1", city="Paris")),
            ],
            streamed("It is ", "21 degrees ", "in Paris."),
        ]
    )
    events = await run(LlmAgent(name="assistant", model=model, tools=[weather]), "Weather in Paris?")
    step = "assistant"
    assert events == [
        StepStart(step=step),
        Delta(value="Let me ", step=step),
        Delta(value="check.", step=step),
        ToolCall(id="call-1", name="weather", arguments={"city": "Paris"}, step=step),
        ToolResult(id="call-1", output={"city": "Paris", "celsius": 21}, step=step),
        Delta(value="It is ", step=step),
        Delta(value="21 degrees ", step=step),
        Delta(value="in Paris.", step=step),
        StepEnd(step=step),
        Done(),
    ]
    text = "".join(e.value for e in events if isinstance(e, Delta))
    assert text == "Let me check.It is 21 degrees in Paris.", "every character exactly once"
    assert model.finalized.is_set()


async def test_without_streaming_the_text_is_sent_once() -> None:
    model = ScriptedLlm(turns=[streamed("Hello ", "world.")])
    events = await run(
        LlmAgent(name="a", model=model), run_config=RunConfig(streaming_mode=StreamingMode.NONE)
    )
    assert events == [StepStart(step="a"), Delta(value="Hello world.", step="a"), StepEnd(step="a"), Done()]


async def test_an_aggregate_longer_than_its_chunks_sends_only_the_rest() -> None:
    model = ScriptedLlm(turns=[[chunk("Hel"), chunk("lo"), final("Hello", " world")]])
    events = await run(LlmAgent(name="a", model=model))
    assert [e.value for e in events if isinstance(e, Delta)] == ["Hel", "lo", " world"]


async def test_a_rewritten_aggregate_never_repeats_the_streamed_text() -> None:
    def rewrite(callback_context: Any, llm_response: LlmResponse) -> LlmResponse | None:
        if llm_response.partial:
            return None
        return LlmResponse(content=types.ModelContent(parts=[types.Part(text="Redacted.")]))

    model = ScriptedLlm(turns=[streamed("Secret ", "plan.")])
    events = await run(LlmAgent(name="a", model=model, after_model_callback=rewrite))
    assert [e.value for e in events if isinstance(e, Delta)] == ["Secret ", "plan."]


async def test_a_call_previewed_in_a_partial_chunk_is_sent_once() -> None:
    preview = LlmResponse(
        content=types.ModelContent(parts=[call("weather", "w1", city="Oslo")]), partial=True
    )
    model = ScriptedLlm(turns=[[preview, final(call("weather", "w1", city="Oslo"))], streamed("Mild.")])
    events = await run(LlmAgent(name="a", model=model, tools=[weather]))
    assert [e for e in events if isinstance(e, (ToolCall, ToolResult))] == [
        ToolCall(id="w1", name="weather", arguments={"city": "Oslo"}, step="a"),
        ToolResult(id="w1", output={"city": "Oslo", "celsius": 21}, step="a"),
    ]


async def test_thoughts_are_not_answer_text() -> None:
    thought = types.Part(text="Let me think about greetings.", thought=True)
    model = ScriptedLlm(
        turns=[
            [chunk("Let me think ", thought=True), chunk("Hi "), chunk("there."), final(thought, "Hi there.")]
        ]
    )
    events = await run(LlmAgent(name="a", model=model))
    assert [e for e in events if isinstance(e, Delta)] == [
        Delta(value="Hi ", step="a"),
        Delta(value="there.", step="a"),
    ]


async def test_a_transfer_to_a_sub_agent_is_a_new_step() -> None:
    helper = LlmAgent(
        name="helper", description="helps", model=ScriptedLlm(turns=[streamed("From ", "helper.")])
    )
    root_model = ScriptedLlm(
        turns=[[chunk("Passing on."), final("Passing on.", call("transfer_to_agent", agent_name="helper"))]]
    )
    events = await run(LlmAgent(name="root", model=root_model, sub_agents=[helper]))
    call_event, result_event = events[2], events[3]
    assert isinstance(call_event, ToolCall)
    assert isinstance(result_event, ToolResult)
    assert call_event.id.startswith("adk-"), "ADK fills in the call id"
    assert result_event.id == call_event.id
    assert events == [
        StepStart(step="root"),
        Delta(value="Passing on.", step="root"),
        ToolCall(id=call_event.id, name="transfer_to_agent", arguments={"agent_name": "helper"}, step="root"),
        ToolResult(id=call_event.id, output={"result": None}, step="root"),
        StepEnd(step="root"),
        StepStart(step="helper"),
        Delta(value="From ", step="helper"),
        Delta(value="helper.", step="helper"),
        StepEnd(step="helper"),
        Done(),
    ]


class Opaque:
    def __str__(self) -> str:
        return "<opaque>"


def lookup(city: str) -> dict[str, Any]:
    """Looks ``city`` up; reports an unknown one the way ADK tools report errors."""
    return {"error": f"unknown city {city}"}


def when() -> dict[str, Any]:
    """Returns values that are not JSON."""
    return {"day": datetime.date(2024, 5, 1), "tags": ("a", "b"), "thing": Opaque()}


async def test_tool_errors_and_non_json_outputs() -> None:
    model = ScriptedLlm(
        turns=[[final(call("lookup", "c1", city="Atlantis"), call("when", "c2"))], streamed("ok")]
    )
    events = await run(LlmAgent(name="a", model=model, tools=[lookup, when]))
    assert events == [
        StepStart(step="a"),
        ToolCall(id="c1", name="lookup", arguments={"city": "Atlantis"}, step="a"),
        ToolCall(id="c2", name="when", arguments={}, step="a"),
        ToolResult(id="c1", output={"error": "unknown city Atlantis"}, is_error=True, step="a"),
        ToolResult(id="c2", output={"day": "2024-05-01", "tags": ["a", "b"], "thing": "<opaque>"}, step="a"),
        Delta(value="ok", step="a"),
        StepEnd(step="a"),
        Done(),
    ]


@pytest.mark.filterwarnings("ignore:The `plugins` argument is deprecated:DeprecationWarning")  # AgentTool's
async def test_an_agent_tool_is_one_tool_call_and_result() -> None:
    helper = LlmAgent(
        name="helper", description="helps", model=ScriptedLlm(turns=[streamed("Inner ", "answer.")])
    )
    model = ScriptedLlm(turns=[[final(call("helper", "c1", request="x"))], streamed("Done.")])
    events = await run(LlmAgent(name="root", model=model, tools=[AgentTool(agent=helper)]))
    assert events == [
        StepStart(step="root"),
        ToolCall(id="c1", name="helper", arguments={"request": "x"}, step="root"),
        ToolResult(id="c1", output={"result": "Inner answer."}, step="root"),
        Delta(value="Done.", step="root"),
        StepEnd(step="root"),
        Done(),
    ]


async def test_each_workflow_node_is_a_step_with_its_output() -> None:
    def shout(node_input: str) -> str:
        return node_input.upper()

    def count(node_input: str) -> dict[str, int]:
        return {"chars": len(node_input)}

    drafter = LlmAgent(name="drafter", model=ScriptedLlm(turns=[streamed("Draft ", "one.")]))
    editor = LlmAgent(name="editor", model=ScriptedLlm(turns=[streamed("Final ", "two.")]))
    events = await run(Workflow(name="pipeline", edges=[(START, drafter, editor, shout, count)]))
    assert events == [
        StepStart(step="drafter"),
        Delta(value="Draft ", step="drafter"),
        Delta(value="one.", step="drafter"),
        StepEnd(step="drafter"),
        StepStart(step="editor"),
        Delta(value="Final ", step="editor"),
        Delta(value="two.", step="editor"),
        StepEnd(step="editor"),
        StepStart(step="shout"),
        StepEnd(step="shout", output="FINAL TWO."),
        StepStart(step="count"),
        StepEnd(step="count", output={"chars": 10}),
        Done(),
    ]


@pytest.mark.filterwarnings("ignore:SequentialAgent is deprecated:DeprecationWarning")
async def test_agents_without_a_node_path_are_steps_by_author() -> None:
    first = LlmAgent(name="first", model=ScriptedLlm(turns=[streamed("One. ")]))
    second = LlmAgent(name="second", model=ScriptedLlm(turns=[streamed("Two.")]))
    events = await run(SequentialAgent(name="seq", sub_agents=[first, second]))
    assert events == [
        StepStart(step="first"),
        Delta(value="One. ", step="first"),
        StepEnd(step="first"),
        StepStart(step="second"),
        Delta(value="Two.", step="second"),
        StepEnd(step="second"),
        Done(),
    ]


async def test_a_content_message_and_the_lazy_import() -> None:
    from streamflow.adapters import from_adk as lazy

    assert lazy is from_adk
    runner = await runner_for(LlmAgent(name="a", model=ScriptedLlm(turns=[streamed("ok")])))
    message = types.Content(role="user", parts=[types.Part(text="hi")])
    events = [e async for e in lazy(runner, user_id="u", session_id="s", new_message=message)]
    assert events == [StepStart(step="a"), Delta(value="ok", step="a"), StepEnd(step="a"), Done()]


# --- 2. errors: the deltas before, one Error, one Done -------------------------------------------


def safety_stop() -> list[Any]:
    blocked = final("Hello", error_code="SAFETY", error_message="Blocked by provider policy 7.")
    return [chunk("Hel"), chunk("lo"), blocked]


@pytest.mark.parametrize(
    ("on_error", "message"), [(hide_exception, HIDDEN), (expose_exception, "Blocked by provider policy 7.")]
)
async def test_a_model_error_event_is_one_error_with_adks_code(on_error: Any, message: str) -> None:
    events = await run(LlmAgent(name="a", model=ScriptedLlm(turns=[safety_stop()])), on_error=on_error)
    assert events == [
        StepStart(step="a"),
        Delta(value="Hel", step="a"),
        Delta(value="lo", step="a"),
        Error(message=message, code="SAFETY", step="a"),
        Done(),
    ]


async def test_a_model_that_raises_mid_stream_gives_one_hidden_error() -> None:
    model = ScriptedLlm(turns=[[chunk("Hel"), chunk("lo"), RuntimeError("api key sk-hunter2 rejected")]])
    events = await run(LlmAgent(name="a", model=model))
    assert events == [
        StepStart(step="a"),
        Delta(value="Hel", step="a"),
        Delta(value="lo", step="a"),
        Error(message=HIDDEN, code="RuntimeError", step="a"),
        Done(),
    ]
    assert "hunter2" not in repr(events)
    assert model.finalized.is_set()
    assert adk_tasks() == []


async def test_a_failing_tool_gives_one_error_not_two() -> None:
    model = ScriptedLlm(
        turns=[[chunk("Checking."), final("Checking.", call("failing_tool", "t1", city="Oslo"))]]
    )
    events = await run(LlmAgent(name="a", model=model, tools=[failing_tool]))
    assert events == [
        StepStart(step="a"),
        Delta(value="Checking.", step="a"),
        ToolCall(id="t1", name="failing_tool", arguments={"city": "Oslo"}, step="a"),
        Error(message=HIDDEN, code="ValueError", step="a"),
        Done(),
    ]
    assert "hunter2" not in repr(events)
    exposed = await run(
        LlmAgent(name="a", model=ScriptedLlm(turns=model.turns), tools=[failing_tool]),
        on_error=expose_exception,
    )
    assert [e for e in exposed if isinstance(e, Error)] == [
        Error(message="db password=hunter2 refused", code="ValueError", step="a")
    ]
    assert sum(isinstance(e, Done) for e in exposed) == 1


async def test_a_failing_workflow_node_is_the_failed_step() -> None:
    def explode(node_input: str) -> str:
        raise RuntimeError("token=hunter2")

    drafter = LlmAgent(name="drafter", model=ScriptedLlm(turns=[streamed("Draft.")]))
    events = await run(Workflow(name="pipeline", edges=[(START, drafter, explode)]))
    assert events == [
        StepStart(step="drafter"),
        Delta(value="Draft.", step="drafter"),
        StepEnd(step="drafter"),
        StepStart(step="explode"),
        Error(message=HIDDEN, code="RuntimeError", step="explode"),
        Done(),
    ]
    assert adk_tasks() == []


async def test_a_node_that_succeeds_on_retry_is_no_error() -> None:
    """ADK reports the first attempt's failure as an error event, then retries the node: the
    held-back error is dropped when the retry produces output."""
    from google.adk.workflow import FunctionNode, RetryConfig

    attempts: list[int] = []

    def flaky(node_input: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the first attempt failed")
        return "fetched"

    retry = RetryConfig(max_attempts=2, initial_delay=0.0, max_delay=0.0, jitter=0.0)
    node = FunctionNode(func=flaky, retry_config=retry)
    drafter = LlmAgent(name="drafter", model=ScriptedLlm(turns=[streamed("Draft.")]))
    events = await run(Workflow(name="pipeline", edges=[(START, drafter, node)]))
    assert len(attempts) == 2
    assert events == [
        StepStart(step="drafter"),
        Delta(value="Draft.", step="drafter"),
        StepEnd(step="drafter"),
        StepStart(step="flaky"),
        StepEnd(step="flaky", output="fetched"),
        Done(),
    ]


async def test_a_node_whose_retries_run_out_is_one_error() -> None:
    from google.adk.workflow import FunctionNode, RetryConfig

    def broken(node_input: str) -> str:
        raise ConnectionError("still down: token=hunter2")

    retry = RetryConfig(max_attempts=2, initial_delay=0.0, max_delay=0.0, jitter=0.0)
    events = await run(
        Workflow(name="pipeline", edges=[(START, FunctionNode(func=broken, retry_config=retry))])
    )
    assert events == [
        StepStart(step="broken"),
        Error(message=HIDDEN, code="ConnectionError", step="broken"),
        Done(),
    ]
    assert adk_tasks() == []


async def test_a_workflow_that_goes_on_after_a_models_error_code_is_no_error() -> None:
    """A model stopping with MAX_TOKENS is an error event, but a Workflow runs its next node."""
    truncated = final("Draft", error_code="MAX_TOKENS", error_message="The answer was cut.")
    drafter = LlmAgent(name="drafter", model=ScriptedLlm(turns=[[chunk("Draft"), truncated]]))
    editor = LlmAgent(name="editor", model=ScriptedLlm(turns=[streamed("Edited.")]))
    events = await run(Workflow(name="pipeline", edges=[(START, drafter, editor)]))
    assert [e for e in events if isinstance(e, Error)] == []
    assert events[-3:] == [Delta(value="Edited.", step="editor"), StepEnd(step="editor"), Done()]
    assert "".join(e.value for e in events if isinstance(e, Delta)) == "DraftEdited."


async def test_a_failure_re_raised_while_closing_adks_run_is_swallowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ADK re-raises a node's failure when its run is closed after the root task ended (runners.py
    ``_cleanup_root_task``); after the error event was sent, that raise must not become a second Error."""
    from streamflow.adapters.adk import _close

    async def run_that_failed() -> AsyncGenerator[Any, None]:
        try:
            yield "error event"
        finally:
            raise RuntimeError("the node's failure, again")

    stream = run_that_failed()
    await anext(stream)
    with caplog.at_level("DEBUG", logger="streamflow"):
        await _close(stream, after_error=True)
    assert "re-raised a reported failure" in caplog.text


async def test_without_on_error_an_error_event_raises_adk_error() -> None:
    runner = await runner_for(LlmAgent(name="a", model=ScriptedLlm(turns=[safety_stop()])))
    seen: list[Event] = []

    async def consume() -> None:
        async for event in from_adk(runner, user_id="u", session_id="s", new_message="hi", on_error=None):
            seen.append(event)

    with pytest.raises(AdkError) as raised:
        await consume()
    assert raised.value.code == "SAFETY"
    assert str(raised.value) == "Blocked by provider policy 7."
    assert seen[-1] == Delta(value="lo", step="a"), "no StepEnd: the error ends the step"


async def test_an_exception_before_any_event_is_handled_by_on_error() -> None:
    runner = InMemoryRunner(agent=LlmAgent(name="a", model=ScriptedLlm()))  # no session was created
    events = [e async for e in from_adk(runner, user_id="u", session_id="missing", new_message="hi")]
    assert events == [hide_exception(ValueError()), Done()]


# --- 3. a consumer that stops early ---------------------------------------------------------------


async def test_stopping_after_two_deltas_finalizes_the_model_and_adks_task() -> None:
    model = ScriptedLlm(turns=[[chunk("one "), chunk("two "), HANG, chunk("never")]])
    runner = await runner_for(LlmAgent(name="a", model=model))
    deltas: list[Event] = []
    async with aclosing(from_adk(runner, user_id="u", session_id="s", new_message="hi")) as events:
        async for event in events:
            if isinstance(event, Delta):
                deltas.append(event)
                if len(deltas) == 2:
                    break
        assert adk_tasks(), "ADK's root task is running while the model hangs"
        assert not model.finalized.is_set()
    assert model.finalized.is_set(), "the model's finally ran before aclose() returned"
    assert [t.done() for t in model.tasks] == [True]
    assert adk_tasks() == []
    assert deltas == [Delta(value="one ", step="a"), Delta(value="two ", step="a")]


async def test_cancelling_the_consumer_finalizes_the_model_and_adks_task() -> None:
    model = ScriptedLlm(turns=[[chunk("one "), HANG]])
    runner = await runner_for(LlmAgent(name="a", model=model))

    async def consume() -> None:
        async with aclosing(from_adk(runner, user_id="u", session_id="s", new_message="hi")) as events:
            async for _ in events:
                pass

    consumer = asyncio.create_task(consume())
    assert await anyio.to_thread.run_sync(model.hanging.wait, 5)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert model.finalized.is_set()
    assert adk_tasks() == []


# --- 4. through a real server, with an early client disconnect -------------------------------------


class App:
    """An app streaming one ADK run per request; ``/tasks`` lists the ADK tasks left in the server loop."""

    def __init__(self) -> None:
        self.model = ScriptedLlm(turns=[[chunk("one "), chunk("two "), chunk("three "), HANG]])
        self.runner = InMemoryRunner(agent=LlmAgent(name="a", model=self.model))
        self.app = Starlette(routes=[Route("/chat", self.chat), Route("/tasks", self.tasks)])

    async def chat(self, request: Request) -> EventStreamResponse:
        service = self.runner.session_service
        await service.create_session(app_name=self.runner.app_name, user_id="u", session_id="s")
        return EventStreamResponse(from_adk(self.runner, user_id="u", session_id="s", new_message="hi"))

    async def tasks(self, request: Request) -> JSONResponse:
        return JSONResponse([task.get_name() for task in adk_tasks()])


@pytest.fixture
def app() -> Iterator[tuple[App, str]]:
    app = App()
    with serve(app.app) as url:
        yield app, url


async def test_an_early_disconnect_finalizes_the_model_and_adks_task(app: tuple[App, str]) -> None:
    server, url = app
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", f"{url}/chat") as response:
            events = aiter_events(response.aiter_bytes())
            received = [await anext(events) for _ in range(3)]
            assert await anyio.to_thread.run_sync(server.model.hanging.wait, 5)
            assert (await client.get(f"{url}/tasks")).json() != []
            await events.aclose()
        closed_at = time.monotonic()
        assert received == [StepStart(step="a"), Delta(value="one ", step="a"), Delta(value="two ", step="a")]
        assert server.model.finalized.wait(1.0), "the model's finally did not run within 1 s"
        assert time.monotonic() - closed_at < 1.0
        deadline = time.monotonic() + 1.0
        while (left := (await client.get(f"{url}/tasks")).json()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert left == [], "an ADK task outlived the request"
        assert all(task.done() for task in server.model.tasks)


# --- 5. the framework missing ---------------------------------------------------------------------


def test_importing_without_adk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "google.adk" or m.startswith("google.adk.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "import google.adk..." fails
    monkeypatch.delitem(sys.modules, "streamflow.adapters.adk")
    with pytest.raises(ImportError, match=r'pip install "streamflow\[adk\]"'):
        importlib.import_module("streamflow.adapters.adk")
    with pytest.raises(ImportError, match=r"streamflow\[adk\]"):
        from streamflow.adapters import from_adk  # noqa: F401
