"""The hub through a real uvicorn: resume, sessions, policies, bad input, shutdown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from streamflow import Delta, Done, Error, NamedEventEncoder, VercelAIEncoder, parse_event
from streamflow.hub import StreamHub
from streamflow.sse import SSEDecoder
from streamflow.stores import MemoryStore, SessionInfo
from tests.conftest import free_port
from tests.hub.conftest import Served, deltas

MakeServed = Callable[..., Served]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- resume -----------------------------------------------------------------------------


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_resume_loses_and_duplicates_nothing(make_served_once: Served, data: st.DataObject) -> None:
    served = make_served_once
    count = data.draw(st.integers(0, 40), label="events")
    delay = data.draw(st.sampled_from(["0", "0.002"]), label="delay")
    cut = data.draw(st.integers(0, count), label="cut")  # events read before the disconnect
    by_run = data.draw(st.booleans(), label="by_run")
    session = served.session()
    run = served.start(session, n=count, delay=delay, prefix="t")
    path = f"/runs/{run}/stream" if by_run else f"/sessions/{session}/stream"
    first = served.read(path, stop_after=cut)
    assert len(first.pairs) == cut
    second = served.read(path, last_id=first.last_id)
    assert second.ended
    assert first.events + second.events == [*deltas("t", count), Done()]
    ids = [event_id for event_id, _ in first.pairs + second.pairs]
    assert len(set(ids)) == len(ids), ids
    assert all(ids), ids


@pytest.fixture
def make_served_once(make_served: MakeServed) -> Served:
    return make_served(on_last_reader_gone="finish")


def test_frames_carry_ids_and_the_response_starts_with_retry(make_served: MakeServed) -> None:
    served = make_served(retry=2500)
    session = served.session()
    served.start(session, n=3)
    reading = served.read(f"/sessions/{session}/stream")
    assert reading.raw.startswith(b"retry: 2500\n\n")
    frames = [block for block in reading.raw.split(b"\n\n")[1:] if block]
    assert len(frames) == 4
    assert all(re.match(rb"id: [A-Za-z0-9_-]+\.[^\n]+\ndata: ", f) for f in frames)
    assert reading.events == [*deltas("", 3), Done()]


def test_query_parameter_resumes_like_the_header(make_served: MakeServed) -> None:
    served = make_served()
    session = served.session()
    served.start(session, n=5)
    first = served.read(f"/sessions/{session}/stream", stop_after=2)
    assert first.last_id is not None
    rest = served.read(f"/sessions/{session}/stream", query={"last_event_id": first.last_id})
    assert rest.events == [*deltas("", 5)[2:], Done()]


def test_several_readers_of_one_live_run_see_the_same_events(make_served: MakeServed) -> None:
    served = make_served()
    session = served.session()
    served.start(session, n=30, delay="0.005")
    a = served.read(f"/sessions/{session}/stream")
    b = served.read(f"/sessions/{session}/stream")
    assert a.pairs == b.pairs
    assert a.events == [*deltas("", 30), Done()]


# --- sessions -----------------------------------------------------------------------------


def test_sessions_are_isolated(make_served: MakeServed) -> None:
    served = make_served()
    sessions = [served.session() for _ in range(4)]
    assert len(set(sessions)) == 4
    assert all(len(s) >= 32 for s in sessions)
    for index, session in enumerate(sessions):
        served.start(session, n=20, delay="0.001", prefix=f"s{index}-")
    for index, session in enumerate(sessions):
        reading = served.read(f"/sessions/{session}/stream")
        assert reading.events == [*deltas(f"s{index}-", 20), Done()]


def test_busy_reject_refuses_a_second_message(make_served: MakeServed) -> None:
    served = make_served(busy="reject")
    session = served.session()
    served.start(session, endless="1", delay="0.01", name="first")
    assert served.post(session, n=1).status_code == 409
    other = served.session()
    assert served.post(other, n=1).status_code == 202  # only that session is busy


def test_busy_queue_runs_messages_one_after_the_other(make_served: MakeServed) -> None:
    served = make_served(busy="queue", on_last_reader_gone="finish")
    session = served.session()
    first = served.start(session, n=20, delay="0.01", prefix="a")
    second = served.start(session, n=3, prefix="b")  # waits for the first run to end
    assert first != second
    one = served.read(f"/runs/{first}/stream")
    assert one.events == [*deltas("a", 20), Done()]
    # The session's stream moves on to the next run after a reconnection past the Done.
    session_first = served.read(f"/sessions/{session}/stream", last_id=one.last_id)
    assert session_first.events == [*deltas("b", 3), Done()]


def test_session_stream_waits_for_the_next_run(make_served: MakeServed) -> None:
    served = make_served()
    session = served.session()
    served.start(session, n=2, prefix="x")
    done = served.read(f"/sessions/{session}/stream")
    assert done.events == [*deltas("x", 2), Done()]
    result: list[list[object]] = []
    reader = threading.Thread(
        target=lambda: result.append(
            list(served.read(f"/sessions/{session}/stream", last_id=done.last_id).events)
        )
    )
    reader.start()
    time.sleep(0.3)
    served.start(session, n=2, prefix="y")
    reader.join(10)
    assert result == [[*deltas("y", 2), Done()]]


def test_unknown_session_and_run_are_404(make_served: MakeServed) -> None:
    served = make_served()
    assert served.read("/sessions/nope/stream").status == 404
    assert served.read("/runs/nope/stream").status == 404
    assert served.post("nope", n=1).status_code == 404


def test_authorize_hook_refuses_a_reader_as_if_the_session_did_not_exist(make_served: MakeServed) -> None:
    seen: list[SessionInfo] = []

    def authorize(request: Request, session: SessionInfo) -> bool:
        seen.append(session)
        return request.headers.get("x-user") == session.owner

    served = make_served(authorize=authorize)
    session = served.session(owner="owner", metadata={"plan": "pro"})
    served.start(session, n=2)
    refused = served.http.get(f"{served.url}/sessions/{session}/stream")
    unknown = served.http.get(f"{served.url}/sessions/{'x' * len(session)}/stream")
    # No oracle: a session the caller may not read and one that does not exist look the same.
    assert (refused.status_code, refused.headers["content-type"], refused.content) == (
        unknown.status_code,
        unknown.headers["content-type"],
        unknown.content,
    )
    assert refused.status_code == 404
    assert seen[0] == SessionInfo(session, "owner", {"plan": "pro"}, seen[0].created_at)
    assert seen[0].created_at > 0
    served.http.headers["x-user"] = "owner"
    assert served.read(f"/sessions/{session}/stream").events == [*deltas("", 2), Done()]


def test_an_authorize_hook_that_raises_refuses_like_an_unknown_session(make_served: MakeServed) -> None:
    def authorize(request: Request, session: SessionInfo) -> bool:
        raise RuntimeError("the user service is down")

    served = make_served(authorize=authorize)
    session = served.session(owner="owner")
    served.start(session, n=1)
    raised = served.http.get(f"{served.url}/sessions/{session}/stream")
    unknown = served.http.get(f"{served.url}/sessions/{'x' * len(session)}/stream")
    assert (
        (raised.status_code, raised.content) == (unknown.status_code, unknown.content) == (404, b"Not Found")
    )


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_id", "code"),
    [
        (lambda run, other: "garbage", "invalid_event_id"),
        (lambda run, other: f"{run}.", "invalid_event_id"),
        (lambda run, other: f"{run}.abc", "invalid_event_id"),
        (lambda run, other: f"{run}.-1", "invalid_event_id"),
        (lambda run, other: f"{run}.999999", "invalid_event_id"),  # never issued
        (lambda run, other: f"{run}.1\u00e9", "invalid_event_id"),
        # Another session's run and a run that does not exist: the same answer (no oracle).
        (lambda run, other: f"{other}.1", "replay_unavailable"),
        (lambda run, other: "unknownrun.1", "replay_unavailable"),
    ],
)
def test_bad_last_event_id_gets_an_error_and_changes_nothing(
    make_served: MakeServed, make_id: Callable[[str, str], str], code: str
) -> None:
    served = make_served()
    session, stranger = served.session(), served.session()
    run = served.start(session, n=3)
    other = served.start(stranger, n=3)
    bad = served.read(f"/sessions/{session}/stream", last_id=make_id(run, other))
    assert bad.status == 200
    assert bad.ended
    assert [type(e) for e in bad.events] == [Error, Done]
    error = bad.events[0]
    assert isinstance(error, Error)
    assert error.code == code
    assert [event_id for event_id, _ in bad.pairs] == ["", ""]  # the browser starts afresh
    # Nothing changed: both sessions read whole.
    assert served.read(f"/sessions/{session}/stream").events == [*deltas("", 3), Done()]
    assert served.read(f"/sessions/{stranger}/stream").events == [*deltas("", 3), Done()]


def test_a_foreign_id_on_a_run_stream_is_refused(make_served: MakeServed) -> None:
    served = make_served()
    session = served.session()
    first = served.start(session, n=2)
    served.read(f"/runs/{first}/stream")
    second = served.start(session, n=2)
    bad = served.read(f"/runs/{second}/stream", last_id=f"{first}.1")
    assert isinstance(bad.events[0], Error)
    assert bad.events[0].code == "replay_unavailable"


# --- retention ------------------------------------------------------------------------------


def test_resuming_before_the_retained_events_is_replay_unavailable(make_served: MakeServed) -> None:
    served = make_served(store=MemoryStore(max_events_per_run=5))
    session = served.session()
    run = served.start(session, n=20)
    # (an id the run has not issued yet is refused as never issued: wait for the run's end)
    wait_until(lambda: served.read(f"/runs/{run}/stream", last_id=f"{run}.20").events == [Done()])
    whole = served.read(f"/runs/{run}/stream", last_id=f"{run}.16")
    assert whole.events == [*deltas("", 20)[16:], Done()]
    gone = served.read(f"/runs/{run}/stream", last_id=f"{run}.3")
    assert [type(e) for e in gone.events] == [Error, Done]
    assert isinstance(gone.events[0], Error)
    assert gone.events[0].code == "replay_unavailable"


def test_a_reconnection_after_a_runs_done_gets_its_done_again(make_served: MakeServed) -> None:
    """A client that does not close on ``done`` reconnects with the Done's id: it gets that
    Done again (same id), not an empty 200 after which EventSource would retry for ever."""
    served = make_served()
    session = served.session()
    run = served.start(session, n=3)
    first = served.read(f"/runs/{run}/stream")
    assert first.events == [*deltas("", 3), Done()]
    assert first.last_id == f"{run}.4"
    again = served.read(f"/runs/{run}/stream", last_id=first.last_id)
    assert again.pairs == [(f"{run}.4", Done())]
    assert again.ended


def test_an_expired_run_is_replay_unavailable(make_served: MakeServed) -> None:
    served = make_served(store=MemoryStore(retention=0.3))
    session = served.session()
    run = served.start(session, n=3)
    first = served.read(f"/sessions/{session}/stream", stop_after=1)
    wait_until(lambda: served.read(f"/runs/{run}/stream").status == 404)
    gone = served.read(f"/sessions/{session}/stream", last_id=first.last_id)
    assert isinstance(gone.events[0], Error)
    assert gone.events[0].code == "replay_unavailable"


# --- the last-reader policies -----------------------------------------------------------


def test_grace_cancels_the_run_after_the_grace_period(make_served: MakeServed) -> None:
    served = make_served(on_last_reader_gone="grace", grace=0.6)
    session = served.session()
    run = served.start(session, endless="1", delay="0.01", name="g")
    first = served.read(f"/sessions/{session}/stream", stop_after=3)
    left = time.monotonic()
    finalized = served.control.event(served.control.finalized, "g")
    assert not finalized.wait(0.3), "cancelled before the grace period"
    assert finalized.wait(5), "the source's finally never ran"
    assert time.monotonic() - left >= 0.5
    rest = served.read(f"/runs/{run}/stream", last_id=first.last_id)
    assert isinstance(rest.events[-2], Error)
    assert rest.events[-2].code == "cancelled"
    assert rest.events[-1] == Done()


def test_grace_is_reset_by_a_returning_reader(make_served: MakeServed) -> None:
    served = make_served(on_last_reader_gone="grace", grace=0.8)
    session = served.session()
    served.start(session, n=150, delay="0.01", name="r")
    first = served.read(f"/sessions/{session}/stream", stop_after=2)
    time.sleep(0.4)
    rest = served.read(f"/sessions/{session}/stream", last_id=first.last_id)
    assert first.events + rest.events == [*deltas("", 150), Done()]


def test_cancel_cancels_at_once(make_served: MakeServed) -> None:
    served = make_served(on_last_reader_gone="cancel", grace=30)
    session = served.session()
    served.start(session, endless="1", delay="0.01", name="c")
    served.read(f"/sessions/{session}/stream", stop_after=2)
    assert served.control.event(served.control.finalized, "c").wait(3)


def test_finish_keeps_running_without_readers(make_served: MakeServed) -> None:
    served = make_served(on_last_reader_gone="finish", grace=0.1)
    session = served.session()
    served.start(session, n=60, delay="0.01", name="f")
    first = served.read(f"/sessions/{session}/stream", stop_after=1)
    assert served.control.event(served.control.finalized, "f").wait(10)
    rest = served.read(f"/sessions/{session}/stream", last_id=first.last_id)
    assert first.events + rest.events == [*deltas("", 60), Done()]


# --- shutdown ----------------------------------------------------------------------------------


def test_shutdown_ends_open_streams_without_done(make_served: MakeServed) -> None:
    served = make_served()
    session = served.session()
    served.start(session, endless="1", delay="0.01", name="s")
    readings = []
    reader = threading.Thread(target=lambda: readings.append(served.read(f"/sessions/{session}/stream")))
    reader.start()
    time.sleep(0.3)
    served.http.post(f"{served.url}/shutdown")
    reader.join(10)
    assert not reader.is_alive(), "the stream did not end on shutdown"
    (reading,) = readings
    assert reading.ended, "the stream ended"
    assert reading.events
    assert all(type(event) is Delta for event in reading.events), "no done, no error: a browser reconnects"
    assert served.control.event(served.control.finalized, "s").wait(5), "the run was cancelled"


def test_start_on_a_hub_that_is_not_running_raises() -> None:
    import anyio

    from streamflow.hub import HubClosedError

    async def main() -> None:
        hub = StreamHub()
        with pytest.raises(HubClosedError):
            await hub.start("x", ["a"])

    anyio.run(main)


def test_sigterm_under_uvicorn_ends_open_streams_without_done() -> None:
    """A real ``uvicorn`` process: SIGTERM ends the open stream at once (no done, so a
    browser reconnects) and the server exits, though a run was still going."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.hub._sigterm_app:app", "--port", str(port)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=20) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    session = http.post(f"{url}/sessions").json()["session"]
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.05)
            http.post(f"{url}/sessions/{session}/messages", params={"endless": "1", "delay": "0.01"})
            decoder = SSEDecoder()
            events = []
            sent = 0.0
            with http.stream("GET", f"{url}/sessions/{session}/stream") as response:
                for chunk in response.iter_raw():
                    events += [parse_event(sse.data) for sse in decoder.feed(chunk)]
                    if len(events) >= 5 and process.poll() is None and not sent:
                        process.send_signal(signal.SIGTERM)
                        sent = time.monotonic()
            assert time.monotonic() - sent < 5, "the stream outlived the shutdown"
        assert all(type(event) is Delta for event in events), events[-3:]
        assert process.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_named_event_encoder_resumes_exactly(make_served: MakeServed) -> None:
    served = make_served(encoder=NamedEventEncoder)
    session = served.session()
    served.start(session, n=10)
    first = served.read(f"/sessions/{session}/stream", stop_after=4)
    rest = served.read(f"/sessions/{session}/stream", last_id=first.last_id)
    assert first.events + rest.events == [*deltas("", 10), Done()]
    assert b"event: delta\n" in first.raw


def test_a_stateful_encoder_starts_a_fresh_session_on_resume(make_served: MakeServed) -> None:
    served = make_served(encoder=VercelAIEncoder)
    session = served.session()
    served.start(session, n=6)
    whole = served.http.get(f"{served.url}/sessions/{session}/stream")
    assert whole.headers["x-vercel-ai-ui-message-stream"] == "v1"
    ids = re.findall(rb"^id: (.+)$", whole.content, re.MULTILINE)
    assert len(ids) == 7  # one id per event, on the last frame written for it
    resumed = served.http.get(
        f"{served.url}/sessions/{session}/stream", headers={"last-event-id": ids[2].decode()}
    )
    assert re.findall(rb"^id: (.+)$", resumed.content, re.MULTILINE) == ids[3:]
    assert b'"type":"start"' in resumed.content  # a new encoder session
    assert resumed.content.rstrip().endswith(b"data: [DONE]")
