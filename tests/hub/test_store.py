"""The store protocol, for every backend: ids, reads, retention errors, finish, leases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from streamflow import Delta, Done, Error, Event, parse_event
from streamflow.hub import StreamHub
from streamflow.sse import SSEDecoder
from streamflow.stores import (
    InvalidEventIdError,
    MemoryStore,
    ReplayUnavailableError,
    RunFinishedError,
    Store,
    StoredEvent,
    UnknownRunError,
)
from tests.hub.conftest import StoreFactory

pytestmark = pytest.mark.anyio


async def new_run(store: Store, *, lease: float = 30.0, producer: str = "p") -> tuple[str, str]:
    await store.create_session("s1")
    return "s1", await store.create_run("s1", producer=producer, lease=lease)


async def test_ids_are_monotonic_and_read_returns_what_follows(store: Store) -> None:
    _, run = await new_run(store)
    ids = [await store.append(run, Delta(value=str(i))) for i in range(5)]
    assert len(set(ids)) == 5
    everything = await store.read(run)
    assert [stored[0] for stored in everything] == ids
    assert [parse_event(stored[1]) for stored in everything] == [Delta(value=str(i)) for i in range(5)]
    for index, event_id in enumerate(ids):
        rest = await store.read(run, event_id)
        assert [stored[0] for stored in rest] == ids[index + 1 :]
    assert len(await store.read(run, None, limit=2)) == 2
    assert await store.read(run, ids[-1]) == []


async def test_a_blocking_read_wakes_on_append(store: Store) -> None:
    _, run = await new_run(store)
    first = await store.append(run, Delta(value="a"))
    got: list[Event] = []

    async def reader() -> None:
        got.extend(parse_event(stored[1]) for stored in await store.read(run, first, block=5))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reader)
        await anyio.sleep(0.1)
        await store.append(run, Delta(value="b"))
    assert got == [Delta(value="b")]
    with anyio.fail_after(3):  # a timeout returns nothing
        assert await store.read(run, (await store.read(run))[-1][0], block=0.1) == []


@pytest.mark.parametrize("bad", ["", "x", "-1", "1.5", "01", "1\n", "99999999999999999999999"])
async def test_malformed_ids_are_invalid(store: Store, bad: str) -> None:
    _, run = await new_run(store)
    await store.append(run, Delta(value="a"))
    with pytest.raises(InvalidEventIdError):
        await store.read(run, bad)


async def test_unknown_run(store: Store) -> None:
    with pytest.raises(UnknownRunError):
        await store.read("nope")
    with pytest.raises(UnknownRunError):
        await store.append("nope", Done())
    assert await store.run_info("nope") is None
    assert await store.latest_run("nope") is None
    assert not await store.session_exists("nope")


async def test_finish_is_atomic_and_first_wins(store: Store) -> None:
    session, run = await new_run(store)
    await store.append(run, Delta(value="a"))
    assert await store.finish(run, "failed", final=[Error(message="x", code="c"), Done()])
    assert not await store.finish(run, "finished", final=[Done()])
    events = [parse_event(stored[1]) for stored in await store.read(run)]
    assert events == [Delta(value="a"), Error(message="x", code="c"), Done()]
    info = await store.run_info(run)
    assert info is not None
    assert (info.status, info.session_id) == ("failed", session)
    with pytest.raises(RunFinishedError):
        await store.append(run, Delta(value="late"))
    latest = await store.latest_run(session)
    assert latest is not None
    assert latest.run_id == run


async def test_the_lease_expires_without_heartbeats(store: Store) -> None:
    _, run = await new_run(store, lease=0.3)
    assert await store.heartbeat(run, "p", 0.3)
    assert not await store.heartbeat(run, "someone-else", 0.3)
    info = await store.run_info(run)
    assert info is not None
    assert info.producer_alive
    await anyio.sleep(0.6)
    info = await store.run_info(run)
    assert info is not None
    assert not info.producer_alive


async def test_memory_store_caps_events_per_run() -> None:
    store = MemoryStore(max_events_per_run=3)
    _, run = await new_run(store)
    ids = [await store.append(run, Delta(value=str(i))) for i in range(10)]
    assert [stored[0] for stored in await store.read(run, ids[6])] == ids[7:]
    with pytest.raises(ReplayUnavailableError):
        await store.read(run, ids[5])
    with pytest.raises(ReplayUnavailableError):
        await store.read(run)
    await store.finish(run, "finished")  # a finished run replays from its compact form
    assert [parse_event(stored[1]) for stored in await store.read(run, ids[6])] == [
        Delta(value=str(i)) for i in (7, 8, 9)
    ]


async def test_memory_store_drops_the_oldest_finished_runs() -> None:
    store = MemoryStore(max_finished_runs=2)
    await store.create_session("s")
    runs = []
    for _ in range(4):
        run = await store.create_run("s", producer="p", lease=30)
        await store.append(run, Done())
        await store.finish(run, "finished")
        runs.append(run)
    assert len(store) == 2
    assert [await store.run_info(run) is None for run in runs] == [True, True, False, False]


SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}


async def read_body(response: Response, on_body: Callable[[bytes], None] | None = None) -> bytes:
    """The whole body of ``response``, called in process by a client that never leaves
    (``on_body`` sees each body message as it is sent)."""
    body: list[bytes] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        chunk = message.get("body", b"")
        body.append(chunk)
        if on_body is not None:
            on_body(chunk)

    with anyio.fail_after(10):
        await response({**SCOPE, "asgi": {"spec_version": "2.4"}}, receive, send)
    return b"".join(body)


# --- the hub's reader ends a run whose producer is gone --------------------------------------


async def test_a_reader_marks_a_run_whose_producer_died_as_failed(store_factory: StoreFactory) -> None:
    store = store_factory()
    async with StreamHub(store, poll=0.1) as hub:
        session = await hub.create_session()
        # A run produced "elsewhere": nobody renews its lease.
        run = await store.create_run(session, producer="dead-replica", lease=0.3)
        await store.append(run, Delta(value="a"))
        response = await hub.response(Request(SCOPE), session)
        body = await read_body(response)
    events = [parse_event(sse.data) for sse in SSEDecoder().feed(body)]
    assert events[0] == Delta(value="a")
    assert isinstance(events[1], Error)
    assert events[1].code == "producer_lost"
    assert events[2:] == [Done()]
    info = await store.run_info(run)
    assert info is not None
    assert info.status == "failed"


class BrokenStore(MemoryStore):
    """A MemoryStore whose reads fail once ``broken`` is set (a store that went away)."""

    broken = False

    async def read(
        self, run_id: str, after: str | None = None, *, limit: int = 1000, block: float | None = None
    ) -> list[StoredEvent]:
        if self.broken:
            raise ConnectionError("the store went away")
        return await super().read(run_id, after, limit=limit, block=block)


async def test_a_store_failure_gives_readers_an_error_and_keeps_the_last_id() -> None:
    store = BrokenStore()
    async with StreamHub(store, poll=0.05, on_last_reader_gone="finish") as hub:
        session = await hub.create_session()
        gate = anyio.Event()

        async def source() -> AsyncIterator[str]:
            yield "a"
            await gate.wait()
            yield "b"

        await hub.start(session, source())
        response = await hub.response(Request(SCOPE), session)

        def on_body(chunk: bytes) -> None:
            if b"data:" in chunk:
                store.broken = True  # reads fail from now on...
                gate.set()  # ...the next one when "b" wakes the reader

        body = await read_body(response, on_body)
    decoded = SSEDecoder().feed(body)
    events = [parse_event(sse.data) for sse in decoded]
    assert events[0] == Delta(value="a")
    assert isinstance(events[1], Error)
    assert events[1].code == "store_unavailable"
    assert events[2:] == [Done()]
    assert decoded[1].id == decoded[0].id != ""  # a later resume still starts after "a"


async def test_append_many_ids_are_monotonic_and_readers_see_the_batch(store: Store) -> None:
    _, run = await new_run(store)
    first = await store.append(run, Delta(value="a"))
    got: list[list[StoredEvent]] = []

    async def reader() -> None:
        got.append(await store.read(run, first, block=5))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reader)
        await anyio.sleep(0.1)
        batch_last = await store.append_many(run, [Delta(value=str(i)) for i in range(3)])
    last = await store.append(run, Delta(value="z"))
    [batch] = got  # the blocked reader woke with the whole batch, as (id, wire JSON) pairs
    assert [data for _, data in batch] == [Delta(value=str(i)).to_json() for i in range(3)]
    assert batch[-1][0] == batch_last
    ids = [first, *(event_id for event_id, _ in batch), last]
    assert [int(event_id) for event_id in ids] == sorted({int(event_id) for event_id in ids})
    everything = await store.read(run)
    assert [stored[0] for stored in everything] == ids
    assert [parse_event(stored[1]) for stored in everything] == [
        Delta(value="a"),
        *(Delta(value=str(i)) for i in range(3)),
        Delta(value="z"),
    ]
    assert await store.read(run, batch[0][0]) == everything[2:]
    assert await store.append_many(run, []) is None


async def test_append_many_is_atomic_with_finish(store: Store) -> None:
    _, run = await new_run(store)
    batch_last = await store.append_many(run, [Delta(value="a"), Delta(value="b")])
    assert await store.finish(run, "failed", final=[Error(message="x", code="y"), Done()])
    with pytest.raises(RunFinishedError):
        await store.append_many(run, [Delta(value="c"), Delta(value="d")])
    with pytest.raises(RunFinishedError):
        await store.append_many(run, [])
    everything = await store.read(run)
    assert everything[1][0] == batch_last
    assert [parse_event(stored[1]) for stored in everything] == [
        Delta(value="a"),
        Delta(value="b"),
        Error(message="x", code="y"),
        Done(),
    ]
    with pytest.raises(UnknownRunError):
        await store.append_many("nope", [Done()])


async def read_to_done(store: Store, run: str) -> list[StoredEvent]:
    found: list[StoredEvent] = []
    with anyio.fail_after(5):
        while not found or parse_event(found[-1][1]) != Done():
            found += await store.read(run, found[-1][0] if found else None, block=5)
    return found


class CountingStore(MemoryStore):
    """A MemoryStore that records the size of every ``append_many``, and whose appends the
    hub treats as a network store's (they may wait): it hands them to a writer, in batches."""

    immediate_appends = False

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def append_many(self, run_id: str, events: Sequence[Event | str]) -> str | None:
        self.batches.append(len(events))
        return await super().append_many(run_id, events)


async def test_the_hub_appends_ready_events_together_and_never_holds_one_back() -> None:
    store = CountingStore()
    async with StreamHub(store, on_last_reader_gone="finish") as hub:
        session = await hub.create_session()
        run = await hub.start(session, [f"{i}" for i in range(3000)])  # all ready at once
        assert len(await read_to_done(store, run)) == 3001
        assert sum(store.batches) == 3001  # the deltas and Done
        assert len(store.batches) < 20
        assert max(store.batches) <= 1024

        store.batches.clear()
        gate = anyio.Event()

        async def slow() -> AsyncIterator[str]:
            yield "first"
            await gate.wait()  # a slow source: "first" must be recorded meanwhile
            yield "second"

        session = await hub.create_session()
        run = await hub.start(session, slow())
        with anyio.fail_after(5):
            events = await store.read(run, block=5)
        assert [parse_event(stored[1]) for stored in events] == [Delta(value="first")]
        gate.set()
        assert [parse_event(stored[1]) for stored in await read_to_done(store, run)] == [
            Delta(value="first"),
            Delta(value="second"),
            Done(),
        ]


async def test_a_store_whose_appends_never_wait_gets_each_event_from_the_sources_task() -> None:
    """MemoryStore (immediate_appends): no writer task; each event is appended as it is
    yielded, and a source that never awaits still lets other tasks run."""

    class Immediate(CountingStore):
        immediate_appends = True

    store = Immediate()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with StreamHub(store, on_last_reader_gone="finish") as hub, anyio.create_task_group() as tasks:
        tasks.start_soon(ticker)
        session = await hub.create_session()
        run = await hub.start(session, [f"{i}" for i in range(3000)])  # all ready at once
        assert len(await read_to_done(store, run)) == 3001
        tasks.cancel_scope.cancel()
    assert store.batches == [1] * 3001
    assert ticks >= 2  # the run let the loop turn


async def test_a_finished_memory_run_holds_only_what_it_retains() -> None:
    store = MemoryStore(max_events_per_run=10)
    _, run = await new_run(store)
    for start in range(0, 25, 5):
        await store.append_many(run, [Delta(value=str(i)) for i in range(start, start + 5)])
    await store.finish(run, "finished", final=[Done()])
    retained = await store.read(run, "16")  # ids 1-25 the deltas, 26 the Done: 17-26 are kept
    assert [parse_event(data) for _, data in retained] == [
        *(Delta(value=str(i)) for i in range(16, 25)),
        Done(),
    ]
    assert len(store._runs[run].events) == 10  # the dropped prefix is gone, not merely skipped


# --- sessions: owner and metadata, expiry ------------------------------------------------


async def test_a_session_keeps_its_owner_and_metadata(store: Store) -> None:
    metadata = {"plan": "pro", "nested": {"tags": ["a", "é", "🙂"], "n": 1.5, "ok": True, "none": None}}
    await store.create_session("s", owner="alice", metadata=metadata)
    await store.create_session("s", owner="mallory", metadata={"plan": "free"})  # idempotent: first wins
    session = await store.get_session("s")
    assert session is not None
    assert (session.session_id, session.owner, session.metadata) == ("s", "alice", metadata)
    assert session.created_at > 0
    assert await store.get_session("unknown") is None
    await store.create_session("plain")
    plain = await store.get_session("plain")
    assert plain is not None
    assert (plain.owner, plain.metadata) == (None, {})


async def test_memory_sessions_expire_least_recently_used_first_and_busy_ones_stay() -> None:
    store = MemoryStore(session_ttl=0.2)
    for name in ("old", "busy", "used", "new"):
        await store.create_session(name)
    await store.create_run("busy", producer="p", lease=30)
    await anyio.sleep(0.15)
    assert await store.session_exists("used")  # a use extends its life
    await anyio.sleep(0.1)
    await store.create_session("later")  # expiry happens on the way, from the oldest
    assert set(store._sessions) == {"busy", "used", "later"}
    assert await store.get_session("old") is None
    assert await store.get_session("busy") is not None  # its run is still running


def test_memory_store_session_operations_do_not_grow_with_live_sessions() -> None:
    """O(1) amortised: creating a session costs the same with 100,000 live ones as with 1,000
    (expiry scanned every session before: 1.4 ms at 20,000, 10-14 ms at 100,000). A relative
    measure, with a wide margin: linear cost would be about 100 times slower."""
    import time

    async def cost(live: int) -> float:
        store = MemoryStore()
        for i in range(live):
            await store.create_session(f"s{i}")
        times = []
        for i in range(200):
            start = time.perf_counter()
            await store.create_session(f"n{i}")
            run = await store.create_run(f"n{i}", producer="p", lease=30)
            await store.finish(run, "finished")
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    small, large = anyio.run(cost, 1_000), anyio.run(cost, 100_000)
    assert large < small * 10 + 20e-6, (small, large)


async def test_a_local_reader_takes_the_latest_events_from_memory_not_the_store() -> None:
    """A store with sequential ids: the hub knows every appended event's id, so a reader of a
    run produced here takes what was just appended from the run's tail (no store read per
    event), exactly as the store would give it."""

    class CountingReads(MemoryStore):
        reads = 0

        async def read(
            self, run_id: str, after: str | None = None, *, limit: int = 1000, block: float | None = None
        ) -> list[StoredEvent]:
            self.reads += 1
            return await super().read(run_id, after, limit=limit, block=block)

    store = CountingReads()

    async def source() -> AsyncIterator[str]:
        for i in range(200):
            yield str(i)
            await anyio.sleep(0.001)

    async with StreamHub(store, on_last_reader_gone="finish") as hub:
        session = await hub.create_session()
        response = await hub.response(Request(SCOPE), session)
        await hub.start(session, source())
        body = await read_body(response)
    frames = SSEDecoder().feed(body)
    assert [parse_event(sse.data) for sse in frames] == [*(Delta(value=str(i)) for i in range(200)), Done()]
    stored = await store.read(frames[0].id.split(".")[0], None, limit=1000)
    assert [sse.id.split(".")[1] for sse in frames] == [event_id for event_id, _ in stored]
    assert store.reads < 20, store.reads  # the first read, the Done from the store: not one per event
