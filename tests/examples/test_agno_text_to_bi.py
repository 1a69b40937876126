"""End to end: ``python examples/agno_text_to_bi/app.py`` (an Agno workflow, scripted models, SQLite) over
real HTTP, read back with streamflow.client; and its page in Debian's chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from streamflow import Delta, Done, Error, Event, JSONEncoder, NamedEventEncoder, StepEnd, StepStart, comment
from streamflow.client import aiter_events
from streamflow.sse import SSEDecoder
from tests.browser import artifact, drive, finished

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BANNER = "streamflow Agno Text-to-BI: "
STEPS = ["generate_sql", "validate_sql", "execute_sql", "format_table", "analyze"]

REGION_SQL = (
    "-- Revenue by region?\n"
    "SELECT s.region, SUM(s.units) AS units, ROUND(SUM(s.units * p.unit_price), 2) AS revenue\n"
    "FROM sales AS s JOIN products AS p ON p.name = s.product\n"
    "GROUP BY s.region\n"
    "ORDER BY revenue DESC"
)
REGION_ROWS = [["North", 117, 2850.5], ["East", 77, 2441.0], ["West", 77, 1830.5], ["South", 83, 1595.5]]
REGION_TABLE = {
    "columns": ["region", "units", "revenue"],
    "align": ["left", "right", "right"],
    "rows": [
        ["North", "117", "2,850.50"],
        ["East", "77", "2,441.00"],
        ["West", "77", "1,830.50"],
        ["South", "83", "1,595.50"],
    ],
}
REGION_ANALYSIS = (
    "North leads on revenue with 2,850.50, 33% of the 8,717.50 total across 4 regions. "
    "South is last with 1,595.50, 44% below North."
)
SLOW_QUESTION = "Forecast a billion sales (slow)"
SLOW_SQL = (
    "-- Forecast a billion sales (slow)\n"
    "WITH RECURSIVE simulated(n) AS (\n"
    "  SELECT 1 UNION ALL SELECT n + 1 FROM simulated WHERE n < 1000000000\n"
    ")\n"
    "SELECT COUNT(*) AS simulated_sales, ROUND(AVG(n % 100) * 0.5, 2) AS projected_units\n"
    "FROM simulated"
)
REFUSED = (
    "The generated query was refused: it uses {}, and only read-only SELECT queries over products and "
    "sales may run."
)
INVALID = "The generated query is not valid SQL for this database, so it was not run."
CANCELLED = Error(message="The run was cancelled.", code="cancelled", step="execute_sql")
# What must never reach a client: SQLite's and Python's words, the database file, a traceback.
INTERNALS = (
    "Traceback",
    "sqlite3",
    "not authorized",
    "no such column",
    "DatabaseError",
    "OperationalError",
    "UnsafeQuery",
    "InvalidQuery",
    "warehouse",
    "sales.db",
    "streamflow-bi-",
    'File "',
)


def start(start_example: Callable[..., tuple[str, Path]], *args: str, **env: str) -> tuple[str, Path]:
    return start_example(
        "agno_text_to_bi/app.py", *args, banner=BANNER, env={"AGNO_TELEMETRY": "false", **env}
    )


@pytest.fixture(scope="module")
def bi(start_example: Callable[..., tuple[str, Path]]) -> tuple[str, Path]:
    """The example with fast models (host, port and delay as flags); the default 10 s query budget."""
    return start(start_example, "--host", "127.0.0.1", "--port", "0", "--delay", "0.002")


@pytest.fixture(scope="module")
def paced(start_example: Callable[..., tuple[str, Path]]) -> str:
    """Models at a human pace (from the environment variables): for the page and a mid-model disconnect."""
    url, _ = start(start_example, STREAMFLOW_BI_PORT="0", STREAMFLOW_BI_DELAY="0.03")
    return url


@pytest.fixture(scope="module")
def impatient(start_example: Callable[..., tuple[str, Path]]) -> str:
    url, _ = start(start_example, "--port", "0", "--delay", "0", "--query-timeout", "0.3")
    return url


@pytest.fixture(scope="module")
def warehouse(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_example("agno_text_to_bi/warehouse.py")


def outline(events: list[Event]) -> list[tuple[str, str | None]]:
    """(type, step) of each event, a run of deltas shown once."""
    result: list[tuple[str, str | None]] = []
    for event in events:
        entry = (event.type, getattr(event, "step", None))
        if not (entry[0] == "delta" and result and result[-1] == entry):
            result.append(entry)
    return result


def text(events: list[Event], step: str) -> str:
    return "".join(e.value for e in events if isinstance(e, Delta) and e.step == step)


def progress(steps: list[str]) -> list[StepStart]:
    return [StepStart(step=step, index=i, total=5) for i, step in enumerate(steps, 1)]


async def ask(url: str, question: str) -> tuple[list[Event], bytes, str]:
    """The events of a whole run, its body and its run id, checking the response head."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/query", json={"question": question})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    run_id = response.headers["x-run-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)

    async def body() -> Any:
        yield response.content

    return [event async for event in aiter_events(body())], response.content, run_id


async def record(url: str, run_id: str, *, settled: bool = True) -> dict[str, Any]:
    """``GET /runs/{id}``; with ``settled``, once the run is no longer running (at most 5 s)."""
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while True:
            response = await http.get(f"/runs/{run_id}")
            assert response.status_code == 200
            found: dict[str, Any] = response.json()
            if not settled or found["status"] != "running" or time.monotonic() > deadline:
                return found
            await anyio.sleep(0.02)


def wait_for_log(log: Path, line: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while line not in (output := log.read_text(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return output


# --- a question, end to end ---------------------------------------------------------------------------


async def test_a_question_streams_five_steps_with_progress_sql_table_and_analysis(
    bi: tuple[str, Path],
) -> None:
    url, log = bi
    events, _, run_id = await ask(url, "Revenue by region?")

    assert outline(events) == [
        ("step_start", "generate_sql"),
        ("delta", "generate_sql"),
        ("step_end", "generate_sql"),
        ("step_start", "validate_sql"),
        ("step_end", "validate_sql"),
        ("step_start", "execute_sql"),
        ("step_end", "execute_sql"),
        ("step_start", "format_table"),
        ("step_end", "format_table"),
        ("step_start", "analyze"),
        ("delta", "analyze"),
        ("step_end", "analyze"),
        ("done", None),
    ]
    assert [e for e in events if isinstance(e, StepStart)] == progress(STEPS)

    # The SQL streams as the model writes it, then validate_sql hands on the checked statement.
    sql_deltas = [e.value for e in events if isinstance(e, Delta) and e.step == "generate_sql"]
    assert "".join(sql_deltas) == REGION_SQL
    assert sql_deltas[:3] == ["-- ", "Revenue ", "by "]
    ends = {e.step: e.output for e in events if isinstance(e, StepEnd)}
    assert ends == {
        "generate_sql": None,  # its text went out as deltas, once
        "validate_sql": {"sql": REGION_SQL, "tables": ["products", "sales"]},
        "execute_sql": {"columns": ["region", "units", "revenue"], "rows": REGION_ROWS},
        "format_table": REGION_TABLE,
        "analyze": None,
    }
    analysis = [e.value for e in events if isinstance(e, Delta) and e.step == "analyze"]
    assert "".join(analysis) == REGION_ANALYSIS
    assert len(analysis) == len(REGION_ANALYSIS.split())  # a chunk per word: streamed, not in one piece
    assert events[-1] == Done()
    assert events.count(Done()) == 1

    assert await record(url, run_id) == {
        "id": run_id,
        "question": "Revenue by region?",
        "status": "completed",
        "cancelled_by": None,
        "step": "analyze",
        "ran": STEPS,
        "model_chunks": len(sql_deltas) + len(analysis),  # every chunk the models made reached the client
        "query": {"state": "completed", "seconds": pytest.approx(0, abs=1)},
        "error": None,
    }
    assert (
        f"run {run_id}: completed; steps that ran: {', '.join(STEPS)}; "
        f"model chunks: {len(sql_deltas) + len(analysis)}; query completed after "
    ) in wait_for_log(log, f"run {run_id}: completed")


@pytest.mark.parametrize(
    ("question", "sql", "table", "analysis"),
    [
        (
            "Top products by revenue",
            "SELECT p.name AS product, SUM(s.units) AS units, "
            "ROUND(SUM(s.units * p.unit_price), 2) AS revenue\n"
            "FROM sales AS s JOIN products AS p ON p.name = s.product\n"
            "GROUP BY p.name\nORDER BY revenue DESC\nLIMIT 3",
            [["Gizmo", "30", "2,970.00"], ["Gadget", "97", "2,910.00"], ["Widget", "227", "2,837.50"]],
            "Gizmo leads on revenue with 2,970.00, 34% of the 8,717.50 total across 3 products. "
            "Widget is last with 2,837.50, 4% below Gizmo.",
        ),
        (
            "Revenue by month",
            "SELECT substr(s.day, 1, 7) AS month, SUM(s.units) AS units, "
            "ROUND(SUM(s.units * p.unit_price), 2) AS revenue\n"
            "FROM sales AS s JOIN products AS p ON p.name = s.product\n"
            "GROUP BY month\nORDER BY month",
            [["2024-01", "103", "2,504.50"], ["2024-02", "102", "2,406.50"], ["2024-03", "149", "3,806.50"]],
            "2024-03 leads on revenue with 3,806.50, 44% of the 8,717.50 total across 3 months. "
            "2024-02 is last with 2,406.50, 37% below 2024-03.",
        ),
    ],
    ids=["products", "months"],
)
async def test_other_questions_read_the_sample_data(
    bi: tuple[str, Path], question: str, sql: str, table: list[list[str]], analysis: str
) -> None:
    events, _, _ = await ask(bi[0], question)
    assert [e for e in events if isinstance(e, StepStart)] == progress(STEPS)
    assert text(events, "generate_sql") == f"-- {question}\n{sql}"
    (formatted,) = [e.output for e in events if isinstance(e, StepEnd) and e.step == "format_table"]
    assert isinstance(formatted, dict)
    assert formatted["rows"] == table
    assert text(events, "analyze") == analysis
    assert events[-1] == Done()


async def test_a_single_row_answer(bi: tuple[str, Path]) -> None:
    events, _, _ = await ask(bi[0], "How are we doing overall?")
    (formatted,) = [e.output for e in events if isinstance(e, StepEnd) and e.step == "format_table"]
    assert formatted == {
        "columns": ["sales", "units", "revenue"],
        "align": ["right", "right", "right"],
        "rows": [["20", "354", "8,717.50"]],
    }
    assert text(events, "analyze") == (
        "One row came back: sales 20, units 354, revenue 8,717.50. "
        "Ask for a breakdown by region, product or month to compare."
    )


# --- errors: typed, named after their step, nothing internal -------------------------------------------


@pytest.mark.parametrize(
    ("question", "sql", "message", "code", "logged"),
    [
        (
            "Delete all sales",
            "DELETE FROM sales",
            REFUSED.format("DELETE"),
            "unsafe_sql",
            "a DELETE statement",
        ),
        (
            "Drop the sales table",
            "DROP TABLE sales",
            REFUSED.format("DROP"),
            "unsafe_sql",
            "a DROP statement",
        ),
        (
            "Units per salesperson",
            "SELECT salesperson, SUM(units) AS units\nFROM sales\nGROUP BY salesperson\nORDER BY units DESC",
            INVALID,
            "invalid_sql",
            "no such column: salesperson",
        ),
    ],
    ids=["delete", "drop", "no-such-column"],
)
async def test_unsafe_or_invalid_sql_is_a_typed_error_in_validate_sql(
    bi: tuple[str, Path], question: str, sql: str, message: str, code: str, logged: str
) -> None:
    url, log = bi
    events, body, run_id = await ask(url, question)

    assert [e for e in events if not isinstance(e, Delta)] == [
        StepStart(step="generate_sql", index=1, total=5),
        StepEnd(step="generate_sql"),
        StepStart(step="validate_sql", index=2, total=5),
        Error(message=message, code=code, step="validate_sql"),
        Done(),
    ]
    assert text(events, "generate_sql") == f"-- {question}\n{sql}"  # the model's SQL: shown, never run
    for internal in INTERNALS:
        assert internal.encode() not in body, internal
    assert b"data: Error" not in body

    assert await record(url, run_id) == {
        "id": run_id,
        "question": question,
        "status": "failed",
        "cancelled_by": None,
        "step": "validate_sql",
        "ran": ["generate_sql", "validate_sql"],  # nothing was executed
        "model_chunks": len([e for e in events if isinstance(e, Delta)]),
        "query": None,
        "error": {"type": "error", "message": message, "code": code, "step": "validate_sql"},
    }
    # The details are for the operator: in the server's log.
    output = wait_for_log(log, f"run {run_id}: failed")
    assert (
        f"run {run_id}: failed ({code}) in validate_sql; steps that ran: generate_sql, validate_sql;"
        in output
    )
    assert logged in output


async def test_a_query_over_its_time_budget_is_stopped(impatient: str) -> None:
    events, _, run_id = await ask(impatient, SLOW_QUESTION)
    assert [e for e in events if not isinstance(e, Delta)] == [
        StepStart(step="generate_sql", index=1, total=5),
        StepEnd(step="generate_sql"),
        StepStart(step="validate_sql", index=2, total=5),
        StepEnd(step="validate_sql", output={"sql": SLOW_SQL, "tables": []}),
        StepStart(step="execute_sql", index=3, total=5),
        Error(
            message="The query ran longer than 0.3 s and was stopped. Ask a narrower question.",
            code="query_timeout",
            step="execute_sql",
        ),
        Done(),
    ]
    found = await record(impatient, run_id)
    assert found["status"] == "failed"
    assert found["ran"] == STEPS[:3]
    assert found["query"]["state"] == "timed_out"
    assert 0.3 <= found["query"]["seconds"] < 2


async def test_bad_requests(bi: tuple[str, Path]) -> None:
    url, _ = bi
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/query", json={"question": ""})).status_code == 422
        assert (await http.post("/query", json={"question": "x" * 501})).status_code == 422
        assert (await http.post("/query", json={})).status_code == 422
        assert (await http.get("/runs/nope")).status_code == 404
        assert (await http.post("/runs/nope/cancel")).status_code == 404


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELECT region FROM sales", None),
        ("```sql\nSELECT region FROM sales;\n```", None),
        ("WITH t AS (SELECT units FROM sales) SELECT SUM(units) FROM t", None),
        ("DELETE FROM sales", "unsafe_sql"),
        ("WITH t AS (SELECT 1) DELETE FROM sales", "unsafe_sql"),
        ("UPDATE sales SET units = 0", "unsafe_sql"),
        ("SELECT name FROM sqlite_master", "unsafe_sql"),
        ("ATTACH 'other.db' AS other", "unsafe_sql"),
        ("PRAGMA writable_schema = 1", "unsafe_sql"),
        ("VACUUM", "unsafe_sql"),
        ("/* hi */ -- there\nDROP TABLE sales", "unsafe_sql"),
        ("SELECT 1; DELETE FROM sales", "invalid_sql"),
        ("SELEC region FROM sales", "unsafe_sql"),  # not a SELECT
        ("SELECT region FROM sales WHERE", "invalid_sql"),
        ("", "invalid_sql"),
    ],
)
def test_check_sql_lets_one_read_only_select_through(
    warehouse: ModuleType, tmp_path: Path, sql: str, code: str | None
) -> None:
    """SQLite decides what a statement does (its authorizer), not a list of words."""
    database = tmp_path / "sales.db"
    warehouse.create_database(database)
    if code is None:
        assert warehouse.check_sql(database, sql).sql.startswith(("SELECT", "WITH"))
    else:
        with pytest.raises(warehouse.QueryError) as raised:
            warehouse.check_sql(database, sql)
        assert raised.value.code == code
    with warehouse.sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM sales").fetchone() == (20,)


# --- cancel: a disconnect or the cancel control stops the run, and its query -----------------------------


async def read_until(events: Any, wanted: Event) -> list[Event]:
    received = []
    while (event := await anext(events)) != wanted:
        received.append(event)
    return [*received, event]


async def query_running(url: str, run_id: str) -> None:
    """Wait until the run's query is running in its thread (at most 5 s)."""
    with anyio.fail_after(5):
        while True:
            query = (await record(url, run_id, settled=False))["query"]
            if query is not None and query["state"] == "running":
                return
            await anyio.sleep(0.02)


async def test_a_disconnect_during_the_query_stops_it_and_nothing_after_it_runs(bi: tuple[str, Path]) -> None:
    url, log = bi
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        http.stream("POST", "/query", json={"question": SLOW_QUESTION}) as response,
    ):
        run_id = response.headers["x-run-id"]
        events = aiter_events(response.aiter_bytes())
        received = await read_until(events, StepStart(step="execute_sql", index=3, total=5))
        await query_running(url, run_id)
        await events.aclose()  # type: ignore[attr-defined]
    # Leaving the block closed the connection.

    assert text(received, "generate_sql") == SLOW_SQL
    found = await record(url, run_id)
    assert found == {
        "id": run_id,
        "question": SLOW_QUESTION,
        "status": "cancelled",
        "cancelled_by": "client_disconnect",
        "step": "execute_sql",
        "ran": STEPS[:3],
        "model_chunks": len([e for e in received if isinstance(e, Delta)]),
        "query": {"state": "interrupted", "seconds": found["query"]["seconds"]},
        "error": None,
    }
    assert found["query"]["seconds"] < 5  # the query would run for minutes (its budget here is 10 s)
    await anyio.sleep(0.5)
    assert await record(url, run_id) == found, "something ran after the cancel"
    output = wait_for_log(log, f"run {run_id}: cancelled")
    assert (
        f"run {run_id}: cancelled (client_disconnect) during execute_sql; "
        f"steps that ran: generate_sql, validate_sql, execute_sql; model chunks: {found['model_chunks']}; "
        "query interrupted after "
    ) in output


async def test_a_disconnect_while_the_model_streams_stops_the_model(paced: str) -> None:
    async with (
        httpx.AsyncClient(base_url=paced, timeout=30) as http,
        http.stream("POST", "/query", json={"question": "Revenue by region?"}) as response,
    ):
        run_id = response.headers["x-run-id"]
        events = aiter_events(response.aiter_bytes())
        received = [await anext(events) for _ in range(4)]
        await events.aclose()  # type: ignore[attr-defined]

    assert received == [
        StepStart(step="generate_sql", index=1, total=5),
        Delta(value="-- ", step="generate_sql"),
        Delta(value="Revenue ", step="generate_sql"),
        Delta(value="by ", step="generate_sql"),
    ]
    found = await record(paced, run_id)
    assert (found["status"], found["cancelled_by"], found["step"]) == (
        "cancelled",
        "client_disconnect",
        "generate_sql",
    )
    # The model stopped: the SQL has 34 chunks (a second at this pace), and no chunk came after the cancel.
    assert 3 <= found["model_chunks"] < 34
    await anyio.sleep(0.5)
    assert await record(paced, run_id) == found
    assert found["ran"] == ["generate_sql"]


async def test_the_cancel_control_ends_the_stream_with_a_typed_error(bi: tuple[str, Path]) -> None:
    url, _ = bi
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        http.stream("POST", "/query", json={"question": SLOW_QUESTION}) as response,
    ):
        run_id = response.headers["x-run-id"]
        events = aiter_events(response.aiter_bytes())
        await read_until(events, StepStart(step="execute_sql", index=3, total=5))
        await query_running(url, run_id)
        cancelled = await http.post(f"/runs/{run_id}/cancel")
        rest = [event async for event in events]
        again = await http.post(f"/runs/{run_id}/cancel")

    assert (cancelled.status_code, cancelled.json()) == (202, {"status": "cancelling"})
    assert rest == [CANCELLED, Done()]
    assert (again.status_code, again.json()) == (409, {"status": "cancelled"})
    found = await record(url, run_id)
    assert (found["status"], found["cancelled_by"], found["ran"]) == (
        "cancelled",
        "cancel_request",
        STEPS[:3],
    )
    assert found["query"]["state"] == "interrupted"
    assert found["error"] == CANCELLED.model_dump(exclude_none=True)


# --- the page ---------------------------------------------------------------------------------------------


async def test_the_page_is_self_contained_and_never_writes_html(bi: tuple[str, Path]) -> None:
    async with httpx.AsyncClient(base_url=bi[0]) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for marker in ('<input id="question"', '<button id="cancel"', '<progress id="bar"', "createSSEParser"):
        assert marker in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"<script[^>]+src=|@import|url\(", page)
    assert "innerHTML" not in page
    assert "insertAdjacentHTML" not in page
    assert 'split("data: ")' not in page


PAGE = Path(__file__).resolve().parents[2] / "examples" / "agno_text_to_bi" / "index.html"
PARSER_DRIVER = """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map(({ data, size }) => {
  const bytes = Buffer.from(data, "base64");
  const events = [];
  const parser = createSSEParser((event) => events.push([event.type, event.data, event.id]));
  for (let at = 0; at < bytes.length; at += size) parser.feed(new Uint8Array(bytes.subarray(at, at + size)));
  parser.end();
  return events;
})));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_the_pages_sse_parser_agrees_with_streamflows_decoder() -> None:
    """Whole streams and streams cut into chunks of 1, 2 and 7 bytes give the WHATWG decoder's events."""
    parser = re.search(r"// sse-parser:begin\n(.*?)// sse-parser:end", PAGE.read_text(), re.DOTALL)
    assert parser, "the SSE parser markers are missing from index.html"
    events: list[Event] = [
        StepStart(step="generate_sql", index=1, total=5),
        Delta(value="-- a\r\nb\rc\n\ndata: x\n\n: y é🙂 </script>", step="generate_sql"),
        StepEnd(step="format_table", output={"rows": [["\r\n", "2,850.50"]]}),
        Error(message="data: Error: x\n\n", code="unsafe_sql", step="validate_sql"),
        Done(),
    ]
    streams = [
        b"".join(encoder.encode(event) for event in events)
        for encoder in (JSONEncoder(), NamedEventEncoder())
    ]
    streams += [
        comment("ping") + b"data: a\r\ndata: b\r\n\r\n" + b"data: c\rdata: d\r\r",
        b"\xef\xbb\xbfid: 7\nevent: x\ndata\ndata:  two\n\ndata: unfinished",
    ]
    cases = [(data, size) for data in streams for size in (len(data), 1, 2, 7)]
    node = subprocess.run(
        ["node", "-e", parser[1] + PARSER_DRIVER],
        input=json.dumps([{"data": base64.b64encode(data).decode(), "size": size} for data, size in cases]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert node.returncode == 0, node.stderr
    for (data, size), got in zip(cases, json.loads(node.stdout), strict=True):
        assert got == [[sse.event, sse.data, sse.id] for sse in SSEDecoder().feed(data)], (data, size)


HOSTILE = 'Revenue by region? <img src=x onerror="window.pwned=1">'
PAGE_STATE = """(() => {
  const q = (selector) => document.querySelector(selector);
  const cellText = (cell) => cell.textContent;
  return {
    state: document.body.dataset.state,
    runId: document.body.dataset.runId,
    progress: q("#progress-text").textContent,
    bar: [q("#bar").value, q("#bar").max],
    steps: [...document.querySelectorAll("#steps li")].map((li) => [
      li.className, li.querySelector(".n").textContent, li.querySelector("strong").textContent,
      li.querySelector(".state").textContent]),
    sql: q("#sql").textContent,
    sqlNote: q("#sql-note").textContent,
    table: [...document.querySelectorAll("#table tr")].map((tr) => [...tr.children].map(cellText)),
    analysis: q("#analysis").textContent,
    error: q("#error").hidden ? null : [q("#error").firstChild.textContent, q("#error .code").textContent],
    status: q("#status").textContent,
    record: q("#record").textContent,
    images: document.images.length,
    pwned: window.pwned ?? null,
  };
})()"""
SETTLED = "document.body.dataset.record === 'loaded'"


def showing(selector: str, text: str) -> str:
    """A JS expression: the element shows exactly ``text``."""
    return f"document.querySelector({json.dumps(selector)}).textContent === {json.dumps(text)}"


def test_browser_runs_a_question_cancels_a_run_and_shows_an_error(paced: str) -> None:
    results = drive(
        paced,
        [
            {
                "name": "answer",
                "path": "/",
                "actions": [
                    {"fill": ["#question", HOSTILE]},
                    {"click": "#ask"},
                    {"waitFor": showing("#progress-text", "Step 1 of 5 · generate_sql")},
                    {"waitFor": "document.querySelector('#analysis').textContent.includes('leads on')"},
                    {"screenshot": artifact("agno-bi-progress.png")},
                ],
                "until": f"document.body.dataset.state === 'done' && {SETTLED}",
                "state": PAGE_STATE,
                "screenshot": artifact("agno-bi-done.png"),
            },
            {
                "name": "cancel",
                "path": "/",
                "actions": [
                    {"click": "#examples button[title*='Cancel']"},
                    {"waitFor": showing("#progress-text", "Step 3 of 5 · execute_sql")},
                    {"sleep": 300},
                    {"click": "#cancel"},
                ],
                "until": f"document.body.dataset.state === 'cancelled' && {SETTLED}",
                "state": PAGE_STATE,
                "screenshot": artifact("agno-bi-cancelled.png"),
            },
            {
                "name": "unsafe",
                "path": "/",
                "actions": [{"click": "#examples button[title*='DELETE']"}],
                "until": f"document.body.dataset.state === 'failed' && {SETTLED}",
                "state": PAGE_STATE,
                "screenshot": artifact("agno-bi-refused.png"),
            },
        ],
    )

    answer = finished(results["answer"])
    assert answer["progress"] == "Done: 5 of 5 steps"
    assert answer["bar"] == [5, 5]
    assert answer["steps"] == [["finished", f"{i}/5", step, "done"] for i, step in enumerate(STEPS, 1)]
    # The question, with its HTML, is in the SQL as text: no element was made of it.
    assert answer["sql"] == REGION_SQL.replace("Revenue by region?", HOSTILE)
    assert answer["images"] == 0
    assert answer["pwned"] is None
    assert answer["sqlNote"] == "Checked by SQLite: one read-only SELECT, reads products, sales."
    assert answer["table"] == [REGION_TABLE["columns"], *REGION_TABLE["rows"]]
    assert answer["analysis"] == REGION_ANALYSIS
    assert answer["error"] is None
    assert answer["status"] == "Done."
    assert answer["record"].startswith(
        f"Server: completed · ran {' → '.join(STEPS)} · query completed after "
    )

    cancel = finished(results["cancel"])
    assert cancel["status"] == "Cancelled at step 3 of 5 (execute_sql)."
    assert cancel["progress"] == "Step 3 of 5 · execute_sql · cancelled"
    assert cancel["steps"] == [
        ["finished", "1/5", "generate_sql", "done"],
        ["finished", "2/5", "validate_sql", "done"],
        ["stopped", "3/5", "execute_sql", "cancelled"],
    ]
    assert cancel["error"] == ["The run was cancelled.", "cancelled in execute_sql"]
    assert cancel["table"] == []
    assert re.fullmatch(
        r"Server: cancelled \(cancel request\) during execute_sql · ran generate_sql → validate_sql → "
        r"execute_sql · query interrupted after \d+(\.\d+)? s",
        cancel["record"],
    ), cancel["record"]
    # The server agrees, and nothing ran after the cancel.
    time.sleep(0.3)
    found = httpx.get(f"{paced}/runs/{cancel['runId']}").json()
    assert (found["status"], found["ran"], found["query"]["state"]) == ("cancelled", STEPS[:3], "interrupted")

    unsafe = finished(results["unsafe"])
    assert unsafe["error"] == [REFUSED.format("DELETE"), "unsafe_sql in validate_sql"]
    assert unsafe["steps"] == [
        ["finished", "1/5", "generate_sql", "done"],
        ["failed", "2/5", "validate_sql", "failed"],
    ]
    assert unsafe["sql"] == "-- Delete all sales\nDELETE FROM sales"
    assert unsafe["status"] == "Failed in validate_sql."
    assert unsafe["record"] == "Server: failed · ran generate_sql → validate_sql"
    for result in results.values():
        assert result["consoleErrors"] == []
    assert json.dumps(results).count("Traceback") == 0
