"""RedisStore against a real ``redis-server``: the store itself, two uvicorn replicas sharing
one Redis (resume across replicas, a SIGKILLed producer), Redis pausing or restarting
mid-run (retried: no run fails, no event is lost or doubled) and Redis dying mid-stream.
Then the blocked readers sharing a few connections (a thousand readers on at most 32, a
cancelled waiter, CLIENT UNBLOCK, fan-out), on a single server and on the session's
three-master cluster (the ``backend`` fixture).

The store-agnostic tests (``test_store.py``, ``test_hub.py``...) also run with RedisStore,
through the ``store`` fixture's ``redis`` and ``redis-cluster`` params; the cluster's own
tests are in ``test_redis_cluster.py``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette

from streamflow import Delta, Done, Error, Event, Gap, parse_event
from streamflow.hub import StreamHub
from streamflow.sse import SSEDecoder
from streamflow.stores import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    SessionInfo,
    UnknownRunError,
)
from streamflow.stores.redis import RedisStore, RedisStoreError
from tests.hub._redis_server import RedisServer, shared_redis, shared_redis_cluster
from tests.hub._replicas import ROOT, Replica
from tests.hub._replicas import start_replica as _start_replica
from tests.hub.conftest import Control, hub_app, serve_hub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> RedisServer:
    """The session's ``redis-server`` on 127.0.0.1 (stopped when the session ends)."""
    return shared_redis(pytestconfig)


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


# --- the store ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ids_are_sequence_numbers_and_bad_ids_are_typed(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        ids = [await store.append(run, Delta(value=str(i))) for i in range(5)]
        assert ids == ["1", "2", "3", "4", "5"]
        assert [e[0] for e in await store.read(run)] == ids
        assert [parse_event(e[1]) for e in await store.read(run, "3")] == [Delta(value="3"), Delta(value="4")]
        assert await store.read(run, "5") == []
        for bad in ["", "01", "-1", "1-0", "abc", "1\u00e9", "1" * 20]:
            with pytest.raises(InvalidEventIdError):
                await store.read(run, bad)
        with pytest.raises(InvalidEventIdError):  # never issued: ahead of the log
            await store.read(run, "6")
        with pytest.raises(UnknownRunError):
            await store.read("nope", "1")
        assert await store.run_info("nope") is None
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_maxlen_drops_old_events_and_says_so(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, maxlen=5)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        for i in range(1000):
            await store.append(run, Delta(value=str(i)))
        with pytest.raises(ReplayUnavailableError):
            await store.read(run)  # from the start: the first events are gone
        with pytest.raises(ReplayUnavailableError):
            await store.read(run, "3")
        tail = await store.read(run, "990")
        assert [e[0] for e in tail] == [str(i) for i in range(991, 1001)]
        # Exactly at the edge: the events after the last dropped one are all there.
        client = store.client
        head = await client.xrange(store._run_keys(run)[1], count=1)
        assert head
        first = head[0][0]
        assert isinstance(first, bytes)
        edge = str(int(first.split(b"-")[1]) - 1)
        assert next(e[0] for e in await store.read(run, edge, limit=10_000)) == str(int(edge) + 1)
        with pytest.raises(ReplayUnavailableError):
            await store.read(run, str(int(edge) - 1))
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_finish_first_caller_wins_and_ends_appends(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        await store.append(run, Delta(value="a"))
        final: list[Event] = [Error(message="lost", code="producer_lost"), Done()]
        assert await store.finish(run, "failed", final=final) is True
        assert await store.finish(run, "finished", final=[Done()]) is False
        with pytest.raises(RunFinishedError):
            await store.append(run, Delta(value="b"))
        assert [parse_event(e[1]) for e in await store.read(run)] == [Delta(value="a"), *final]
        info = await store.run_info(run)
        assert info is not None
        assert info.status == "failed"
        assert info.session_id == "s"
        assert await store.heartbeat(run, "p", 5) is False
        with pytest.raises(UnknownRunError):
            await store.finish("nope", "failed")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_lease_heartbeat_and_expiry(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, ttl=0.5, session_ttl=0.5)
    try:
        await store.create_session("s")
        assert await store.session_exists("s")
        assert not await store.session_exists("other")
        run = await store.create_run("s", producer="p", lease=0.4)
        latest = await store.latest_run("s")
        assert latest is not None
        assert latest.run_id == run
        assert latest.producer_alive
        assert await store.heartbeat(run, "intruder", 0.4) is False
        for _ in range(4):  # the owner's heartbeats keep it alive past its lease and TTLs
            await anyio.sleep(0.25)
            assert await store.heartbeat(run, "p", 0.4) is True
        info = await store.run_info(run)
        assert info is not None
        assert info.producer_alive
        assert await store.session_exists("s")
        await anyio.sleep(0.5)  # no heartbeat: the lease runs out
        info = await store.run_info(run)
        assert info is not None
        assert info.status == "running"
        assert not info.producer_alive
        assert await store.finish(run, "failed")
        await anyio.sleep(0.7)  # the finished run and the idle session expire
        assert await store.run_info(run) is None
        assert not await store.session_exists("s")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_blocked_read_wakes_on_append_and_on_finish(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        started = time.monotonic()
        assert await store.read(run, block=0.2) == []
        assert time.monotonic() - started >= 0.15
        got: list[list[str]] = []

        async def reader() -> None:
            got.append([e[0] for e in await store.read(run, block=5)])
            got.append([e[0] for e in await store.read(run, "1", block=5)])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            await anyio.sleep(0.2)
            await store.append(run, Delta(value="a"))
            await anyio.sleep(0.2)
            await store.finish(run, "finished", final=[Done()])
        assert got == [["1"], ["2"]]
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_sessions_keep_their_owner_and_metadata(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, session_ttl=0.6)
    try:
        metadata: dict[str, Any] = {
            "title": "Ünïcødé ☃ — 日本語 \U0001f600",
            "nested": {"list": [1, 2.5, None, True, "x", {"deep": []}], "empty": {}},
            'quote"key': "line\nbreak",
        }
        before = time.time()
        await store.create_session("s", owner="ada@example.com", metadata=metadata)
        info = await store.get_session("s")
        assert info is not None
        assert info == SessionInfo("s", "ada@example.com", metadata, info.created_at)
        assert before - 1 <= info.created_at <= time.time() + 1
        # Idempotent: a second call keeps what the first recorded.
        await store.create_session("s", owner="eve", metadata={"other": 1})
        assert await store.get_session("s") == info
        # No owner, no metadata.
        await store.create_session("t")
        assert await store.get_session("t") == SessionInfo("t", None, {}, (await _created_at(store, "t")))
        assert await store.get_session("unknown") is None
        assert not await store.session_exists("unknown")
        # A use extends the session's life (session_ttl=0.6 s).
        for _ in range(3):
            await anyio.sleep(0.35)
            assert await store.get_session("s") is not None
        assert await store.client.pttl(store._session_key("s")) > 400
        await anyio.sleep(0.8)
        assert await store.get_session("s") is None
    finally:
        await store.aclose()


async def _created_at(store: RedisStore, session_id: str) -> float:
    info = await store.get_session(session_id)
    assert info is not None
    return info.created_at


@pytest.mark.anyio
async def test_a_trimmed_run_tells_where_its_retained_events_begin(
    redis_server: RedisServer, prefix: str
) -> None:
    store = RedisStore(redis_server.url, prefix=prefix, maxlen=5)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        for start in range(0, 1000, 10):
            await store.append_many(run, [Delta(value=str(i)) for i in range(start, start + 10)])
        head = await store.client.xrange(store._run_keys(run)[1], count=1)
        first = int(head[0][0].split(b"-")[1])
        assert 1 < first <= 996
        for after in (None, "0", "3", str(first - 2)):
            with pytest.raises(ReplayUnavailableError) as caught:
                await store.read(run, after)
            assert caught.value.resume_after == str(first - 1), after
        # Reading on from there gives the retained events, from the first, with no gap.
        retained = await store.read(run, caught.value.resume_after, limit=10_000)
        assert [int(event_id) for event_id, _ in retained] == list(range(first, 1001))
        assert parse_event(retained[0][1]) == Delta(value=str(first - 1))
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_an_append_whose_reply_was_lost_is_applied_once(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        script = store._append_many
        calls = 0

        async def reply_lost_once(*, keys: list[str], args: list[str | int]) -> Any:
            # Redis applies the batch, then the connection dies before its reply arrives.
            nonlocal calls
            calls += 1
            result = await script(keys=keys, args=args)
            if calls == 1:
                raise RedisConnectionError("Connection reset by peer (the reply was lost)")
            return result

        store._append_many = reply_lost_once  # type: ignore[assignment]
        assert await store.append_many(run, [Delta(value="a"), Delta(value="b")]) == "2"
        assert calls == 2  # retried, and the retry appended nothing
        assert await store.append_many(run, [Delta(value="c")]) == "3"
        events = [(event_id, parse_event(data)) for event_id, data in await store.read(run)]
        assert events == [("1", Delta(value="a")), ("2", Delta(value="b")), ("3", Delta(value="c"))]
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_the_append_script_applies_a_batch_once(redis_server: RedisServer, prefix: str) -> None:
    """The script itself: the same writer and batch number twice is one copy; a stale copy
    of an older batch (queued on a dead connection, run late) is ignored."""
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        keys = store._run_keys(run)

        async def call(writer: str, batch: int, *values: str) -> int:
            args: list[str | int] = [store.maxlen, writer, batch]
            args.extend(Delta(value=value).to_json() for value in values)
            result: int = await store._append_many(keys=keys, args=args)
            return result

        assert await call("w", 1, "a", "b") == 2
        assert await call("w", 1, "a", "b") == 2  # a retry: the recorded result, no copy
        assert await call("w", 2, "c") == 3
        assert await call("w", 1, "a", "b") == -3  # a stale copy: ignored
        assert await call("w", 2, "c") == 3
        assert await call("other", 1, "d") == 4  # another writer's batch 1 is its own
        values = [parse_event(data) for _, data in await store.read(run)]
        assert values == [Delta(value=v) for v in "abcd"]
        assert await store.finish(run, "finished", final=[Done()])
        assert await call("other", 1, "d") == 4  # a retry after the end still gets its result
        assert await call("other", 2, "e") == -2  # a new batch does not
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_finish_whose_reply_was_lost_still_reports_its_win(
    redis_server: RedisServer, prefix: str
) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        await store.append(run, Delta(value="a"))
        script = store._finish
        calls = 0

        async def reply_lost_once(*, keys: list[str], args: list[str | int]) -> Any:
            nonlocal calls
            calls += 1
            result = await script(keys=keys, args=args)
            if calls == 1:
                raise RedisConnectionError("Connection reset by peer (the reply was lost)")
            return result

        store._finish = reply_lost_once  # type: ignore[assignment]
        final: list[Event] = [Error(message="x", code="cancelled"), Done()]
        assert await store.finish(run, "cancelled", final=final) is True
        assert calls == 2
        assert await store.finish(run, "failed", final=[Done()]) is False  # another caller
        assert [parse_event(data) for _, data in await store.read(run)] == [Delta(value="a"), *final]
        info = await store.run_info(run)
        assert info is not None
        assert info.status == "cancelled"
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_create_run_never_overwrites_a_run(redis_server: RedisServer, prefix: str) -> None:
    """A late copy of a create_run (queued on a dead connection) cannot revive a run."""
    store = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        assert await store.finish(run, "finished", final=[Done()])
        keys = [store._run_keys(run)[0], store._session_key("s")]
        args: list[str | int] = ["s", "p", 5000, 60_000, repr(time.time()), 60_000, run]
        assert await store._create_run(keys=keys, args=args) == 0
        info = await store.run_info(run)
        assert info is not None
        assert info.status == "finished"
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_redis_going_away_is_a_typed_store_error_once_retry_for_is_spent(prefix: str) -> None:
    server = RedisServer().start()
    store = RedisStore(server.url, prefix=prefix, retry_for=0.5)
    no_retry = RedisStore(server.url, prefix=prefix, retry_for=0)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        await no_retry.run_info(run)  # its connection is open
        server.kill()
        for call in (lambda: store.read(run, block=1), lambda: store.append(run, Delta(value="x"))):
            started = time.monotonic()
            with pytest.raises(RedisStoreError):
                await call()
            assert 0.4 <= time.monotonic() - started < 3
        started = time.monotonic()
        with pytest.raises(RedisStoreError):
            await no_retry.run_info(run)
        assert time.monotonic() - started < 0.3
    finally:
        await store.aclose()
        await no_retry.aclose()
        server.stop()


@pytest.mark.anyio
async def test_a_run_whose_appends_keep_failing_fails_with_a_typed_error(
    redis_server: RedisServer, prefix: str
) -> None:
    """Once ``retry_for`` is spent, the hub ends the run as before: ``failed``, with
    ``Error(code="store_error")`` then ``Done`` (here only appends fail: the end is recorded)."""
    store = RedisStore(redis_server.url, prefix=prefix, retry_for=0.4)
    failing = 0

    async def unreachable(*, keys: list[str], args: list[str | int]) -> Any:
        nonlocal failing
        failing += 1
        raise RedisConnectionError("Error 111 connecting to redis: Connection refused.")

    async def source() -> AsyncIterator[str]:
        for i in range(3):
            yield str(i)
            await anyio.sleep(0.01)

    try:
        async with StreamHub(store, on_last_reader_gone="finish") as hub:
            session = await hub.create_session()
            store._append_many = unreachable  # type: ignore[assignment]
            started = time.monotonic()
            run = await hub.start(session, source())
            events: list[Event] = []
            with anyio.fail_after(10):
                while Done() not in events:  # the hub records the run's end
                    events = [parse_event(data) for _, data in await store.read(run, block=1)]
            assert time.monotonic() - started >= 0.35
            info = await store.run_info(run)
        assert failing >= 3  # retried
        assert info is not None
        assert info.status == "failed"
        *_, error, done = events
        assert isinstance(error, Error)
        assert error.code == "store_error"
        assert done == Done()
    finally:
        await store.aclose()


def test_which_failures_are_retried() -> None:
    from redis import exceptions as errors

    from streamflow.stores.redis import _transient

    retried = [
        errors.ConnectionError("Connection refused"),
        errors.TimeoutError("Timeout reading from socket"),
        errors.BusyLoadingError("Redis is loading the dataset in memory"),
        errors.TryAgainError("Multiple keys request during rehashing of slot"),
        errors.MasterDownError("Link with MASTER is down"),
        errors.ReadOnlyError("You can't write against a read only replica."),
        errors.ResponseError("LOADING Redis is loading the dataset in memory"),
        errors.ResponseError("TRYAGAIN"),
        ConnectionResetError(104, "Connection reset by peer"),
        # A cluster in a failover or a resharding.
        errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
        errors.ResponseError("CLUSTERDOWN Hash slot not served"),
        errors.SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
        errors.ClusterError("TTL exhausted."),
        errors.MaxConnectionsError("Too many connections"),
    ]
    raised = [
        errors.ResponseError("ERR unknown command"),
        errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        errors.AuthenticationError("invalid password"),
        errors.DataError("Invalid input"),
        errors.NoPermissionError("this user has no permissions"),
        errors.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
        errors.RedisClusterException("XREAD - all keys must map to the same key slot"),
    ]
    assert [exc for exc in retried if not _transient(exc)] == []
    assert [exc for exc in raised if _transient(exc)] == []


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import streamflow.stores.redis\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert 'pip install "streamflow[redis]"' in out.stdout


# --- replicas: uvicorn processes sharing one Redis ---------------------------------------------


StartReplica = Callable[..., Replica]


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[StartReplica]:
    """``start_replica(redis_url, prefix, name, **env)``: a replica, stopped after the test."""
    replicas: list[Replica] = []

    def start(redis_url: str, prefix: str, name: str, **env: str) -> Replica:
        replica = _start_replica(redis_url, prefix, tmp_path / f"{name}.log", **env)
        replicas.append(replica)
        return replica

    yield start
    for replica in replicas:
        replica.stop()


@dataclass
class Reading:
    pairs: list[tuple[str, Event]] = field(default_factory=list)
    ended: bool = False
    error: BaseException | None = None

    @property
    def events(self) -> list[Event]:
        return [event for _, event in self.pairs]


def read(
    url: str, *, last_id: str | None = None, stop_after: int | None = None, timeout: float = 30
) -> Reading:
    headers = {"accept": "text/event-stream"}
    if last_id is not None:
        headers["last-event-id"] = last_id
    reading = Reading()
    decoder = SSEDecoder()
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw():
            for sse in decoder.feed(chunk):
                reading.pairs.append((sse.id, parse_event(sse.data)))
                if stop_after is not None and len(reading.pairs) >= stop_after:
                    return reading
    reading.ended = True
    return reading


def new_session(replica: Replica) -> str:
    response = httpx.post(f"{replica.url}/sessions", timeout=10)
    response.raise_for_status()
    session: str = response.json()["session"]
    return session


def start_run(replica: Replica, session: str, **params: object) -> str:
    query = {name: str(value) for name, value in params.items()}
    response = httpx.post(f"{replica.url}/sessions/{session}/messages", params=query, timeout=10)
    assert response.status_code == 202, response.text
    run: str = response.json()["run"]
    return run


def test_a_client_resumes_on_another_replica_then_the_producer_replica_is_killed(
    redis_server: RedisServer, prefix: str, start_replica: StartReplica
) -> None:
    resume_across_replicas_then_kill_the_producer(redis_server.url, prefix, start_replica)


def resume_across_replicas_then_kill_the_producer(url: str, prefix: str, start_replica: StartReplica) -> None:
    """Two replicas on the Redis at ``url`` (a single server or a cluster): a client resumes
    on B what it read on A, at several cut points; B serves A's sessions; A is SIGKILLed
    mid-run and B's readers get ``producer_lost``."""
    a = start_replica(url, prefix, "a")
    b = start_replica(url, prefix, "b")

    # Resume across replicas, at several cut points: 0 lost, 0 duplicated.
    for cut in (0, 1, 17, 40):
        session = new_session(a)
        run = start_run(a, session, n=40, delay=0.01, prefix="r")
        first = read(f"{a.url}/sessions/{session}/stream", stop_after=cut) if cut else Reading()
        assert len(first.pairs) == cut
        last = first.pairs[-1][0] if first.pairs else None
        second = read(f"{b.url}/sessions/{session}/stream", last_id=last)
        assert second.ended
        expected = [Delta(value=f"r{i}") for i in range(40)] + [Done()]
        assert first.events + second.events == expected
        ids = [event_id for event_id, _ in first.pairs + second.pairs]
        assert len(set(ids)) == len(ids)
        assert all(i.startswith(f"{run}.") for i in ids)

    # The session lives in Redis: B serves a session A created, and B's own run reaches A.
    session = new_session(a)
    start_run(b, session, n=3)
    assert read(f"{a.url}/sessions/{session}/stream").events == [
        Delta(value="0"),
        Delta(value="1"),
        Delta(value="2"),
        Done(),
    ]

    # Replica A is SIGKILLed mid-run: readers on B get an Error (producer_lost), not a hang.
    session = new_session(a)
    run = start_run(a, session, n=-1, delay=0.05, prefix="k")
    readings: list[Reading] = [Reading(), Reading()]
    ready = [threading.Event(), threading.Event()]

    def follow(index: int, path: str) -> None:
        reading = readings[index]
        try:
            with httpx.stream("GET", f"{b.url}{path}", timeout=30) as response:
                decoder = SSEDecoder()
                for chunk in response.iter_raw():
                    for sse in decoder.feed(chunk):
                        reading.pairs.append((sse.id, parse_event(sse.data)))
                        if len(reading.pairs) >= 3:
                            ready[index].set()
            reading.ended = True
        except BaseException as exc:  # reported by the test thread
            reading.error = exc
        finally:
            ready[index].set()

    threads = [
        threading.Thread(target=follow, args=(0, f"/sessions/{session}/stream"), daemon=True),
        threading.Thread(target=follow, args=(1, f"/runs/{run}/stream"), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for event in ready:
        assert event.wait(20)
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(10)
    killed = time.monotonic()
    for thread in threads:
        thread.join(20)
    elapsed = time.monotonic() - killed
    for reading in readings:
        assert reading.error is None, reading.error
        assert reading.ended, "the reader hung"
        *deltas, error, done = reading.events
        assert deltas
        assert all(isinstance(e, Delta) for e in deltas)
        assert isinstance(error, Error), error
        assert error.code == "producer_lost", error
        assert done == Done()
    assert elapsed < 10  # lease (1.5 s) + poll (0.2 s) + slack
    assert httpx.get(f"{b.url}/health", timeout=5).status_code == 200
    # The failed run stays failed for a late reader, which gets the whole story at once.
    late = read(f"{b.url}/runs/{run}/stream", timeout=10)
    assert late.ended
    assert late.events[-2:] == readings[1].events[-2:]


def test_redis_dying_mid_stream_gives_readers_an_error_and_the_app_keeps_serving(
    prefix: str, start_replica: StartReplica
) -> None:
    server = RedisServer().start()
    try:
        replica = start_replica(server.url, prefix, "solo", STREAMFLOW_RETRY_FOR="0.5")
        session = new_session(replica)
        start_run(replica, session, n=-1, delay=0.05)
        reading = Reading()
        ready = threading.Event()

        def follow() -> None:
            try:
                with httpx.stream("GET", f"{replica.url}/sessions/{session}/stream", timeout=30) as response:
                    decoder = SSEDecoder()
                    for chunk in response.iter_raw():
                        for sse in decoder.feed(chunk):
                            reading.pairs.append((sse.id, parse_event(sse.data)))
                            if len(reading.pairs) >= 3:
                                ready.set()
                reading.ended = True
            except BaseException as exc:
                reading.error = exc
            finally:
                ready.set()

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        assert ready.wait(20)
        server.kill()
        thread.join(20)
        assert reading.error is None, reading.error
        assert reading.ended, "the reader hung"
        errors = [e for e in reading.events if isinstance(e, Error)]
        assert errors, f"no Error event; events: {reading.events[-3:]}\n{replica.output()}"
        # The app still answers: a request that needs no Redis, and one that does (an error
        # response, not a dead server).
        assert httpx.get(f"{replica.url}/health", timeout=5).status_code == 200
        assert httpx.post(f"{replica.url}/sessions", timeout=10).status_code >= 500
        assert replica.process.poll() is None
    finally:
        server.stop()


# --- Redis pausing or restarting mid-run: retried, nothing lost or doubled ---------------------


@contextmanager
def served_hub(store: RedisStore, client: aioredis.Redis | None = None) -> Iterator[str]:
    """A hub on ``store`` served by a real uvicorn (``tests/hub/conftest.py``'s app); the
    store (and ``client``) closed in its loop at the end."""
    hub = StreamHub(store, on_last_reader_gone="finish", poll=0.2, ping=1.0)
    app: Starlette = hub_app(hub, Control())

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            yield
        await store.aclose()
        if client is not None:
            await client.aclose()

    app.router.lifespan_context = lifespan
    with serve_hub(app) as url:
        yield url


def follow_in_thread(url: str) -> tuple[Reading, threading.Thread]:
    """Read ``url`` until its ``Done`` in a thread, appending to ``reading.pairs`` as events
    arrive (``reading.error`` holds what it raised)."""
    reading = Reading()

    def follow() -> None:
        try:
            with httpx.stream("GET", url, timeout=30) as response:
                decoder = SSEDecoder()
                for chunk in response.iter_raw():
                    for sse in decoder.feed(chunk):
                        reading.pairs.append((sse.id, parse_event(sse.data)))
                        if isinstance(reading.pairs[-1][1], Done):
                            reading.ended = True
                            return
        except BaseException as exc:  # reported by the test thread
            reading.error = exc

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return reading, thread


def final_status(url: str, prefix: str, run: str) -> str | None:
    """The run's status once it is not ``running`` (the hub records the end just after
    its ``Done``), or ``running`` after 5 s."""
    run_key = RedisStore(url, prefix=prefix)._run_keys(run)[0]  # a store that never connects
    with redis.Redis.from_url(url, decode_responses=True) as client:
        deadline = time.monotonic() + 5
        while True:
            status: str | None = client.hget(run_key, "status")  # type: ignore[assignment]
            if status != "running" or time.monotonic() > deadline:
                return status
            time.sleep(0.02)


def assert_whole_run(reading: Reading, run: str, count: int) -> None:
    assert reading.error is None, reading.error
    assert reading.ended, "the reader hung"
    assert not [e for e in reading.events if isinstance(e, Error)], reading.events
    assert reading.events == [Delta(value=f"p{i}") for i in range(count)] + [Done()]
    assert [event_id for event_id, _ in reading.pairs] == [f"{run}.{n}" for n in range(1, count + 2)]


def outage_while_a_run_produces(
    server: RedisServer,
    store: RedisStore,
    prefix: str,
    outage: Callable[[], None],
    client: aioredis.Redis | None = None,
) -> None:
    """A run of 60 deltas (50 ms apart) with a live reader; ``outage`` strikes after its
    tenth event. The run finishes, and the live reader and a fresh one after it get every
    delta exactly once, in order, then ``Done``, with no ``Error``."""
    count = 60
    with served_hub(store, client) as url, httpx.Client(timeout=20) as http:
        session = http.post(f"{url}/sessions").json()["session"]
        response = http.post(
            f"{url}/sessions/{session}/messages", params={"n": count, "delay": 0.05, "prefix": "p"}
        )
        assert response.status_code == 202, response.text
        run = response.json()["run"]
        live, thread = follow_in_thread(f"{url}/sessions/{session}/stream")
        deadline = time.monotonic() + 10
        while len(live.pairs) < 10 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert len(live.pairs) >= 10, live
        outage()
        thread.join(30)
        assert_whole_run(live, run, count)
        assert final_status(server.url, prefix, run) == "finished"
        fresh = read(f"{url}/runs/{run}/stream", timeout=10)
        assert_whole_run(fresh, run, count)


@pytest.mark.parametrize("client_kind", ["socket_timeout", "url"])
def test_a_redis_pause_fails_no_run_and_loses_no_event(
    prefix: str, client_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP for 2 s. With a ``socket_timeout`` of 0.5 s the commands really fail (timeouts,
    then connections that hang) and are retried; with the URL's client they just wait."""
    server = RedisServer().start()
    try:
        client: aioredis.Redis | None = None
        if client_kind == "socket_timeout":
            client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
            store = RedisStore(client, prefix=prefix)
        else:
            store = RedisStore(server.url, prefix=prefix)
        started = time.monotonic()
        outage_while_a_run_produces(server, store, prefix, lambda: server.pause(2.0), client)
        assert time.monotonic() - started >= 2
        if client_kind == "socket_timeout":  # the commands failed, and were retried
            assert "Redis failed (TimeoutError" in caplog.text
    finally:
        server.stop()


def test_a_redis_restart_with_persistence_loses_no_event(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL then a new redis-server on the same port and append-only file, 0.3 s later."""
    server = RedisServer(persistent=True).start()
    try:
        store = RedisStore(server.url, prefix=prefix)
        outage_while_a_run_produces(server, store, prefix, lambda: server.restart(down=0.3))
        assert "Redis failed (ConnectionError" in caplog.text  # the commands failed, and were retried
    finally:
        server.stop()


def test_a_new_reader_of_a_trimmed_run_joins_it_after_a_gap(prefix: str, redis_server: RedisServer) -> None:
    """The hub with RedisStore: a reader with no ``Last-Event-ID`` of a run whose first
    events ``MAXLEN`` dropped gets a ``Gap`` (its id where the retained events begin), then
    them; a reader resuming before them is still refused (``replay_unavailable``)."""
    store = RedisStore(redis_server.url, prefix=prefix, maxlen=5)
    count = 300
    with served_hub(store) as url, httpx.Client(timeout=20) as http:
        session = http.post(f"{url}/sessions").json()["session"]
        response = http.post(f"{url}/sessions/{session}/messages", params={"n": count, "prefix": "p"})
        run = response.json()["run"]
        assert final_status(redis_server.url, prefix, run) == "finished"
        joined = read(f"{url}/runs/{run}/stream", timeout=10)
        assert joined.ended
        (gap_id, gap), *rest = joined.pairs
        assert gap == Gap()
        first = int(gap_id.removeprefix(f"{run}.")) + 1
        assert 1 < first <= count - 4
        assert [event_id for event_id, _ in rest] == [f"{run}.{n}" for n in range(first, count + 2)]
        assert [event for _, event in rest] == [Delta(value=f"p{n - 1}") for n in range(first, count + 1)] + [
            Done()
        ]
        refused = read(f"{url}/runs/{run}/stream", last_id=f"{run}.1", timeout=10)
        assert [e.code for e in refused.events if isinstance(e, Error)] == ["replay_unavailable"]


# --- blocked readers share a few connections ---------------------------------------------------


@dataclass
class Backend:
    """A single ``redis-server`` or the session's three-master cluster, for the tests of the
    shared readers: ``store(prefix, name)`` makes a store whose connections are named
    ``name`` (``CLIENT SETNAME``), ``connections(name)`` counts them on every node."""

    kind: str
    url: str
    ports: list[int]

    def store(self, prefix: str, name: str, **options: Any) -> RedisStore:
        return RedisStore(f"{self.url}?client_name={name}", prefix=prefix, **options)

    async def connections(self, name: str) -> int:
        total = 0
        for port in self.ports:
            async with aioredis.Redis(host="127.0.0.1", port=port) as admin:
                total += sum(1 for client in await admin.client_list() if client.get("name") == name)
        return total

    async def flush_scripts(self) -> None:
        for port in self.ports:
            async with aioredis.Redis(host="127.0.0.1", port=port) as admin:
                await admin.script_flush()

    async def unblocks(self) -> int:
        """How many ``CLIENT UNBLOCK`` the nodes ran (``INFO commandstats``)."""
        total = 0
        for port in self.ports:
            async with aioredis.Redis(host="127.0.0.1", port=port) as admin:
                stats = await admin.info("commandstats")
            total += int(stats.get("cmdstat_client|unblock", {}).get("calls", 0))
        return total


@pytest.fixture(params=["server", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "server":
        server = shared_redis(request.config)
        return Backend("server", server.url, [server.port])
    cluster = shared_redis_cluster(request.config)
    return Backend("cluster", cluster.url, cluster.ports)


@asynccontextmanager
async def peak_connections(backend: Backend, name: str) -> AsyncIterator[list[int]]:
    """Samples the connections named ``name`` every 10 ms meanwhile: yields ``[peak]``."""
    peak = [0]
    admins = [aioredis.Redis(host="127.0.0.1", port=port) for port in backend.ports]

    async def sample() -> None:
        while True:
            count = 0
            for admin in admins:
                count += sum(1 for client in await admin.client_list() if client.get("name") == name)
            peak[0] = max(peak[0], count)
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sample)
            yield peak
            tasks.cancel_scope.cancel()
    finally:
        for admin in admins:
            await admin.aclose()


async def wait_until(condition: Callable[[], bool], seconds: float = 20) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - a condition of the store's state, no event
            await anyio.sleep(0.005)


DONE_JSON = Done().to_json()


async def read_to_the_end(store: RedisStore, run: str, *, limit: int = 100) -> list[tuple[str, str]]:
    """What the hub does: read with ``block`` until the run's ``Done``."""
    events: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        batch = await store.read(run, after, limit=limit, block=1.0)
        events.extend(batch)
        if batch:
            after = batch[-1][0]
            if batch[-1][1] == DONE_JSON:
                return events


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_a_thousand_blocked_readers_share_at_most_32_connections(backend: Backend, prefix: str) -> None:
    """1,000 readers blocked at once on 100 live runs (10 each) of one store; then each run
    gets 20 events, 0-50 ms apart, and its Done. Every reader gets every event once, in
    order, and the store never has more than 32 connections (``CLIENT LIST``, every node)."""
    runs_count, readers_per_run, events_count = 100, 10, 20
    name = f"sf-{secrets.token_hex(4)}"
    store = backend.store(prefix, name)
    try:
        runs = []
        for i in range(runs_count):
            await store.create_session(f"s{i}")
            runs.append(await store.create_run(f"s{i}", producer="p", lease=60))
        await backend.flush_scripts()  # every reader's first read finds no script: EVAL
        got: dict[tuple[str, int], list[tuple[str, str]]] = {}

        async def reader(run: str, index: int) -> None:
            got[run, index] = await read_to_the_end(store, run)

        async def produce(run: str, seed: int) -> None:
            rng = random.Random(seed)
            for i in range(events_count):
                await anyio.sleep(rng.uniform(0, 0.05))
                await store.append(run, Delta(value=str(i)))
            await store.finish(run, "finished", final=[Done()])

        async with peak_connections(backend, name) as peak, anyio.create_task_group() as tasks:
            for run in runs:
                for index in range(readers_per_run):
                    tasks.start_soon(reader, run, index)
            await wait_until(lambda: store._here().waiting() == runs_count * readers_per_run)
            blocked = await backend.connections(name)
            started = time.monotonic()
            for seed, run in enumerate(runs):
                tasks.start_soon(produce, run, seed)
        elapsed = time.monotonic() - started
        expected = [(str(i + 1), Delta(value=str(i)).to_json()) for i in range(events_count)]
        expected.append((str(events_count + 1), DONE_JSON))
        assert len(got) == runs_count * readers_per_run
        wrong = [key for key, events in got.items() if events != expected]
        assert not wrong, f"{len(wrong)} readers got other events, e.g. {got[wrong[0]][:3]}"
        print(
            f"\n{backend.kind}: 1,000 blocked readers on {blocked} connections; peak {peak[0]} "
            f"connections; the runs took {elapsed:.2f} s"
        )
        assert blocked <= 32
        assert peak[0] <= 32
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_cancelled_or_timed_out_waiter_leaves_nothing_behind(
    backend: Backend, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamflow.stores.redis

    monkeypatch.setattr(streamflow.stores.redis, "_MUX_LINGER", 0.3)  # (3 s)
    name = f"sf-{secrets.token_hex(4)}"
    store = backend.store(prefix, name)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=60)
        here = store._here()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: store.read(run, block=30))
            await wait_until(lambda: here.waiting() == 1)
            tasks.cancel_scope.cancel()
        assert here.waiting() == 0
        assert await store.read(run, block=0.2) == []
        assert here.waiting() == 0
        # The stream stays in the XREAD a while (for a reader coming back), then the reader
        # task ends and gives its connection back.
        await wait_until(
            lambda: not any(group.streams or group.task for group in here.groups.values()) and not here.tasks,
            0.3 + streamflow.stores.redis._MUX_BLOCK + 5,
        )
        if backend.kind == "server":
            assert isinstance(store.client, aioredis.Redis)
            assert not store.client.connection_pool._in_use_connections  # type: ignore[attr-defined]
        # And a new waiter is served as before.
        async with anyio.create_task_group() as tasks:

            async def append_soon() -> None:
                await wait_until(lambda: here.waiting() == 1)
                await store.append(run, Delta(value="a"))

            tasks.start_soon(append_soon)
            assert [event_id for event_id, _ in await store.read(run, block=10)] == ["1"]
        assert here.waiting() == 0
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_new_stream_interrupts_the_blocked_xread(backend: Backend, prefix: str) -> None:
    """A reader of a stream that the blocked ``XREAD`` does not have gets its event at once,
    not at the end of the block (``CLIENT UNBLOCK``); then, the stream being kept, its next
    wait needs none."""
    from streamflow.stores.redis import _MUX_BLOCK

    store = backend.store(prefix, f"sf-{secrets.token_hex(4)}")
    try:
        await store.create_session("s")
        first = await store.create_run("s", producer="p", lease=60)  # the same shard: one XREAD
        second = await store.create_run("s", producer="p", lease=60)
        here = store._here()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: store.read(first, block=10))
            await wait_until(lambda: any(group.blocked for group in here.groups.values()))
            await anyio.sleep(0.05)
            unblocks = await backend.unblocks()
            woken: list[float] = []

            async def second_reader(after: str | None) -> None:
                await store.read(second, after, block=10)
                woken.append(time.monotonic())

            tasks.start_soon(second_reader, None)
            await wait_until(lambda: here.waiting() == 2)
            appended = time.monotonic()
            await store.append(second, Delta(value="a"))
            await wait_until(lambda: bool(woken), 5)
            assert woken[0] - appended < _MUX_BLOCK * 0.8
            assert await backend.unblocks() == unblocks + 1
            # Waiting again on the same stream (kept in the XREAD): no CLIENT UNBLOCK.
            tasks.start_soon(second_reader, "1")
            await wait_until(lambda: here.waiting() == 2)
            appended = time.monotonic()
            await store.append(second, Delta(value="b"))
            await wait_until(lambda: len(woken) == 2, 5)
            assert woken[1] - appended < _MUX_BLOCK * 0.8
            assert await backend.unblocks() == unblocks + 1
            await store.finish(first, "finished", final=[Done()])
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_waiters_get_what_follows_their_id_or_read_again(backend: Backend, prefix: str) -> None:
    """The shared XREAD's entries go to each waiter up to its ``limit``; a gap (``MAXLEN``
    dropped what followed a waiter's id) sends it back to the script: ReplayUnavailable."""
    store = backend.store(prefix, f"sf-{secrets.token_hex(4)}", maxlen=5)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=60)
        here = store._here()
        results: dict[str, Any] = {}

        async def read(name: str, after: str | None, limit: int) -> None:
            try:
                results[name] = [
                    event_id for event_id, _ in await store.read(run, after, limit=limit, block=10)
                ]
            except ReplayUnavailableError as exc:
                results[name] = exc

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read, "two", None, 2)
            tasks.start_soon(read, "all", None, 100)
            await wait_until(lambda: here.waiting() == 2)
            await store.append_many(run, [Delta(value=str(i)) for i in range(3)])
        assert results == {"two": ["1", "2"], "all": ["1", "2", "3"]}
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read, "late", "3", 100)
            await wait_until(lambda: here.waiting() == 1)
            await store.append_many(run, [Delta(value=str(i)) for i in range(500)])
        assert isinstance(results["late"], ReplayUnavailableError)
        assert results["late"].resume_after is not None
        assert int(results["late"].resume_after) > 3
    finally:
        await store.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("decode_responses", [False, True])
async def test_the_shared_reader_takes_any_client_of_the_user(
    redis_server: RedisServer, prefix: str, protocol: int, decode_responses: bool
) -> None:
    """RESP2 or RESP3, bytes or decoded: the shared ``XREAD``'s replies are read alike."""
    client = aioredis.Redis.from_url(redis_server.url, protocol=protocol, decode_responses=decode_responses)
    store = RedisStore(client, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=60)
        here = store._here()
        async with anyio.create_task_group() as tasks:

            async def append_soon() -> None:
                await wait_until(lambda: here.waiting() == 2)
                await store.append_many(run, [Delta(value="é"), Delta(value="b")])

            tasks.start_soon(append_soon)
            first, second = await asyncio.gather(
                store.read(run, block=10), store.read(run, block=10, limit=1)
            )
        events = [(event_id, parse_event(data)) for event_id, data in first]
        assert events == [("1", Delta(value="é")), ("2", Delta(value="b"))]
        assert second == first[:1]
        # Back for what follows: it waits at once (no script) and gets it.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: store.finish(run, "finished", final=[Done()]))
            assert [parse_event(data) for _, data in await store.read(run, "2", block=10)] == [Done()]
    finally:
        await store.aclose()
        await client.aclose()


def test_a_client_whose_pool_is_smaller_than_max_connections_is_refused() -> None:
    pool = aioredis.BlockingConnectionPool.from_url("redis://127.0.0.1:1/0", max_connections=8)
    with pytest.raises(ValueError, match="max_connections"):
        RedisStore(aioredis.Redis(connection_pool=pool))
    assert RedisStore(aioredis.Redis(connection_pool=pool), max_connections=8).max_connections == 8
    with pytest.raises(ValueError, match="max_connections"):
        RedisStore("redis://127.0.0.1:1/0", max_connections=1)
