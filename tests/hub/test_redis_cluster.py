"""RedisStore on a real three-master Redis Cluster (``tests/hub/_redis_server.py`` starts it).

The store protocol (``test_store.py``) and the hub tests run on the cluster too, through
the ``store`` fixture's ``redis-cluster`` param; the shared readers' tests
(``test_redis.py``) through their ``backend`` fixture. Here: the key layout (a session's
keys and its runs' share one slot, the shards spread over the primaries), the ways to
give the store a cluster, two uvicorn replicas on the cluster (resume across replicas, a
SIGKILLed producer), and a slot moving to another primary under blocked readers.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from streamflow import Delta, Done
from streamflow.stores.redis import _TAGS, RedisStore, _find_tag, _shard_slot
from tests.hub._redis_server import RedisClusterServers, shared_redis_cluster
from tests.hub._replicas import Replica
from tests.hub._replicas import start_replica as _start_replica
from tests.hub.test_redis import (
    Backend,
    StartReplica,
    peak_connections,
    read_to_the_end,
    resume_across_replicas_then_kill_the_producer,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> RedisClusterServers:
    return shared_redis_cluster(pytestconfig)


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[StartReplica]:
    replicas: list[Replica] = []

    def start(redis_url: str, prefix: str, name: str, **env: str) -> Replica:
        replica = _start_replica(redis_url, prefix, tmp_path / f"{name}.log", **env)
        replicas.append(replica)
        return replica

    yield start
    for replica in replicas:
        replica.stop()


def slot_owners(cluster: RedisClusterServers) -> dict[int, int]:
    """Each slot's primary (its port), from ``CLUSTER SLOTS``."""
    with redis.Redis(host="127.0.0.1", port=cluster.ports[0]) as admin:
        ranges = admin.execute_command("CLUSTER SLOTS")
    return {slot: int(node[1]) for start, end, node, *_ in ranges for slot in range(int(start), int(end) + 1)}


def test_the_shard_tags_are_spread_over_the_slots() -> None:
    assert [_find_tag(shard) for shard in range(len(_TAGS))] == list(_TAGS)
    slots = [key_slot(tag.encode()) for tag in _TAGS]
    assert slots == [_shard_slot(shard) for shard in range(len(_TAGS))]
    assert slots[:4] == [0, 8192, 4096, 12288]
    assert len(set(slots)) == len(slots)
    # Past the table, a tag is found (and kept) for any shard.
    store = RedisStore("redis://127.0.0.1:1/0", shards=100)
    assert key_slot(store._session_key("any", tag=None).encode()) in {_shard_slot(s) for s in range(100)}


@pytest.mark.anyio
async def test_a_sessions_keys_and_its_runs_share_a_slot_and_the_shards_spread_over_the_primaries(
    cluster: RedisClusterServers, prefix: str
) -> None:
    store = RedisStore(cluster.url, prefix=prefix)
    try:
        owners = slot_owners(cluster)
        used: set[int] = set()
        # A session of each shard (the shard of a session is its id's hash).
        sessions = {store._session_tag(f"session-{i}"): f"session-{i}" for i in reversed(range(1000))}
        assert len(sessions) == store.shards
        for session in sessions.values():
            await store.create_session(session, owner="o")
            run = await store.create_run(session, producer="p", lease=30)
            assert len(run) == 20
            assert run[:4] == store._session_tag(session)
            keys = [store._session_key(session), *store._run_keys(run)]
            slots = {key_slot(key.encode()) for key in keys}
            assert len(slots) == 1, keys
            used |= slots
            # Every script of the run: one slot each, no CROSSSLOT.
            assert await store.append(run, Delta(value="a")) == "1"
            assert await store.heartbeat(run, "p", 30)
            latest = await store.latest_run(session)
            assert latest is not None
            assert latest.run_id == run
            assert await store.finish(run, "finished", final=[Done()])
            assert [event_id for event_id, _ in await store.read(run)] == ["1", "2"]
        assert used <= {_shard_slot(shard) for shard in range(store.shards)}
        assert len(used) == store.shards
        per_primary = {port: sum(owners[slot] == port for slot in used) for port in cluster.ports}
        assert all(count >= 4 for count in per_primary.values()), per_primary
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_the_ways_to_give_the_store_a_cluster(cluster: RedisClusterServers, prefix: str) -> None:
    plain_url = cluster.url.replace("redis+cluster://", "redis://")
    client = RedisCluster.from_url(plain_url)
    stores = [
        RedisStore(cluster.url, prefix=prefix),
        RedisStore(plain_url, prefix=prefix, cluster=True),
        RedisStore(client, prefix=prefix),
    ]
    try:
        assert all(store.cluster for store in stores)
        await stores[0].create_session("s")
        run = await stores[1].create_run("s", producer="p", lease=30)
        async with anyio.create_task_group() as tasks:

            async def append_soon() -> None:
                await wait_until(lambda: stores[2]._here().waiting() == 1)
                await stores[0].append(run, Delta(value="x"))

            tasks.start_soon(append_soon)
            assert [event_id for event_id, _ in await stores[2].read(run, block=10)] == ["1"]
        # A single server's URL is not a cluster; max_connections must leave room for commands.
        assert not RedisStore("redis://127.0.0.1:1/0").cluster
        with pytest.raises(ValueError, match="max_connections"):
            RedisStore(cluster.url, max_connections=16, shards=16)
        with pytest.raises(ValueError, match="shards"):
            RedisStore(cluster.url, shards=0)
    finally:
        for store in stores:
            await store.aclose()
        await client.aclose()  # the store does not close a client it was given


def test_a_client_resumes_on_another_replica_of_a_cluster_then_the_producer_replica_is_killed(
    cluster: RedisClusterServers, prefix: str, start_replica: StartReplica
) -> None:
    resume_across_replicas_then_kill_the_producer(cluster.url, prefix, start_replica)


# --- a slot moves to another primary under blocked readers ------------------------------------


def node_ids(cluster: RedisClusterServers) -> dict[int, str]:
    ids = {}
    for port in cluster.ports:
        with redis.Redis(host="127.0.0.1", port=port) as node:
            ids[port] = str(node.execute_command("CLUSTER MYID"), "ascii")
    return ids


def move_slot(cluster: RedisClusterServers, slot: int, source: int, target: int) -> None:
    """Migrate ``slot`` (and its keys) from the primary on port ``source`` to ``target``, the
    way ``redis-cli --cluster reshard`` does: IMPORTING, MIGRATING, MIGRATE, NODE."""
    ids = node_ids(cluster)
    with (
        redis.Redis(host="127.0.0.1", port=source) as src,
        redis.Redis(host="127.0.0.1", port=target) as dst,
    ):
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in (target, source, *ids):
            with redis.Redis(host="127.0.0.1", port=port) as node:
                node.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    deadline = time.monotonic() + 10
    while slot_owners(cluster)[slot] != target:
        assert time.monotonic() < deadline, "the cluster did not agree on the slot's move"
        time.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_readers_blocked_on_a_slot_that_moves_to_another_primary_lose_nothing(
    cluster: RedisClusterServers, prefix: str
) -> None:
    store = RedisStore(cluster.url, prefix=prefix)
    await store.create_session("s")
    run = await store.create_run("s", producer="p", lease=30)
    slot = key_slot(store._run_keys(run)[1].encode())
    source = slot_owners(cluster)[slot]
    target = next(port for port in cluster.ports if port != source)
    got: dict[int, list[str]] = {}

    async def reader(index: int) -> None:
        events: list[str] = []
        after: str | None = None
        while not events or events[-1] != Done().to_json():
            batch = await store.read(run, after, block=1.0)
            events += [data for _, data in batch]
            after = batch[-1][0] if batch else after
        got[index] = events

    try:
        async with anyio.create_task_group() as tasks:
            for index in range(20):
                tasks.start_soon(reader, index)
            for i in range(10):
                await store.append(run, Delta(value=str(i)))
                await anyio.sleep(0.02)
            await wait_until(lambda: store._here().waiting() == 20)
            await anyio.to_thread.run_sync(move_slot, cluster, slot, source, target)
            for i in range(10, 20):
                await store.append(run, Delta(value=str(i)))
                await anyio.sleep(0.02)
            await store.finish(run, "finished", final=[Done()])
        expected = [Delta(value=str(i)).to_json() for i in range(20)] + [Done().to_json()]
        assert got == dict.fromkeys(range(20), expected)
    finally:
        await store.aclose()
        await anyio.to_thread.run_sync(move_slot, cluster, slot, target, source)  # as it was


@pytest.mark.anyio
async def test_a_cluster_client_of_the_user_keeps_to_max_connections(
    cluster: RedisClusterServers, prefix: str
) -> None:
    """With a client of its own, the store still uses at most ``max_connections``, however
    many commands and readers there are at once."""
    name = f"sf-{secrets.token_hex(4)}"
    client = RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"), client_name=name)
    store = RedisStore(client, prefix=prefix, max_connections=24, shards=8)
    try:
        runs = []
        for i in range(40):
            await store.create_session(f"s{i}")
            runs.append(await store.create_run(f"s{i}", producer="p", lease=30))
        async with peak_connections(Backend("cluster", cluster.url, cluster.ports), name) as peak:
            readers = [asyncio.create_task(read_to_the_end(store, run)) for run in runs for _ in range(5)]
            await wait_until(lambda: store._here().waiting() == len(readers))
            await asyncio.gather(*(store.append(run, Delta(value=str(i))) for run in runs for i in range(10)))
            await asyncio.gather(*(store.finish(run, "finished", final=[Done()]) for run in runs))
            got = await asyncio.gather(*readers)
        assert all(len(events) == 11 for events in got)
        assert 0 < peak[0] <= 24
    finally:
        await store.aclose()
        await client.aclose()
