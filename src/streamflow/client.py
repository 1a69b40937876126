"""Reading a streamflow stream back: typed events from bytes, from httpx, from anywhere.

For a service that re-streams an upstream agent (a proxy, a gateway, a test)::

    async with httpx.AsyncClient() as http:
        async with streamflow.client.connect(http, "POST", url, json={"prompt": "hi"}) as events:
            async for event in events:
                ...

``connect`` needs the ``client`` extra (``pip install "streamflow[client]"``, for httpx);
:func:`aiter_sse` and :func:`aiter_events` work on any ``AsyncIterable[bytes]``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from streamflow.events import Done, Event, ProtocolError, parse_event
from streamflow.sse import ServerSentEvent, SSEDecoder

if TYPE_CHECKING:
    import httpx

__all__ = ["IncompleteStreamError", "aiter_events", "aiter_sse", "connect"]

_READ_TIMEOUT: Final = 60.0  # four missed pings at EventStreamResponse's default of 15 s


class IncompleteStreamError(ProtocolError):
    """The byte stream ended before its ``done`` event: the connection was cut."""


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[ServerSentEvent, None]:
    """The SSE events of a byte stream, decoded by :class:`~streamflow.sse.SSEDecoder`."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for sse in decoder.feed(chunk):
            yield sse


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[Event, None]:
    """The typed events of a stream written by :class:`~streamflow.encoders.JSONEncoder` or
    :class:`~streamflow.encoders.NamedEventEncoder`, up to and including ``Done``.

    Raises :class:`~streamflow.events.ProtocolError` for a frame that is not an event, and
    :class:`IncompleteStreamError` when the bytes end before ``Done``. Stops reading
    ``chunks`` at ``Done``.
    """
    async for sse in aiter_sse(chunks):
        event = parse_event(sse.data)
        yield event
        if type(event) is Done:
            return
    raise IncompleteStreamError("the stream ended before its 'done' event")


@asynccontextmanager
async def connect(
    client: httpx.AsyncClient, method: str, url: str | httpx.URL, **kwargs: Any
) -> AsyncIterator[AsyncIterator[Event]]:
    """Open a streamflow stream with httpx and yield its typed events.

    ``kwargs`` go to :meth:`httpx.AsyncClient.stream` (``json=``, ``headers=``,
    ``timeout=``...). Without ``timeout=``, a client read timeout under 60 s is raised to
    60 s for this request: a stream may be quiet for a ping interval (15 s by default).
    Raises :class:`httpx.HTTPStatusError` for a non-2xx answer and
    :class:`~streamflow.events.ProtocolError` for one that is not ``text/event-stream``.
    The response is closed when the block exits, even in the middle of the stream.
    """
    import httpx  # the client extra; only this function needs it

    headers = httpx.Headers(kwargs.pop("headers", None))  # any form httpx takes, names in any case
    headers.setdefault("accept", "text/event-stream")
    headers.setdefault("cache-control", "no-store")
    if "timeout" not in kwargs and client.timeout.read is not None and client.timeout.read < _READ_TIMEOUT:
        # httpx's 5 s default would cut a healthy stream that is quiet until its next ping.
        kwargs["timeout"] = client.timeout.__class__(
            connect=client.timeout.connect,
            read=_READ_TIMEOUT,
            write=client.timeout.write,
            pool=client.timeout.pool,
        )
    async with client.stream(method, url, headers=headers, **kwargs) as response:
        if response.is_error:
            await response.aread()
            response.raise_for_status()
        content_type = response.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "text/event-stream":
            raise ProtocolError(f"expected a text/event-stream response, got {content_type!r}")
        events = aiter_events(response.aiter_bytes())
        try:
            yield events
        finally:
            await events.aclose()
