"""No fault in one run, one reader or one input harms anything else (both stores)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from streamflow import Delta, Done, Error, Event, Gap
from streamflow.hub import SessionNotFoundError, StreamHub
from streamflow.stores import MemoryStore, Store
from tests.hub.conftest import FAILURES, Served, deltas, hub_app, serve_hub

MakeServed = Callable[..., Served]
GENERIC = Error(message="The stream failed because of an internal error.", code="internal_error")


def status(served: Served, run: str) -> str:
    info = served.http.get(f"{served.url}/runs/{run}/info").json()
    assert info is not None
    return str(info["status"])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_failing_run_ends_alone_and_the_hub_keeps_serving(make_served: MakeServed) -> None:
    served = make_served(on_last_reader_gone="finish")
    busy = served.session()
    results: dict[str, list[Event]] = {}
    thread = threading.Thread(
        target=lambda: results.update(busy=served.read(f"/sessions/{busy}/stream").events)
    )
    served.start(busy, n=40, delay=0.02, prefix="b")
    thread.start()
    for kind in FAILURES:
        session = served.session()
        run = served.start(session, n=3, fail=kind)
        reading = served.read(f"/sessions/{session}/stream")
        assert reading.events == [*deltas("", 3), GENERIC, Done()], kind
        assert b"secret" not in reading.raw
        wait_for(lambda run=run: status(served, run) != "running")  # its end is recorded after its Done
        assert status(served, run) == "failed", kind
        # A resume after the last delta replays exactly the end.
        again = served.read(f"/runs/{run}/stream", last_id=reading.pairs[2][0])
        assert again.events == [GENERIC, Done()]
    thread.join(20)
    assert results["busy"] == [*deltas("b", 40), Done()]  # the other session, untouched
    later = served.session()  # and the hub still starts runs
    served.start(later, n=2)
    assert served.read(f"/sessions/{later}/stream").events == [*deltas("", 2), Done()]


@pytest.mark.slow
def test_an_event_no_store_can_carry_fails_that_event_only(make_served: MakeServed) -> None:
    served = make_served()
    session = served.session()
    run = served.start(session, n=5, bad_at=2)  # d0, d1, a lone surrogate, ... ready together
    reading = served.read(f"/sessions/{session}/stream")
    assert reading.events == [*deltas("", 2), GENERIC, Done()]
    wait_for(lambda: status(served, run) != "running")
    assert status(served, run) == "failed"
    resumed = served.read(f"/runs/{run}/stream", last_id=reading.pairs[0][0])
    assert resumed.pairs == reading.pairs[1:]  # a resume replays exactly that


def test_keyboard_interrupt_records_the_runs_end_then_propagates() -> None:
    store = MemoryStore()
    runs: list[str] = []

    async def source() -> AsyncIterator[str]:
        yield "a"
        await anyio.sleep(0.05)
        raise KeyboardInterrupt

    async def main() -> None:
        async with StreamHub(store, handle_sigterm=False) as hub:
            runs.append(await hub.start(await hub.create_session(), source()))
            await anyio.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        anyio.run(main)
    info = anyio.run(store.run_info, runs[0])
    assert info is not None
    assert info.status == "cancelled"
    texts = [text for _, text in anyio.run(store.read, runs[0])]
    assert texts[0] == Delta(value="a").to_json()
    assert texts[-1] == Done().to_json()


pytestmark = pytest.mark.anyio


@pytest.mark.slow
def test_a_new_reader_of_a_long_run_joins_it_from_the_first_retained_event(
    store_factory: Callable[..., Store],
) -> None:
    store = store_factory(max_events_per_run=5)
    hub = StreamHub(store, on_last_reader_gone="finish", poll=0.2)
    import httpx

    from tests.hub.conftest import Control

    with serve_hub(hub_app(hub, Control())) as url, httpx.Client(timeout=20) as http:
        served = Served(url, http, Control(), hub)
        session = served.session()
        served.start(session, n=600, delay=0.002)
        time.sleep(0.6)  # hundreds of events: retention dropped the first ones
        reading = served.read(f"/sessions/{session}/stream")
    assert reading.events[0] == Gap()
    assert reading.events[-1] == Done()
    values = [int(e.value) for e in reading.events[1:-1] if isinstance(e, Delta)]
    assert len(values) == len(reading.events) - 2
    assert values == list(range(values[0], 600))  # from the first retained, then live, to the end
    assert values[0] > 0
    gap_id, first_id = reading.pairs[0][0], reading.pairs[1][0]
    assert gap_id.split(".")[0] == first_id.split(".")[0]


def test_readers_that_wait_for_a_first_run_and_leave_leave_nothing_behind(make_served: MakeServed) -> None:
    served = make_served(poll=0.05)
    sessions = [served.session() for _ in range(30)]

    def peek(session: str) -> None:
        with served.http.stream("GET", f"{served.url}/sessions/{session}/stream") as response:
            assert response.status_code == 200
            time.sleep(0.1)  # the reader waits for a run that never comes, then leaves

    threads = [threading.Thread(target=peek, args=(session,)) for session in sessions]
    for thread in threads:
        thread.start()
    wait_for(lambda: served.http.get(f"{served.url}/stats").json()["new_run"] > 0)
    for thread in threads:
        thread.join(10)
    wait_for(lambda: served.http.get(f"{served.url}/stats").json() == {"runs": 0, "new_run": 0, "locks": 0})


async def test_start_with_another_owner_is_refused_like_an_unknown_session() -> None:
    async with StreamHub(handle_sigterm=False) as hub:
        session = await hub.create_session(owner="alice")
        with pytest.raises(SessionNotFoundError):
            await hub.start(session, ["x"], owner="mallory")
        with pytest.raises(SessionNotFoundError):
            await hub.start("nope", ["x"], owner="mallory")
        run = await hub.start(session, ["x"], owner="alice")
        assert run


@pytest.mark.parametrize(
    ("owner", "metadata"),
    [(42, None), (None, {"key": object()}), (None, {"nan": float("nan")})],
)
async def test_bad_owner_or_metadata_is_a_typed_error_and_writes_nothing(owner: Any, metadata: Any) -> None:
    store = MemoryStore()
    async with StreamHub(store, handle_sigterm=False) as hub:
        with pytest.raises((TypeError, ValueError)):
            await hub.create_session(owner=owner, metadata=metadata)
    assert not store._sessions


@pytest.mark.slow
def test_a_reader_that_stops_reading_is_dropped_and_its_run_follows_the_policy(
    make_served: MakeServed,
) -> None:
    served = make_served(send_timeout=1.0, on_last_reader_gone="cancel", buffer_size=16 * 1024)
    session = served.session()
    run = served.start(session, endless=1, size=4096, delay=0.001, name="stalled")
    host, port = urlsplit(served.url).hostname, urlsplit(served.url).port
    assert host is not None
    assert port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    try:
        sock.sendall(f"GET /sessions/{session}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        finalized = served.control.event(served.control.finalized, "stalled")
        assert finalized.wait(15), "the stalled reader was never dropped"
    finally:
        sock.close()
    wait_for(lambda: status(served, run) != "running")
    assert status(served, run) == "cancelled"


@pytest.mark.slow
def test_reads_are_sized_in_bytes(make_served: MakeServed, store: Store) -> None:
    limits: list[int] = []
    read = store.read

    async def recording_read(run_id: str, after: str | None = None, **options: Any) -> Any:
        limits.append(options.get("limit", 1000))
        return await read(run_id, after, **options)

    store.read = recording_read  # type: ignore[method-assign]
    served = make_served(buffer_size=16 * 1024)
    session = served.session()
    run = served.start(session, n=200, size=4096)
    wait_for(lambda: status(served, run) != "running")
    reading = served.read(f"/sessions/{session}/stream")
    assert len(reading.events) == 201
    assert limits[0] == 16  # nothing known yet: a few
    assert max(limits[1:]) <= 1  # then about a quarter of 16 KiB of 4 KB events per read
