"""RedisStore against a real ``redis-server``: the store itself, two uvicorn replicas sharing
one Redis (resume across replicas, a SIGKILLed producer), and Redis dying mid-stream.

The store-agnostic hub tests (``test_hub.py``) also run with RedisStore, through the
``store`` fixture's ``redis`` param.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from streamflow import Delta, Done, Error, Event, parse_event
from streamflow.sse import SSEDecoder
from streamflow.stores import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    UnknownRunError,
)
from streamflow.stores.redis import RedisStore, RedisStoreError
from tests.conftest import free_port
from tests.hub._redis_server import RedisServer, shared_redis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


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
        head = await client.xrange(f"{prefix}:run:{{{run}}}:events", count=1)
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
async def test_redis_going_away_is_a_typed_store_error(prefix: str) -> None:
    server = RedisServer().start()
    store = RedisStore(server.url, prefix=prefix)
    try:
        await store.create_session("s")
        run = await store.create_run("s", producer="p", lease=5)
        server.kill()
        with pytest.raises(RedisStoreError):
            await store.read(run, block=1)
        with pytest.raises(RedisStoreError):
            await store.append(run, Delta(value="x"))
    finally:
        await store.aclose()
        server.stop()


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import streamflow.stores.redis\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert 'pip install "streamflow[redis]"' in out.stdout


# --- replicas: uvicorn processes sharing one Redis ---------------------------------------------


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


StartReplica = Callable[[str, str, str], Replica]


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[StartReplica]:
    replicas: list[Replica] = []

    def start(redis_url: str, prefix: str, name: str) -> Replica:
        port = free_port()
        env = {
            **os.environ,
            "STREAMFLOW_REDIS_URL": redis_url,
            "STREAMFLOW_REDIS_PREFIX": prefix,
            "STREAMFLOW_LEASE": "1.5",
            "STREAMFLOW_POLL": "0.2",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        log = tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "uvicorn", "tests.hub._redis_replica_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on", "--log-level", "warning"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        replica = Replica(f"http://127.0.0.1:{port}", process, log)
        replicas.append(replica)
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"replica {name} exited: {replica.output()}")
            try:
                if httpx.get(f"{replica.url}/health", timeout=1).status_code == 200:
                    return replica
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {name} did not start: {replica.output()}")
            time.sleep(0.05)

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
    a = start_replica(redis_server.url, prefix, "a")
    b = start_replica(redis_server.url, prefix, "b")

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
        replica = start_replica(server.url, prefix, "solo")
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
