"""The example's data warehouse: a small SQLite sales database, and what a Text-to-BI app must do
with SQL that a model wrote before and while it runs it.

- :func:`create_database` writes the sample data (two tables, 20 sales) to a file.
- :func:`check_sql` accepts one read-only ``SELECT`` over the known tables and nothing else. It does
  not guess with regular expressions: SQLite compiles the statement (``EXPLAIN``, which runs nothing)
  on a read-only connection whose *authorizer* is asked about every table read and every write.
- :class:`Query` runs the checked SQL in a worker thread under the same authorizer. It can be stopped
  from outside (:meth:`Query.stop`, or cancelling :meth:`Query.execute`) and has a time budget:
  SQLite's progress handler aborts the statement, so a stopped query stops working at once instead
  of running on in its thread after the client has gone.
- :func:`format_table` turns a result into display strings.

Every failure is a :class:`QueryError` whose ``message`` is written for users: it never carries
SQLite's text, the database path or a traceback (those go to the server log).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import anyio
from pydantic import BaseModel

__all__ = [
    "PRODUCTS",
    "SALES",
    "TABLES",
    "CheckedSQL",
    "InvalidQuery",
    "Query",
    "QueryError",
    "QueryFailed",
    "QueryResult",
    "QueryStopped",
    "QueryTimeout",
    "Table",
    "UnsafeQuery",
    "check_sql",
    "create_database",
    "extract_sql",
    "format_table",
]

logger = logging.getLogger("agno_text_to_bi")

SCHEMA: Final = """
CREATE TABLE products (
    name TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    unit_price REAL NOT NULL
);
CREATE TABLE sales (
    id INTEGER PRIMARY KEY,
    day TEXT NOT NULL,            -- ISO date, 2024-01-05
    region TEXT NOT NULL,         -- North, South, East, West
    product TEXT NOT NULL REFERENCES products (name),
    units INTEGER NOT NULL
);
"""

PRODUCTS: Final = (("Widget", "Hardware", 12.5), ("Gadget", "Hardware", 30.0), ("Gizmo", "Devices", 99.0))

SALES: Final = (
    ("2024-01-05", "North", "Widget", 40),
    ("2024-01-09", "South", "Gadget", 12),
    ("2024-01-12", "East", "Gizmo", 3),
    ("2024-01-18", "West", "Widget", 25),
    ("2024-01-22", "North", "Gizmo", 5),
    ("2024-01-27", "East", "Gadget", 18),
    ("2024-02-02", "South", "Widget", 33),
    ("2024-02-07", "West", "Gizmo", 4),
    ("2024-02-11", "North", "Gadget", 20),
    ("2024-02-16", "East", "Widget", 28),
    ("2024-02-21", "South", "Gizmo", 2),
    ("2024-02-26", "West", "Gadget", 15),
    ("2024-03-03", "North", "Widget", 45),
    ("2024-03-08", "East", "Gizmo", 6),
    ("2024-03-13", "South", "Gadget", 10),
    ("2024-03-17", "West", "Widget", 30),
    ("2024-03-21", "North", "Gizmo", 7),
    ("2024-03-25", "East", "Gadget", 22),
    ("2024-03-28", "South", "Widget", 26),
    ("2024-03-30", "West", "Gizmo", 3),
)

TABLES: Final = frozenset({"products", "sales"})
"""The tables a query may read."""

_PROGRESS_STEPS: Final = 10_000  # SQLite VM instructions between two looks at the stop flag and the clock

# What each SQLite authorizer action is, for the user's message (the codes a query may need are allowed).
_ALLOWED_ACTIONS: Final = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_ACTION_NAMES: Final = {
    sqlite3.SQLITE_INSERT: "INSERT",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE",
    sqlite3.SQLITE_DROP_TABLE: "DROP TABLE",
    sqlite3.SQLITE_DROP_VIEW: "DROP VIEW",
    sqlite3.SQLITE_DROP_INDEX: "DROP INDEX",
    sqlite3.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    sqlite3.SQLITE_CREATE_TABLE: "CREATE TABLE",
    sqlite3.SQLITE_CREATE_VIEW: "CREATE VIEW",
    sqlite3.SQLITE_CREATE_INDEX: "CREATE INDEX",
    sqlite3.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE",
    sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_PRAGMA: "PRAGMA",
    sqlite3.SQLITE_TRANSACTION: "a transaction",
    sqlite3.SQLITE_SAVEPOINT: "a savepoint",
}


# --- errors: a code for programs, a message for users --------------------------------------------------


class QueryError(Exception):
    """A query that cannot run or did not finish; ``message`` is safe to show to users."""

    code = "query_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsafeQuery(QueryError):
    code = "unsafe_sql"


class InvalidQuery(QueryError):
    code = "invalid_sql"


class QueryFailed(QueryError):
    code = "query_failed"


class QueryTimeout(QueryError):
    code = "query_timeout"


class QueryStopped(QueryError):
    code = "cancelled"


# --- data ------------------------------------------------------------------------------------------------


def create_database(path: Path) -> None:
    """Write the sample sales database to ``path`` (a new file)."""
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO products VALUES (?, ?, ?)", PRODUCTS)
        db.executemany("INSERT INTO sales (day, region, product, units) VALUES (?, ?, ?, ?)", SALES)
    db.close()


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection: even a query that got past the checks cannot write."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


# --- checking ----------------------------------------------------------------------------------------


class CheckedSQL(BaseModel):
    """A statement that :func:`check_sql` accepted, and the tables it reads."""

    sql: str
    tables: list[str]


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def extract_sql(text: str) -> str:
    """The statement in a model's answer: without a Markdown code fence or a trailing ``;``."""
    text = text.strip()
    if fenced := _FENCE.match(text):
        text = fenced[1].strip()
    return text.removesuffix(";").rstrip()


class _Guard:
    """The authorizer of a connection: reads of the known tables, and nothing that writes."""

    def __init__(self) -> None:
        self.refused: str | None = None
        self.tables: set[str] = set()

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, inner: str | None
    ) -> int:
        if action not in _ALLOWED_ACTIONS:
            self.refused = self.refused or _ACTION_NAMES.get(action, "a write")
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_READ and db is not None:  # a table (a CTE has no database)
            if db != "main" or arg1 not in TABLES:
                self.refused = self.refused or f"the table {arg1}"
                return sqlite3.SQLITE_DENY
            self.tables.add(arg1)
        return sqlite3.SQLITE_OK


_COMMENT = re.compile(r"\s+|--[^\n]*|/\*.*?(?:\*/|$)", re.DOTALL)


def _first_keyword(sql: str) -> str:
    position = 0
    while found := _COMMENT.match(sql, position):
        if found.end() == position:
            break
        position = found.end()
    word = re.match(r"[A-Za-z]{1,20}", sql[position:])
    return word[0].upper() if word else sql[position : position + 1]


def _refused(what: str) -> str:
    tables = " and ".join(sorted(TABLES))
    return (
        f"The generated query was refused: it uses {what}, "
        f"and only read-only SELECT queries over {tables} may run."
    )


def check_sql(database: Path, text: str) -> CheckedSQL:
    """Accept ``text`` if it is exactly one statement that only reads ``products`` and ``sales``.

    Raises :class:`UnsafeQuery` for anything that writes, attaches, changes settings or reads another
    table, and :class:`InvalidQuery` for what SQLite cannot compile (a syntax error, an unknown column,
    more than one statement). SQLite's own text goes to the log, not into the message.
    """
    sql = extract_sql(text)
    if not sql:
        raise InvalidQuery("The model wrote no SQL, so there was nothing to run.")
    keyword = _first_keyword(sql)
    if keyword not in ("SELECT", "WITH"):
        logger.info("text-to-bi: refused SQL (a %s statement): %r", keyword, sql)
        raise UnsafeQuery(_refused(keyword if keyword.isalpha() else "something other than SELECT"))
    guard = _Guard()
    db = _connect(database)
    try:
        db.set_authorizer(guard)
        db.execute("EXPLAIN " + sql).fetchall()  # compiles the statement; runs none of it
    except (sqlite3.Error, sqlite3.Warning) as exc:
        if guard.refused is not None:
            logger.info("text-to-bi: refused SQL (%s): %r", guard.refused, sql)
            raise UnsafeQuery(_refused(guard.refused)) from exc
        logger.info("text-to-bi: invalid SQL (%s): %r", exc, sql)
        raise InvalidQuery(
            "The generated query is not valid SQL for this database, so it was not run."
        ) from exc
    finally:
        db.close()
    return CheckedSQL(sql=sql, tables=sorted(guard.tables))


# --- running -----------------------------------------------------------------------------------------------

Scalar = str | int | float | None


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[Scalar]]


QueryState = Literal["pending", "running", "completed", "failed", "timed_out", "interrupted"]


class Query:
    """One statement to run in a worker thread, stoppable from any thread.

    ``state`` and ``seconds`` say how it went, for the run's record.
    """

    def __init__(self, database: Path, sql: str, *, timeout: float, max_rows: int = 1000) -> None:
        self.database = database
        self.sql = sql
        self.timeout = timeout
        self.max_rows = max_rows
        self.state: QueryState = "pending"
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._finished = threading.Event()

    def stop(self) -> None:
        """Abort the statement (from any thread); it stops within ``_PROGRESS_STEPS`` VM instructions."""
        self._stop.set()

    async def execute(self) -> QueryResult:
        """:meth:`run` in a worker thread. Cancelling this stops the statement and waits until it has."""
        try:
            return await anyio.to_thread.run_sync(self.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self.stop()
            with anyio.CancelScope(shield=True):  # the thread is told to stop: wait until it has
                await anyio.to_thread.run_sync(self._finished.wait, 5.0)
            raise

    def run(self) -> QueryResult:
        """Run the statement here (blocking), under the authorizer and the progress handler."""
        started = time.monotonic()
        deadline = started + self.timeout
        why: list[str] = []

        def keep_going() -> int:
            if self._stop.is_set():
                why.append("stopped")
                return 1  # non-zero: SQLite aborts the statement ("interrupted")
            if time.monotonic() > deadline:
                why.append("timeout")
                return 1
            return 0

        self.state = "running"
        db = _connect(self.database)
        try:
            db.set_authorizer(_Guard())
            db.set_progress_handler(keep_going, _PROGRESS_STEPS)
            if self._stop.is_set():
                why.append("stopped")
                raise sqlite3.OperationalError("interrupted")
            cursor = db.execute(self.sql)
            rows = [list(row) for row in cursor.fetchmany(self.max_rows)]
            columns = [column[0] for column in cursor.description or ()]
        except (sqlite3.Error, sqlite3.Warning) as exc:
            if why == ["stopped"]:
                self.state = "interrupted"
                raise QueryStopped("The run was cancelled; its query was stopped.") from exc
            if why == ["timeout"]:
                self.state = "timed_out"
                raise QueryTimeout(
                    f"The query ran longer than {self.timeout:g} s and was stopped. Ask a narrower question."
                ) from exc
            self.state = "failed"
            logger.warning("text-to-bi: the query failed (%s): %r", exc, self.sql)
            raise QueryFailed("The query failed while it ran.") from exc
        else:
            self.state = "completed"
            return QueryResult(columns=columns, rows=rows)
        finally:
            self.seconds = round(time.monotonic() - started, 3)
            db.close()
            self._finished.set()


# --- formatting ------------------------------------------------------------------------------------------


class Table(BaseModel):
    """A result as the page shows it: display strings, numbers aligned right."""

    columns: list[str]
    align: list[Literal["left", "right"]]
    rows: list[list[str]]


def _cell(value: Scalar) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}"


def _numeric(values: Sequence[Scalar]) -> bool:
    present = [value for value in values if value is not None]
    return bool(present) and all(isinstance(value, int | float) for value in present)


def format_table(result: QueryResult) -> Table:
    """Display strings (``1,234``, ``2,850.50``); a column of numbers is aligned right."""
    columns = list(zip(*result.rows, strict=True)) if result.rows else [() for _ in result.columns]
    return Table(
        columns=result.columns,
        align=["right" if _numeric(values) else "left" for values in columns],
        rows=[[_cell(value) for value in row] for row in result.rows],
    )
