"""A real ``redis-server`` (the Debian package) for the tests, on 127.0.0.1 in a temp dir,
and a real three-master Redis Cluster of them (``redis-cli --cluster create``).

Never skipped: a test that needs Redis fails when ``redis-server`` (or, for the cluster,
``redis-cli``) is missing (``.ci/run`` installs them: the Debian package ``redis-server``
depends on ``redis-tools``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamflow.stores import Store
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
    extra: tuple[str, ...] = ()  # more options, e.g. a cluster node's

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = _binary("redis-server")
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
        command += ["--dir", self.directory, "--daemonize", "no", "--loglevel", "warning", *self.extra]
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


def _binary(name: str) -> str:
    binary = shutil.which(name) or f"/usr/bin/{name}"
    if not os.path.exists(binary):
        raise RuntimeError(f"{name} is not installed (Debian package redis-server, with redis-tools)")
    return binary


@dataclass
class RedisClusterServers:
    """A Redis Cluster of ``masters`` ``redis-server`` processes (no replicas), each in its own
    temp dir, made with ``redis-cli --cluster create``: ``url`` (the store's
    ``redis+cluster://`` URL of its first node), ``ports``, ``stop()``."""

    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterServers:
        cli = _binary("redis-cli")
        try:
            for _ in range(self.masters):
                port = free_port()
                extra = ("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf")
                extra += ("--cluster-port", str(free_port()))  # not port + 10000: it may be taken
                self.nodes.append(RedisServer(port=port, extra=extra).start())
            addresses = [f"127.0.0.1:{port}" for port in self.ports]
            created = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
            deadline = time.monotonic() + 30
            while not all(self._ready(cli, port) for port in self.ports):
                if time.monotonic() > deadline:
                    states = {port: self._info(cli, port) for port in self.ports}
                    raise RuntimeError(f"the cluster did not become ready: {states}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _info(cli: str, port: int) -> str:
        result = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"], capture_output=True, text=True
        )
        return result.stdout

    def _ready(self, cli: str, port: int) -> bool:
        """The node says ``cluster_state:ok``, with every slot served and every node known."""
        info = self._info(cli, port)
        return (
            "cluster_state:ok" in info
            and "cluster_slots_ok:16384" in info
            and f"cluster_known_nodes:{self.masters}" in info
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


_shared_cluster: RedisClusterServers | None = None


def shared_redis_cluster(config: pytest.Config) -> RedisClusterServers:
    """The test session's Redis Cluster: started on first use, stopped when the session ends."""
    global _shared_cluster
    alive = _shared_cluster is not None and all(
        node.process is not None and node.process.poll() is None for node in _shared_cluster.nodes
    )
    if not alive:
        if _shared_cluster is not None:
            _shared_cluster.stop()
        cluster = RedisClusterServers().start()
        _shared_cluster = cluster
        config.add_cleanup(cluster.stop)
    assert _shared_cluster is not None
    return _shared_cluster


def cluster_store_factory(config: pytest.Config) -> Callable[..., Store]:
    """``store_factory``'s ``redis-cluster`` param: RedisStores on the session's cluster,
    each under a fresh key prefix (keyword arguments as for the ``redis`` param)."""
    from streamflow.stores.redis import RedisStore

    url = shared_redis_cluster(config).url
    names = {"retention": "ttl", "max_events_per_run": "maxlen", "session_ttl": "session_ttl"}

    def make(**options: Any) -> Store:
        kept = {names[name]: value for name, value in options.items() if name in names}
        return RedisStore(url, prefix=f"test-{secrets.token_hex(6)}", **kept)

    return make
