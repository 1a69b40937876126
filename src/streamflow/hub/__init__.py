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

from streamflow.hub._base import (
    Authorize,
    BusyPolicy,
    HubClosedError,
    LastReaderPolicy,
    SessionBusyError,
    SessionNotFoundError,
)
from streamflow.hub._reading import _Reading

__all__ = [
    "Authorize",
    "BusyPolicy",
    "HubClosedError",
    "LastReaderPolicy",
    "SessionBusyError",
    "SessionNotFoundError",
    "StreamHub",
]


class StreamHub(_Reading):
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
