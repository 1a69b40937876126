"""The one conversion of framework values to JSON that every adapter uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from pydantic import BaseModel

from streamflow.adapters._json import json_value


class Color(Enum):
    RED = "red"


class Hit(BaseModel):
    score: float


@dataclass
class Point:
    x: int


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_framework_values_become_json() -> None:
    value = {
        "when": datetime(2024, 7, 25, tzinfo=UTC),
        "hits": [Hit(score=0.5)],
        "point": Point(1),
        "color": Color.RED,
        "tags": ("a", "b"),
        "other": Opaque(),
    }
    assert json_value(value) == {
        "when": "2024-07-25T00:00:00Z",
        "hits": [{"score": 0.5}],
        "point": {"x": 1},
        "color": "red",
        "tags": ["a", "b"],
        "other": "opaque!",
    }


def test_floats_json_cannot_carry_become_null_as_in_javascript() -> None:
    assert json_value({"score": math.nan, "max": math.inf, "ok": [1.5, -math.inf]}) == {
        "score": None,
        "max": None,
        "ok": [1.5, None],
    }


def test_a_value_nothing_can_convert_is_its_str() -> None:
    class Broken:
        def __str__(self) -> str:
            return "broken"

        @property
        def __dict__(self) -> dict[str, object]:  # type: ignore[override]
            raise RuntimeError("no")

    assert json_value({(1, 2): "tuple key"}) == {"1,2": "tuple key"}  # pydantic joins tuple keys
    assert json_value(Broken()) == "broken"
