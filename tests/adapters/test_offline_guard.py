from __future__ import annotations

import socket

import pytest


@pytest.mark.usefixtures("loopback_only")
def test_the_guard_refuses_anything_but_loopback() -> None:
    with socket.socket() as sock, pytest.raises(OSError, match="must stay offline"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: refused before any packet is sent
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())  # loopback is allowed
