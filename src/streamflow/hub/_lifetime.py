"""The hub's lifetime (``async with``, the lifespan, SIGTERM, shutdown) and its policies
(the last reader, producer leases)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType, TracebackType
from typing import Self

import anyio
import anyio.abc

from streamflow.hub._base import _HubBase, _LocalRun, logger


class _Lifetime(_HubBase):
    """The hub's lifetime and policies."""

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
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
            run.wake_readers()

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
