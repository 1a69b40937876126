"""A real ``redis-server`` (the Debian package) for the tests, on 127.0.0.1 in a temp dir.

Never skipped: a test that needs Redis fails when ``redis-server`` is missing (``.ci/run``
installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import free_port


@dataclass
class RedisServer:
    """One ``redis-server`` process: ``url``, ``kill()`` (SIGKILL), ``restart()``,
    ``pause(seconds)`` (SIGSTOP then SIGCONT), ``stop()``.

    ``persistent=True`` turns the append-only file on with an fsync per write
    (``--appendonly yes --appendfsync always``): every acknowledged write survives a
    SIGKILL, and :meth:`restart` (on the same port and directory) reloads it.
    """

    port: int = field(default_factory=free_port)
    directory: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="streamflow-redis-"))
    process: subprocess.Popen[bytes] | None = None
    persistent: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
        ]
        if self.persistent:
            command += ["--appendfsync", "always"]
        command += ["--dir", self.directory, "--daemonize", "no", "--loglevel", "warning"]
        log = open(os.path.join(self.directory, "redis.log"), "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log"), encoding="utf-8", errors="replace") as file:
                return file.read()[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: Redis goes away at once, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self, down: float = 0.0) -> None:
        """SIGKILL, then (``down`` seconds later) start again on the same port and directory
        (with ``persistent``, the data comes back from the append-only file)."""
        self.kill()
        time.sleep(down)
        self.start()

    def pause(self, seconds: float) -> None:
        """SIGSTOP for ``seconds``, then SIGCONT: Redis hangs (connections stay open, the
        kernel still accepts new ones) and then carries on, as in a long GC-like stall."""
        assert self.process is not None
        assert self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


_shared: RedisServer | None = None


def shared_redis(config: pytest.Config) -> RedisServer:
    """The test session's Redis: started on first use, stopped when the session ends."""
    global _shared
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        server = RedisServer().start()
        _shared = server
        config.add_cleanup(server.stop)
    return _shared
