"""The hub's shared state, its errors and small helpers (see :mod:`streamflow.hub`)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, Literal, TypeAlias, TypeVar

import anyio
import anyio.abc
from pydantic import JsonValue, TypeAdapter
from starlette.requests import Request

from streamflow._anyio import new_event
from streamflow.adapters.iterable import ErrorHandler, hide_exception
from streamflow.encoders.base import Encoder
from streamflow.encoders.json_events import JSONEncoder
from streamflow.events import Done, Error, Event, Gap
from streamflow.stores.base import (
    SessionInfo,
    Store,
)
from streamflow.stores.memory import MemoryStore

logger = logging.getLogger("streamflow")

BusyPolicy: TypeAlias = Literal["queue", "reject"]
LastReaderPolicy: TypeAlias = Literal["grace", "finish", "cancel"]
Authorize: TypeAlias = Callable[[Request, SessionInfo], bool | Awaitable[bool]]
"""``authorize(request, session)``: may this request read this session? ``session`` carries
its id, ``owner`` and ``metadata`` (see :meth:`StreamHub.create_session`)."""

_T = TypeVar("_T")
_Pairs: TypeAlias = list[tuple[str, Event | str]]  # (id, event or its JSON): see EventStreamResponse.with_ids
_DONE: Final = Done()
_DONE_JSON: Final = _DONE.to_json()
_first: Final = itemgetter(0)
_second: Final = itemgetter(1)
_SEPARATOR: Final = "."
_GAP_JSON: Final = Gap().to_json()
_ERROR_PREFIX: Final = '{"type":"error"'
_READ_MAX: Final = 1000  # the most events of one store read
_PAIR_COST: Final = 200  # bytes an event of a read holds besides its JSON: its id, its pair
_READ_FIRST: Final = 16  # the events of a reader's first read, before their size is known
_TAIL: Final = 1024  # events a local run keeps for its readers, besides the store
_METADATA: Final = TypeAdapter(dict[str, JsonValue])


class SessionNotFoundError(KeyError):
    """No such session (never created, or expired), or one the caller may not use (an
    ``owner`` that is not the session's): the two are not told apart."""


class SessionBusyError(RuntimeError):
    """The session already has a running run and the hub's policy is ``busy="reject"``."""


class HubClosedError(RuntimeError):
    """The hub is not running (outside ``async with hub`` / its lifespan, or shut down)."""


@dataclass(eq=False)
class _LocalRun:
    """A run whose producer is this hub."""

    run_id: str
    session_id: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=new_event)
    readers: int = 0
    generation: int = 0  # bumped when a reader arrives: a pending grace timer is void
    reason: Literal["policy", "shutdown", "lease"] = "policy"
    beating: bool = False  # a heartbeat of it is in flight
    # Made by a reader that waits for the next append; set (and dropped) after each append,
    # at the run's end and on shutdown. None while no reader waits: an append costs nothing.
    _appended: anyio.Event | None = None

    @property
    def appended(self) -> anyio.Event:
        """The event the run's next append sets (a local reader takes it before it reads)."""
        appended = self._appended
        if appended is None:
            appended = self._appended = new_event()
        return appended

    # The latest events appended, as their JSON, for its local readers to take without a
    # store read: tail[i] is event number tail_first + i (a store with sequential_ids);
    # tail_first is 0 when the tail is off (a store without them, or after a refused batch).
    tail: list[str] = field(default_factory=list)
    tail_first: int = 1

    def remember(self, last_id: str | None, texts: Sequence[Event | str]) -> None:
        """Keep ``texts``, just appended with the ids up to ``last_id``, in the tail."""
        if not self.tail_first or last_id is None:
            return
        first = int(last_id) - len(texts) + 1
        tail = self.tail
        if first != self.tail_first + len(tail):  # not right after the tail: start it again
            tail.clear()
            self.tail_first = first
        tail.extend(text if isinstance(text, str) else text.to_json() for text in texts)
        if len(tail) > 2 * _TAIL:
            del tail[: len(tail) - _TAIL]
            self.tail_first = int(last_id) - len(tail) + 1

    def forget(self) -> None:
        self.tail.clear()
        self.tail_first = 0

    def from_tail(self, after: str | None, limit: int) -> list[tuple[str, str]] | None:
        """The events after ``after`` from the tail, or ``None`` when the tail cannot tell
        (off, ``after`` before it, or not one of its ids): then the store must be read."""
        first = self.tail_first
        if not first or after is None or not after.isdigit():
            return None
        start = int(after) - first + 1
        if not 0 <= start <= len(self.tail):
            return None
        texts = self.tail[start : start + limit]
        return list(zip(map(str, range(first + start, first + start + len(texts))), texts, strict=True))

    def wake_readers(self) -> None:
        appended = self._appended
        if appended is not None:
            self._appended = None
            appended.set()


class _Wake:
    """Readers of a session waiting for its next run here: set when one starts."""

    __slots__ = ("event", "waiters")

    def __init__(self) -> None:
        self.event = new_event()
        self.waiters = 0


class _HubBase:
    """What every part of the hub shares: its options and its state."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        busy: BusyPolicy = "reject",
        on_last_reader_gone: LastReaderPolicy = "grace",
        grace: float = 30.0,
        authorize: Authorize | None = None,
        encoder: Callable[[], Encoder] = JSONEncoder,
        retry: int = 1000,
        ping: float | None = 15.0,
        send_timeout: float | None = 30.0,
        buffer_size: int = 64 * 1024,
        lease: float = 30.0,
        poll: float = 1.0,
        on_error: ErrorHandler = hide_exception,
        handle_sigterm: bool = True,
    ) -> None:
        if busy not in ("queue", "reject"):
            raise ValueError(f"busy must be 'queue' or 'reject', not {busy!r}")
        if on_last_reader_gone not in ("grace", "finish", "cancel"):
            raise ValueError(
                f"on_last_reader_gone must be 'grace', 'finish' or 'cancel', not {on_last_reader_gone!r}"
            )
        for name, value in (("grace", grace), ("lease", lease), ("poll", poll)):
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError(
                f"send_timeout must be a positive number of seconds or None, not {send_timeout!r}"
            )
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1 byte, not {buffer_size!r}")
        self.store: Store = store if store is not None else MemoryStore()
        self.busy = busy
        self.on_last_reader_gone = on_last_reader_gone
        self.grace = grace
        self.authorize = authorize
        self.encoder = encoder
        self.retry = retry
        self.ping = ping
        self.send_timeout = send_timeout
        self.buffer_size = buffer_size
        self.lease = lease
        self.poll = poll
        self.on_error = on_error
        self.handle_sigterm = handle_sigterm
        self.producer_id = secrets.token_urlsafe(9)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._runs: dict[str, _LocalRun] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._waits: set[anyio.CancelScope] = set()  # readers' waits, cancelled on shutdown
        self._new_run: dict[str, _Wake] = {}  # session id -> its readers waiting for a run here

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tasks is None or self._closing:
            raise HubClosedError("the hub is not running: use `async with hub:` or its lifespan")
        return self._tasks

    async def _wait(self, call: Callable[[], Awaitable[_T]]) -> _T | None:
        """``await call()``, or ``None`` if the hub shuts down meanwhile."""
        if self._closing:
            return None
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                return await call()
            finally:
                self._waits.discard(scope)
        return None


async def _wait_event(event: anyio.Event, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await event.wait()


def _failed(code: str, message: str) -> tuple[Event, Event]:
    return Error(message=message, code=code), _DONE


def _first_interrupt(exc: BaseException) -> BaseException:
    """The ``KeyboardInterrupt`` or ``SystemExit`` in ``exc`` (a task group may have wrapped
    it), else ``exc``."""
    found: BaseException | None = exc
    if isinstance(exc, BaseExceptionGroup):
        found = exc.subgroup((KeyboardInterrupt, SystemExit))
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
    return found if found is not None else exc


def _internal_error() -> tuple[Event, Event]:
    return hide_exception(RuntimeError()), _DONE


def _producer_lost() -> tuple[Event, Event]:
    return _failed("producer_lost", "The server running this stream stopped; it cannot continue.")


def _refusal(code: str, message: str) -> _Pairs:
    # An empty id resets the browser's last event id: its next reconnection starts afresh.
    return [("", Error(message=message, code=code)), ("", _DONE)]
