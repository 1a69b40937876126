from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from hypothesis import HealthCheck, settings
from starlette.types import ASGIApp

# Two cores shared with servers and browsers: time is no measure of a test here.
settings.register_profile("streamflow", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("streamflow")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(app: ASGIApp, *, lifespan: str = "off") -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1 in a thread; yield its base URL and
    the server (``lifespan="on"`` for apps that own something, like a session hub)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def serve(app: ASGIApp, *, lifespan: str = "off") -> Iterator[str]:
    """Serve ``app`` (see :func:`running`); yield its base URL."""
    with running(app, lifespan=lifespan) as (url, _server):
        yield url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI (``CI=true``) a skipped test fails: the real-framework, real-server and
    real-client tests must run there, never be skipped for a missing tool."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true":
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"
