"""One conversion of framework values (tool arguments and outputs, step results) to JSON."""

from __future__ import annotations

import math
from typing import Any

from pydantic import JsonValue
from pydantic_core import to_jsonable_python

__all__ = ["json_value"]


def json_value(value: Any) -> JsonValue:
    """``value`` as JSON data for an event field.

    Pydantic models (LangChain messages, ADK and Agno objects), dataclasses, dates, sets,
    enums... are converted as pydantic converts them; a float JSON cannot carry (NaN,
    infinity) becomes ``None``, as ``JSON.stringify`` does; anything else is ``str()``.
    Never raises: a value nothing can convert is ``str(value)``.
    """
    try:
        return _finite(to_jsonable_python(value, fallback=str))
    except Exception:
        return str(value)


def _finite(value: Any) -> JsonValue:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value  # type: ignore[no-any-return]
