"""The shared store: runs and events in Redis (a single server, a primary with replicas, or a
Redis Cluster), so that a client may reconnect to any replica.

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
replicas' clocks need not agree.

Keys and Redis Cluster. On a cluster, the keys of one script must share a hash slot, and
so must the keys of one ``XREAD`` (redis refuses ``CROSSSLOT`` even for two slots of one
node). So the store's keys live in ``shards`` slots (16 by default), each named by a
four-character hash tag ``T`` whose slot is the shard number's bits reversed (0, 8192,
4096, 12288...: any number of shards spreads evenly over the slots, hence over the
primaries). A session belongs to the shard its id hashes to, and each of its runs to the
same one: a run id is ``T`` followed by 96 random bits, so that a reader that knows only a
run id (from ``Last-Event-ID``) knows its keys::

    {prefix}:session:{T}<session id>          hash: owner, metadata, created_at, latest
    {prefix}:run:{T}<rest of the run id>      hash: session, status, producer, lease, seq...
    {prefix}:run:{T}<rest of the run id>:events   the stream

Thus ``create_run`` (the run, and the session's latest run) and ``heartbeat`` (the run, its
events and the session's life) stay single atomic scripts, and the blocked readers of a
shard share one ``XREAD`` (below). (A tag per session would spread the keys over all the
slots, but then the blocked readers would need a connection per slot waited on: as many
as the runs, as before.) Every replica must use the same ``shards`` (a session is found by
its shard); give a cluster at least as many shards as primaries. On a single server the
tags change nothing. (Upgrading from a store without tags: the sessions and runs it made
are not found by this one.)

Blocked reads share connections. :meth:`RedisStore.read` reads through its script; when a
live run has nothing new and ``block`` is set, it registers ``(its stream, its after id)``
with a reader task (one per event loop on a single server; one per event loop and shard
on a cluster) and waits for that task's word. The task holds one connection in ``XREAD
BLOCK`` over every stream waited on (each with the last id known), and hands what comes
back to every waiter of that stream, in process: the events that follow a waiter's
``after`` with no gap are its answer; anything else (a gap that ``MAXLEN`` made, a failed
``XREAD``, a slot that moved) makes it read again through the script, which is exact. A
stream stays in the ``XREAD`` for a few seconds after its last waiter leaves, so that a
reader coming back for the next events finds it there; a stream that is not, while the
task blocks, interrupts the block with ``CLIENT UNBLOCK`` (one per round). A reader that
comes back right where the ``XREAD`` of its stream is (the common case: it was given the
events up to there, nothing follows yet) waits at once, without the script; if nothing
comes before its deadline, it reads through the script then (which sees the run's end or
an expiry, as often as before). So a replica has one connection per shard waited on (one
on a single server) however many readers it has, and at most ``max_connections`` in all
(see :class:`RedisStore`).

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

A failed ``XREAD`` of the shared reader retries likewise (with backoff), and its waiters
read again through the script, whose retries (and errors, once ``retry_for`` is spent)
are a read's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias, TypeVar

try:
    import redis.asyncio as aioredis
    from redis import exceptions as errors
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        'streamflow.stores.redis needs the redis client: pip install "streamflow[redis]"'
    ) from exc

from pydantic import JsonValue

from streamflow.events import Done, Event
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
Client: TypeAlias = "aioredis.Redis | RedisCluster"
_EVENT_ID: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_STATUSES: Final[frozenset[str]] = frozenset({"running", "finished", "failed", "cancelled"})
# A run id: its shard's tag (4 characters), then 16 random ones (token_urlsafe(12)).
_TAG_LENGTH: Final = 4
_RUN_ID: Final = re.compile(r"[0-9A-Za-z]{4}[A-Za-z0-9_-]{1,64}")
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Transient failures, retried: the connection (refused, reset, timed out; BusyLoadingError,
# "LOADING", is a ConnectionError; an OSError that escaped the client), the replies of a
# Redis that will serve again soon, and a cluster in the middle of a failover or a
# resharding (CLUSTERDOWN, a slot not served yet, too many redirections).
_TRANSIENT: Final = (
    errors.ConnectionError,
    errors.TimeoutError,
    errors.TryAgainError,
    errors.MasterDownError,
    errors.ReadOnlyError,
    errors.ClusterError,
    errors.SlotNotCoveredError,
    OSError,
)
_TRANSIENT_REPLIES: Final = ("LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN")
# ConnectionErrors that waiting does not cure: raised at once.
_PERMANENT: Final = (errors.AuthenticationError, errors.AuthorizationError, errors.ExternalAuthProviderError)
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0

# The shared readers (see the module's doc): the longest XREAD BLOCK (shorter under a
# client's socket_timeout), how long a stream stays in it after its last waiter left, and
# the most entries of one stream an XREAD returns (a waiter with more to read reads on).
_MUX_BLOCK: Final = 1.0
_MUX_LINGER: Final = 3.0
_MUX_COUNT: Final = 256
_DONE_JSON: Final = Done().to_json()  # a run's last event (the hub recognises it by its text)

# The hash tags of the first shards: four characters whose slot is the bit-reversal of the
# shard number (0, 8192, 4096, 12288, 2048...), so that any number of shards spreads evenly
# over the slots, and so over a cluster's primaries (tests/hub/test_redis_cluster.py checks
# them against _find_tag).
_TAGS: Final = (
    "047J", "04QF", "056i", "05Pe", "01on", "01Mj", "00nM", "00LI", "07Ga", "061L", "06FB", "06dF", "03Kl",
    "02yI", "02JO", "02hK", "045j", "04Sf", "054I", "04Bd", "009g", "01OJ", "00lm", "00Ni", "07EA", "063l",
    "06Db", "06ff", "02Ym", "03kH", "02Ho", "02jk", "04PV", "046Z", "04AT", "04cP", "01Lz", "083O", "00MY",
    "08fE", "05D7", "05f3", "05U5", "0539", "02xY", "0FdN", "01Y8", "0F1D", "04Rv", "044z", "04Ct", "04ap",
    "01NZ", "008w", "00Oy", "019T", "04V6", "04t2", "04G4", "04e0", "02zy", "0Ffn", "00K9", "0F3d",
)  # fmt: skip
_TAG_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_found_tags: dict[int, str] = {}


def _shard_slot(shard: int) -> int:
    """The slot of shard ``shard``: its 14 bits reversed."""
    return int(f"{shard:014b}"[::-1], 2)


def _find_tag(shard: int) -> str:
    """The first four-character tag (in ``_TAG_ALPHABET`` order) in ``_shard_slot(shard)``."""
    target = _shard_slot(shard)
    for letters in itertools.product(_TAG_ALPHABET, repeat=_TAG_LENGTH):
        tag = "".join(letters)
        if key_slot(tag.encode()) == target:
            return tag
    raise AssertionError(f"no tag for slot {target}")  # pragma: no cover - every slot has one


def _shard_tag(shard: int) -> str:
    if shard < len(_TAGS):
        return _TAGS[shard]
    tag = _found_tags.get(shard)
    if tag is None:
        tag = _found_tags[shard] = _find_tag(shard)
    return tag


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

# KEYS: session. ARGV: session ttl ms. Returns {0} for no session, else {1, owner, metadata,
# created_at} (each nil when not recorded); a use extends the session's life.
_TOUCH_SESSION: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local h = redis.call('HMGET', KEYS[1], 'owner', 'metadata', 'created_at')
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'GT')
return {1, h[1], h[2], h[3]}
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


class _Script:
    """A Lua script, run with ``EVALSHA`` on the node of its first key (all its keys share
    its slot); ``EVAL`` when that node does not have it yet (or any more: a restart), which
    also caches it there. (redis-py's own scripts load a missing one with ``SCRIPT LOAD``
    on every primary of a cluster, on connections outside the store's limits.)"""

    __slots__ = ("client", "sha", "text")

    def __init__(self, client: Client, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | int] = ()) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except errors.NoScriptError:
            return await self.client.eval(self.text, len(keys), *keys, *args)


class _Turn:
    """The appends of one run on this store, one at a time (see :meth:`RedisStore.append_many`)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class RedisStore:
    """Runs and events in Redis, shared by every replica of an app.

    - ``client_or_url``: a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
      client (not closed by :meth:`aclose`), or a URL: ``redis://localhost:6379/0`` (or
      ``rediss://``) for a single server, ``redis+cluster://node:6379`` (or
      ``rediss+cluster://``, or ``cluster=True``) for a Redis Cluster, given any of its
      nodes. The store then makes and closes its client: its own retries off (the store
      retries, see ``retry_for``), at most ``max_connections`` connections (a blocking
      pool on a single server).
    - ``prefix``: the prefix of every key, so that several apps share one Redis.
    - ``maxlen``: events kept per run, about (``XADD ... MAXLEN ~``: at least this many);
      a reader resuming before them gets ``ReplayUnavailableError``.
    - ``ttl``: seconds a finished run (its events and status) is kept.
    - ``session_ttl``: seconds a session lives after its last use (longer while a run of
      it is running).
    - ``retry_for``: seconds a command keeps retrying while Redis is unreachable or not
      ready (a restart, a failover: connection errors, timeouts, ``LOADING``, ``TRYAGAIN``,
      ``MASTERDOWN``, ``READONLY``, ``CLUSTERDOWN``), with exponential backoff from 50 ms
      to 1 s, before it raises :class:`RedisStoreError`; ``0`` raises at once. Keep it
      below the hub's ``lease``: a producer that cannot renew its lease for that long is
      declared lost by the other replicas anyway. Retries never duplicate an event (see
      the module's doc).
    - ``max_connections``: the most connections the store uses at once, per event loop,
      however many readers wait (they share one connection per shard: see the module's
      doc). On a single server, one for the blocked readers and ``max_connections - 1``
      for commands (more wait their turn); on a cluster, one per shard waited on and
      ``(max_connections - shards - 1) // primaries`` per primary for commands (at least 1;
      one more is redis-py's, to the node it asks for the cluster's slots).
      A client you pass needs a pool that allows that many (redis-py's default pool
      does; a smaller ``BlockingConnectionPool`` is refused; a cluster client's per-node
      ``max_connections``, 100 by default, must not be smaller either). Its
      ``socket_timeout``, if any, is no constraint: the shared ``XREAD`` blocks for at most
      half of it (and at most 1 s).
    - ``shards``: how many hash slots the store's keys use (see the module's doc): on a
      cluster, at least its number of primaries, and at most one blocked ``XREAD``
      connection each. Every replica must use the same number.
    - ``cluster``: the URL is a cluster node's (as ``redis+cluster://``).
    """

    sequential_ids = True  # event ids are 1, 2, 3... in append order (see the module docstring)

    def __init__(
        self,
        client_or_url: Client | str,
        *,
        prefix: str = "streamflow",
        maxlen: int = 100_000,
        ttl: float = 600.0,
        session_ttl: float = 3600.0,
        retry_for: float = 10.0,
        max_connections: int = 32,
        shards: int = 16,
        cluster: bool = False,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, not {maxlen!r}")
        if ttl <= 0 or session_ttl <= 0:
            raise ValueError("ttl and session_ttl must be positive numbers of seconds")
        if retry_for < 0:
            raise ValueError(f"retry_for must be a number of seconds >= 0, not {retry_for!r}")
        if not prefix or any(c in prefix for c in "{}\r\n"):
            raise ValueError(f"prefix must be a non-empty string without braces or newlines: {prefix!r}")
        if not 1 <= shards <= REDIS_CLUSTER_HASH_SLOTS:
            raise ValueError(f"shards must be from 1 to {REDIS_CLUSTER_HASH_SLOTS}, not {shards!r}")
        if max_connections < 2:
            raise ValueError(f"max_connections must be >= 2, not {max_connections!r}")
        if isinstance(client_or_url, str):
            scheme, separator, rest = client_or_url.partition("://")
            if scheme in _CLUSTER_SCHEMES:
                cluster, client_or_url = True, _CLUSTER_SCHEMES[scheme] + separator + rest
            if cluster and max_connections < shards + 2:
                raise ValueError(
                    f"on a cluster, max_connections ({max_connections}) must exceed shards ({shards}) + 1"
                )
            no_retries = Retry(NoBackoff(), 0)
            self.client: Client
            if cluster:
                self.client = RedisCluster.from_url(
                    client_or_url, max_connections=max_connections, retry=no_retries
                )
            else:
                pool = aioredis.BlockingConnectionPool.from_url(
                    client_or_url, max_connections=max_connections, timeout=None, retry=no_retries
                )
                self.client = aioredis.Redis.from_pool(pool)
            self._owns_client = True
        else:
            self.client = client_or_url
            self._owns_client = False
            pool_size = getattr(getattr(client_or_url, "connection_pool", None), "max_connections", None)
            if isinstance(pool_size, int) and pool_size < max_connections:
                raise ValueError(
                    f"the client's pool allows {pool_size} connections, fewer than max_connections "
                    f"({max_connections}): give the store a smaller max_connections"
                )
        self.cluster = isinstance(self.client, RedisCluster)
        self.prefix = prefix
        self.maxlen = maxlen
        self.ttl = ttl
        self.session_ttl = session_ttl
        self.retry_for = retry_for
        self.max_connections = max_connections
        self.shards = shards
        self._writer = secrets.token_hex(8)  # this store's appends: see append_many
        self._batches = itertools.count(1)
        self._turns: dict[str, _Turn] = {}
        self._outage = False  # a command is being retried: logged once, until one succeeds
        self._readers: dict[asyncio.AbstractEventLoop, _Readers] = {}  # per event loop
        client = self.client
        self._create_session = _Script(client, _CREATE_SESSION)
        self._touch_session = _Script(client, _TOUCH_SESSION)
        self._create_run = _Script(client, _CREATE_RUN)
        self._append_many = _Script(client, _APPEND_MANY)
        self._read = _Script(client, _READ)
        self._finish = _Script(client, _FINISH)
        self._heartbeat = _Script(client, _HEARTBEAT)
        self._run_info = _Script(client, _RUN_INFO)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r}, maxlen={self.maxlen}, ttl={self.ttl})"

    # --- keys -------------------------------------------------------------------------

    def _session_tag(self, session_id: str) -> str:
        digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
        return _shard_tag(int.from_bytes(digest, "big") % self.shards)

    def _session_key(self, session_id: str, tag: str | None = None) -> str:
        """The session's key, in its shard (``tag``: its run's, which is the same)."""
        if tag is None:
            tag = self._session_tag(session_id)
        return f"{self.prefix}:session:{{{tag}}}{session_id}"

    def _run_keys(self, run_id: str) -> list[str]:
        """The run's hash and stream, in its session's shard (the run id's first characters);
        :class:`UnknownRunError` for an id this store never made."""
        if not (run_id.isascii() and _RUN_ID.fullmatch(run_id)):
            raise UnknownRunError(run_id)
        key = f"{self.prefix}:run:{{{run_id[:_TAG_LENGTH]}}}{run_id[_TAG_LENGTH:]}"
        return [key, key + ":events"]

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    # --- connections and retries ------------------------------------------------------

    def _here(self) -> _Readers:
        """This event loop's shared readers and command limits."""
        loop = asyncio.get_running_loop()
        readers = self._readers.get(loop)
        if readers is None:
            for other in [other for other in self._readers if other.is_closed()]:
                del self._readers[other]
            readers = self._readers[loop] = _Readers(self)
        return readers

    async def _call(self, key: str, command: Callable[[], Awaitable[_T]]) -> _T:
        """``await command()`` (a command on ``key``'s slot), once one of this store's
        connections to that node is free; retried on transient failures for up to
        ``retry_for`` seconds (from the first failure), with exponential backoff and jitter;
        then, or on any other Redis error, :class:`RedisStoreError`. ``command`` must be
        safe to repeat."""
        readers = self._here()
        deadline: float | None = None
        backoff = _FIRST_BACKOFF
        while True:
            try:
                async with await readers.limit(key):
                    result = await command()
            except StoreError:
                raise
            except (errors.RedisError, errors.RedisClusterException, OSError) as exc:
                if not _transient(exc):
                    raise _unavailable(exc) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_for
                if now >= deadline:
                    raise _unavailable(exc) from exc
                self._failed(exc)
                await asyncio.sleep(min(backoff * random.uniform(0.5, 1.0), deadline - now))
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            self._answered()
            return result

    def _failed(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            logger.warning("streamflow: Redis failed (%s: %s); retrying", type(exc).__name__, exc)

    def _answered(self) -> None:
        if self._outage:
            self._outage = False
            logger.info("streamflow: Redis answers again")

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
        await self._call(keys[0], lambda: self._create_session(keys=keys, args=args))

    async def _touch(self, session_id: str) -> list[Any]:
        keys = [self._session_key(session_id)]
        args = [self._ms(self.session_ttl)]
        reply: list[Any] = await self._call(keys[0], lambda: self._touch_session(keys=keys, args=args))
        return reply

    async def session_exists(self, session_id: str) -> bool:
        return bool(int((await self._touch(session_id))[0]))

    async def get_session(self, session_id: str) -> SessionInfo | None:
        reply = await self._touch(session_id)
        if not int(reply[0]):
            return None
        owner, metadata, created_at = [*reply[1:], None, None, None][:3]
        return SessionInfo(
            session_id,
            None if owner is None else _text(owner),
            {} if metadata is None else json.loads(_text(metadata)),
            0.0 if created_at is None else float(_text(created_at)),
        )

    async def create_run(self, session_id: str, *, producer: str, lease: float) -> str:
        tag = self._session_tag(session_id)
        run_id = tag + secrets.token_urlsafe(12)
        keys = [self._run_keys(run_id)[0], self._session_key(session_id, tag)]
        args: list[str | int] = [
            session_id,
            producer,
            self._ms(lease),
            self._ms(self.ttl),
            repr(time.time()),
            self._ms(self.session_ttl),
            run_id,
        ]
        await self._call(keys[0], lambda: self._create_run(keys=keys, args=args))
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
                result = await self._call(keys[0], lambda: self._append_many(keys=keys, args=args))
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
        limit = max(1, limit)
        readers = self._here()

        async def read_once() -> list[StoredEvent] | None:
            """The events after `after`, or None: none yet, and the run is live."""
            status, entries = await self._call(keys[0], lambda: self._read_once(run_id, keys, after, limit))
            if entries or status != "running":
                if status != "running":
                    readers.ended(keys[1])
                return entries
            return None

        # A reader coming back for what follows the events the shared reader gave it (the
        # common case: `after` is where that reader's XREAD is) waits at once, and reads
        # through the script if nothing came by its deadline (a check of the run's status,
        # as often as before); any other reads through the script first.
        if not block:
            return await read_once() or []
        skipped = after is not None and readers.caught_up(keys[1], int(after))
        if not skipped:
            entries = await read_once()
            if entries is not None:
                return entries
        # Caught up with a live run: wait for the next events (or the end) with the shared
        # reader of this stream's shard. It answers with the events right after `after`
        # (ids are dense sequence numbers, so they have no gap), or tells to read again.
        deadline = time.monotonic() + block
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                woken = await readers.wait(keys[1], int(after or 0), limit, remaining)
            except TimeoutError:
                return (await read_once() or []) if skipped else []
            if woken is not None:
                return woken
            skipped = False
            entries = await read_once()
            if entries is not None:
                return entries

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
        result = await self._call(keys[0], lambda: self._finish(keys=keys, args=args))
        if result == -1:
            raise UnknownRunError(run_id)
        return bool(result)

    async def run_info(self, run_id: str) -> RunInfo | None:
        try:
            keys = self._run_keys(run_id)[:1]
        except UnknownRunError:
            return None
        reply = await self._call(keys[0], lambda: self._run_info(keys=keys))
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
        run_id = await self._call(key, lambda: self.client.hget(key, "latest"))
        return None if run_id is None else await self.run_info(_text(run_id))

    async def heartbeat(self, run_id: str, producer: str, lease: float) -> bool:
        info = await self.run_info(run_id)
        if info is None:
            return False
        run_key, stream_key = self._run_keys(run_id)
        # The session's key in the run's shard: the same slot as the run's, whatever happens.
        keys = [run_key, stream_key, self._session_key(info.session_id, run_id[:_TAG_LENGTH])]
        args: list[str | int] = [producer, self._ms(lease), self._ms(self.ttl), self._ms(self.session_ttl)]
        return bool(await self._call(run_key, lambda: self._heartbeat(keys=keys, args=args)))

    async def aclose(self) -> None:
        here = asyncio.get_running_loop()
        readers, self._readers = self._readers, {}
        for loop, theirs in readers.items():
            if loop is here:
                await theirs.aclose()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(theirs.cancel)
        if self._owns_client:
            await self.client.aclose()


# --- the shared readers ---------------------------------------------------------------------


class _Waiter:
    """A blocked :meth:`RedisStore.read`: its answer (the events after its ``after``, or
    ``None``: read again through the script) and how many events it takes."""

    __slots__ = ("answer", "limit")

    def __init__(self, answer: asyncio.Future[list[StoredEvent] | None], limit: int) -> None:
        self.answer = answer
        self.limit = limit

    def tell(self, answer: list[StoredEvent] | None) -> None:
        if not self.answer.done():
            self.answer.set_result(answer)


class _Stream:
    """A stream in the shared ``XREAD``: ``cursor``, the sequence number it reads after
    (every waiter's ``after``: a waiter with another one is answered or told to read
    again), its waiters, and since when it has had none (it stays ``_MUX_LINGER`` s)."""

    __slots__ = ("cursor", "ended", "idle_since", "waiters")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.waiters: set[_Waiter] = set()
        self.idle_since: float | None = None
        self.ended = False  # its run's Done went by, or a read found the run ended

    def tell_all(self, answer: list[StoredEvent] | None) -> None:
        for waiter in self.waiters:
            waiter.tell(answer)
        self.waiters.clear()
        self.idle_since = time.monotonic()


class _Group:
    """The streams one reader task blocks on with one ``XREAD``: all of them on a single
    server, those of one shard (one slot) on a cluster."""

    def __init__(self, readers: _Readers, slot: int | None) -> None:
        self.readers = readers
        self.slot = slot
        self.streams: dict[str, _Stream] = {}
        self.task: asyncio.Task[None] | None = None
        # While an XREAD blocks: its streams, its connection's CLIENT ID and node.
        self.blocked: frozenset[str] | None = None
        self.blocked_id = 0
        self.blocked_node: ClusterNode | None = None
        self.unblocking = False  # a CLIENT UNBLOCK was sent for this XREAD
        self.healthy = False  # the last XREAD answered

    def waiting(self) -> int:
        return sum(len(stream.waiters) for stream in self.streams.values())

    def add(self, key: str, after: int, limit: int) -> _Waiter:
        waiter = _Waiter(asyncio.get_running_loop().create_future(), limit)
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(after)
        elif after < stream.cursor:  # events came after `after` since it was read: read again
            waiter.tell(None)
            return waiter
        elif after > stream.cursor:  # the waiters before it have events to read: read again
            stream.tell_all(None)
            stream.cursor = after
        stream.waiters.add(waiter)
        stream.idle_since = None
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="streamflow-redis-reader")
        elif self.blocked is not None and key not in self.blocked and not self.unblocking:
            self.unblocking = True
            self.readers.spawn(self._unblock(self.blocked_id, self.blocked_node))
        return waiter

    def remove(self, key: str, waiter: _Waiter) -> None:
        stream = self.streams.get(key)
        if stream is not None and waiter in stream.waiters:
            stream.waiters.discard(waiter)
            if not stream.waiters:
                stream.idle_since = time.monotonic()

    def tell_all(self, answer: list[StoredEvent] | None) -> None:
        for stream in self.streams.values():
            stream.tell_all(answer)

    def _prune(self) -> None:
        old = time.monotonic() - _MUX_LINGER
        for key in [key for key, s in self.streams.items() if not s.waiters and (s.idle_since or 0) < old]:
            del self.streams[key]

    async def _unblock(self, client_id: int, node: ClusterNode | None) -> None:
        """End the blocked ``XREAD`` (it then returns nothing), so that the next one has the
        new stream. Best effort: if it fails, the ``XREAD`` ends within ``_MUX_BLOCK``."""
        store = self.readers.store
        try:
            if node is None:
                async with await self.readers.limit(None):
                    await store.client.execute_command("CLIENT UNBLOCK", client_id)
            else:
                async with self.readers.node_limit(node.name):
                    await store.client.execute_command("CLIENT UNBLOCK", client_id, target_nodes=node)
        except (errors.RedisError, errors.RedisClusterException, OSError) as exc:
            logger.debug("streamflow: CLIENT UNBLOCK failed: %r", exc)

    async def _connect(self) -> tuple[AbstractConnection, ClusterNode | None]:
        client = self.readers.store.client
        if isinstance(client, RedisCluster):
            await client.initialize()
            node = client.get_node_from_key(next(iter(self.streams)))
            if node is None:  # pragma: no cover - only for replicas
                raise errors.SlotNotCoveredError(f"slot {self.slot} is not served")
            return node.acquire_connection(), node
        connection: AbstractConnection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return connection, None

    async def _release(self, connection: AbstractConnection, node: ClusterNode | None, broken: bool) -> None:
        if broken:
            await connection.disconnect()
        if node is not None:
            node.release(connection)  # type: ignore[arg-type]
        else:
            client = self.readers.store.client
            assert isinstance(client, aioredis.Redis)
            await client.connection_pool.release(connection)

    async def _run(self) -> None:
        """Block on the group's streams, one ``XREAD`` after another, until none is left."""
        store = self.readers.store
        this = asyncio.current_task()
        connection: AbstractConnection | None = None
        node: ClusterNode | None = None
        client_id: int | None = None
        backoff = _FIRST_BACKOFF
        broken = False
        try:
            while True:
                _check_cancelled(this)
                self._prune()
                if not self.streams:
                    self.task = None  # now: a new waiter starts another task
                    return
                try:
                    if connection is None:
                        connection, node = await self._connect()
                        client_id = None
                    if client_id is None or not connection.is_connected:
                        await connection.connect()  # type: ignore[no-untyped-call]
                        await connection.send_command("CLIENT", "ID")
                        client_id = int(await connection.read_response())
                    keys = list(self.streams)
                    ids = [f"0-{self.streams[key].cursor}" for key in keys]
                    block = _MUX_BLOCK
                    if connection.socket_timeout:
                        block = min(block, connection.socket_timeout / 2)
                    self.blocked, self.blocked_id, self.blocked_node = frozenset(keys), client_id, node
                    self.unblocking = False
                    command = ["XREAD", "COUNT", _MUX_COUNT, "BLOCK", store._ms(block), "STREAMS"]
                    await connection.send_command(*command, *keys, *ids)
                    _check_cancelled(this)
                    # Our own deadline (a hung Redis), not read_response's `timeout`: on expiry
                    # that returns None as a nil reply does, with the reply still to come.
                    async with asyncio.timeout(block + (connection.socket_timeout or 10.0)):
                        reply = await connection.read_response()
                except (errors.RedisError, errors.RedisClusterException, OSError) as exc:
                    self.blocked = None
                    self.healthy = False
                    if connection is not None:
                        await self._release(connection, node, broken=True)
                        connection = None
                    # The waiters read again through the script: its retries and errors are theirs.
                    self.tell_all(None)
                    store._failed(exc)
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                self.blocked = None
                self.healthy = True
                backoff = _FIRST_BACKOFF
                self._deliver(reply)
        except BaseException:
            broken = True
            raise
        finally:
            self.blocked = None
            self.healthy = False
            if self.task is this:
                self.task = None
            if connection is not None:
                await self._release(connection, node, broken)
            if self.task is None:
                self.tell_all(None)  # no task left to answer them (cancelled): read again

    def _deliver(self, reply: Any) -> None:
        """Hand each stream's new entries to its waiters (see :class:`_Stream`)."""
        if not reply:
            return
        parts = reply.items() if isinstance(reply, dict) else reply
        for name, raw in parts:
            stream = self.streams.get(_text(name))
            if stream is None or not raw:
                continue
            entries = [(_text(entry_id)[2:], _text(fields[1])) for entry_id, fields in raw]
            last = int(entries[-1][0])
            cursor = stream.cursor
            if last <= cursor:
                continue
            fresh = [entry for entry in entries if int(entry[0]) > cursor]
            if int(fresh[0][0]) == cursor + 1:
                for waiter in stream.waiters:
                    waiter.tell(fresh[: waiter.limit])
                stream.waiters.clear()
                stream.idle_since = time.monotonic()
            else:  # a gap (MAXLEN dropped some): the script says what to do
                stream.tell_all(None)
            stream.cursor = last
            stream.ended = stream.ended or entries[-1][1] == _DONE_JSON


class _Readers:
    """A store's shared readers (one :class:`_Group` per shard on a cluster, one on a single
    server) and its command limits, in one event loop."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.groups: dict[int | None, _Group] = {}
        self.limits: dict[str | None, asyncio.Semaphore] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    async def limit(self, key: str | None) -> asyncio.Semaphore:
        """The limit of the commands on ``key``'s node (see ``max_connections``)."""
        client = self.store.client
        if not isinstance(client, RedisCluster):
            return self.node_limit(None)
        await client.initialize()
        try:
            node = client.get_node_from_key(key) if key is not None else None
        except errors.SlotNotCoveredError:
            node = None  # redis-py finds it (or raises) when the command runs
        return self.node_limit(None if node is None else node.name)

    def node_limit(self, name: str | None) -> asyncio.Semaphore:
        semaphore = self.limits.get(name)
        if semaphore is None:
            store = self.store
            if isinstance(store.client, RedisCluster):
                primaries = max(1, len(store.client.get_primaries()))
                # One connection is redis-py's own, to the node it first asked for the slots.
                size = max(1, (store.max_connections - store.shards - 1) // primaries)
            else:
                size = store.max_connections - 1
            semaphore = self.limits[name] = asyncio.Semaphore(size)
        return semaphore

    def spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self, key: str, after: int, limit: int, seconds: float) -> list[StoredEvent] | None:
        """Wait up to ``seconds`` for the events of stream ``key`` after ``after``: up to
        ``limit`` of them, or ``None`` (read again). Raises ``TimeoutError``."""
        if self.closed:
            raise RedisStoreError("the store is closed")
        slot = key_slot(key.encode()) if self.store.cluster else None
        group = self.groups.get(slot)
        if group is None:
            group = self.groups[slot] = _Group(self, slot)
        waiter = group.add(key, after, limit)
        try:
            async with asyncio.timeout(seconds):
                return await waiter.answer
        finally:
            group.remove(key, waiter)

    def _stream(self, key: str) -> tuple[_Group | None, _Stream | None]:
        group = self.groups.get(key_slot(key.encode()) if self.store.cluster else None)
        return group, None if group is None else group.streams.get(key)

    def caught_up(self, key: str, after: int) -> bool:
        """Whether stream ``key`` is in a working shared ``XREAD`` right after ``after``, its
        run not known to have ended: nothing follows ``after`` yet (the ``XREAD`` would
        have returned it, and returns what comes next)."""
        group, stream = self._stream(key)
        return (
            group is not None
            and stream is not None
            and group.healthy
            and group.task is not None
            and not stream.ended
            and stream.cursor == after
        )

    def ended(self, key: str) -> None:
        """A read found the run of stream ``key`` ended: its next reads go to the script."""
        _, stream = self._stream(key)
        if stream is not None:
            stream.ended = True

    def waiting(self) -> int:
        """How many reads wait (for the tests)."""
        return sum(group.waiting() for group in self.groups.values())

    def cancel(self) -> None:
        for group in self.groups.values():
            if group.task is not None:
                group.task.cancel()
        for task in self.tasks:
            task.cancel()

    async def aclose(self) -> None:
        self.closed = True
        running = [group.task for group in self.groups.values() if group.task is not None]
        running += self.tasks
        self.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _check_cancelled(task: asyncio.Task[Any] | None) -> None:
    """Raise the cancellation of ``task`` that redis-py swallowed: with a ``socket_timeout``,
    it sends through ``asyncio.wait_for``, which (before Python 3.12) returns normally when
    the send ends as the task is cancelled, the cancellation still requested."""
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure that retrying may cure (see ``_TRANSIENT``)."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, errors.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def _unavailable(exc: BaseException) -> RedisStoreError:
    return RedisStoreError(f"Redis failed: {type(exc).__name__}: {exc}")
