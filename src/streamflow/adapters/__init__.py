"""Sources: framework output in, :data:`~streamflow.events.Event` stream out.

Framework adapters live in their own modules and import their framework lazily, so
``import streamflow`` never pays for a framework you do not use.
"""

from streamflow.adapters.iterable import (
    ErrorHandler,
    InvalidItemError,
    Item,
    Source,
    expose_exception,
    from_iterable,
    hide_exception,
)

__all__ = [
    "ErrorHandler",
    "InvalidItemError",
    "Item",
    "Source",
    "expose_exception",
    "from_iterable",
    "hide_exception",
]
