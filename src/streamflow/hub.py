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
import json
import logging
import secrets
import signal
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from types import FrameType, TracebackType
from typing import Final, Literal, TypeAlias, TypeVar

import anyio
import anyio.abc
from pydantic import JsonValue, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from streamflow.adapters.iterable import ErrorHandler, Source, from_iterable, hide_exception, is_failure
from streamflow.encoders.base import Encoder
from streamflow.encoders.json_events import JSONEncoder
from streamflow.events import Done, Error, Event, Gap
from streamflow.starlette import EventStreamResponse
from streamflow.stores.base import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    RunInfo,
    RunStatus,
    SessionInfo,
    Store,
    StoreError,
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
_READ_FIRST: Final = 16  # the events of a reader's first read, before their size is known
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
    done: anyio.Event = field(default_factory=anyio.Event)
    readers: int = 0
    generation: int = 0  # bumped when a reader arrives: a pending grace timer is void
    reason: Literal["policy", "shutdown", "lease"] = "policy"
    beating: bool = False  # a heartbeat of it is in flight


class _Wake:
    """Readers of a session waiting for its next run here: set when one starts."""

    __slots__ = ("event", "waiters")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.waiters = 0


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
    - ``authorize(request, session)``: may this request read the session (sync or async)?
      ``session`` is a :class:`~streamflow.stores.SessionInfo` with its ``owner`` and
      ``metadata``. A refused reader and a reader of an unknown session get the same
      answer, ``HTTPException(404)`` (see :meth:`response`).
    - ``encoder``: a factory of the encoder of each response (default
      :class:`~streamflow.encoders.JSONEncoder`).
    - ``retry``: the reconnection time (ms) every response sends first.
    - ``send_timeout``: a reader that takes no bytes for that many seconds is dropped
      (``None``: never); its run then follows ``on_last_reader_gone``. ``buffer_size``:
      the bytes a reader may have queued before its reads from the store pause; with the
      server's own buffer, a reader that stops reading holds about three times this.
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
            wake.event.set()
        for run in self._runs.values():
            run.reason = "shutdown"
            run.scope.cancel()

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tasks is None or self._closing:
            raise HubClosedError("the hub is not running: use `async with hub:` or its lifespan")
        return self._tasks

    # --- sessions and runs --------------------------------------------------------------

    async def create_session(
        self, *, owner: str | None = None, metadata: Mapping[str, JsonValue] | None = None
    ) -> str:
        """A new session; its id is unguessable (``secrets.token_urlsafe(24)``) and is a
        bearer secret: whoever holds it may read the session, unless ``authorize`` says no.

        ``owner`` (e.g. the user's id) and ``metadata`` (a JSON object) are kept with the
        session by the store, for ``authorize`` and :meth:`start` to check. Raises
        ``TypeError`` or ``ValueError`` (pydantic's ``ValidationError``) for an owner that
        is not a string or metadata that is not JSON, before anything is written.
        """
        if owner is not None and not isinstance(owner, str):
            raise TypeError(f"owner must be a str or None, not {type(owner).__name__}")
        kept = _METADATA.validate_python(dict(metadata), strict=True) if metadata else None
        if kept:
            json.dumps(kept, allow_nan=False)  # ValueError for NaN and infinities: not JSON
        session_id = secrets.token_urlsafe(24)
        await self.store.create_session(session_id, owner=owner, metadata=kept)
        return session_id

    async def session_exists(self, session_id: str) -> bool:
        return await self.store.session_exists(session_id)

    async def get_session(self, session_id: str) -> SessionInfo | None:
        """The session's id, ``owner`` and ``metadata``; ``None`` if unknown or expired."""
        return await self.store.get_session(session_id)

    async def start(self, session_id: str, source: Source, *, owner: str | None = None) -> str:
        """Start a run of ``source`` for ``session_id`` in the background; return its id.

        Raises :class:`SessionNotFoundError` (also when ``owner`` is given and is not the
        session's: a caller cannot tell someone else's session from none),
        :class:`HubClosedError`, and under ``busy="reject"`` :class:`SessionBusyError` when
        the session's latest run is still running. Under ``busy="queue"`` it waits until
        that run has ended (first come, first served on this hub), so two runs of a
        session never mix.
        """
        tasks = self._task_group()
        events = from_iterable(source, on_error=self.on_error)
        try:
            session = await self.store.get_session(session_id)
            if session is None or (owner is not None and session.owner != owner):
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
            wake.event.set()
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
        """Record the run, then its end. Nothing a source does escapes into the hub's task
        group (which every other run and reader shares): a failure of any kind ends this
        run with an ``Error`` and ``Done``; ``KeyboardInterrupt``, ``SystemExit`` and the
        hub's own cancellation propagate once the run's end is recorded."""
        store, run_id = self.store, run.run_id
        status: RunStatus | None = "finished"
        final: Sequence[Event] = ()
        escaping: BaseException | None = None
        batcher = _Batcher()
        try:
            with run.scope:
                await batcher.record(store, run_id, events)
        except RunFinishedError:
            status = None  # ended elsewhere (its lease was lost, or a reader marked it failed)
        except _UncarriableEventError as exc:
            logger.error("streamflow: run %s has an event the store cannot carry", run_id, exc_info=exc)
            status, final = (
                "failed",
                _internal_error(),
            )
        except Exception:
            logger.exception("streamflow: run %s could not be recorded", run_id)
            status, final = "failed", _failed("store_error", "The stream could not be recorded.")
        except BaseException as exc:
            if is_failure(exc):  # defence in depth: from_iterable already turns these into Error
                logger.error("streamflow: run %s failed", run_id, exc_info=exc)
                status, final = (
                    "failed",
                    _internal_error(),
                )
            else:
                escaping = exc
                status, final = "cancelled", _failed("server_shutdown", "The server shut down.")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await events.aclose()
                except BaseException as exc:  # its clean-up failed: logged, the run ends anyway
                    if not is_failure(exc):
                        raise
                    logger.error("streamflow: run %s failed while being closed", run_id, exc_info=exc)
        if status == "finished" and batcher.failed:
            status = "failed"  # the source failed: its stream ended with an Error
        # Cancelled before its stream was complete (the cancellation may have found every task
        # of the run between two awaits, so that nothing raised it: cancel_called, not caught).
        if run.scope.cancel_called and not batcher.complete and status is not None:
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
        if escaping is not None:
            raise _first_interrupt(escaping)

    async def _heartbeats(self) -> None:
        """Renew every local run's lease every third of it. Passes keep their own clock and
        each run's heartbeat runs on its own, so that a slow store call (a Redis blip) delays
        no other run's renewal and no later pass."""
        interval = self.lease / 3
        due = anyio.current_time()
        while True:
            due = max(due + interval, anyio.current_time())
            await anyio.sleep_until(due)
            tasks = self._tasks
            if tasks is None:
                return
            for run in list(self._runs.values()):
                if not run.beating:  # its last heartbeat is still in flight: no second one
                    run.beating = True
                    tasks.start_soon(self._heartbeat, run)

    async def _heartbeat(self, run: _LocalRun) -> None:
        try:
            alive = await self.store.heartbeat(run.run_id, self.producer_id, self.lease)
        except Exception:
            logger.exception("streamflow: the heartbeat of run %s failed", run.run_id)
            return
        finally:
            run.beating = False
        if not alive and run.run_id in self._runs:
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
        query parameter) and follows live; a reader with no id of a run whose first events
        retention dropped starts from the first retained one, after a
        :class:`~streamflow.events.Gap`.

        An unknown session or run, and one that ``authorize`` refuses, raise the same
        ``starlette.exceptions.HTTPException(404)``, so that nobody learns which sessions
        exist: Starlette answers it ``Not Found``, FastAPI ``{"detail": "Not Found"}``, and
        an app's own exception handler may shape it. ``authorize`` runs before anything
        about the session is revealed. A malformed ``Last-Event-ID`` gets ``Error(code=
        "invalid_event_id")``; one naming a run that is not this stream's, or whose events
        are no longer retained, ``Error(code="replay_unavailable")`` (the same for a foreign
        run and a missing one); each followed by ``Done`` (and ``id:`` empty, so a
        browser's next reconnection starts afresh).
        """
        if (session_id is None) == (run_id is None):
            raise TypeError("response() takes a session_id or a run_id")
        session: SessionInfo | None = None
        if run_id is not None:
            info = await self.store.run_info(run_id)
            if info is not None:
                session_id = info.session_id
                session = await self.store.get_session(session_id)
                if session is None and self.authorize is None:
                    session = SessionInfo(session_id)  # a retained run of an expired session
        else:
            assert session_id is not None
            session = await self.store.get_session(session_id)
        if session is None or not await self._allowed(request, session):
            raise HTTPException(status_code=404)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or None
        pairs = self._follow(session.session_id, run_id, last)
        make = encoder if encoder is not None else self.encoder
        return EventStreamResponse.with_ids(
            pairs,
            encoder=make(),
            ping=self.ping,
            retry=self.retry,
            send_timeout=self.send_timeout,
            buffer_size=self.buffer_size,
        )

    async def _allowed(self, request: Request, session: SessionInfo) -> bool:
        if self.authorize is None:
            return True
        allowed = self.authorize(request, session)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        return bool(allowed)

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
            if info is None or info.session_id != session_id or fixed_run not in (None, run_part):
                # The same answer for a run of another stream and for none: no oracle.
                yield _refusal("replay_unavailable", "The events after Last-Event-ID are not available.")
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
        reconnection after its Done) or ``"closed"`` (shutdown: no Done).

        Reads are sized in bytes, not only in events: a reader holds about ``buffer_size``
        bytes of the run at a time, whatever the size of its events."""
        store, prefix = self.store, run_id + _SEPARATOR
        joining = after is None  # a new reader: a gap at the run's start is no reason to refuse
        ended = False
        limit = _READ_FIRST  # until the size of this run's events is known
        while True:
            try:
                block = None if ended else self.poll
                batch = await self._wait(partial(store.read, run_id, after, limit=limit, block=block))
            except InvalidEventIdError:
                yield _refusal("invalid_event_id", "The Last-Event-ID was not issued by this stream.")
                yield "done"
                return
            except ReplayUnavailableError as exc:
                if joining and exc.resume_after is not None:
                    after = exc.resume_after  # join from the first retained event, after a Gap
                    yield [(prefix + after, _GAP_JSON)]
                    continue
                yield _refusal("replay_unavailable", "The events after Last-Event-ID are not available.")
                yield "done"
                return
            except UnknownRunError:
                yield _refusal("replay_unavailable", "The events after Last-Event-ID are not available.")
                yield "done"
                return
            if batch is None or self._closing:
                yield "closed"
                return
            if batch:
                joining = False
                # (run.seq, JSON) pairs, made in C: the stored JSON goes to the wire as it is.
                ids = map(prefix.__add__, map(_first, batch))
                pairs: _Pairs = list(zip(ids, map(_second, batch), strict=True))
                size = sum(map(len, map(_second, batch)))
                limit = max(1, min(_READ_MAX, len(batch) * self.buffer_size // max(1, size)))
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
            wake = self._new_run.get(session_id)
            if wake is None:
                wake = self._new_run[session_id] = _Wake()
            wake.waiters += 1
            try:
                await self._wait(partial(_wait_event, wake.event, self.poll))
            finally:
                wake.waiters -= 1
                if not wake.waiters and self._new_run.get(session_id) is wake:
                    del self._new_run[session_id]  # nothing is kept for a session nobody waits on
        return None


_BATCH: Final = 1024  # the most events of one store call; then the source waits


class _UncarriableEventError(Exception):
    """An event the store refused although the store itself works (its batch-mates were
    recorded one by one up to it)."""


class _Batcher:
    """Carries a run's events to the store in batches.

    The events the source has ready together (it yields them without waiting) go in one
    store call, and so do those it yields while a store call is in flight. An event is
    never held back waiting for the next: when the source waits, what it yielded is
    written at once.
    """

    __slots__ = ("complete", "ended", "error", "failed", "pending", "space", "wake")

    def __init__(self) -> None:
        self.pending: list[Event | str] = []
        self.ended = False
        self.failed = False  # the stream carried an Error: the run failed
        self.complete = False  # the stream ended (with its Done): no cancellation can cut it
        self.error: BaseException | None = None
        self.wake: anyio.Event | None = None  # set when the writer waits for events
        self.space: anyio.Event | None = None  # set when the source waits for the writer

    async def record(self, store: Store, run_id: str, events: AsyncGenerator[Event, None]) -> None:
        """Append the events of ``events`` to the run, in batches."""
        failure: BaseException | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.collect, events)
            try:
                await self.write(store, run_id)
            except Exception as exc:
                failure = exc
                tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def collect(self, events: AsyncGenerator[Event, None]) -> None:
        try:
            async for event in events:
                text = await _carried(event, events)  # a str: nothing for the collector to scan
                if text.startswith(_ERROR_PREFIX):
                    self.failed = True
                pending = self.pending  # the writer takes the list and leaves a new one
                pending.append(text)
                del event, text
                if self.wake is not None:
                    self.wake.set()
                    self.wake = None
                if len(pending) >= _BATCH:  # also: a source that never awaits must not hold the loop
                    space = self.space = anyio.Event()
                    await space.wait()
            self.complete = True
        except Exception as exc:
            self.error = exc
        except BaseException as exc:
            if not is_failure(exc) and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise  # our own cancellation
            # Handed to the run's task, which records the run's end, then lets a
            # KeyboardInterrupt or SystemExit propagate (asyncio would stop the loop for it
            # here, in this task, before anything is recorded).
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
            try:
                await store.append_many(run_id, batch)
            except StoreError:
                raise
            except Exception as exc:  # the store refused this batch's content: find the event
                await _append_each(store, run_id, batch, exc)
        if self.error is not None:
            raise self.error


async def _carried(event: Event, events: AsyncGenerator[Event, None]) -> str:
    """The wire JSON of ``event``, checked to be valid UTF-8 (a lone surrogate is not, and
    no store or client could take it). An event that is not is thrown back into the
    stream, whose one mechanism for failures ends it with an ``Error``, then ``Done``:
    the events before it, its batch-mates included, are kept."""
    for _ in range(3):  # the event, the Error made for it, the generic Error
        try:
            text = event.to_json()
            if not text.isascii():
                text.encode()
            return text
        except Exception as exc:
            event = await events.athrow(exc)
    raise RuntimeError("the stream's Error cannot be carried either")  # pragma: no cover


async def _append_each(store: Store, run_id: str, batch: Sequence[Event | str], cause: Exception) -> None:
    """Append ``batch`` event by event, up to the one the store refuses."""
    for event in batch:
        try:
            await store.append_many(run_id, [event])
        except StoreError:
            raise
        except Exception as exc:
            raise _UncarriableEventError(f"the store refused an event: {exc!r}") from exc
    logger.warning("streamflow: a batch the store refused (%r) was recorded event by event", cause)


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
