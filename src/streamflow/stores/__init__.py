"""Stores behind :class:`~streamflow.hub.StreamHub`: one small protocol, several backends."""

from __future__ import annotations

from streamflow.stores.base import (
    InvalidEventIdError,
    ReplayUnavailableError,
    RunFinishedError,
    RunInfo,
    RunStatus,
    SessionInfo,
    Store,
    StoredEvent,
    StoreError,
    UnknownRunError,
    wire_json,
)
from streamflow.stores.memory import MemoryStore

__all__ = [
    "InvalidEventIdError",
    "MemoryStore",
    "ReplayUnavailableError",
    "RunFinishedError",
    "RunInfo",
    "RunStatus",
    "SessionInfo",
    "Store",
    "StoreError",
    "StoredEvent",
    "UnknownRunError",
    "wire_json",
]
