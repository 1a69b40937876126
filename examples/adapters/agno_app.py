"""An Agno Text-to-BI workflow streamed as Server-Sent Events with ``from_agno`` (the model is scripted).

    python examples/adapters/agno_app.py            # PORT=8000 by default
    curl -N -X POST http://127.0.0.1:8000/workflow/query -H 'Content-Type: application/json' \\
         -d '{"message": "How many employees?"}'

Swap ``ScriptedModel()`` for ``OpenAIChat(id="gpt-4o-mini")`` (and set OPENAI_API_KEY) to use a real model.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from agno.agent import Agent
from agno.models.base import Model
from agno.models.response import ModelResponse
from agno.workflow import Step, Workflow
from agno.workflow.types import StepInput, StepOutput
from fastapi import FastAPI
from pydantic import BaseModel

from streamflow import EventStreamResponse
from streamflow.adapters import from_agno


@dataclass
class ScriptedModel(Model):
    """Streams like a chat model: a tool call first, then the answer word by word."""

    id: str = "scripted"

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        messages = kwargs["messages"]
        if messages[-1].role != "tool":
            sql = '{"sql": "SELECT COUNT(*) FROM employees"}'
            call = {"id": "call_1", "type": "function", "function": {"name": "run_sql", "arguments": sql}}
            yield ModelResponse(role="assistant", tool_calls=[call])
            return
        for word in f"There are {messages[-1].content} employees.".split(" "):
            await asyncio.sleep(0.05)
            yield ModelResponse(role="assistant", content=word + " ")

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]


def run_sql(sql: str) -> int:
    """Run a SQL query on the warehouse and return its single value."""
    return 42


def format_report(step_input: StepInput) -> StepOutput:
    return StepOutput(content=f"\n\n**Report**\n\n{step_input.previous_step_content}")


analyst = Agent(name="analyst", model=ScriptedModel(), tools=[run_sql], telemetry=False)
steps = [Step(name="analyse", agent=analyst), Step(name="report", executor=format_report)]
workflow = Workflow(name="text_to_bi", steps=list(steps), telemetry=False)  # telemetry: no phoning home
app = FastAPI(title="streamflow + Agno")


class Query(BaseModel):
    message: str


@app.post("/workflow/query", response_class=EventStreamResponse)
async def query(request: Query) -> EventStreamResponse:
    stream = workflow.arun(input=request.message, stream=True, stream_events=True)
    return EventStreamResponse(from_agno(stream, total_steps=len(steps)))


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
