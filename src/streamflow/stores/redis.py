"""The shared store: runs and events in Redis, so that a client may reconnect to any replica.

A run's events are a Redis Stream (``XADD`` with ``MAXLEN ~`` for retention, ``XREAD BLOCK``
for live readers); its metadata (session, status, producer, lease) a hash; a session a
hash holding its owner, metadata and latest run. Every key carries a TTL: a running run's
keys live ``lease + ttl`` seconds past its producer's last heartbeat, a finished run's
``ttl`` seconds past its end. A run's event ids are its sequence numbers ``1, 2, 3...``,
written as the explicit stream ids ``0-1, 0-2, 0-3...``: the hub prefixes them with the
run id (``<run>.<n>``), so an SSE id names its run, and an id that is malformed, foreign
or never issued is detected exactly, as is one whose successors ``MAXLEN`` dropped.

Every check-and-write (append to a running run, finish once, heartbeat by the owner only)
is one Lua script, atomic in Redis; lease times are Redis's own clock (``TIME``), so the
replicas' clocks need not agree. A single Redis (or a primary with replicas) is supported,
not Redis Cluster.

A short outage (Redis restarting, a failover, a network blip) fails no command: each one
is retried, with exponential backoff, for up to ``retry_for`` seconds. A command whose
reply was lost may have been applied (and a copy of it still queued on a dead connection
may be applied later), so every write is idempotent:

- each ``append_many`` carries this store's writer id and a batch number, increasing
  across its calls (one at a time per run, in order); the run's hash records the last
  applied, and the script applies a batch only once, returning the recorded id to a retry
  (and ignoring a stale copy older than the last batch);
- each ``finish`` carries a token, recorded by the call that ended the run: its retry is
  told ``True``;
- ``create_run`` never overwrites an existing run; sessions and heartbeats are set, not
  added to.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

try:
    import redis.asyncio as aioredis
    from redis import exceptions as errors
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        'streamflow.stores.redis needs the redis client: pip install "streamflow[redis]"'
    ) from exc

from pydantic import JsonValue

from streamflow.events import Event
from streamflow.stores.base import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    RunInfo,
    RunStatus,
    SessionInfo,
    StoredEvent,
    StoreError,
    UnknownRunError,
    wire_json,
)

__all__ = ["RedisStore", "RedisStoreError"]

logger = logging.getLogger("streamflow")

_T = TypeVar("_T")
_EVENT_ID: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_STATUSES: Final[frozenset[str]] = frozenset({"running", "finished", "failed", "cancelled"})

# Transient failures, retried: the connection (refused, reset, timed out; BusyLoadingError,
# "LOADING", is a ConnectionError; an OSError that escaped the client) and the replies of a
# Redis that will serve again soon.
_TRANSIENT: Final = (
    errors.ConnectionError,
    errors.TimeoutError,
    errors.TryAgainError,
    errors.MasterDownError,
    errors.ReadOnlyError,
    OSError,
)
_TRANSIENT_REPLIES: Final = ("LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY")
# ConnectionErrors that waiting does not cure: raised at once.
_PERMANENT: Final = (errors.AuthenticationError, errors.AuthorizationError, errors.ExternalAuthProviderError)
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0

# Lua helpers: ids compared exactly as digit strings (Lua numbers are doubles).
_COMPARE: Final = """
local function cmpnum(a, b)
  if #a ~= #b then return (#a < #b) and -1 or 1 end
  if a == b then return 0 end
  return (a < b) and -1 or 1
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: session. ARGV: created_at, session ttl ms, metadata json[, owner]. The first call
# records the owner and metadata; every call extends the session's life.
_CREATE_SESSION: Final = """
if redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'metadata', ARGV[3])
  if #ARGV >= 4 then redis.call('HSET', KEYS[1], 'owner', ARGV[4]) end
end
if redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT') == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
end
return 1
"""

# KEYS: run, session. ARGV: session id, producer, lease ms, keep ms, created_at, session ttl ms,
# run id. A run that exists is left alone (a retried or stale copy of this call).
_CREATE_RUN: Final = (
    _COMPARE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'session', ARGV[1], 'status', 'running', 'producer', ARGV[2],
  'lease_until', string.format('%d', now_ms() + lease), 'created_at', ARGV[5])
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[4]))
redis.call('HSET', KEYS[2], 'latest', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
"""
)

# Event ids are a run's sequence numbers 1, 2, 3... kept as the stream ids 0-1, 0-2, 0-3...
# (XADD with explicit ids): monotonic, short, every id up to the last one was issued, and
# the first retained entry tells exactly whether the events after an id are still there.

# KEYS: run, stream. ARGV: maxlen, writer, batch number, event json... Returns the sequence
# number of the last event (those before it follow down to it), or -1 (unknown run), -2
# (finished run), -3 (a stale copy of a batch older than the writer's last one: ignored).
# A batch already applied (the same writer and number: a retry after a lost reply) returns
# the recorded number and appends nothing.
_APPEND_MANY: Final = """
local h = redis.call('HMGET', KEYS[1], 'status', 'writer', 'batch', 'batch_last')
if not h[1] then return -1 end
if h[2] == ARGV[2] then
  local applied = tonumber(h[3])
  local batch = tonumber(ARGV[3])
  if batch == applied then return tonumber(h[4]) end
  if batch < applied then return -3 end
end
if h[1] ~= 'running' then return -2 end
local count = #ARGV - 3
local last = redis.call('HINCRBY', KEYS[1], 'seq', count)
local n = last - count
for i = 4, #ARGV do
  n = n + 1
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '0-' .. n, 'e', ARGV[i])
end
redis.call('HSET', KEYS[1], 'writer', ARGV[2], 'batch', ARGV[3], 'batch_last', last)
if last == count then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return last
"""

# KEYS: run, stream. ARGV: after (decimal, '0' for the start), limit.
# Returns {0} unknown run, {1} never issued, {2, resume_after} replay unavailable (the
# retained events follow resume_after), {3, status, entries}.
_READ: Final = (
    _COMPARE
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'seq')
if not h[1] then return {0} end
local last = h[2] or '0'
local after = ARGV[1]
if cmpnum(after, last) > 0 then return {1} end
local first = tonumber(last) + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^0%-(%d+)$')) end
if tonumber(after) < first - 1 then return {2, string.format('%d', first - 1)} end
return {3, h[1], redis.call('XRANGE', KEYS[2], '(0-' .. after, '+', 'COUNT', ARGV[2])}
"""
)

# KEYS: run, stream. ARGV: status, maxlen, keep ms, ended_at, token, event json...
# Returns -1 unknown run, 0 already ended, 1 ended now (or by this token before: a retry).
_FINISH: Final = """
local h = redis.call('HMGET', KEYS[1], 'status', 'finish_token')
if not h[1] then return -1 end
if h[1] ~= 'running' then
  if h[2] == ARGV[5] then return 1 end
  return 0
end
for i = 6, #ARGV do
  local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. n, 'e', ARGV[i])
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended_at', ARGV[4], 'finish_token', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: run, stream, session. ARGV: producer, lease ms, keep ms, session ttl ms.
_HEARTBEAT: Final = (
    _COMPARE
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'producer')
if h[1] ~= 'running' or h[2] ~= ARGV[1] then return 0 end
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', string.format('%d', now_ms() + lease))
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], lease + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[3], ARGV[4], 'GT')
return 1
"""
)

# KEYS: run. Returns {} for an unknown run, else {session, status, created_at, alive}.
_RUN_INFO: Final = (
    _COMPARE
    + """
local h = redis.call('HMGET', KEYS[1], 'session', 'status', 'created_at', 'lease_until')
if not h[1] then return {} end
local alive = 1
if h[2] == 'running' and now_ms() >= tonumber(h[4]) then alive = 0 end
return {h[1], h[2], h[3], alive}
"""
)


class RedisStoreError(StoreError, ConnectionError):
    """Redis could not be reached, or failed a command (the cause is chained)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Turn:
    """The appends of one run on this store, one at a time (see :meth:`RedisStore.append_many`)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class RedisStore:
    """Runs and events in Redis, shared by every replica of an app.

    - ``client_or_url``: a ``redis.asyncio.Redis`` client (not closed by :meth:`aclose`)
      or a URL such as ``redis://localhost:6379/0`` (the store makes and closes its
      client, with redis-py's own retries off: the store retries, see ``retry_for``). A
      reader waiting for events holds one connection while it blocks (``XREAD BLOCK``):
      size the pool for your readers, and give a client's ``socket_timeout`` (if any) more
      than the hub's ``poll``.
    - ``prefix``: the prefix of every key, so that several apps share one Redis.
    - ``maxlen``: events kept per run, about (``XADD ... MAXLEN ~``: at least this many);
      a reader resuming before them gets ``ReplayUnavailableError``.
    - ``ttl``: seconds a finished run (its events and status) is kept.
    - ``session_ttl``: seconds a session lives after its last use (longer while a run of
      it is running).
    - ``retry_for``: seconds a command keeps retrying while Redis is unreachable or not
      ready (a restart, a failover: connection errors, timeouts, ``LOADING``, ``TRYAGAIN``,
      ``MASTERDOWN``, ``READONLY``), with exponential backoff from 50 ms to 1 s, before it
      raises :class:`RedisStoreError`; ``0`` raises at once. Keep it below the hub's
      ``lease``: a producer that cannot renew its lease for that long is declared lost by
      the other replicas anyway. Retries never duplicate an event (see the module's doc).
    """

    def __init__(
        self,
        client_or_url: aioredis.Redis | str,
        *,
        prefix: str = "streamflow",
        maxlen: int = 100_000,
        ttl: float = 600.0,
        session_ttl: float = 3600.0,
        retry_for: float = 10.0,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, not {maxlen!r}")
        if ttl <= 0 or session_ttl <= 0:
            raise ValueError("ttl and session_ttl must be positive numbers of seconds")
        if retry_for < 0:
            raise ValueError(f"retry_for must be a number of seconds >= 0, not {retry_for!r}")
        if not prefix or any(c in prefix for c in "{}\r\n"):
            raise ValueError(f"prefix must be a non-empty string without braces or newlines: {prefix!r}")
        if isinstance(client_or_url, str):
            self.client: aioredis.Redis = aioredis.Redis.from_url(
                client_or_url, max_connections=10_000, retry=Retry(NoBackoff(), 0)
            )
            self._owns_client = True
        else:
            self.client = client_or_url
            self._owns_client = False
        self.prefix = prefix
        self.maxlen = maxlen
        self.ttl = ttl
        self.session_ttl = session_ttl
        self.retry_for = retry_for
        self._writer = secrets.token_hex(8)  # this store's appends: see append_many
        self._batches = itertools.count(1)
        self._turns: dict[str, _Turn] = {}
        self._outage = False  # a command is being retried: logged once, until one succeeds
        client = self.client
        self._create_session = client.register_script(_CREATE_SESSION)
        self._create_run = client.register_script(_CREATE_RUN)
        self._append_many = client.register_script(_APPEND_MANY)
        self._read = client.register_script(_READ)
        self._finish = client.register_script(_FINISH)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._run_info = client.register_script(_RUN_INFO)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r}, maxlen={self.maxlen}, ttl={self.ttl})"

    # --- keys -------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{{{session_id}}}"

    def _run_keys(self, run_id: str) -> list[str]:
        # One hash tag per run: its hash and its stream share a slot.
        return [f"{self.prefix}:run:{{{run_id}}}", f"{self.prefix}:run:{{{run_id}}}:events"]

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    # --- retries ----------------------------------------------------------------------

    async def _call(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """``await command()``, retried on transient failures for up to ``retry_for``
        seconds (from the first failure), with exponential backoff and jitter; then, or on
        any other Redis error, :class:`RedisStoreError`. ``command`` must be safe to repeat."""
        deadline: float | None = None
        backoff = _FIRST_BACKOFF
        while True:
            try:
                result = await command()
            except StoreError:
                raise
            except (errors.RedisError, OSError) as exc:
                if not _transient(exc):
                    raise _unavailable(exc) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_for
                if now >= deadline:
                    raise _unavailable(exc) from exc
                if not self._outage:
                    self._outage = True
                    logger.warning("streamflow: Redis failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(min(backoff * random.uniform(0.5, 1.0), deadline - now))
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if self._outage:
                self._outage = False
                logger.info("streamflow: Redis answers again")
            return result

    # --- the Store protocol -----------------------------------------------------------

    async def create_session(
        self, session_id: str, *, owner: str | None = None, metadata: Mapping[str, JsonValue] | None = None
    ) -> None:
        metadata_json = json.dumps(
            dict(metadata or {}), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
        args: list[str | int] = [repr(time.time()), self._ms(self.session_ttl), metadata_json]
        if owner is not None:
            args.append(owner)
        keys = [self._session_key(session_id)]
        await self._call(lambda: self._create_session(keys=keys, args=args))

    async def session_exists(self, session_id: str) -> bool:
        key = self._session_key(session_id)

        async def command() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.exists(key)
                pipe.pexpire(key, self._ms(self.session_ttl), gt=True)  # a use extends its life
                return await pipe.execute()

        exists, _ = await self._call(command)
        return bool(exists)

    async def get_session(self, session_id: str) -> SessionInfo | None:
        key = self._session_key(session_id)

        async def command() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.exists(key)
                pipe.hmget(key, ["owner", "metadata", "created_at"])
                pipe.pexpire(key, self._ms(self.session_ttl), gt=True)  # a use extends its life
                return await pipe.execute()

        exists, (owner, metadata, created_at), _ = await self._call(command)
        if not exists:
            return None
        return SessionInfo(
            session_id,
            None if owner is None else _text(owner),
            {} if metadata is None else json.loads(_text(metadata)),
            0.0 if created_at is None else float(_text(created_at)),
        )

    async def create_run(self, session_id: str, *, producer: str, lease: float) -> str:
        run_id = secrets.token_urlsafe(12)
        keys = [self._run_keys(run_id)[0], self._session_key(session_id)]
        args: list[str | int] = [
            session_id,
            producer,
            self._ms(lease),
            self._ms(self.ttl),
            repr(time.time()),
            self._ms(self.session_ttl),
            run_id,
        ]
        await self._call(lambda: self._create_run(keys=keys, args=args))
        return run_id

    async def append(self, run_id: str, event: Event) -> str:
        """One event: :meth:`append_many` of one (a convenience; not part of the protocol)."""
        event_id = await self.append_many(run_id, [event])
        assert event_id is not None
        return event_id

    async def append_many(self, run_id: str, events: Sequence[Event | str]) -> str | None:
        if not events:
            info = await self.run_info(run_id)
            if info is None:
                raise UnknownRunError(run_id)
            if info.status != "running":
                raise RunFinishedError(run_id)
            return None
        keys = self._run_keys(run_id)
        payload = wire_json(events)
        # One append of a run at a time on this store, numbered in the order they are sent:
        # a copy of an earlier batch that Redis runs late (queued on a connection that timed
        # out) is then older than the run's last batch, and ignored.
        turn = self._turns.get(run_id)
        if turn is None:
            turn = self._turns[run_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                args: list[str | int] = [self.maxlen, self._writer, next(self._batches)]
                args.extend(payload)
                result = await self._call(lambda: self._append_many(keys=keys, args=args))
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[run_id]
        if result == -1:
            raise UnknownRunError(run_id)
        if result == -2:
            raise RunFinishedError(run_id)
        if result < 0:  # pragma: no cover - only a stale copy on a dead connection gets -3
            raise StoreError(f"run {run_id!r}: a batch was superseded by a later one")
        return str(int(result))

    async def read(
        self, run_id: str, after: str | None = None, *, limit: int = 1000, block: float | None = None
    ) -> list[StoredEvent]:
        if after is not None and not (after.isascii() and _EVENT_ID.fullmatch(after)):
            raise InvalidEventIdError(f"malformed event id {after!r}")
        keys = self._run_keys(run_id)
        status, entries = await self._call(lambda: self._read_once(run_id, keys, after, limit))
        if entries or not block or status != "running":
            return entries
        # Caught up with a live run: wait for the next events (or the end). Ids are dense
        # sequence numbers, so events that start right after `after` have no gap; any
        # other start (MAXLEN dropped some meanwhile) goes back through the script.
        start = int(after or 0)
        streams: dict[Any, Any] = {keys[1]: f"0-{start}"}
        woken = await self._call(
            lambda: self.client.xread(streams, count=max(1, limit), block=self._ms(block))
        )
        if not woken:
            return []
        entries = _xread_entries(woken)
        if entries and entries[0][0] == str(start + 1):
            return entries
        return (await self._call(lambda: self._read_once(run_id, keys, after, limit)))[1]

    async def _read_once(
        self, run_id: str, keys: list[str], after: str | None, limit: int
    ) -> tuple[str, list[StoredEvent]]:
        reply = await self._read(keys=keys, args=[after or "0", max(1, limit)])
        code = int(reply[0])
        if code == 0:
            raise UnknownRunError(run_id)
        if code == 1:
            raise InvalidEventIdError(f"event id {after!r} was never issued by this run")
        if code == 2:
            where = "the first events" if after is None else f"the events after {after!r}"
            raise ReplayUnavailableError(f"{where} are no longer retained", resume_after=_text(reply[1]))
        entries = [(_text(entry_id)[2:], _text(fields[1])) for entry_id, fields in reply[2]]
        return _text(reply[1]), entries

    async def finish(self, run_id: str, status: RunStatus, *, final: Sequence[Event | str] = ()) -> bool:
        if status == "running" or status not in _STATUSES:
            raise ValueError(f"finish() needs a final status, not {status!r}")
        token = secrets.token_hex(8)  # a retry of this call after a lost reply is told True
        args: list[str | int] = [status, self.maxlen, self._ms(self.ttl), repr(time.time()), token]
        args.extend(wire_json(final))
        keys = self._run_keys(run_id)
        result = await self._call(lambda: self._finish(keys=keys, args=args))
        if result == -1:
            raise UnknownRunError(run_id)
        return bool(result)

    async def run_info(self, run_id: str) -> RunInfo | None:
        keys = self._run_keys(run_id)[:1]
        reply = await self._call(lambda: self._run_info(keys=keys))
        if not reply:
            return None
        session_id, status, created_at, alive = reply
        status_text = _text(status)
        if status_text not in _STATUSES:  # pragma: no cover - written only by this store
            raise StoreError(f"run {run_id!r} has an unknown status {status_text!r}")
        return RunInfo(
            run_id,
            _text(session_id),
            status_text,  # type: ignore[arg-type]
            float(_text(created_at)),
            bool(int(alive)),
        )

    async def latest_run(self, session_id: str) -> RunInfo | None:
        key = self._session_key(session_id)
        run_id = await self._call(lambda: self.client.hget(key, "latest"))
        return None if run_id is None else await self.run_info(_text(run_id))

    async def heartbeat(self, run_id: str, producer: str, lease: float) -> bool:
        run_key, stream_key = self._run_keys(run_id)
        info = await self.run_info(run_id)
        if info is None:
            return False
        keys = [run_key, stream_key, self._session_key(info.session_id)]
        args: list[str | int] = [producer, self._ms(lease), self._ms(self.ttl), self._ms(self.session_ttl)]
        return bool(await self._call(lambda: self._heartbeat(keys=keys, args=args)))

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


def _xread_entries(reply: Any) -> list[StoredEvent]:
    """The entries of an ``XREAD`` reply for one stream: RESP2 ``[[name, entries]]``, RESP3
    ``{name: [entries]}``; each entry ``(id, {"e": json})``, bytes or decoded str."""
    if isinstance(reply, dict):
        entries = [entry for nested in reply.values() for part in nested for entry in part]
    else:
        entries = [entry for _, part in reply for entry in part]
    found: list[StoredEvent] = []
    for entry_id, fields in entries:
        payload = fields.get(b"e") if b"e" in fields else fields["e"]
        found.append((_text(entry_id)[2:], _text(payload)))
    return found


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure that retrying may cure (see ``_TRANSIENT``)."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, errors.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def _unavailable(exc: BaseException) -> RedisStoreError:
    return RedisStoreError(f"Redis failed: {type(exc).__name__}: {exc}")
