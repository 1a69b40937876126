"""Resumable streams: runs detached from connections, replayed from ``Last-Event-ID``.

A :class:`StreamHub` runs a source as a background *run* of a *session*, records its
events in a :class:`~streamflow.stores.Store` with monotonic ids, and serves them to any
number of readers. A reader that reconnects with the last id it saw gets exactly the
events after it, then follows the run live::

    hub = StreamHub()
    app = Starlette(routes=[...], lifespan=hub.lifespan)

    async def new_session(request):
        return JSONResponse({"session": await hub.create_session()})

    async def post_message(request):
        prompt = (await request.json())["prompt"]
        run_id = await hub.start(request.path_params["session"], answer(prompt))
        return JSONResponse({"run": run_id}, status_code=202)

    async def stream(request):
        return await hub.response(request, request.path_params["session"])

Every frame carries ``id: <run id>.<event id>`` and the response begins with ``retry:``.
See ``docs/resume.md`` for the policies.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import signal
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from types import FrameType, TracebackType
from typing import Final, Literal, TypeAlias, TypeVar

import anyio
import anyio.abc
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from streamflow.adapters.iterable import ErrorHandler, Source, from_iterable, hide_exception
from streamflow.encoders.base import Encoder
from streamflow.encoders.json_events import JSONEncoder
from streamflow.events import Done, Error, Event
from streamflow.starlette import EventStreamResponse
from streamflow.stores.base import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    RunInfo,
    RunStatus,
    Store,
    UnknownRunError,
)
from streamflow.stores.memory import MemoryStore

__all__ = [
    "Authorize",
    "BusyPolicy",
    "HubClosedError",
    "LastReaderPolicy",
    "SessionBusyError",
    "SessionNotFoundError",
    "StreamHub",
]

logger = logging.getLogger("streamflow")

BusyPolicy: TypeAlias = Literal["queue", "reject"]
LastReaderPolicy: TypeAlias = Literal["grace", "finish", "cancel"]
Authorize: TypeAlias = Callable[[Request, str], bool | Awaitable[bool]]
"""``authorize(request, session_id)``: may this request read this session?"""

_T = TypeVar("_T")
_Pairs: TypeAlias = list[tuple[str, Event | str]]  # (id, event or its JSON): see EventStreamResponse.with_ids
_DONE: Final = Done()
_DONE_JSON: Final = _DONE.to_json()
_first: Final = itemgetter(0)
_second: Final = itemgetter(1)
_SEPARATOR: Final = "."


class SessionNotFoundError(KeyError):
    """No such session (never created, or expired)."""


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
    done: anyio.Event = field(default_factory=anyio.Event)
    readers: int = 0
    generation: int = 0  # bumped when a reader arrives: a pending grace timer is void
    reason: Literal["policy", "shutdown", "lease"] = "policy"


class StreamHub:
    """Runs sources in the background and serves their events, resumable, to readers.

    - ``store``: where runs and events live (default: a new
      :class:`~streamflow.stores.MemoryStore`).
    - ``busy``: a message for a session whose run is still running is ``"reject"``-ed
      (:class:`SessionBusyError`) or ``"queue"``-d (:meth:`start` waits for its turn).
    - ``on_last_reader_gone``: when a run has no reader left, ``"grace"`` cancels it after
      ``grace`` seconds unless a reader comes back (the default), ``"cancel"`` cancels it
      at once, ``"finish"`` lets it run to its end. A run no reader ever opens is cancelled
      after ``grace`` seconds under ``"grace"`` and ``"cancel"``.
    - ``authorize(request, session_id)``: refuse a reader with 403 (sync or async).
    - ``encoder``: a factory of the encoder of each response (default
      :class:`~streamflow.encoders.JSONEncoder`).
    - ``retry``: the reconnection time (ms) every response sends first.
    - ``lease``: seconds a run's producer lease lasts; it is renewed every third of it. A
      reader that finds a running run whose lease expired ends it with
      ``Error(code="producer_lost")``.
    - ``poll``: seconds a reader blocks in the store before checking the run's status.

    The hub needs a lifetime: ``async with hub:`` or ``Starlette(lifespan=hub.lifespan)``.
    On exit, open streams end *without* ``done`` (so browsers reconnect) and running runs
    are cancelled with ``Error(code="server_shutdown")``.
    """

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
        self.store: Store = store if store is not None else MemoryStore()
        self.busy = busy
        self.on_last_reader_gone = on_last_reader_gone
        self.grace = grace
        self.authorize = authorize
        self.encoder = encoder
        self.retry = retry
        self.ping = ping
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
        self._new_run: dict[str, anyio.Event] = {}  # session id -> set when a run starts here

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> StreamHub:
        if self._tasks is not None:
            raise RuntimeError("this hub is already running")
        self._closing = False
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._heartbeats)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tasks = self._tasks
        if tasks is None:
            return None
        self.shutdown()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            while self._runs:  # the runs record their end (shielded, bounded)
                await next(iter(self._runs.values())).done.wait()
        tasks.cancel_scope.cancel()
        try:
            return await tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks = None

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A Starlette lifespan: ``Starlette(lifespan=hub.lifespan)``.

        Under uvicorn, SIGTERM also ends the hub's open streams at once (uvicorn waits for
        open connections to close before it runs the lifespan's shutdown): the hub chains
        its own handler before uvicorn's (``handle_sigterm=False`` turns this off).
        """
        async with self:
            restore = self._chain_sigterm() if self.handle_sigterm else None
            try:
                yield
            finally:
                if restore is not None:
                    restore()

    def _chain_sigterm(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): no chaining
            return None
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return None

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.shutdown)
            previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

        def restore() -> None:
            if signal.getsignal(signal.SIGTERM) is on_sigterm:
                signal.signal(signal.SIGTERM, previous)

        return restore

    def shutdown(self) -> None:
        """Begin the graceful shutdown (idempotent; call it in the event loop's thread):
        open streams end without ``done`` and running runs are cancelled. ``async with``
        and the lifespan call it on exit."""
        if self._closing:
            return
        self._closing = True
        for scope in list(self._waits):
            scope.cancel()
        for wake in self._new_run.values():
            wake.set()
        for run in self._runs.values():
            run.reason = "shutdown"
            run.scope.cancel()

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tasks is None or self._closing:
            raise HubClosedError("the hub is not running: use `async with hub:` or its lifespan")
        return self._tasks

    # --- sessions and runs --------------------------------------------------------------

    async def create_session(self) -> str:
        """A new session; its id is unguessable (``secrets.token_urlsafe(24)``)."""
        session_id = secrets.token_urlsafe(24)
        await self.store.create_session(session_id)
        return session_id

    async def session_exists(self, session_id: str) -> bool:
        return await self.store.session_exists(session_id)

    async def start(self, session_id: str, source: Source) -> str:
        """Start a run of ``source`` for ``session_id`` in the background; return its id.

        Raises :class:`SessionNotFoundError`, :class:`HubClosedError`, and under
        ``busy="reject"`` :class:`SessionBusyError` when the session's latest run is still
        running. Under ``busy="queue"`` it waits until that run has ended (first come,
        first served on this hub), so two runs of a session never mix.
        """
        tasks = self._task_group()
        events = from_iterable(source, on_error=self.on_error)
        try:
            if not await self.store.session_exists(session_id):
                raise SessionNotFoundError(session_id)
            lock = self._locks.setdefault(session_id, anyio.Lock())
            try:
                async with lock:
                    await self._wait_until_idle(session_id)
                    tasks = self._task_group()
                    run_id = await self.store.create_run(
                        session_id, producer=self.producer_id, lease=self.lease
                    )
                    run = _LocalRun(run_id, session_id)
                    self._runs[run_id] = run
                    tasks.start_soon(self._run, run, events)
            finally:
                if not lock.locked() and not lock.statistics().tasks_waiting:
                    self._locks.pop(session_id, None)
        except BaseException:
            await events.aclose()
            raise
        wake = self._new_run.pop(session_id, None)
        if wake is not None:
            wake.set()
        if self.on_last_reader_gone != "finish":
            tasks.start_soon(self._grace_timer, run, run.generation)
        return run_id

    async def _wait_until_idle(self, session_id: str) -> None:
        while True:
            latest = await self.store.latest_run(session_id)
            if latest is None or latest.status != "running":
                return
            if not latest.producer_alive:
                await self.store.finish(latest.run_id, "failed", final=_producer_lost())
                return
            if self.busy == "reject":
                raise SessionBusyError(f"session {session_id!r} has a running run: {latest.run_id}")
            local = self._runs.get(latest.run_id)
            with anyio.move_on_after(self.poll):
                if local is not None:
                    await local.done.wait()
                else:
                    await anyio.sleep(self.poll)
            self._task_group()

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run produced by this hub; ``False`` if it is not running here."""
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.scope.cancel()
        return True

    async def _run(self, run: _LocalRun, events: AsyncGenerator[Event, None]) -> None:
        store, run_id = self.store, run.run_id
        status: RunStatus | None = "finished"
        final: Sequence[Event] = ()
        try:
            with run.scope:
                await _record(store, run_id, events)
        except RunFinishedError:
            status = None  # ended elsewhere (its lease was lost, or a reader marked it failed)
        except Exception:
            logger.exception("streamflow: run %s could not be recorded", run_id)
            status, final = "failed", _failed("store_error", "The stream could not be recorded.")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await events.aclose()
        if run.scope.cancelled_caught and status is not None:
            if run.reason == "shutdown":
                status, final = "cancelled", _failed("server_shutdown", "The server shut down.")
            elif run.reason == "lease":
                status = None
            else:
                status, final = "cancelled", _failed("cancelled", "The run was cancelled.")
        try:
            if status is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await store.finish(run_id, status, final=final)
        except Exception:
            logger.exception("streamflow: could not record the end of run %s", run_id)
        finally:
            self._runs.pop(run_id, None)
            run.done.set()

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            for run in list(self._runs.values()):
                try:
                    alive = await self.store.heartbeat(run.run_id, self.producer_id, self.lease)
                except Exception:
                    logger.exception("streamflow: the heartbeat of run %s failed", run.run_id)
                    continue
                if not alive:
                    run.reason = "lease"
                    run.scope.cancel()

    # --- the last-reader policy ---------------------------------------------------------

    def _reader_arrives(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.readers += 1
            run.generation += 1

    def _reader_leaves(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is None:
            return
        run.readers -= 1
        if run.readers or self.on_last_reader_gone == "finish":
            return
        if self.on_last_reader_gone == "cancel":
            run.scope.cancel()
        elif self._tasks is not None and not self._closing:
            self._tasks.start_soon(self._grace_timer, run, run.generation)

    async def _grace_timer(self, run: _LocalRun, generation: int) -> None:
        await anyio.sleep(self.grace)
        if run.readers == 0 and run.generation == generation:
            logger.info("streamflow: run %s had no reader for %ss; cancelled", run.run_id, self.grace)
            run.scope.cancel()

    # --- readers ------------------------------------------------------------------------

    async def response(
        self,
        request: Request,
        session_id: str | None = None,
        *,
        run_id: str | None = None,
        encoder: Callable[[], Encoder] | None = None,
    ) -> Response:
        """The stream of a session (its latest run, then the next ones) or of one run.

        Resumes after the request's ``Last-Event-ID`` header (or its ``last_event_id``
        query parameter) and follows live. 404 for an unknown session or run, 403 when
        ``authorize`` refuses. A malformed or foreign id gets ``Error(code=
        "invalid_event_id")``, an id whose events are no longer retained
        ``Error(code="replay_unavailable")``, each followed by ``Done`` (and ``id:`` empty,
        so a browser's next reconnection starts afresh).
        """
        if (session_id is None) == (run_id is None):
            raise TypeError("response() takes a session_id or a run_id")
        if run_id is not None:
            info = await self.store.run_info(run_id)
            if info is None:
                return PlainTextResponse("unknown run", status_code=404)
            session_id = info.session_id
        elif not await self.store.session_exists(session_id or ""):
            return PlainTextResponse("unknown session", status_code=404)
        assert session_id is not None
        if self.authorize is not None:
            allowed = self.authorize(request, session_id)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return PlainTextResponse("forbidden", status_code=403)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or None
        pairs = self._follow(session_id, run_id, last)
        make = encoder if encoder is not None else self.encoder
        return EventStreamResponse.with_ids(pairs, encoder=make(), ping=self.ping, retry=self.retry)

    async def _follow(
        self, session_id: str, fixed_run: str | None, last: str | None
    ) -> AsyncGenerator[_Pairs, None]:
        """The reader's batches; a failing store (Redis gone) ends them with
        ``Error(code="store_unavailable")`` and ``Done``, carrying the last id sent so
        that a later resume can still pick up from there."""
        last_sent = last or ""
        try:
            async with aclosing(self._follow_runs(session_id, fixed_run, last)) as batches:
                async for batch in batches:
                    yield batch
                    last_sent = batch[-1][0]
        except Exception:
            logger.exception("streamflow: the store failed while serving a stream")
            error = Error(message="The stream is unavailable right now.", code="store_unavailable")
            yield [(last_sent, error), (last_sent, _DONE)]

    async def _follow_runs(
        self, session_id: str, fixed_run: str | None, last: str | None
    ) -> AsyncGenerator[_Pairs, None]:
        if self._closing:
            return
        run_id = fixed_run
        after: str | None = None
        if last is not None:
            run_part, separator, after = last.partition(_SEPARATOR)
            if not separator or not run_part or not after:
                yield _refusal("invalid_event_id", "The Last-Event-ID is malformed.")
                return
            info = await self.store.run_info(run_part)
            if info is not None and (info.session_id != session_id or fixed_run not in (None, run_part)):
                yield _refusal("invalid_event_id", "The Last-Event-ID belongs to another stream.")
                return
            if info is None:
                yield _refusal("replay_unavailable", "The events after Last-Event-ID are gone.")
                return
            run_id = run_part
        elif run_id is None:
            latest = await self._next_run(session_id, None)
            if latest is None:
                return
            run_id = latest.run_id
        while True:  # one run per iteration: the session's runs follow one another
            self._reader_arrives(run_id)
            try:
                outcome = None
                async with aclosing(self._follow_run(run_id, after)) as pairs:
                    async for item in pairs:
                        if isinstance(item, str):
                            outcome = item
                        else:
                            yield item
            finally:
                self._reader_leaves(run_id)
            if outcome == "caught_up" and fixed_run is not None and after is not None:
                # A reconnection after the run's Done (a client that does not close on it):
                # its Done again, so that it stops, rather than an empty body, after which an
                # EventSource would reconnect every `retry` milliseconds for ever.
                yield [(run_id + _SEPARATOR + after, _DONE)]
            if outcome != "caught_up" or fixed_run is not None:
                return
            latest = await self._next_run(session_id, run_id)
            if latest is None:
                return
            run_id, after = latest.run_id, None

    async def _follow_run(self, run_id: str, after: str | None) -> AsyncGenerator[_Pairs | str, None]:
        """The pairs of one run after ``after``; ends with the string ``"done"`` (its Done
        was sent), ``"caught_up"`` (the run had ended and this reader has all of it: a
        reconnection after its Done) or ``"closed"`` (shutdown: no Done)."""
        store, prefix = self.store, run_id + _SEPARATOR
        ended = False
        while True:
            try:
                block = None if ended else self.poll
                batch = await self._wait(partial(store.read, run_id, after, block=block))
            except InvalidEventIdError:
                yield _refusal("invalid_event_id", "The Last-Event-ID was not issued by this stream.")
                yield "done"
                return
            except (ReplayUnavailableError, UnknownRunError):
                yield _refusal("replay_unavailable", "The events after Last-Event-ID are gone.")
                yield "done"
                return
            if batch is None or self._closing:
                yield "closed"
                return
            if batch:
                # (run.seq, JSON) pairs, made in C: the stored JSON goes to the wire as it is.
                ids = map(prefix.__add__, map(_first, batch))
                pairs: _Pairs = list(zip(ids, map(_second, batch), strict=True))
                if batch[-1][1] == _DONE_JSON:  # the grammar: a run's one Done is its last event
                    yield pairs
                    yield "done"
                    return
                yield pairs
                after = batch[-1][0]
                ended = False
                continue
            if ended:  # ended, and nothing after `after` even on a second look
                yield "caught_up"
                return
            info = await self._wait(lambda: store.run_info(run_id))
            if info is None or self._closing:
                yield "closed"
                return
            if info.status == "running":
                if not info.producer_alive:
                    await store.finish(run_id, "failed", final=_producer_lost())
            else:
                ended = True  # read once more: its final events may have just been added

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

    async def _next_run(self, session_id: str, current: str | None) -> RunInfo | None:
        """The session's latest run once it is not ``current``; ``None`` on shutdown."""
        while not self._closing:
            latest = await self._wait(lambda: self.store.latest_run(session_id))
            if latest is not None and latest.run_id != current:
                return latest
            wake = self._new_run.setdefault(session_id, anyio.Event())
            await self._wait(partial(_wait_event, wake, self.poll))
        return None


_BATCH: Final = 1024  # the most events of one store call; then the source waits


class _Batcher:
    """Carries a source's events to the store in batches (see :func:`_record`)."""

    __slots__ = ("ended", "error", "pending", "space", "wake")

    def __init__(self) -> None:
        self.pending: list[Event | str] = []
        self.ended = False
        self.error: Exception | None = None
        self.wake: anyio.Event | None = None  # set when the writer waits for events
        self.space: anyio.Event | None = None  # set when the source waits for the writer

    async def collect(self, events: AsyncGenerator[Event, None]) -> None:
        try:
            async for event in events:
                pending = self.pending  # the writer takes the list and leaves a new one
                pending.append(event.to_json())  # a str: nothing for the garbage collector to scan
                if self.wake is not None:
                    self.wake.set()
                    self.wake = None
                if len(pending) >= _BATCH:  # also: a source that never awaits must not hold the loop
                    space = self.space = anyio.Event()
                    await space.wait()
        except Exception as exc:
            self.error = exc
        finally:
            self.ended = True
            if self.wake is not None:
                self.wake.set()
                self.wake = None

    async def write(self, store: Store, run_id: str) -> None:
        while True:
            batch = self.pending
            if not batch:
                if self.ended:
                    break
                wake = self.wake = anyio.Event()
                await wake.wait()
                continue
            self.pending = []
            if self.space is not None:
                self.space.set()
                self.space = None
            await store.append_many(run_id, batch)
        if self.error is not None:
            raise self.error


async def _record(store: Store, run_id: str, events: AsyncGenerator[Event, None]) -> None:
    """Append the events of ``events`` to the run, in batches: the events the source has
    ready together (it yields them without waiting) go in one store call, and so do those
    it yields while a store call is in flight. An event is never held back waiting for the
    next: when the source waits, what it yielded is written at once."""
    batcher = _Batcher()
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(batcher.collect, events)
        try:
            await batcher.write(store, run_id)
        except Exception as exc:
            failure = exc
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _wait_event(event: anyio.Event, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await event.wait()


def _failed(code: str, message: str) -> tuple[Event, Event]:
    return Error(message=message, code=code), _DONE


def _producer_lost() -> tuple[Event, Event]:
    return _failed("producer_lost", "The server running this stream stopped; it cannot continue.")


def _refusal(code: str, message: str) -> _Pairs:
    # An empty id resets the browser's last event id: its next reconnection starts afresh.
    return [("", Error(message=message, code=code)), ("", _DONE)]
