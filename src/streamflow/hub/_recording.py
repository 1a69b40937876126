"""Recording runs: a source runs in the background and its events go to the store in
batches."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel
from pydantic import JsonValue

from streamflow._anyio import new_event
from streamflow.adapters.iterable import Source, from_iterable, is_failure
from streamflow.events import Event
from streamflow.hub._base import (
    _ERROR_PREFIX,
    _METADATA,
    SessionBusyError,
    SessionNotFoundError,
    _failed,
    _first_interrupt,
    _internal_error,
    _LocalRun,
    _producer_lost,
    logger,
)
from streamflow.hub._lifetime import _Lifetime
from streamflow.stores.base import (
    RunFinishedError,
    RunStatus,
    SessionInfo,
    Store,
    StoreError,
)


class _Recording(_Lifetime):
    """Starting runs and recording them."""

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
                await batcher.record(store, run, events)
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
            run.wake_readers()  # they read its end from the store
        if escaping is not None:
            raise _first_interrupt(escaping)


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

    async def record(self, store: Store, run: _LocalRun, events: AsyncGenerator[Event, None]) -> None:
        """Append the events of ``events`` to the run, in batches (or, for a store whose
        appends never wait, one by one in this task: see :meth:`record_inline`)."""
        if not getattr(store, "sequential_ids", False):
            run.forget()  # the ids of a batch are not known: its readers read the store
        if getattr(store, "immediate_appends", False):
            await self.record_inline(store, run, events)
            return
        failure: BaseException | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.collect, events)
            try:
                await self.write(store, run)
            except Exception as exc:
                failure = exc
                tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def record_inline(self, store: Store, run: _LocalRun, events: AsyncGenerator[Event, None]) -> None:
        """Append each event as its source yields it, in this task: for a store whose
        appends complete without waiting (``immediate_appends``, e.g. ``MemoryStore``) a
        writer task would only add a hop between tasks to every event."""
        run_id, count = run.run_id, 0
        async for event in events:
            text = await _carried(event, events)
            if text.startswith(_ERROR_PREFIX):
                self.failed = True
            try:
                run.remember(await store.append_many(run_id, (text,)), (text,))
            except StoreError:
                raise
            except Exception as exc:  # the store refused this event's content
                raise _UncarriableEventError(f"the store refused an event: {exc!r}") from exc
            finally:
                run.wake_readers()
            del event, text
            count += 1
            if count % _BATCH == 0:  # a source that never awaits must not hold the loop
                await anyio.lowlevel.checkpoint()
        self.complete = True

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
                    space = self.space = new_event()
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

    async def write(self, store: Store, run: _LocalRun) -> None:
        run_id = run.run_id
        while True:
            batch = self.pending
            if not batch:
                if self.ended:
                    break
                wake = self.wake = new_event()
                await wake.wait()
                continue
            self.pending = []
            if self.space is not None:
                self.space.set()
                self.space = None
            try:
                run.remember(await store.append_many(run_id, batch), batch)
            except StoreError:
                raise
            except Exception as exc:  # the store refused this batch's content: find the event
                run.forget()
                await _append_each(store, run_id, batch, exc)
            finally:
                run.wake_readers()
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
