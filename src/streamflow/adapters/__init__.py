"""Sources: framework output in, :data:`~streamflow.events.Event` stream out.

Each framework adapter lives in its own module and imports its framework there, so
``import streamflow`` never pays for a framework you do not use; ``from
streamflow.adapters import from_burr`` imports Burr only then, and raises an
``ImportError`` naming the extra to install when it is missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamflow.adapters.iterable import (
    ErrorHandler,
    InvalidItemError,
    Item,
    Source,
    SourceAbortedError,
    expose_exception,
    from_iterable,
    hide_exception,
)

if TYPE_CHECKING:
    from streamflow.adapters.adk import from_adk
    from streamflow.adapters.agno import from_agno
    from streamflow.adapters.burr import from_burr
    from streamflow.adapters.langgraph import from_langgraph

__all__ = [
    "ErrorHandler",
    "InvalidItemError",
    "Item",
    "Source",
    "SourceAbortedError",
    "expose_exception",
    "from_adk",
    "from_agno",
    "from_burr",
    "from_iterable",
    "from_langgraph",
    "hide_exception",
]

_LAZY = {"from_adk": "adk", "from_agno": "agno", "from_burr": "burr", "from_langgraph": "langgraph"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamflow.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"streamflow.adapters.{module}"), name)
