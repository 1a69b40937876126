"""Chaos: 50 concurrent sessions on two replicas sharing one persistent ``redis-server``.

Each client posts one message (a run of 40 distinct deltas) and reads its session's stream,
cutting the connection at random points and resuming with ``Last-Event-ID`` on a randomly
chosen replica. Meanwhile Redis is restarted once (SIGKILL, then started again on the same
port and append-only file) and replica ``a`` is SIGKILLed. Then:

- a run that completed gave its client its whole text exactly once, in order, then ``Done``;
- a run that could not complete (only those of the killed replica) ended with a typed
  ``Error`` (``producer_lost``) then ``Done``;
- no event was lost or doubled: what each client got, across its connections, is exactly
  the run's events as stored, by id;
- no client hung: each finished before the deadline.

``STREAMFLOW_CHAOS_SEED`` picks another seed (the cut points and replica choices).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from streamflow import Delta, Done, Error, Event, parse_event
from streamflow.sse import SSEDecoder
from streamflow.stores.redis import RedisStore
from tests.hub._redis_server import RedisServer
from tests.hub._replicas import Replica, start_replica

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SEED = int(os.environ.get("STREAMFLOW_CHAOS_SEED", "20261202"))
SESSIONS = 50
DELTAS = 40
DELAY = 0.06  # seconds between a run's deltas: a run lasts about 2.4 s
START_WITHIN = 2.0  # the clients start at random times in these first seconds
REDIS_RESTART_AT = 1.2  # seconds into the storm
REDIS_DOWN = 0.3  # seconds Redis stays dead
REPLICA_KILL_AT = 3.0  # seconds into the storm (once every client has posted its message)
# The producers' lease. Not shorter: the hub renews leases one run after another, then
# sleeps lease/3, so a Redis outage of ~0.8 s (the restart and the backoff) can delay a
# renewal by more than 1.5 s (see the hub's `_heartbeats`).
LEASE = 3.0
DEADLINE = 30.0  # seconds for a client to finish
EXPECTED_ERRORS = {"producer_lost"}


@dataclass
class Client:
    """One session's client: what it asked for and what it got."""

    index: int
    prefix: str
    session: str = ""
    run: str = ""
    producer: str = ""  # the name of the replica that runs it
    pairs: list[tuple[str, Event]] = field(default_factory=list)  # every event, across connections
    connections: int = 0
    post_seconds: float = 0.0  # creating the session and posting the message took
    resumes_after_failure: int = 0  # reconnections after a refused or broken connection
    finished: bool = False  # got Done
    hung: bool = False

    @property
    def expected(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(DELTAS)]

    @property
    def deltas(self) -> list[str]:
        return [event.value for _, event in self.pairs if isinstance(event, Delta)]

    @property
    def error(self) -> Error | None:
        return next((event for _, event in self.pairs if isinstance(event, Error)), None)


@dataclass
class Cluster:
    redis: RedisServer
    replicas: dict[str, Replica]
    prefix: str


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    redis = RedisServer(persistent=True).start()
    prefix = f"chaos-{secrets.token_hex(4)}"
    replicas: dict[str, Replica] = {}
    try:
        env = {
            "STREAMFLOW_LEASE": str(LEASE),
            "STREAMFLOW_POLL": "0.2",
            "STREAMFLOW_RETRY_FOR": "1.0",
        }
        for name in ("a", "b"):
            replicas[name] = start_replica(redis.url, prefix, tmp_path / f"{name}.log", **env)
        yield Cluster(redis, replicas, prefix)
    finally:
        for replica in replicas.values():
            replica.stop()
        redis.stop()


class Storm:
    """The clients' shared view: the replicas' URLs, and which is dead (known to the test
    only: the clients find out by a refused or broken connection)."""

    def __init__(self, cluster: Cluster, http: httpx.AsyncClient) -> None:
        self.urls = {name: replica.url for name, replica in cluster.replicas.items()}
        self.pids = {replica.process.pid: name for name, replica in cluster.replicas.items()}
        self.http = http
        self.posted = 0
        self.all_posted = anyio.Event()

    async def post(self, rng: random.Random, path: str, **params: object) -> httpx.Response:
        """POST to a random replica; on a refused or broken connection, to the other."""
        names = sorted(self.urls)
        name = rng.choice(names)
        for attempt in range(20):
            try:
                response = await self.http.post(self.urls[name] + path, params=params)
            except httpx.TransportError:
                name = names[1 - names.index(name)]
                await anyio.sleep(0.05 * attempt)
                continue
            assert response.status_code < 300, f"{path}: {response.status_code} {response.text}"
            return response
        raise AssertionError(f"POST {path} failed on every replica")

    async def run_client(self, client: Client, rng: random.Random) -> None:
        await anyio.sleep(rng.uniform(0, START_WITHIN))
        started = time.monotonic()
        client.session = (await self.post(rng, "/sessions")).json()["session"]
        params = {"n": DELTAS, "delay": DELAY, "prefix": client.prefix}
        reply = (await self.post(rng, f"/sessions/{client.session}/messages", **params)).json()
        client.run, client.producer = reply["run"], self.pids[reply["pid"]]
        client.post_seconds = time.monotonic() - started
        self.posted += 1
        if self.posted == SESSIONS:
            self.all_posted.set()
        await self.follow(client, rng)

    async def follow(self, client: Client, rng: random.Random) -> None:
        """Read the session's stream until ``Done``: cut at random points, resume on a random
        replica with ``Last-Event-ID``; go to the other one when a connection fails."""
        names = sorted(self.urls)
        last: str | None = None
        cuts = rng.randint(0, 4)
        name = rng.choice(names)
        while True:
            cut = rng.randint(1, 12) if cuts and rng.random() < 0.7 else None
            headers = {"accept": "text/event-stream"}
            if last:
                headers["last-event-id"] = last
            client.connections += 1
            url = f"{self.urls[name]}/sessions/{client.session}/stream"
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    assert response.status_code == 200, (response.status_code, await response.aread())
                    decoder, got = SSEDecoder(), 0
                    async for chunk in response.aiter_raw():
                        for sse in decoder.feed(chunk):
                            event = parse_event(sse.data)
                            client.pairs.append((sse.id, event))
                            last, got = sse.id, got + 1
                            if isinstance(event, Done):
                                client.finished = True
                                return
                            if cut is not None and got >= cut:
                                break
                        else:
                            continue
                        break  # a cut: leave the response (its connection is closed)
                    else:
                        raise AssertionError(f"the stream of client {client.index} ended without Done")
                cuts -= 1
                name = rng.choice(names)
            except httpx.TransportError:  # refused, reset: the killed replica
                client.resumes_after_failure += 1
                name = names[1 - names.index(name)]
                await anyio.sleep(0.05)
            await anyio.sleep(rng.uniform(0, 0.2))


async def storm(cluster: Cluster) -> tuple[list[Client], dict[str, float]]:
    limits = httpx.Limits(max_connections=4 * SESSIONS, max_keepalive_connections=2 * SESSIONS)
    timeout = httpx.Timeout(10.0, connect=2.0)
    clients = [Client(index, prefix=f"c{index}-") for index in range(SESSIONS)]
    times: dict[str, float] = {}
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        world = Storm(cluster, http)
        started = time.monotonic()

        async def one(client: Client) -> None:
            with anyio.move_on_after(DEADLINE) as scope:
                await world.run_client(client, random.Random(f"{SEED}-{client.index}"))
            client.hung = scope.cancelled_caught

        async def chaos() -> None:
            await anyio.sleep(REDIS_RESTART_AT)
            times["redis_restart"] = time.monotonic() - started
            await anyio.to_thread.run_sync(cluster.redis.restart, REDIS_DOWN)
            await anyio.sleep(max(0.0, REPLICA_KILL_AT - (time.monotonic() - started)))
            with anyio.fail_after(DEADLINE):
                await world.all_posted.wait()
            times["replica_kill"] = time.monotonic() - started
            cluster.replicas["a"].process.send_signal(signal.SIGKILL)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(chaos)
            for client in clients:
                tasks.start_soon(one, client)
        times["duration"] = time.monotonic() - started
    return clients, times


async def stored_events(cluster: Cluster, runs: list[str]) -> dict[str, list[tuple[str, Event]]]:
    store = RedisStore(cluster.redis.url, prefix=cluster.prefix)
    try:
        return {
            run: [(f"{run}.{event_id}", parse_event(data)) for event_id, data in await store.read(run)]
            for run in runs
        }
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_chaos_redis_restart_and_a_killed_replica_lose_and_double_nothing(cluster: Cluster) -> None:
    clients, times = await storm(cluster)
    cluster.replicas["a"].process.wait(10)
    logs = "\n".join(f"--- {name}:\n{replica.output()}" for name, replica in cluster.replicas.items())
    hung = [client.index for client in clients if client.hung]
    assert not hung, f"hung clients: {hung}\n{logs}"
    stored = await stored_events(cluster, [client.run for client in clients])

    failed: Counter[str] = Counter()
    for client in clients:
        label = f"client {client.index} (run {client.run} on {client.producer})"
        assert client.finished, label
        ids = [event_id for event_id, _ in client.pairs]
        assert len(ids) == len(set(ids)), f"{label}: doubled events"
        # Exactly the run's events as stored, in order: none lost, none doubled.
        assert client.pairs == stored[client.run], label
        assert ids == [f"{client.run}.{n}" for n in range(1, len(ids) + 1)], label
        assert client.deltas == client.expected[: len(client.deltas)], label
        error = client.error
        if error is None:  # completed: the whole text, exactly once
            assert client.deltas == client.expected, label
            assert client.pairs[-1][1] == Done(), label
        else:  # could not complete: a typed Error, then Done
            assert client.pairs[-2:] == [(ids[-2], error), (ids[-1], Done())], label
            assert error.code in EXPECTED_ERRORS, f"{label}: {error}\n{logs}"
            assert client.producer == "a", f"{label}: a run of the surviving replica failed: {error}\n{logs}"
            failed[error.code or ""] += 1

    completed = sum(client.error is None for client in clients)
    resumes = sum(client.connections - 1 for client in clients)
    after_failure = sum(client.resumes_after_failure for client in clients)
    on_a = sum(client.producer == "a" for client in clients)
    # The replicas' stores retrying (logged once per outage of each store).
    outages = sum(
        replica.log.read_text(errors="replace").count("Redis failed") for replica in cluster.replicas.values()
    )
    print(
        f"\nchaos (seed {SEED}): {len(clients)} runs ({on_a} on the killed replica): {completed} completed, "
        f"failed by code {dict(failed) or '{}'}; {resumes} resumes ({after_failure} after a refused or "
        f"broken connection); Redis restarted at {times['redis_restart']:.1f} s, replica a killed at "
        f"{times['replica_kill']:.1f} s; {outages} retried outages logged; slowest post "
        f"{max(client.post_seconds for client in clients):.2f} s; {times['duration']:.1f} s"
    )
    assert completed + sum(failed.values()) == SESSIONS
    assert failed, "the killed replica had no running run: the test exercised nothing"
    assert outages, f"no store retried during the Redis restart\n{logs}"
