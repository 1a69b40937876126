"""The store protocol: where a :class:`~streamflow.hub.StreamHub` records runs and events.

A *run* is one execution of a source for a *session*. Its events are appended, in order,
by one producer (on one replica) and read by any number of readers (on any replica). The
hub never looks inside ids: a run id and an event id are opaque strings chosen by the
store, with two rules:

- a run id matches ``[A-Za-z0-9_-]+`` (the hub joins it with an event id as
  ``<run_id>.<event_id>`` to make an SSE ``id:``), and is unguessable or at least unique;
- event ids are monotonic within a run: :meth:`Store.read` after an id returns exactly
  the events appended after it, in order. An event id contains no CR, LF or NUL.

Errors are typed so the hub can answer a reader precisely:

- :class:`UnknownRunError`: no such run (never created, or expired);
- :class:`InvalidEventIdError`: an ``after`` id that is malformed, or that this run never
  issued (foreign, or ahead of the log);
- :class:`ReplayUnavailableError`: a well-formed id of this run whose successors were
  dropped by retention (``MAXLEN``, the per-run event cap);
- :class:`RunFinishedError`: an append to a run that is already finished (a producer that
  lost its lease, or one cancelled by another replica).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from pydantic import JsonValue

from streamflow.events import Event

__all__ = [
    "InvalidEventIdError",
    "ReplayUnavailableError",
    "RunFinishedError",
    "RunInfo",
    "RunStatus",
    "SessionInfo",
    "Store",
    "StoreError",
    "StoredEvent",
    "UnknownRunError",
    "wire_json",
]

RunStatus: TypeAlias = Literal["running", "finished", "failed", "cancelled"]
"""``running`` until the run ends: ``finished`` (its source ended), ``failed`` (its stream
ended with an ``Error``: the source failed, the store could not record it, or its producer
died or was lost), ``cancelled`` (a policy or a shutdown stopped it)."""


class StoreError(Exception):
    """Base class of the errors a store raises."""


class UnknownRunError(StoreError, KeyError):
    """No such run: never created, or expired by retention."""


class InvalidEventIdError(StoreError, ValueError):
    """An event id that is malformed, or that this run never issued (foreign)."""


class ReplayUnavailableError(StoreError):
    """The events after this id were dropped by retention; they cannot be replayed.

    ``resume_after`` is the id after which the run's retained events begin, when the store
    knows it: a reader that accepts the gap (a new reader of a long run) reads on from
    there.
    """

    def __init__(self, message: str, *, resume_after: str | None = None) -> None:
        super().__init__(message)
        self.resume_after = resume_after


class RunFinishedError(StoreError):
    """The run is finished; it takes no more events."""


StoredEvent: TypeAlias = tuple[str, str]
"""An event as recorded: ``(id, data)``, its id (monotonic within its run) and its wire
JSON (what :meth:`Event.to_json() <streamflow.events.Event>` wrote;
:func:`~streamflow.events.parse_event` makes the event of it).

Stores keep and return events as JSON text: a reader that sends them on with
:class:`~streamflow.encoders.JSONEncoder` never builds an event object, and the events a
store retains are strings that the garbage collector does not scan.
"""


def wire_json(events: Sequence[Event | str]) -> list[str]:
    """The wire JSON of each event (``Event.to_json()``); a ``str`` is taken to be that
    JSON already (the hub converts its events as they are produced, so that a batch waiting
    for the store holds strings, not objects for the garbage collector to scan)."""
    return [event if isinstance(event, str) else event.to_json() for event in events]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a store knows about a session: who owns it and what the app attached to it.

    ``owner`` and ``metadata`` are the app's, given to
    :meth:`StreamHub.create_session() <streamflow.hub.StreamHub.create_session>`; the
    hub's ``authorize`` hook receives them, so that it needs no store of its own.
    ``metadata`` is JSON (it crosses replicas through the store).
    """

    session_id: str
    owner: str | None = None
    metadata: Mapping[str, JsonValue] = field(default_factory=dict)
    created_at: float = 0.0  # time.time() at creation


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a store knows about a run.

    ``producer_alive`` is ``False`` once a ``running`` run's producer lease (see
    :meth:`Store.heartbeat`) has expired: a reader may then end it with
    :meth:`Store.finish` (status ``failed``) so that no reader waits forever.
    """

    run_id: str
    session_id: str
    status: RunStatus
    created_at: float  # time.time() at creation
    producer_alive: bool = True


@runtime_checkable
class Store(Protocol):
    """Runs and their events, shared by a hub's producers and readers.

    Every method is a coroutine and safe to call concurrently. Retention (how long and how
    many finished runs and sessions are kept, how many events per run) is the store's
    configuration, applied by the store itself (timers, ``MAXLEN``, TTLs).

    A store whose :meth:`append_many` completes without ever waiting (in memory) may set a
    class attribute ``immediate_appends = True``: the hub then appends each event in its
    source's task as it is yielded, instead of handing batches to a writer task (a hop
    between tasks per event, which only pays when appends wait, as a network store's do).
    A store whose event ids are the run's sequence numbers ``1, 2, 3...`` in append order
    may set ``sequential_ids = True``: the hub then knows the id of every event it
    appended (not only the last one returned) and serves its local readers the latest ones
    from memory, without a store read per event.
    """

    async def create_session(
        self, session_id: str, *, owner: str | None = None, metadata: Mapping[str, JsonValue] | None = None
    ) -> None:
        """Record a session (its id is made by the hub, unguessable) with its ``owner`` and
        ``metadata`` (JSON). Idempotent: a second call keeps what the first recorded."""
        ...

    async def session_exists(self, session_id: str) -> bool:
        """Whether ``session_id`` was created and has not expired (a use extends its life)."""
        ...

    async def get_session(self, session_id: str) -> SessionInfo | None:
        """The session's owner and metadata, or ``None`` when it was never created or has
        expired (a use extends its life, as :meth:`session_exists` does)."""
        ...

    async def create_run(self, session_id: str, *, producer: str, lease: float) -> str:
        """Start a ``running`` run of ``session_id`` owned by ``producer`` (an id of the
        hub that runs it) with a lease of ``lease`` seconds; return its new run id. It
        becomes the session's latest run."""
        ...

    async def append_many(self, run_id: str, events: Sequence[Event | str]) -> str | None:
        """Record the next events of a ``running`` run (each an event or its wire JSON,
        see :func:`wire_json`), in order, atomically (all of them,
        or none when the run had ended), each with an id greater than every id before it;
        return the id of the last one (``None`` for no events). The hub appends the events
        its source has ready together with one call. Raises :class:`UnknownRunError` or
        :class:`RunFinishedError`."""
        ...

    async def read(
        self, run_id: str, after: str | None = None, *, limit: int = 1000, block: float | None = None
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of ``run_id`` appended after the id ``after`` (from the
        first event when ``None``), in order, as ``(id, JSON)`` pairs: each JSON text
        exactly as it was appended (the hub recognises a run's ``Done`` by its text).

        When there are none yet, wait up to ``block`` seconds for one (``None``: do not
        wait) and return ``[]`` on timeout. Raises :class:`UnknownRunError`,
        :class:`InvalidEventIdError` (malformed or foreign ``after``) or
        :class:`ReplayUnavailableError` (events after ``after``, or from the first when
        ``after`` is ``None``, were dropped; its ``resume_after`` names where the retained
        ones begin).
        """
        ...

    async def finish(self, run_id: str, status: RunStatus, *, final: Sequence[Event | str] = ()) -> bool:
        """End a ``running`` run with ``status`` (not ``running``), first appending
        ``final`` (e.g. ``Error`` then ``Done`` for a failed run), atomically. Returns
        ``False`` and changes nothing when the run had already ended (the first caller
        wins). Raises :class:`UnknownRunError`."""
        ...

    async def run_info(self, run_id: str) -> RunInfo | None:
        """The run's status and session, or ``None`` for an unknown or expired run."""
        ...

    async def latest_run(self, session_id: str) -> RunInfo | None:
        """The session's most recently created run, or ``None``."""
        ...

    async def heartbeat(self, run_id: str, producer: str, lease: float) -> bool:
        """Extend ``producer``'s lease on a ``running`` run to ``lease`` seconds from now.
        Returns ``False`` when the run is no longer running or owned by ``producer``
        (the producer should then stop)."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources (connections, timers)."""
        ...
