"""The embedded store: runs and events in this process's memory, bounded."""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final

import anyio
from pydantic import JsonValue

from streamflow._anyio import new_event
from streamflow.events import Event
from streamflow.stores.base import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    RunInfo,
    RunStatus,
    SessionInfo,
    StoredEvent,
    UnknownRunError,
    wire_json,
)

__all__ = ["MemoryStore"]

_MAX_ID_DIGITS: Final = 19


class _Run:
    __slots__ = (
        "changed",
        "created_at",
        "ended_at",
        "events",
        "first_seq",
        "head",
        "lease_until",
        "producer",
        "run_id",
        "session_id",
        "status",
    )

    def __init__(self, run_id: str, session_id: str, producer: str, lease: float) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.producer = producer
        self.lease_until = time.monotonic() + lease
        self.status: RunStatus = "running"
        self.created_at = time.time()
        self.ended_at = 0.0  # time.monotonic() when it ended
        # The retained events, as their wire JSON (a fifth of the memory of event objects,
        # and nothing for the garbage collector to scan), are events[head:]; their ids are
        # sequence numbers from first_seq. The dropped ones before head are cleared in
        # chunks, so that dropping one is O(1) and a read is a list slice.
        self.events: list[str] = []
        self.head = 0
        self.first_seq = 1  # the id of events[head]
        self.changed: anyio.Event | None = None  # made by a waiting reader, set on change

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.events) - self.head - 1

    def wake(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    def info(self) -> RunInfo:
        alive = self.status != "running" or time.monotonic() < self.lease_until
        return RunInfo(self.run_id, self.session_id, self.status, self.created_at, alive)


class MemoryStore:
    """Runs and events in memory, for one process (the default store of a hub).

    Bounded: a run keeps at most ``max_events_per_run`` events (the oldest are dropped; a
    reader asking to resume before them gets ``ReplayUnavailableError``); a finished run is
    kept ``retention`` seconds, and at most ``max_finished_runs`` of them (the oldest
    first); a session with no running run expires ``session_ttl`` seconds after its last
    use. Event ids are decimal sequence numbers from ``1``.
    """

    immediate_appends = True  # append_many never waits: the hub appends in the source's task
    sequential_ids = True  # event ids are 1, 2, 3... in append order

    def __init__(
        self,
        *,
        retention: float = 600.0,
        max_finished_runs: int = 1000,
        max_events_per_run: int = 100_000,
        session_ttl: float = 3600.0,
    ) -> None:
        if retention < 0 or session_ttl < 0:
            raise ValueError("retention and session_ttl must not be negative")
        if max_finished_runs < 0 or max_events_per_run < 1:
            raise ValueError("max_finished_runs must be >= 0 and max_events_per_run >= 1")
        self.retention = retention
        self.max_finished_runs = max_finished_runs
        self.max_events_per_run = max_events_per_run
        self.session_ttl = session_ttl
        self._runs: dict[str, _Run] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # finished run ids, oldest first
        # Sessions, least recently used first: expiry looks at the front only (O(1) amortised).
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._latest: dict[str, str] = {}  # session id -> its latest run id

    # --- retention ------------------------------------------------------------------

    def _prune(self) -> None:
        now = time.monotonic()
        while self._finished:
            run_id = next(iter(self._finished))
            run = self._runs[run_id]
            if len(self._finished) <= self.max_finished_runs and now - run.ended_at < self.retention:
                break
            del self._finished[run_id]
            del self._runs[run_id]
            if self._latest.get(run.session_id) == run_id:
                del self._latest[run.session_id]
        sessions = self._sessions
        while sessions:  # each session is looked at once per expiry: O(1) amortised
            session_id, session = next(iter(sessions.items()))
            if now - session.used < self.session_ttl:
                break
            if self._busy(session_id):  # a running run keeps its session: used now
                session.used = now
                sessions.move_to_end(session_id)
            else:
                del sessions[session_id]
                self._latest.pop(session_id, None)

    def _use(self, session_id: str) -> _Session | None:
        """The live session, marked used now; ``None`` when unknown or expired."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.used >= self.session_ttl and not self._busy(session_id):
            del self._sessions[session_id]
            self._latest.pop(session_id, None)
            return None
        session.used = now
        self._sessions.move_to_end(session_id)
        return session

    def _busy(self, session_id: str) -> bool:
        run_id = self._latest.get(session_id)
        return run_id is not None and self._runs[run_id].status == "running"

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise UnknownRunError(run_id)
        if run.status != "running" and time.monotonic() - run.ended_at >= self.retention:
            self._prune()
            raise UnknownRunError(run_id)
        return run

    # --- the Store protocol -----------------------------------------------------------

    async def create_session(
        self, session_id: str, *, owner: str | None = None, metadata: Mapping[str, JsonValue] | None = None
    ) -> None:
        self._prune()
        if self._use(session_id) is None:
            # A copy through JSON: what a caller mutates later is not the session's, and the
            # metadata is what a RedisStore would give back.
            kept = json.loads(json.dumps(dict(metadata))) if metadata else {}
            info = SessionInfo(session_id, owner, kept, time.time())
            self._sessions[session_id] = _Session(info, time.monotonic())

    async def session_exists(self, session_id: str) -> bool:
        return self._use(session_id) is not None

    async def get_session(self, session_id: str) -> SessionInfo | None:
        session = self._use(session_id)
        return None if session is None else session.info

    async def create_run(self, session_id: str, *, producer: str, lease: float) -> str:
        self._prune()
        run_id = secrets.token_urlsafe(12)
        self._runs[run_id] = _Run(run_id, session_id, producer, lease)
        self._latest[session_id] = run_id
        session = self._sessions.get(session_id)
        if session is None:  # a run of a session the hub did not create here: keep it as one
            session = self._sessions[session_id] = _Session(SessionInfo(session_id), 0.0)
        session.used = time.monotonic()
        self._sessions.move_to_end(session_id)
        return run_id

    async def append(self, run_id: str, event: Event) -> str:
        """One event: :meth:`append_many` of one (a convenience; not part of the protocol)."""
        event_id = await self.append_many(run_id, [event])
        assert event_id is not None
        return event_id

    async def append_many(self, run_id: str, events: Sequence[Event | str]) -> str | None:
        run = self._run(run_id)
        if run.status != "running":
            raise RunFinishedError(run_id)
        return self._extend(run, events)

    def _extend(self, run: _Run, events: Sequence[Event | str]) -> str | None:
        if not events:
            return None
        stored = run.events
        stored.extend(wire_json(events))
        excess = len(stored) - run.head - self.max_events_per_run
        if excess > 0:
            run.head += excess
            run.first_seq += excess
            if run.head >= 1024 and run.head * 2 >= len(stored):
                del stored[: run.head]
                run.head = 0
        if run.changed is not None:
            run.wake()
        return str(run.last_seq)

    async def read(
        self, run_id: str, after: str | None = None, *, limit: int = 1000, block: float | None = None
    ) -> list[StoredEvent]:
        run = self._run(run_id)
        seq = _parse_id(after) if after is not None else 0
        if seq > run.last_seq:
            raise InvalidEventIdError(f"event id {after!r} was never issued by this run")
        if seq < run.first_seq - 1:
            raise _replay_unavailable(after, run)
        if seq == run.last_seq and block and run.status == "running":
            changed = run.changed
            if changed is None:
                changed = run.changed = new_event()
            with anyio.move_on_after(block):
                await changed.wait()
            run = self._run(run_id)
            if seq < run.first_seq - 1:
                raise _replay_unavailable(after, run)
        start = run.head + seq - run.first_seq + 1
        texts = run.events[start : start + limit]
        return list(zip(map(str, range(seq + 1, seq + 1 + len(texts))), texts, strict=True))

    async def finish(self, run_id: str, status: RunStatus, *, final: Sequence[Event | str] = ()) -> bool:
        if status == "running":
            raise ValueError("finish() needs a final status, not 'running'")
        run = self._run(run_id)
        if run.status != "running":
            return False
        self._extend(run, final)
        del run.events[: run.head]  # a finished run holds only what it retains
        run.head = 0
        run.status = status
        run.ended_at = time.monotonic()
        self._finished[run_id] = None
        run.wake()
        self._prune()
        return True

    async def run_info(self, run_id: str) -> RunInfo | None:
        try:
            return self._run(run_id).info()
        except UnknownRunError:
            return None

    async def latest_run(self, session_id: str) -> RunInfo | None:
        run_id = self._latest.get(session_id)
        return None if run_id is None else await self.run_info(run_id)

    async def heartbeat(self, run_id: str, producer: str, lease: float) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.status != "running" or run.producer != producer:
            return False
        run.lease_until = time.monotonic() + lease
        return True

    async def aclose(self) -> None:
        for run in self._runs.values():
            run.wake()

    # --- introspection ------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of runs held (running and retained)."""
        return len(self._runs)


class _Session:
    __slots__ = ("info", "used")

    def __init__(self, info: SessionInfo, used: float) -> None:
        self.info = info
        self.used = used  # time.monotonic() of its last use


def _replay_unavailable(after: str | None, run: _Run) -> ReplayUnavailableError:
    where = f"after {after!r}" if after is not None else "from the first"
    return ReplayUnavailableError(
        f"the events {where} are no longer retained", resume_after=str(run.first_seq - 1)
    )


def _parse_id(event_id: str) -> int:
    if not (0 < len(event_id) <= _MAX_ID_DIGITS and event_id.isascii() and event_id.isdigit()):
        raise InvalidEventIdError(f"malformed event id {event_id!r}")
    if event_id[0] == "0" and event_id != "0":
        raise InvalidEventIdError(f"malformed event id {event_id!r}")
    return int(event_id)
