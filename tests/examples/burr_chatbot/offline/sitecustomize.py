"""Loaded by Python at start-up in the example's process (``PYTHONPATH`` points here): any
connection beyond the loopback interface is refused, and reported on stderr (the example's
log), which the tests read. The Burr chatbot must run offline."""

from __future__ import annotations

import socket
import sys
from typing import Any

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
        print(f"offline guard: refused a connection to {address!r}", file=sys.stderr, flush=True)
        raise OSError(f"offline guard: the example must not connect to {address!r}")


def _guarded_connect(sock: socket.socket, address: Any) -> None:
    _check(sock, address)
    _connect(sock, address)


def _guarded_connect_ex(sock: socket.socket, address: Any) -> int:
    _check(sock, address)
    return _connect_ex(sock, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
print("offline guard: on", file=sys.stderr, flush=True)
