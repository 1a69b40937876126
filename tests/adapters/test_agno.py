"""``from_agno``: real Agno workflows and agents with a scripted model, fully offline."""

from __future__ import annotations

import asyncio
import gc
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from agno.agent import Agent
from agno.run.workflow import StepStartedEvent, WorkflowCompletedEvent
from agno.workflow import Parallel, Step, Steps, Workflow
from agno.workflow.types import HumanReview, StepInput, StepOutput
from starlette.applications import Starlette
from starlette.requests import Request
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
from streamflow.adapters.agno import AgnoError, AgnoStepSkipped, _agno_tasks, from_agno
from streamflow.client import aiter_events
from tests.adapters._agno_scripted import HANG, Call, Script, ScriptedModel, scripted
from tests.conftest import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HIDDEN = hide_exception(RuntimeError()).message
SQL = "SELECT COUNT(*) FROM employees"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, loopback_only: None) -> None:
    """No API keys, no telemetry, and no connection beyond loopback (``loopback_only``)."""
    for name in ("OPENAI_API_KEY", "AGNO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGNO_TELEMETRY", "false")


# --- a Text-to-BI workflow, the shape the article streams: an agent step, then a function step ---------


def run_query(sql: str) -> int:
    """Run a SQL query and return its single value."""
    return 42


def report(step_input: StepInput) -> StepOutput:
    return StepOutput(content=f"## Report\n{step_input.previous_step_content}")


def analyst(script: Script) -> Agent:
    return Agent(name="analyst", model=ScriptedModel(script=script), tools=[run_query], telemetry=False)


def bi_script(**kwargs: Any) -> Script:
    return Script([Call("run_query", {"sql": SQL}, "call_1")], ["There are ", "42 employees."], **kwargs)


def bi_workflow(script: Script) -> Workflow:
    return Workflow(
        name="text_to_bi",
        steps=[Step(name="analyse", agent=analyst(script)), Step(name="report", executor=report)],
        telemetry=False,
    )


def agent(*turns: Any, name: str = "writer", **kwargs: Any) -> tuple[Agent, Script]:
    model, script = scripted(*turns, **kwargs)
    return Agent(name=name, model=model, telemetry=False), script


def fail(step_input: StepInput) -> StepOutput:
    raise ValueError("password=hunter2 refused")


async def collect(stream: Any, **kwargs: Any) -> list[Event]:
    return [event async for event in from_agno(stream, **kwargs)]


def arun(runnable: Agent | Workflow, **kwargs: Any) -> Any:
    if isinstance(runnable, Workflow):
        return runnable.arun(input="How many employees?", stream=True, stream_events=True, **kwargs)
    return runnable.arun("How many employees?", stream=True, stream_events=True, **kwargs)


BI_EVENTS: list[Event] = [
    StepStart(step="analyse", index=1, total=2),
    ToolCall(id="call_1", name="run_query", arguments={"sql": SQL}, step="analyse"),
    ToolResult(id="call_1", output="42", step="analyse"),
    Delta(value="There are ", step="analyse"),
    Delta(value="42 employees.", step="analyse"),
    StepEnd(step="analyse"),
    StepStart(step="report", index=2, total=2),
    Delta(value="## Report\nThere are 42 employees.", step="report"),
    StepEnd(step="report"),
    Done(),
]


# --- the mapping ---------------------------------------------------------------------------------------


async def test_a_two_step_workflow_gives_the_exact_sequence() -> None:
    events = await collect(arun(bi_workflow(bi_script())), total_steps=2)
    assert events == BI_EVENTS
    streamed = "".join(e.value for e in events if isinstance(e, Delta) and e.step == "analyse")
    assert streamed == "There are 42 employees.", "the model's text, exactly once"


async def test_an_agent_run_gives_the_exact_sequence() -> None:
    script = bi_script()
    events = await collect(arun(analyst(script)))
    assert events == [
        ToolCall(id="call_1", name="run_query", arguments={"sql": SQL}),
        ToolResult(id="call_1", output="42"),
        Delta(value="There are "),
        Delta(value="42 employees."),
        Done(),
    ]
    assert script.calls == 2


async def test_a_sync_run_is_read_in_a_worker_thread_with_the_same_events() -> None:
    workflow = bi_workflow(bi_script())
    stream = workflow.run(input="How many employees?", stream=True, stream_events=True)
    assert await collect(stream, total_steps=2) == BI_EVENTS


async def test_without_executor_events_a_steps_text_arrives_once_when_it_completes() -> None:
    writer, _ = agent(["It is ", "sunny."])
    steps: list[Any] = [Step(name="write", agent=writer)]
    workflow = Workflow(name="w", steps=steps, stream_executor_events=False, telemetry=False)
    assert await collect(arun(workflow)) == [
        StepStart(step="write", index=1),
        Delta(value="It is sunny.", step="write"),
        StepEnd(step="write"),
        Done(),
    ]


async def test_structured_output_is_the_step_end_output_and_stop_ends_the_step() -> None:
    def rows(step_input: StepInput) -> StepOutput:
        return StepOutput(content={"rows": [[42]], "columns": ["count"]})

    def halt(step_input: StepInput) -> StepOutput:
        return StepOutput(content="No data: stopping.", stop=True)

    workflow = Workflow(name="w", steps=[rows, halt, report], telemetry=False)
    assert await collect(arun(workflow)) == [
        StepStart(step="rows", index=1),
        StepEnd(step="rows", output={"rows": [[42]], "columns": ["count"]}),
        StepStart(step="halt", index=2),
        Delta(value="No data: stopping.", step="halt"),
        StepEnd(step="halt"),  # Agno sends no StepCompleted after stop=True
        Done(),
    ]


async def test_a_failing_tool_is_an_error_result_and_the_run_goes_on() -> None:
    def broken(sql: str) -> int:
        """A tool that fails."""
        raise ValueError("syntax error")

    model, _ = scripted([Call("broken", {"sql": "SELEC"}, "c1")], ["Sorry."])
    events = await collect(arun(Agent(model=model, tools=[broken], telemetry=False)))
    assert events == [
        ToolCall(id="c1", name="broken", arguments={"sql": "SELEC"}),
        ToolResult(id="c1", output="syntax error", is_error=True),
        Delta(value="Sorry."),
        Done(),
    ]


async def test_a_nested_workflow_nests_its_steps() -> None:
    writer, _ = agent(["inner text"])
    inner = Workflow(name="inner", steps=[Step(name="write", agent=writer)], telemetry=False)
    workflow = Workflow(name="outer", steps=[Step(name="sub", workflow=inner), report], telemetry=False)
    assert await collect(arun(workflow), total_steps=2) == [
        StepStart(step="sub", index=1, total=2),
        StepStart(step="write", index=1),
        Delta(value="inner text", step="write"),
        StepEnd(step="write"),
        StepEnd(step="sub"),  # its StepCompleted repeats the text: not sent again
        StepStart(step="report", index=2, total=2),
        Delta(value="## Report\ninner text", step="report"),
        StepEnd(step="report"),
        Done(),
    ]


async def test_a_parallel_is_one_step_and_its_branches_name_their_deltas() -> None:
    left, _ = agent(["L1 ", "L2 "], name="left")
    right, _ = agent(["R1 ", "R2 "], name="right")
    branches = Parallel(Step(name="left", agent=left), Step(name="right", agent=right), name="both")  # type: ignore[arg-type]
    events = await collect(arun(Workflow(name="w", steps=[branches], telemetry=False)))
    assert events[0] == StepStart(step="both", index=1)
    assert events[-2:] == [StepEnd(step="both"), Done()]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert [d.value for d in deltas if d.step == "left"] == ["L1 ", "L2 "]
    assert [d.value for d in deltas if d.step == "right"] == ["R1 ", "R2 "]
    assert len(events) == 7


TEXT_ONLY: list[Event] = [
    Delta(value="There are ", step="analyse"),
    Delta(value="42 employees.", step="analyse"),
    Delta(value="## Report\nThere are 42 employees.", step="report"),
    Done(),
]


async def test_without_stream_events_only_the_text_is_streamed() -> None:
    stream = bi_workflow(bi_script()).arun(input="q", stream=True)
    assert await collect(stream) == TEXT_ONLY


async def test_agno_quirk_stream_intermediate_steps_is_ignored_by_agno_3() -> None:
    """Agno 2's ``stream_intermediate_steps`` lands in ``**kwargs`` and does nothing: no steps, no tools."""
    workflow = bi_workflow(bi_script())
    stream = workflow.arun(input="q", stream=True, stream_intermediate_steps=True)  # type: ignore[call-overload]
    assert await collect(stream) == TEXT_ONLY


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_error", "message", "code"),
    [(hide_exception, HIDDEN, "internal_error"), (expose_exception, "key=sk-123 rejected", "AgnoError")],
)
async def test_an_error_mid_stream_gives_the_deltas_one_error_and_done(
    on_error: Any, message: str, code: str
) -> None:
    writer, script = agent(["Hel", "lo", RuntimeError("key=sk-123 rejected"), "never"])
    events = await collect(arun(writer), on_error=on_error)
    assert events == [Delta(value="Hel"), Delta(value="lo"), Error(message=message, code=code), Done()]
    assert script.finalized.is_set()


async def test_a_step_failing_after_its_text_ends_the_stream_before_agnos_retry() -> None:
    """The retry would stream the text again: the stream ends, and the retry never starts."""
    writer, script = agent(["Hel", RuntimeError("boom")], ["Hello again"])
    workflow = Workflow(name="w", steps=[Step(name="write", agent=writer), report], telemetry=False)
    assert await collect(arun(workflow)) == [
        StepStart(step="write", index=1),
        Delta(value="Hel", step="write"),
        Error(message=HIDDEN, code="internal_error", step="write"),
        Done(),
    ]
    assert script.calls == 1


async def test_a_retry_before_any_text_is_invisible() -> None:
    script = Script([RuntimeError("connection reset")], *bi_script().turns)
    assert await collect(arun(bi_workflow(script)), total_steps=2) == BI_EVENTS
    assert script.calls == 3


async def test_a_failed_step_with_on_error_fail_is_one_error() -> None:
    workflow = Workflow(
        name="w",
        steps=[
            Step(name="load", executor=fail, max_retries=0, human_review=HumanReview(on_error="fail")),
            report,
        ],
        telemetry=False,
    )
    events = await collect(arun(workflow), on_error=expose_exception)
    assert events == [
        StepStart(step="load", index=1),
        Error(message="password=hunter2 refused", code="AgnoError", step="load"),
        Done(),
    ]


async def test_without_on_error_an_agno_error_event_raises_agno_error() -> None:
    writer, _ = agent([RuntimeError("boom")])
    with pytest.raises(AgnoError, match="boom") as raised:
        await collect(arun(writer), on_error=None)
    assert raised.value.error_type == "RuntimeError"


# --- failed steps that Agno skips ---------------------------------------------------------------------------


async def test_agno_quirk_a_failed_step_is_retried_then_skipped_silently() -> None:
    """Agno's default: 3 retries, then the step is skipped; the run completes and nothing says so."""
    attempts = []

    def flaky(step_input: StepInput) -> StepOutput:
        attempts.append(1)
        raise ValueError("no database")

    workflow = Workflow(name="w", steps=[Step(name="load", executor=flaky), report], telemetry=False)
    raw = [event async for event in arun(workflow)]
    names = [(type(e).__name__, getattr(e, "step_name", None)) for e in raw]
    assert names == [
        ("WorkflowStartedEvent", None),
        ("StepStartedEvent", "load"),  # no StepCompleted, no StepError, no WorkflowError
        ("StepStartedEvent", "report"),
        ("StepOutputEvent", "report"),
        ("StepCompletedEvent", "report"),
        ("WorkflowCompletedEvent", None),
    ]
    assert len(attempts) == 4
    assert isinstance(raw[-1], WorkflowCompletedEvent)
    assert raw[-1].content == "## Report\nStep skipped due to error: no database"


async def test_a_skipped_step_ends_the_stream_with_an_error() -> None:
    workflow = Workflow(
        name="w", steps=[Step(name="load", executor=fail, max_retries=1), report], telemetry=False
    )
    assert await collect(arun(workflow), total_steps=2) == [
        StepStart(step="load", index=1, total=2),
        Error(message=HIDDEN, code="step_skipped", step="load"),
        Done(),
    ]


async def test_a_skipped_last_step_is_noticed_when_the_workflow_completes() -> None:
    writer, _ = agent(["Done."])
    steps: list[Any] = [Step(name="write", agent=writer), Step(name="load", executor=fail, max_retries=0)]
    assert await collect(arun(Workflow(name="w", steps=steps, telemetry=False))) == [
        StepStart(step="write", index=1),
        Delta(value="Done.", step="write"),
        StepEnd(step="write"),
        StepStart(step="load", index=2),
        Error(message=HIDDEN, code="step_skipped", step="load"),
        Done(),
    ]


async def test_a_skipped_step_is_agno_step_skipped_for_on_error() -> None:
    seen: list[Exception] = []

    def on_error(exc: Exception) -> Error:
        seen.append(exc)
        return expose_exception(exc)

    workflow = Workflow(
        name="w", steps=[Step(name="load", executor=fail, max_retries=0), report], telemetry=False
    )
    events = await collect(arun(workflow), on_error=on_error)
    assert events[-2:] == [
        Error(message="Agno skipped the step 'load' after it failed", code="step_skipped", step="load"),
        Done(),
    ]
    assert isinstance(seen[0], AgnoStepSkipped)
    assert seen[0].step == "load"
    assert isinstance(seen[0].event, StepStartedEvent)


@pytest.mark.parametrize("how", ["on_error=skip", "skip_on_failure"])
async def test_skipped_steps_ignore_marks_the_step_and_streams_on(how: str) -> None:
    options: dict[str, Any] = {"skip_on_failure": True} if how == "skip_on_failure" else {}
    load = Step(name="load", executor=fail, max_retries=0, **options)
    workflow = Workflow(name="w", steps=[load, report], telemetry=False)
    events = await collect(arun(workflow), skipped_steps="ignore")
    skipped_text = (
        "Step skipped due to error: password=hunter2 refused"
        if not options
        else "Step load failed but skipped"
    )
    assert events == [
        StepStart(step="load", index=1),
        StepEnd(step="load", output={"skipped": True}),
        StepStart(step="report", index=2),
        Delta(value=f"## Report\n{skipped_text}", step="report"),  # Agno's text, as the next step got it
        StepEnd(step="report"),
        Done(),
    ]


async def test_a_step_that_a_steps_container_swallows_is_skipped_too() -> None:
    writer, script = agent(["never"])
    group = Steps(
        name="group", steps=[Step(name="load", executor=fail, max_retries=0), Step(name="w", agent=writer)]
    )
    workflow = Workflow(name="w", steps=[group, report], telemetry=False)
    assert await collect(arun(workflow)) == [
        StepStart(step="load"),  # inside a container: Agno's index is a tuple
        Error(message=HIDDEN, code="step_skipped", step="load"),
        Done(),
    ]
    assert script.calls == 0


# --- closing -------------------------------------------------------------------------------------------


def endless(delay: float | None = 0.0) -> Script:
    return Script((f"t{i} " for i in itertools.count()), delay=delay)


def run_of(kind: str, script: Script) -> Any:
    writer = analyst(script)
    if kind == "workflow":
        return arun(Workflow(name="w", steps=[Step(name="write", agent=writer), report], telemetry=False))
    return arun(writer)


@pytest.mark.parametrize("kind", ["workflow", "agent"])
async def test_stopping_after_two_deltas_closes_the_model_before_aclose_returns(kind: str) -> None:
    script = endless()
    tasks_before = asyncio.all_tasks()
    deltas = []
    async with aclosing(from_agno(run_of(kind, script))) as events:
        async for event in events:
            if isinstance(event, Delta):
                deltas.append(event.value)
                if len(deltas) == 2:
                    break
    assert script.finalized.is_set(), "the model's finally did not run before aclose() returned"
    assert script.finalized_in is script.started_in, "closed by a garbage-collector task"
    assert asyncio.all_tasks() == tasks_before, "a task was left behind"
    assert all(task.done() for task in _agno_tasks()), "Agno's persistence task is still running"
    assert deltas == ["t0 ", "t1 "]


async def test_stopping_a_sync_run_closes_the_model_in_its_thread() -> None:
    script = endless()
    writer = Agent(name="writer", model=ScriptedModel(script=script), telemetry=False)
    workflow = Workflow(name="w", steps=[Step(name="write", agent=writer)], telemetry=False)
    stream = workflow.run(input="q", stream=True, stream_events=True)
    async with aclosing(from_agno(stream)) as events:
        received = [await anext(events) for _ in range(3)]
    assert received == [
        StepStart(step="write", index=1),
        Delta(value="t0 ", step="write"),
        Delta(value="t1 ", step="write"),
    ]
    assert script.finalized.is_set()


async def test_agno_quirk_closing_agnos_stream_leaves_the_model_to_the_garbage_collector() -> None:
    script = endless()
    stream = run_of("workflow", script)
    async for event in stream:
        if getattr(event, "content", None) == "t1 ":
            break
    await stream.aclose()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not script.finalized.is_set()
    del stream, event
    gc.collect()
    for _ in range(50):
        await asyncio.sleep(0)
    assert script.finalized.is_set()
    assert script.finalized_in is not script.started_in  # a finalizer task did it


async def test_cancelling_the_consumer_closes_the_model() -> None:
    writer, script = agent(["Hel", "lo", HANG])
    received: list[Event] = []

    async def consume() -> None:
        async for event in from_agno(
            arun(Workflow(name="w", steps=[Step(name="writer", agent=writer)], telemetry=False))
        ):
            received.append(event)

    task = asyncio.ensure_future(consume())
    assert await asyncio.to_thread(script.hanging.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert script.finalized.is_set()
    assert received == [
        StepStart(step="writer", index=1),
        Delta(value="Hel", step="writer"),
        Delta(value="lo", step="writer"),
    ]


class Server:
    """The workflow behind a real server: a disconnect finds the stream either waiting for the model
    (``delay``: it is cancelled there) or, with a model that never waits and a one-event buffer,
    suspended at a yield while the transport waits to send (it is closed there)."""

    def __init__(self, delay: float | None) -> None:
        self.script = endless(delay)
        self.buffer_size = 64 * 1024 if delay else 1
        self.loop: asyncio.AbstractEventLoop | None = None

    async def query(self, request: Request) -> EventStreamResponse:
        self.loop = asyncio.get_running_loop()
        message = (await request.json())["message"]
        workflow = Workflow(
            name="bi", steps=[Step(name="write", agent=analyst(self.script)), report], telemetry=False
        )
        stream = workflow.arun(input=message, stream=True, stream_events=True)
        return EventStreamResponse(from_agno(stream, total_steps=2), buffer_size=self.buffer_size)

    def tasks(self) -> list[str]:
        async def others() -> list[str]:
            return [repr(t.get_coro()) for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(others(), self.loop).result(5)


@pytest.fixture(params=[0.01, None], ids=["model-waiting", "stream-at-a-yield"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Server, str]]:
    state = Server(request.param)
    with serve(Starlette(routes=[Route("/workflow/query", state.query, methods=["POST"])])) as url:
        yield state, url


async def test_a_client_disconnect_closes_the_model_within_a_second(server: tuple[Server, str]) -> None:
    state, url = server
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", f"{url}/workflow/query", json={"message": "How many?"}) as response,
    ):
        events: AsyncIterator[Event] = aiter_events(response.aiter_bytes())
        received = [await anext(events) for _ in range(3)]
        await events.aclose()  # type: ignore[attr-defined]
    closed_at = time.monotonic()
    assert state.script.finalized.wait(1.0), "the model's finally did not run within 1 s"
    assert time.monotonic() - closed_at < 1.0
    assert state.script.finalized_in is state.script.started_in, "closed by a garbage-collector task"
    for _ in range(100):  # Agno's persistence task may need a moment
        leftovers = [t for t in state.tasks() if "athrow" in t or "aclose" in t or "_persist" in t]
        if not leftovers:
            break
        await asyncio.sleep(0.01)
    assert leftovers == [], "a generator finalizer or Agno persistence task was left"
    assert received == [
        StepStart(step="write", index=1, total=2),
        Delta(value="t0 ", step="write"),
        Delta(value="t1 ", step="write"),
    ]


# --- arguments and packaging ------------------------------------------------------------------------------


async def test_bad_arguments_are_refused_at_once() -> None:
    workflow = bi_workflow(bi_script())
    not_streaming = workflow.arun(input="q")
    with pytest.raises(TypeError, match="stream=True"):
        from_agno(not_streaming)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Workflow"):
        from_agno(workflow)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="skipped_steps"):
        from_agno([], skipped_steps="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        from_agno([], total_steps=0)


def test_a_missing_agno_is_an_import_error_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['agno'] = None\n"
        "for how in ('from streamflow.adapters import from_agno', 'import streamflow.adapters.agno'):\n"
        "    try:\n"
        "        exec(how)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
        "    else:\n"
        "        print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ['from_agno needs agno: pip install "streamflow[agno]"'] * 2


def test_the_lazy_attribute_is_the_adapter() -> None:
    from streamflow import adapters

    assert adapters.from_agno is from_agno
