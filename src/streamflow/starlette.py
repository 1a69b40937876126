"""The ASGI response that streams a source to a client (Starlette, FastAPI, any ASGI app)."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterable, Mapping
from typing import Any, Final

import anyio
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from streamflow._anyio import new_event
from streamflow.adapters.iterable import ErrorHandler, Source, from_iterable, hide_exception
from streamflow.encoders.base import Encoder, IdPairs, encode_pairs
from streamflow.encoders.json_events import JSONEncoder
from streamflow.events import Done, Error, Event
from streamflow.sse import comment
from streamflow.sse import retry as retry_field

__all__ = ["EventStreamResponse"]

logger = logging.getLogger("streamflow")

_PING: Final = comment("ping")
_DONE: Final = Done()
_CLOSE_TIMEOUT: Final = 5.0  # seconds a cancelled source gets for its async clean-up
_LOOK_EVERY: Final = 0.25  # seconds a busy sender goes without looking for a disconnect
_LOOK_TIMEOUT: Final = 0.001  # seconds a look gives receive() to answer
_DEFAULT_HEADERS: Final = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class EventStreamResponse(Response):
    """Stream ``source`` as Server-Sent Events, with the care a production stream needs.

    ``source`` is anything :func:`~streamflow.adapters.from_iterable` takes (an async or
    sync iterable of ``str``, ``dict`` or events, or an adapter's output); ``encoder`` is a
    fresh :class:`~streamflow.encoders.Encoder` for this response (default
    :class:`~streamflow.encoders.JSONEncoder`).

    - Headers: ``text/event-stream; charset=utf-8``, ``Cache-Control: no-cache`` and
      ``X-Accel-Buffering: no`` (nginx would otherwise buffer the stream); ``headers``
      adds to or overrides them.
    - ``ping``: a ``: ping`` comment after that many seconds without data keeps proxies
      and load balancers from closing an idle stream (``None`` disables it).
    - A client disconnect cancels the source at once, so its ``finally`` runs and the
      agent stops spending tokens.
    - An exception in the source is logged with its traceback and becomes the ``Error``
      event ``on_error`` makes (by default a generic message: see
      :func:`~streamflow.adapters.iterable.expose_exception`), then ``Done``; every event
      before it is delivered. A source's stream always ends with exactly one ``Done``
      (one made by :meth:`with_ids` ends as its pairs do).
    - ``send_timeout``: a client that has not taken a write within that many seconds (30
      by default; ``None``: never) is dropped and the source cancelled, instead of holding
      the stream, its buffers and a paused agent open for ever.
    - Events that are ready together go out in one write; an event is never held back
      waiting for the next. ``buffer_size`` bounds the bytes queued for a slow client
      before the source is paused.

    - ``retry``: a reconnection time in milliseconds, sent (``retry:``) before the first
      event.

    HEAD requests get the headers and an empty body; the source is not started.

    :meth:`with_ids` streams events that carry ids (a resumable stream, see
    :mod:`streamflow.hub`).
    """

    media_type = "text/event-stream"  # class-level too, so FastAPI's OpenAPI documents it

    def __init__(
        self,
        source: Source,
        *,
        encoder: Encoder | None = None,
        ping: float | None = 15.0,
        send_timeout: float | None = 30.0,
        on_error: ErrorHandler = hide_exception,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
        buffer_size: int = 64 * 1024,
        retry: int | None = None,
    ) -> None:
        if ping is not None and ping <= 0:
            raise ValueError(f"ping must be a positive number of seconds or None, not {ping!r}")
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError(
                f"send_timeout must be a positive number of seconds or None, not {send_timeout!r}"
            )
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1 byte, not {buffer_size!r}")
        if not callable(on_error):
            raise TypeError(f"on_error must be a function from Exception to Error, not {on_error!r}")
        self.encoder: Encoder = encoder if encoder is not None else JSONEncoder()
        self.events = from_iterable(source, on_error=on_error)
        self.retry_frame = retry_field(retry) if retry is not None else b""
        self.pairs: AsyncIterable[IdPairs] | None = None
        self.on_error = on_error
        self.ping = ping
        self.send_timeout = send_timeout
        self.buffer_size = buffer_size
        self.status_code = status_code
        self.media_type = self.encoder.media_type
        self.background = background
        merged = {**_DEFAULT_HEADERS}  # later sources win, whatever the case of their names
        for extra in (self.encoder.headers, headers or {}):
            merged.update((name.lower(), value) for name, value in extra.items())
        self.init_headers(merged)
        # Equal header pairs are shared between responses (each keeps a list of its own, which
        # middleware may edit): a thousand open streams hold one copy of their header bytes.
        self.raw_headers = [_shared(pair) for pair in self.raw_headers]

    @classmethod
    def with_ids(cls, batches: AsyncIterable[IdPairs], **options: Any) -> EventStreamResponse:
        """Stream batches of ``(id, event)`` pairs, each event's frames carrying its ``id:``.

        A batch (a sequence) is the events ready together (e.g. one read of a store);
        batches are never held back waiting for the next. An event may be given as its
        wire JSON (``Event.to_json()``, what stores keep): ``JSONEncoder`` sends it without
        parsing it.

        The pairs are taken as they are: unlike a ``source``, they are not passed through
        :func:`~streamflow.adapters.from_iterable`, so the caller owns the stream's grammar
        (a resumable stream cut by a shutdown ends with no ``Done``, so that the client
        reconnects). ``options`` are the constructor's keyword arguments (``retry=`` ...).
        An event the encoder cannot carry ends the stream (logged).
        """
        response = cls((), **options)
        response.pairs = batches
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope.get("method") == "HEAD":
            await _close(self.events)
            await _close(self.pairs)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:  # streamed from here, not from a helper: one coroutine frame less per open stream
            outbox = _Outbox(self.buffer_size)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._produce if self.pairs is None else self._produce_pairs, outbox)
                await self._deliver(outbox, receive, send)
                tasks.cancel_scope.cancel()
            outbox.chunks.clear()  # a dropped stream's bytes go now, not with a later GC cycle
            if not outbox.delivered:
                logger.debug("streamflow: the client went away; the source was cancelled")
        if self.background is not None:
            await self.background()

    async def _produce(self, outbox: _Outbox) -> None:
        encoder, events = self.encoder, self.events
        try:
            outbox.put_nowait(self.retry_frame)
            outbox.put_nowait(encoder.open())
            async for event in events:
                try:
                    chunk = encoder.encode(event)
                except Exception as exc:  # an event the wire format cannot carry
                    # Thrown back into the stream, whose one mechanism for failures closes
                    # the source and makes the Error (naming the open step), then Done.
                    chunk = encoder.encode(await events.athrow(exc))
                outbox.put_nowait(chunk)
                del event, chunk  # an idle stream holds no event while it waits for the next
                if outbox.size >= outbox.limit:
                    await outbox.wait_for_space()
            outbox.put_nowait(encoder.close())
        except Exception:  # a broken encoder or on_error: end the stream, never a traceback
            logger.exception("streamflow: the stream could not be encoded; it ends here")
        finally:
            await _close(events)
            outbox.finish()

    async def _produce_pairs(self, outbox: _Outbox) -> None:
        encoder, pairs = self.encoder, self.pairs
        assert pairs is not None
        try:
            outbox.put_nowait(self.retry_frame)
            outbox.put_nowait(encoder.open())
            last_id: str | None = None
            async for batch in pairs:
                batch = batch if isinstance(batch, list | tuple) else list(batch)
                try:
                    outbox.put_nowait(encode_pairs(encoder, batch))
                except Exception:  # e.g. a store's text that is not an event: find which
                    broken = _put_each(outbox, encoder, batch, last_id)
                    if broken:
                        break
                if batch:
                    last_id = batch[-1][0]
                if outbox.size >= outbox.limit:
                    await outbox.wait_for_space()
            outbox.put_nowait(encoder.close())
        except Exception:
            logger.exception("streamflow: the stream could not be encoded; it ends here")
        finally:
            await _close(pairs)
            outbox.finish()

    async def _deliver(self, outbox: _Outbox, receive: Receive, send: Send) -> None:
        """Send what the producer queues until it finishes, then the end of the body.

        The same task watches for the client's disconnect, through one ``receive()`` kept
        pending in a task of its own (never cancelled in flight: some servers, granian, take
        a cancelled ``receive()`` for a disconnect). With nothing to send, the sender waits
        for a future that the producer, that ``receive()`` or the ping timer completes: an
        event on a slow stream costs one future, no exception and no timer. One timer per
        stream, re-armed about every ``ping`` seconds, sends pings and enforces
        ``send_timeout``.
        """
        if not _on_asyncio():
            return await self._deliver_anyio(outbox, receive, send)
        watch = _Watch(outbox, receive, self.ping, self.send_timeout)
        try:
            while True:
                if watch.receiving.done() and watch.client_gone():
                    return None  # the caller cancels the producer
                if outbox.size:
                    if not await watch.send(send, outbox.take(), more_body=True):
                        return None
                elif outbox.finished:
                    break
                else:
                    waiter = outbox.waiter = watch.loop.create_future()
                    await waiter
                    if watch.ping_due:
                        watch.ping_due = False
                        ping = not (outbox.size or outbox.finished or watch.receiving.done())
                        if ping and not await watch.send(send, _PING, more_body=True):
                            return None
            outbox.delivered = True  # servers may report a disconnect while this last send runs
            await watch.send(send, b"", more_body=False)
        finally:
            watch.close()

    async def _deliver_anyio(self, outbox: _Outbox, receive: Receive, send: Send) -> None:
        """:meth:`_deliver` on trio: with nothing to send, the sender waits in ``receive()``
        for ``http.disconnect`` (see :func:`_wait_for_client`); while it keeps sending (a
        source that always has its next event ready), it looks at ``receive()`` without
        waiting every ``_LOOK_EVERY`` seconds, since a server or a middleware may swallow
        the writes to a client that has gone."""
        busy_since: float | None = None  # when the sender last looked at receive(), while busy
        while True:
            if outbox.size:
                if not await self._send(send, outbox.take(), more_body=True):
                    return
                if outbox.size:  # the source refilled it meanwhile: no wait in receive() next
                    now = anyio.current_time()
                    if busy_since is None:
                        busy_since = now
                    elif now - busy_since >= _LOOK_EVERY:
                        if await _look(receive):
                            return  # the client went away: the caller cancels the producer
                        busy_since = anyio.current_time()
            elif outbox.finished:
                break
            else:
                busy_since = None
                if not await _wait_for_client(outbox, receive, self.ping):
                    return  # the client went away: the caller cancels the producer
                ping_due = not (outbox.size or outbox.finished)
                if ping_due and not await self._send(send, _PING, more_body=True):
                    return
        outbox.delivered = True  # servers may report a disconnect while this last send runs
        await self._send(send, b"", more_body=False)

    async def _send(self, send: Send, body: bytes, *, more_body: bool) -> bool:
        message = {"type": "http.response.body", "body": body, "more_body": more_body}
        try:
            if self.send_timeout is None:
                await send(message)
            else:
                with anyio.fail_after(self.send_timeout):
                    await send(message)
        except TimeoutError:
            logger.info("streamflow: dropping a client that took no data for %ss", self.send_timeout)
            return False
        except OSError:  # ASGI 2.4 servers raise it for a disconnected client
            return False
        return True


async def _wait_for_client(outbox: _Outbox, receive: Receive, ping: float | None) -> bool:
    """Wait in ``receive()`` until the producer wakes us (it cancels ``outbox.waiter``),
    ``ping`` seconds pass, or the client disconnects (``False``)."""
    deadline = anyio.current_time() + ping if ping is not None else math.inf
    with anyio.CancelScope(deadline=deadline) as waiter:
        outbox.waiter = waiter
        try:
            while (await receive())["type"] != "http.disconnect":  # inline: no frame more per idle stream
                pass
            return False
        finally:
            outbox.waiter = None
    return True


async def _look(receive: Receive) -> bool:
    """Whether the client has disconnected, from what ``receive()`` has ready now (or
    within a millisecond: a middleware's ``receive`` may take a few turns of the loop)."""
    with anyio.move_on_after(_LOOK_TIMEOUT):
        while (await receive())["type"] != "http.disconnect":
            pass
        return True
    return False


def _on_asyncio() -> bool:
    """Whether this task runs on asyncio (else trio, through anyio)."""
    try:
        asyncio.current_task()
    except RuntimeError:  # no asyncio loop in this thread: trio
        return False
    return True


class _Watch:
    """The asyncio sender's watch over its client: one pending ``receive()`` (its answer
    wakes the idle sender), and one timer for pings and ``send_timeout``."""

    __slots__ = (
        "last",
        "loop",
        "outbox",
        "ping",
        "ping_due",
        "receive",
        "receiving",
        "send_timeout",
        "sending_since",
        "task",
        "timed_out",
        "timer",
    )

    def __init__(
        self, outbox: _Outbox, receive: Receive, ping: float | None, send_timeout: float | None
    ) -> None:
        loop = self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.outbox = outbox
        self.receive = receive
        self.ping = ping
        self.send_timeout = send_timeout
        self.ping_due = False
        self.timed_out = False
        self.sending_since: float | None = None
        self.last = loop.time()  # of the last send
        self.receiving: asyncio.Future[Message] = self._receive()
        self.timer: asyncio.TimerHandle | None = None
        self._arm()

    def _receive(self) -> asyncio.Future[Message]:
        receiving = asyncio.ensure_future(self.receive())
        receiving.add_done_callback(self._answered)
        return receiving

    def _answered(self, receiving: asyncio.Future[Message]) -> None:
        self.outbox.wake()

    def client_gone(self) -> bool:
        """The pending ``receive()`` answered: ``True`` for a disconnect; another message
        (the request's body, not read by the endpoint) is dropped and the next awaited."""
        message = self.receiving.result()  # an error of receive() itself propagates
        if message["type"] == "http.disconnect":
            return True
        self.receiving = self._receive()
        return False

    def _arm(self) -> None:
        """Time the next look: when a ping is due (a ping interval after the last send, or
        after this send once it ends), or when the send in flight would be late."""
        now = self.loop.time()
        since = self.sending_since
        due = math.inf
        if self.ping is not None:
            due = self.last + self.ping if since is None else now + self.ping
        if self.send_timeout is not None:
            due = min(due, (now if since is None else since) + self.send_timeout)
        if due < math.inf:
            self.timer = self.loop.call_at(max(due, now), self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        since = self.sending_since
        if since is not None and self.send_timeout is not None and now - since >= self.send_timeout:
            self.timed_out = True
            self.task.cancel()  # the send in flight raises CancelledError: see send()
            return
        if self.ping is not None and since is None and now - self.last >= self.ping:
            self.ping_due = True
            self.last = now  # the next ping is due a ping interval after this one
            self.outbox.wake()
        self._arm()

    async def send(self, send: Send, body: bytes, *, more_body: bool) -> bool:
        """Send ``body``; ``False`` when the client is gone or was dropped for taking no
        data for ``send_timeout`` seconds."""
        message = {"type": "http.response.body", "body": body, "more_body": more_body}
        self.sending_since = self.loop.time()
        try:
            await send(message)
        except asyncio.CancelledError:
            if not self.timed_out or self.task.uncancel():
                raise  # not (only) ours
            logger.info("streamflow: dropping a client that took no data for %ss", self.send_timeout)
            return False
        except OSError:  # ASGI 2.4 servers raise it for a disconnected client
            return False
        finally:
            self.sending_since = None
        self.last = self.loop.time()
        return True

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.receiving.remove_done_callback(self._answered)
        self.receiving.cancel()


@functools.lru_cache(maxsize=256)
def _shared(pair: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """The first header pair seen equal to ``pair``."""
    return pair


def _put_each(outbox: _Outbox, encoder: Encoder, batch: IdPairs, last_id: str | None) -> bool:
    """Encode ``batch`` pair by pair up to the one the encoder cannot write, which ends the
    stream with ``Error`` and ``Done`` carrying the last id sent: the client keeps every
    event before it (its batch-mates included), stops, and does not come back for it.
    Whether one could not be written."""
    for pair in batch:
        try:
            outbox.put_nowait(encode_pairs(encoder, (pair,)))
        except Exception:
            logger.exception("streamflow: an event of the stream could not be encoded")
            outbox.put_nowait(encode_pairs(encoder, _broken(last_id)))
            return True
        last_id = pair[0]
    return False


def _broken(last_id: str | None) -> list[tuple[str, Event | str]]:
    error = Error(message="The stream could not be sent.", code="internal_error")
    return [(last_id or "", error), (last_id or "", _DONE)]


async def _close(stream: object) -> None:
    """Close what a response streams, shielded and bounded: an agent suspended at a yield
    gets to run its async clean-up even while the response's task is being cancelled."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            await aclose()


class _Outbox:
    """Encoded bytes between the producer and the sender: several events ready at once
    leave in one body message, and at most ``limit`` bytes wait for a slow client."""

    __slots__ = ("_space", "chunks", "delivered", "finished", "limit", "size", "waiter")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.waiter: anyio.CancelScope | asyncio.Future[None] | None = None  # the idle sender's wait
        self._space: anyio.Event | None = None  # only while the producer waits for room
        self.finished = False
        self.delivered = False  # every event went out: what follows is no disconnect mid-stream

    def put_nowait(self, chunk: bytes) -> None:
        if chunk:
            self.chunks.append(chunk)
            self.size += len(chunk)
            self.wake()

    async def wait_for_space(self) -> None:
        self._space = new_event()
        await self._space.wait()

    def take(self) -> bytes:
        """What is queued, as one body: at most ``limit`` bytes (or one chunk), so that a
        client that stops reading holds at most about three times ``limit``: the outbox, the
        message its ``send()`` waits with, and the one in the server's buffer."""
        chunks = self.chunks
        if self.size <= self.limit:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        else:
            count, total = 1, len(chunks[0])
            while count < len(chunks) and total + len(chunks[count]) <= self.limit:
                total += len(chunks[count])
                count += 1
            body = b"".join(chunks[:count])
            del chunks[:count]
        self.size -= len(body)
        if self._space is not None and self.size < self.limit:
            self._space.set()
            self._space = None
        return body

    def finish(self) -> None:
        self.finished = True
        self.wake()

    def wake(self) -> None:
        """End the idle sender's wait (it is not waiting when it is sending)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if isinstance(waiter, anyio.CancelScope):
                waiter.cancel()
            elif not waiter.done():
                waiter.set_result(None)
