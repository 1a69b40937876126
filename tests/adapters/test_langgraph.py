"""``from_langgraph``: real LangGraph graphs with LangChain's fake chat models, fully offline."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt
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
from streamflow.adapters.langgraph import from_langgraph
from streamflow.client import aiter_events
from tests.adapters._langgraph_scripted import ScriptedChatModel, split
from tests.conftest import serve

pytestmark = pytest.mark.anyio

# LangSmith tracing is the only thing in langchain-core/langgraph that could phone home; it
# reads these once (lru_cache), so they are set before any run.
for _name in ("LANGSMITH_TRACING_V2", "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
    os.environ[_name] = "false"

HIDDEN = hide_exception(RuntimeError())
USER = {"messages": [("user", "hi")]}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, loopback_only: None) -> None:
    """No API keys, and no connection beyond loopback (``loopback_only``)."""
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


# --- graphs ---------------------------------------------------------------------------------------


def agent(model: BaseChatModel) -> Callable[[MessagesState], Awaitable[dict[str, Any]]]:
    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    return agent


def one_node_graph(model: BaseChatModel, node: Callable[..., Any] | None = None) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("agent", node or agent(model))
    graph.add_edge(START, "agent")
    graph.add_edge("agent", END)
    return graph.compile()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def weather(city: str) -> str:
    """The weather in ``city``."""
    raise ValueError("db password=hunter2 refused")


def tool_graph(model: BaseChatModel) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent(model.bind_tools([add, weather])))  # type: ignore[arg-type]
    graph.add_node("tools", ToolNode([add, weather], handle_tool_errors="weather service unavailable"))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


async def run(graph: Any, graph_input: Any = USER, **kwargs: Any) -> list[Event]:
    return [event async for event in from_langgraph(graph, graph_input, **kwargs)]


def deltas(text: str, step: str) -> list[Event]:
    """The deltas of ``text`` streamed by the fake models (their empty chunks send nothing)."""
    return [Delta(value=chunk, step=step) for chunk in split(text) if chunk]


def text_of(events: list[Event], step: str | None = None) -> str:
    return "".join(e.value for e in events if isinstance(e, Delta) and (step is None or e.step == step))


def assert_well_formed(events: list[Event]) -> None:
    """Steps never overlap and every one is closed; text and tool events are in the open step."""
    assert events.count(Done()) == 1
    assert events[-1] == Done()
    open_step: str | None = None
    for event in events[:-1]:
        if isinstance(event, StepStart):
            assert open_step is None, f"{event.step} starts inside {open_step}"
            open_step = event.step
        elif isinstance(event, StepEnd):
            assert event.step == open_step
            open_step = None
        elif isinstance(event, Delta | ToolCall | ToolResult):
            assert event.step == open_step
    assert open_step is None


def framework_tasks() -> list[asyncio.Task[Any]]:
    """The live tasks running LangGraph or LangChain code, or the adapter's own pump."""
    found = []
    for task in asyncio.all_tasks():
        filename = getattr(getattr(task.get_coro(), "cr_code", None), "co_filename", "")
        if any(part in filename for part in ("/langgraph/", "/langchain_core/", "adapters/langgraph.py")):
            found.append(task)
    return found


# --- 1. exact event sequences ---------------------------------------------------------------------

TEXT = "Hello  world,\nhow are you?"


@pytest.mark.slow
async def test_a_one_node_graph_streams_the_text_exactly_once() -> None:
    model = GenericFakeChatModel(messages=iter([TEXT]))  # LangChain's own fake, unmodified
    events = await run(one_node_graph(model))
    assert split(TEXT) == ["Hello", " ", "", " ", "world,", "\n", "how", " ", "are", " ", "you?"]
    assert events == [StepStart(step="agent"), *deltas(TEXT, "agent"), StepEnd(step="agent"), Done()]
    assert text_of(events) == TEXT, "the final AIMessage (messages and updates modes) is not sent again"


@pytest.mark.slow
async def test_a_tool_calling_run_gives_the_exact_sequence() -> None:
    model = ScriptedChatModel(
        messages=iter(
            [
                AIMessage(
                    "Let me check.",
                    tool_calls=[
                        {"name": "add", "args": {"a": 2, "b": 3}, "id": "call_add"},
                        {"name": "weather", "args": {"city": "Paris"}, "id": "call_weather"},
                    ],
                ),
                AIMessage("2 + 3 = 5; no weather today."),
            ]
        )
    )
    events = await run(tool_graph(model))
    assert events == [
        StepStart(step="agent"),
        *deltas("Let me check.", "agent"),
        ToolCall(id="call_add", name="add", arguments={"a": 2, "b": 3}, step="agent"),
        ToolCall(id="call_weather", name="weather", arguments={"city": "Paris"}, step="agent"),
        StepEnd(step="agent"),
        StepStart(step="tools"),
        ToolResult(id="call_add", output="5", step="tools"),
        ToolResult(id="call_weather", output="weather service unavailable", is_error=True, step="tools"),
        StepEnd(step="tools"),
        StepStart(step="agent"),
        *deltas("2 + 3 = 5; no weather today.", "agent"),
        StepEnd(step="agent"),
        Done(),
    ]
    assert text_of(events) == "Let me check.2 + 3 = 5; no weather today."


@pytest.mark.slow
async def test_each_node_run_is_a_step_even_without_messages() -> None:
    def plan(state: MessagesState) -> dict[str, Any]:
        return {}  # a router-like node: an update, no message

    def review(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage("Looks good.")]}  # a message no model streamed

    model = ScriptedChatModel(messages=iter(["Draft ready."]))
    graph = StateGraph(MessagesState)
    graph.add_node("plan", plan)
    graph.add_node("write", agent(model))
    graph.add_node("review", review)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "write")
    graph.add_edge("write", "review")
    graph.add_edge("review", END)
    assert await run(graph.compile()) == [
        StepStart(step="plan"),
        StepEnd(step="plan"),
        StepStart(step="write"),
        *deltas("Draft ready.", "write"),
        StepEnd(step="write"),
        StepStart(step="review"),
        Delta(value="Looks good.", step="review"),
        StepEnd(step="review"),
        Done(),
    ]


@pytest.mark.slow
async def test_a_node_returning_a_rebuilt_message_does_not_repeat_the_streamed_text() -> None:
    model = ScriptedChatModel(messages=iter(["The answer is 42."]))

    async def rewrap(state: MessagesState) -> dict[str, Any]:
        reply = await model.ainvoke(state["messages"])
        # New messages (new ids): LangGraph's messages mode sends both whole.
        return {"messages": [AIMessage(reply.content), AIMessage(" (checked)")]}

    events = await run(one_node_graph(model, rewrap))
    assert events == [
        StepStart(step="agent"),
        *deltas("The answer is 42.", "agent"),
        Delta(value=" (checked)", step="agent"),
        StepEnd(step="agent"),
        Done(),
    ]


@pytest.mark.slow
async def test_a_subgraphs_tokens_and_tools_belong_to_the_step_of_its_node() -> None:
    model = ScriptedChatModel(
        messages=iter(
            [
                AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}]),
                AIMessage("Sum: 5."),
                AIMessage("Summary."),
            ]
        )
    )
    inner = tool_graph(model)  # agent <-> tools, as a node of the outer graph

    def route(state: MessagesState) -> dict[str, Any]:
        return {}

    graph = StateGraph(MessagesState)
    graph.add_node("route", route)
    graph.add_node("research", inner)
    graph.add_node("write", agent(model))
    graph.add_edge(START, "route")
    graph.add_edge("route", "research")
    graph.add_edge("research", "write")
    graph.add_edge("write", END)
    # The outer update of "research" repeats the whole conversation: nothing of it is sent again.
    assert await run(graph.compile()) == [
        StepStart(step="route"),
        StepEnd(step="route"),
        StepStart(step="research"),
        ToolCall(id="call_1", name="add", arguments={"a": 2, "b": 3}, step="research"),
        ToolResult(id="call_1", output="5", step="research"),
        *deltas("Sum: 5.", "research"),
        StepEnd(step="research"),
        StepStart(step="write"),
        Delta(value="Summary.", step="write"),
        StepEnd(step="write"),
        Done(),
    ]


@pytest.mark.slow
async def test_parallel_nodes_interleave_in_steps_that_never_overlap() -> None:
    texts = {"left": "a b c d e f", "right": "u v w x y z"}
    graph = StateGraph(MessagesState)
    for name, text in texts.items():
        graph.add_node(name, agent(ScriptedChatModel(messages=iter([text]), delay=0.005)))
        graph.add_edge(START, name)
        graph.add_edge(name, END)
    events = await run(graph.compile())
    assert_well_formed(events)
    for name, text in texts.items():
        assert text_of(events, name) == text
    starts = [e.step for e in events if isinstance(e, StepStart)]
    assert set(starts) == {"left", "right"}


@pytest.mark.slow
async def test_non_json_arguments_and_outputs_are_converted_not_fatal() -> None:
    when = datetime(2024, 5, 1, 12, 30)

    def act(state: MessagesState) -> dict[str, Any]:
        call = {"name": "schedule", "args": {"when": when, "tags": ("a", "b")}, "id": "c1"}
        result = [{"type": "text", "text": "booked"}, {"type": "text", "text": " at noon"}]
        return {"messages": [AIMessage("", tool_calls=[call]), ToolMessage(result, tool_call_id="c1")]}

    events = await run(one_node_graph(GenericFakeChatModel(messages=iter([])), act))
    assert events == [
        StepStart(step="agent"),
        ToolCall(
            id="c1", name="schedule", arguments={"when": when.isoformat(), "tags": ["a", "b"]}, step="agent"
        ),
        ToolResult(
            id="c1",
            output=[{"type": "text", "text": "booked"}, {"type": "text", "text": " at noon"}],
            step="agent",
        ),
        StepEnd(step="agent"),
        Done(),
    ]


@pytest.mark.slow
async def test_an_interrupt_ends_the_stream_and_a_command_resumes_it() -> None:
    def ask(state: MessagesState) -> dict[str, Any]:
        answer = interrupt("approve?")
        return {"messages": [AIMessage(f"approved: {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t1"}}
    assert await run(graph, USER, config=config) == [Done()]  # the interrupted node sent no update
    assert await run(graph, Command(resume="yes"), config=config) == [
        StepStart(step="ask"),
        Delta(value="approved: yes", step="ask"),
        StepEnd(step="ask"),
        Done(),
    ]


@pytest.mark.slow
async def test_the_example_apps_graph_streams_a_tool_call_then_the_answer() -> None:
    path = Path(__file__).parents[2] / "examples" / "adapters" / "langgraph_app.py"
    spec = importlib.util.spec_from_file_location("langgraph_app_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    events = await run(example.graph)
    assert_well_formed(events)
    assert [e for e in events if isinstance(e, ToolCall | ToolResult)] == [
        ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"}, step="agent"),
        ToolResult(id="call_1", output="21 °C and sunny", step="tools"),
    ]
    assert text_of(events) == "It is 21 °C and sunny in Paris."


# --- 2. errors ------------------------------------------------------------------------------------


def failing_after_two_chunks(model: BaseChatModel) -> Callable[[MessagesState], Awaitable[dict[str, Any]]]:
    async def agent(state: MessagesState) -> dict[str, Any]:
        count = 0
        async with aclosing(model.astream(state["messages"])) as chunks:  # type: ignore[type-var]
            async for _ in chunks:
                count += 1
                if count == 2:
                    raise RuntimeError("db password=hunter2 refused")
        return {}

    return agent


@pytest.mark.slow
@pytest.mark.parametrize(
    ("on_error", "error"),
    [
        (hide_exception, HIDDEN),
        (expose_exception, Error(message="db password=hunter2 refused", code="RuntimeError")),
    ],
)
async def test_a_node_raising_mid_stream_gives_the_deltas_then_one_error(on_error: Any, error: Error) -> None:
    model = ScriptedChatModel(messages=iter(["one two three"]))
    events = await run(one_node_graph(model, failing_after_two_chunks(model)), on_error=on_error)
    assert events == [
        StepStart(step="agent"),
        Delta(value="one", step="agent"),
        Delta(value=" ", step="agent"),
        error.model_copy(update={"step": "agent"}),  # the failed step, with no StepEnd
        Done(),
    ]
    assert model.log == ["start", "finally"]


@pytest.mark.slow
async def test_without_on_error_the_nodes_exception_propagates() -> None:
    model = ScriptedChatModel(messages=iter(["one two three"]))
    graph = one_node_graph(model, failing_after_two_chunks(model))
    events: list[Event] = []

    async def consume() -> None:
        async for event in from_langgraph(graph, USER, on_error=None):
            events.append(event)

    with pytest.raises(RuntimeError, match="hunter2"):
        await consume()
    assert events == [
        StepStart(step="agent"),
        Delta(value="one", step="agent"),
        Delta(value=" ", step="agent"),
    ]


# --- 3. a consumer that stops early ---------------------------------------------------------------


class Watched:
    """A one-node graph whose model hangs after three chunks; records the node's task and finally."""

    def __init__(self) -> None:
        self.model = ScriptedChatModel(messages=iter(["one two three four"]), hang_after=3)
        self.node_tasks: list[asyncio.Task[Any]] = []
        self.node_finalized = threading.Event()
        self.graph = one_node_graph(self.model, self.node)

    async def node(self, state: MessagesState) -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        self.node_tasks.append(task)
        try:
            return {"messages": [await self.model.ainvoke(state["messages"])]}
        finally:
            self.node_finalized.set()

    def assert_stopped(self) -> None:
        assert self.model.finalized.is_set(), "the model's finally ran"
        assert self.model.log == ["start", "finally"], "the model did not go on generating"
        assert self.node_finalized.is_set(), "the node's finally ran"
        assert all(task.done() for task in [*self.model.tasks, *self.node_tasks])


@pytest.mark.slow
async def test_stopping_after_two_deltas_stops_the_node_before_aclose_returns() -> None:
    watched = Watched()
    received: list[Event] = []
    async with aclosing(from_langgraph(watched.graph, USER)) as events:
        async for event in events:
            received.append(event)
            if len(received) == 3:
                break
        assert framework_tasks(), "LangGraph's node is running"
        assert not watched.model.finalized.is_set()
    watched.assert_stopped()
    assert framework_tasks() == []
    assert received == [
        StepStart(step="agent"),
        Delta(value="one", step="agent"),
        Delta(value=" ", step="agent"),
    ]


@pytest.mark.slow
async def test_an_anyio_cancel_scope_stops_the_node() -> None:
    # AnyIO cancels again at every await; LangGraph's own clean-up, run under it, would leave
    # the node (and the model) running. The adapter runs it where one cancel reaches it.
    watched = Watched()
    received: list[Event] = []
    with anyio.CancelScope() as scope:
        async with aclosing(from_langgraph(watched.graph, USER)) as events:
            async for event in events:
                received.append(event)
                if len(received) == 3:
                    scope.cancel()
    assert scope.cancelled_caught
    watched.assert_stopped()
    assert framework_tasks() == []
    assert len(received) == 3


# --- 4. through a real server, with an early client disconnect -------------------------------------


class App:
    """Streams one run per request; ``/tasks`` lists the framework tasks left in the server loop."""

    def __init__(self) -> None:
        self.watched = Watched()
        self.app = Starlette(routes=[Route("/chat", self.chat), Route("/tasks", self.tasks)])

    async def chat(self, request: Request) -> EventStreamResponse:
        return EventStreamResponse(from_langgraph(self.watched.graph, USER))

    async def tasks(self, request: Request) -> JSONResponse:
        return JSONResponse([task.get_name() for task in framework_tasks()])


@pytest.fixture
def app() -> Iterator[tuple[App, str]]:
    app = App()
    with serve(app.app) as url:
        yield app, url


@pytest.mark.slow
async def test_an_early_disconnect_stops_the_node_within_a_second(app: tuple[App, str]) -> None:
    server, url = app
    watched = server.watched
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", f"{url}/chat") as response:
            events = aiter_events(response.aiter_bytes())
            received = [await anext(events) for _ in range(3)]
            assert (await client.get(f"{url}/tasks")).json() != [], "the node is running"
            await events.aclose()
        closed_at = time.monotonic()
        assert received == [
            StepStart(step="agent"),
            Delta(value="one", step="agent"),
            Delta(value=" ", step="agent"),
        ]
        assert watched.model.finalized.wait(1.0), "the model's finally did not run within 1 s"
        assert watched.node_finalized.wait(1.0 - (time.monotonic() - closed_at))
        for _ in range(50):  # the request's own clean-up may still be finishing
            if not (left := (await client.get(f"{url}/tasks")).json()):
                break
            await asyncio.sleep(0.02)
        assert left == [], "a LangGraph task outlived the request"
        watched.assert_stopped()


# --- 5. the framework missing ---------------------------------------------------------------------


@pytest.mark.slow
def test_importing_without_langgraph_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "langgraph" or m.startswith("langgraph.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "import langgraph..." fails
    monkeypatch.delitem(sys.modules, "streamflow.adapters.langgraph")
    with pytest.raises(
        ImportError, match=r'from_langgraph needs langgraph: pip install "streamflow\[langgraph\]"'
    ):
        importlib.import_module("streamflow.adapters.langgraph")
    with pytest.raises(ImportError, match=r"streamflow\[langgraph\]"):
        from streamflow.adapters import from_langgraph  # noqa: F401
