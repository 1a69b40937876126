"""Reading: a reader's stream of a session or a run, replayed from ``Last-Event-ID`` and
followed live."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from functools import partial

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from streamflow.encoders.base import Encoder
from streamflow.events import Error
from streamflow.hub._base import (
    _DONE,
    _DONE_JSON,
    _GAP_JSON,
    _PAIR_COST,
    _READ_FIRST,
    _READ_MAX,
    _SEPARATOR,
    _first,
    _Pairs,
    _producer_lost,
    _refusal,
    _second,
    _wait_event,
    _Wake,
    logger,
)
from streamflow.hub._recording import _Recording
from streamflow.starlette import EventStreamResponse
from streamflow.stores.base import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunInfo,
    SessionInfo,
    StoredEvent,
    UnknownRunError,
)


class _Reading(_Recording):
    """Serving readers."""

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
        """``authorize``'s answer. One that raises refuses (logged): a 500 for some sessions
        and a 404 for unknown ones would tell a caller which exist."""
        if self.authorize is None:
            return True
        try:
            allowed = self.authorize(request, session)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception:
            logger.exception("streamflow: authorize raised; the reader is refused")
            return False
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
            # A run produced here wakes its readers itself after each append: they read without
            # blocking in the store (no timeout, no held connection) and wait for that wake.
            local = None if ended else self._runs.get(run_id)
            appended = local.appended if local is not None else None  # taken before the read
            asked = limit
            try:
                if local is not None and appended is not None:
                    batch: list[StoredEvent] | None = local.from_tail(after, limit)
                    if batch is None:
                        batch = await store.read(run_id, after, limit=limit)
                else:
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
                # What a read holds: the events' JSON, and an id and a pair for each; a quarter
                # of the buffer, so that a reader's outbox holds at most about 1.25 buffers.
                size = sum(map(len, map(_second, batch))) + _PAIR_COST * len(batch)
                limit = max(1, min(_READ_MAX, len(batch) * (self.buffer_size // 4) // size))
                if batch[-1][1] == _DONE_JSON:  # the grammar: a run's one Done is its last event
                    yield pairs
                    yield "done"
                    return
                yield pairs
                after = batch[-1][0]
                ended = False
                if appended is not None and len(batch) < asked and not appended.is_set():
                    # It had nothing more, and nothing was appended since: wait, then read.
                    await appended.wait()
                    if self._closing:
                        yield "closed"
                        return
                continue
            if ended:  # ended, and nothing after `after` even on a second look
                yield "caught_up"
                return
            if appended is not None:
                await appended.wait()  # set after its next append, at its end, on shutdown
                if self._closing:
                    yield "closed"
                    return
                continue
            info = await self._wait(lambda: store.run_info(run_id))
            if info is None or self._closing:
                yield "closed"
                return
            if info.status == "running":
                if not info.producer_alive:
                    await store.finish(run_id, "failed", final=_producer_lost())
            else:
                ended = True  # read once more: its final events may have just been added

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
