"""The Text-to-BI workflow: five Agno steps, from a question to a streamed analysis.

    generate_sql  an agent (scripted model) writes one SQLite query for the question; its tokens stream
    validate_sql  SQLite compiles the query under an authorizer: one read-only SELECT, or a typed error
    execute_sql   runs it in a worker thread, stoppable, with a time budget
    format_table  display strings for the rows
    analyze       an agent (scripted model) streams a short analysis of the table

:func:`build_workflow` makes the workflow of one :class:`Run`, the server's record of what the run did.
Its steps report to that record as they start working (an agent when its model is called, a function
step when it is entered) and when they fail, so that the record, not the stream, proves what ran: after
a cancel, the later steps are not in ``Run.ran``.

The models are scripted (no API key, no network). To use a real one, pass ``model=`` to
:func:`build_workflow`, e.g. ``OpenAIChat(id="gpt-4o-mini")``: the agents' instructions describe the
schema and the output each step expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from agno.agent import Agent
from agno.models.base import Model
from agno.models.response import ModelResponse
from agno.workflow import Step, Workflow
from agno.workflow.types import HumanReview, StepInput, StepOutput
from pydantic import JsonValue
from warehouse import (  # the module next to this file
    SCHEMA,
    CheckedSQL,
    Query,
    QueryError,
    QueryResult,
    Table,
    check_sql,
    format_table,
)

from streamflow import Error, Event, hide_exception

__all__ = ["STEPS", "Run", "ScriptedModel", "build_workflow", "write_analysis", "write_sql"]

logger = logging.getLogger("agno_text_to_bi")

STEPS: Final = ("generate_sql", "validate_sql", "execute_sql", "format_table", "analyze")

SQL_INSTRUCTIONS: Final = (
    "You translate a business question into one SQLite SELECT statement over this schema:\n"
    f"{SCHEMA}\n"
    "Revenue is units * unit_price. Start with a line comment repeating the question. "
    "Answer with the SQL only: no prose, no code fence."
)
ANALYSIS_INSTRUCTIONS: Final = (
    "You get a query result as JSON (columns, align, rows of display strings). "
    "Write two or three plain sentences on what it shows: the leader, its share, the last. No lists."
)

# --- the scripted models ------------------------------------------------------------------------------

_JOIN: Final = "FROM sales AS s JOIN products AS p ON p.name = s.product"
_TOTALS: Final = "SUM(s.units) AS units, ROUND(SUM(s.units * p.unit_price), 2) AS revenue"

# (words that pick the query, the query): what the scripted model "knows"; the first match wins.
CATALOG: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    (("delete", "remove", "clear"), "DELETE FROM sales"),
    (("drop",), "DROP TABLE sales"),
    (
        ("salesperson", "sales rep"),
        "SELECT salesperson, SUM(units) AS units\nFROM sales\nGROUP BY salesperson\nORDER BY units DESC",
    ),
    (
        ("forecast", "simulate", "slow"),
        "WITH RECURSIVE simulated(n) AS (\n"
        "  SELECT 1 UNION ALL SELECT n + 1 FROM simulated WHERE n < 1000000000\n"
        ")\n"
        "SELECT COUNT(*) AS simulated_sales, ROUND(AVG(n % 100) * 0.5, 2) AS projected_units\n"
        "FROM simulated",
    ),
    (("month",), f"SELECT substr(s.day, 1, 7) AS month, {_TOTALS}\n{_JOIN}\nGROUP BY month\nORDER BY month"),
    (
        ("product",),
        f"SELECT p.name AS product, {_TOTALS}\n{_JOIN}\nGROUP BY p.name\nORDER BY revenue DESC\nLIMIT 3",
    ),
    (("region",), f"SELECT s.region, {_TOTALS}\n{_JOIN}\nGROUP BY s.region\nORDER BY revenue DESC"),
)
OVERVIEW: Final = f"SELECT COUNT(*) AS sales, {_TOTALS}\n{_JOIN}"


def write_sql(question: str) -> str:
    """The scripted SQL writer: the catalog's query for ``question``, after a comment repeating it.

    The comment is one line (all whitespace collapsed), so the question cannot end it early and add SQL.
    """
    lowered = question.lower()
    sql = next((sql for words, sql in CATALOG if any(word in lowered for word in words)), OVERVIEW)
    return f"-- {' '.join(question.split())}\n{sql}"


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _amount(value: float) -> str:
    return f"{value:,.2f}"


def write_analysis(prompt: str) -> str:
    """The scripted analyst: a few sentences on the table it gets as JSON (what ``format_table`` made)."""
    table = Table.model_validate(json.loads(prompt))
    if not table.rows:
        return "The query returned no rows, so there is nothing to compare."
    labels = [i for i, align in enumerate(table.align) if align == "left"]
    measures = [i for i, align in enumerate(table.align) if align == "right"]
    if not labels or not measures or len(table.rows) == 1:
        cells = ", ".join(
            f"{column} {value}" for column, value in zip(table.columns, table.rows[0], strict=True)
        )
        return f"One row came back: {cells}. Ask for a breakdown by region, product or month to compare."
    label, measure = labels[0], measures[-1]
    values = [_number(row[measure]) for row in table.rows]
    top = max(range(len(values)), key=values.__getitem__)
    last = min(range(len(values)), key=values.__getitem__)
    total = sum(values)
    name = table.columns[measure]
    leader, trailer = table.rows[top], table.rows[last]
    text = (
        f"{leader[label]} leads on {name} with {leader[measure]}, {values[top] / total:.0%} of the "
        f"{_amount(total)} total across {len(values)} {table.columns[label]}s."
    )
    if values[top] > 0 and last != top:
        gap = 1 - values[last] / values[top]
        text += f" {trailer[label]} is last with {trailer[measure]}, {gap:.0%} below {leader[label]}."
    return text


def _chunks(text: str) -> list[str]:
    """A model's stream: a word and the whitespace after it at a time."""
    return re.findall(r"\s*\S+\s*", text) or [text]


@dataclass
class ScriptedModel(Model):
    """An Agno model that streams ``reply(prompt)``, a chunk every ``delay`` seconds (no network).

    ``reply`` gets the last user message: the question, or the previous step's output as JSON;
    ``on_chunk`` is called for every chunk it sends (what a real model would bill).
    """

    id: str = "scripted"
    name: str = "Scripted"
    provider: str = "Scripted"
    reply: Callable[[str], str] = str
    on_chunk: Callable[[], None] = lambda: None
    delay: float = 0.04

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        prompt = next((m.content for m in reversed(kwargs["messages"]) if m.role == "user"), "")
        for chunk in _chunks(self.reply(prompt if isinstance(prompt, str) else str(prompt))):
            await asyncio.sleep(self.delay)  # a real model takes its time too; a cancel lands here
            self.on_chunk()
            yield ModelResponse(role="assistant", content=chunk)

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError("the scripted model only streams")

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError("the scripted model only streams")

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        raise NotImplementedError("the scripted model only streams asynchronously")

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]


# --- the record of a run ---------------------------------------------------------------------------------

Status = Literal["running", "completed", "failed", "cancelled"]


@dataclass
class Run:
    """What one run did, from the steps themselves (``GET /runs/{id}`` shows it)."""

    id: str
    question: str
    status: Status = "running"
    cancelled_by: Literal["client_disconnect", "cancel_request"] | None = None
    step: str | None = None  # the step the stream was in last
    ran: list[str] = field(default_factory=list)  # the steps whose work started, in order
    model_chunks: int = 0  # chunks the models streamed
    error: Error | None = None
    query: Query | None = None
    failure: QueryError | None = None  # the typed failure of a step, for the Error event
    workflow: Workflow | None = None
    cancel_requested: bool = False

    @contextmanager
    def working(self, step: str) -> Iterator[None]:
        """A step's work: recorded when it starts; a :class:`QueryError` is remembered for the Error."""
        self.ran.append(step)
        try:
            yield
        except QueryError as exc:
            self.failure = exc
            raise

    def error_event(self, exc: Exception) -> Error:
        """``on_error`` of the run's stream: a step's typed failure, else nothing of the exception."""
        if self.cancel_requested:
            return Error(message="The run was cancelled.", code="cancelled")
        if self.failure is not None:
            return Error(message=self.failure.message, code=self.failure.code)
        return hide_exception(exc)

    async def cancel(self) -> None:
        """The cancel control: stop the query now, and ask Agno to stop the run at its next chunk or step."""
        self.cancel_requested = True
        if self.query is not None:
            self.query.stop()
        if self.workflow is not None:
            await self.workflow.acancel_run(self.id)

    def observe(self, event: Event) -> None:
        """Follow the stream the client gets."""
        if event.type == "step_start":
            self.step = event.step
        elif event.type == "error":
            self.error = event
            self.status = "cancelled" if event.code == "cancelled" else "failed"
            if self.status == "cancelled":
                self.cancelled_by = "cancel_request"
        elif event.type == "done" and self.status == "running":
            self.status = "completed"

    def finish(self) -> None:
        """The stream ended: without its ``done``, the client went away and the run was cancelled."""
        if self.status == "running":
            self.status = "cancelled"
            self.cancelled_by = "client_disconnect"
        summary = f"text-to-bi: run {self.id}: {self.status}"
        if self.status == "cancelled":
            summary += f" ({self.cancelled_by}) during {self.step}"
        elif self.status == "failed" and self.error is not None:
            summary += f" ({self.error.code}) in {self.error.step}"
        summary += f"; steps that ran: {', '.join(self.ran) or 'none'}; model chunks: {self.model_chunks}"
        if self.query is not None:
            summary += f"; query {self.query.state} after {self.query.seconds} s"
        logger.info(summary)

    def as_json(self) -> dict[str, JsonValue]:
        return {
            "id": self.id,
            "question": self.question,
            "status": self.status,
            "cancelled_by": self.cancelled_by,
            "step": self.step,
            "ran": list(self.ran),
            "model_chunks": self.model_chunks,
            "query": None
            if self.query is None
            else {"state": self.query.state, "seconds": self.query.seconds},
            "error": None if self.error is None else self.error.model_dump(mode="json", exclude_none=True),
        }


# --- the workflow ----------------------------------------------------------------------------------------


def build_workflow(
    run: Run,
    *,
    database: Path,
    delay: float = 0.04,
    query_timeout: float = 10.0,
    model: Model | None = None,
) -> Workflow:
    """The workflow of ``run``: its steps report to it. ``model`` replaces both scripted models."""

    def scripted(step: str, reply: Callable[[str], str]) -> Model:
        def reply_and_record(prompt: str) -> str:
            run.ran.append(step)  # the model is called: this step spends
            return reply(prompt)

        def count() -> None:
            run.model_chunks += 1

        return model or ScriptedModel(reply=reply_and_record, on_chunk=count, delay=delay)

    async def validate_sql(step_input: StepInput) -> StepOutput:
        with run.working("validate_sql"):
            return StepOutput(content=check_sql(database, str(step_input.previous_step_content or "")))

    async def execute_sql(step_input: StepInput) -> StepOutput:
        with run.working("execute_sql"):
            checked = step_input.previous_step_content
            assert isinstance(checked, CheckedSQL)
            run.query = Query(database, checked.sql, timeout=query_timeout)
            if run.cancel_requested:
                run.query.stop()
            return StepOutput(content=await run.query.execute())

    async def format_results(step_input: StepInput) -> StepOutput:
        with run.working("format_table"):
            result = step_input.previous_step_content
            assert isinstance(result, QueryResult)
            return StepOutput(content=format_table(result))

    sql_writer = Agent(
        name="sql_writer",
        model=scripted("generate_sql", write_sql),
        instructions=SQL_INSTRUCTIONS,
        telemetry=False,
    )
    analyst = Agent(
        name="analyst",
        model=scripted("analyze", write_analysis),
        instructions=ANALYSIS_INSTRUCTIONS,
        telemetry=False,
    )
    # No retries, and a failure fails the run (Agno's default retries 3 times, then skips the step).
    fail = HumanReview(on_error="fail")
    steps = [
        Step(name="generate_sql", agent=sql_writer, max_retries=0, human_review=fail),
        Step(name="validate_sql", executor=validate_sql, max_retries=0, human_review=fail),
        Step(name="execute_sql", executor=execute_sql, max_retries=0, human_review=fail),
        Step(name="format_table", executor=format_results, max_retries=0, human_review=fail),
        Step(name="analyze", agent=analyst, max_retries=0, human_review=fail),
    ]
    assert tuple(step.name for step in steps) == STEPS
    workflow = Workflow(name="text_to_bi", steps=list(steps), telemetry=False)
    run.workflow = workflow
    return workflow
