"""Encoding throughput: one delta event into the bytes of one SSE frame, in-process.

Every contender turns the same tokens into a frame whose data is
``{"type": "delta", "value": token}``; the output of each is decoded and checked
before it is timed. Time is this process's CPU time (``time.process_time()``), so
other processes taking the CPU away do not count; rounds of all contenders are
interleaved and the best round of each is reported.

Run ``python benchmarks/encode.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from _common import Noise, machine, make_tokens, table, targets_heading, verdict
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from streamflow import Delta, JSONEncoder, SSEDecoder

TARGET_RATIO = 3.0
TOKENS = 2000  # distinct tokens, cycled through by every round


@dataclass(frozen=True)
class Settings:
    rounds: int
    round_seconds: float
    quick: bool = False


FULL = Settings(rounds=7, round_seconds=0.25)
QUICK = Settings(rounds=2, round_seconds=0.02, quick=True)

# An encoder takes the batch's tokens and the same tokens as pre-built Delta events and
# returns the frames (so that the frames can be checked; the timed loop discards them).
Frames = list[bytes]


@dataclass(frozen=True)
class Contender:
    label: str
    encode: Callable[[list[str], list[Delta]], Frames]


def hand_rolled(tokens: list[str], events: list[Delta]) -> Frames:
    dumps = json.dumps
    return [f"data: {dumps({'type': 'delta', 'value': token})}\n\n".encode() for token in tokens]


def streamflow_prebuilt(tokens: list[str], events: list[Delta]) -> Frames:
    encode = JSONEncoder().encode
    return [encode(event) for event in events]


def streamflow_building(tokens: list[str], events: list[Delta]) -> Frames:
    encode = JSONEncoder().encode
    return [encode(Delta(value=token)) for token in tokens]


def sse_starlette(tokens: list[str], events: list[Delta]) -> Frames:
    dumps = json.dumps
    return [ServerSentEvent(data=dumps({"type": "delta", "value": token})).encode() for token in tokens]


# FastAPI encodes the items of an ``EventSourceResponse`` generator in a closure inside
# ``fastapi.routing.get_request_handler`` (``_serialize_sse_item``); the two functions
# below are its two paths for a plain item, line for line (FastAPI 0.165).


class DeltaItem(BaseModel):
    type: Literal["delta"] = "delta"
    value: str


async def _typed_endpoint() -> AsyncIterable[DeltaItem]:
    yield DeltaItem(value="")


_ITEM_FIELD: Any = APIRoute("/", _typed_endpoint, response_class=EventSourceResponse).stream_item_field


def fastapi_typed(tokens: list[str], events: list[Delta]) -> Frames:
    """An endpoint annotated ``-> AsyncIterable[DeltaItem]`` yielding ``DeltaItem``s."""
    field = _ITEM_FIELD
    frames = []
    for token in tokens:
        value, _errors = field.validate(DeltaItem(value=token), {}, loc=("response",))
        data = field.serialize_json(
            value,
            include=None,
            exclude=None,
            by_alias=True,
            exclude_unset=False,
            exclude_defaults=False,
            exclude_none=False,
        )
        frames.append(format_sse_event(data_str=data.decode("utf-8")))
    return frames


def _normalize_non_finite_floats(data: Any) -> Any:
    # A copy of fastapi.routing._normalize_non_finite_floats, which is private.
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _normalize_non_finite_floats(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_normalize_non_finite_floats(value) for value in data]
    return data


def fastapi_dict(tokens: list[str], events: list[Delta]) -> Frames:
    """An endpoint without a return annotation yielding plain dicts."""
    frames = []
    for token in tokens:
        item = {"type": "delta", "value": token}
        data = json.dumps(_normalize_non_finite_floats(jsonable_encoder(item))).encode("utf-8")
        frames.append(format_sse_event(data_str=data.decode("utf-8")))
    return frames


HAND_ROLLED = Contender('hand-rolled f"data: {json.dumps(x)}\\n\\n".encode()', hand_rolled)
STREAMFLOW_PREBUILT = Contender(
    "streamflow JSONEncoder().encode(event), events pre-built", streamflow_prebuilt
)
STREAMFLOW_BUILDING = Contender("streamflow JSONEncoder().encode(Delta(value=token))", streamflow_building)
CONTENDERS = (
    HAND_ROLLED,
    STREAMFLOW_PREBUILT,
    STREAMFLOW_BUILDING,
    Contender("sse-starlette ServerSentEvent(data=json.dumps(x)).encode()", sse_starlette),
    Contender("fastapi.sse, typed item (DeltaItem model)", fastapi_typed),
    Contender("fastapi.sse, untyped dict (jsonable_encoder)", fastapi_dict),
)


def check(contender: Contender, tokens: list[str], events: list[Delta]) -> None:
    """Every frame must decode to exactly one event carrying the token's delta."""
    for token, frame in zip(tokens, contender.encode(tokens, events), strict=True):
        decoded = SSEDecoder().feed(frame)
        if len(decoded) != 1 or json.loads(decoded[0].data) != {"type": "delta", "value": token}:
            raise AssertionError(f"{contender.label}: {frame!r} is not the delta of {token!r}")


def measure(contenders: Sequence[Contender], settings: Settings) -> dict[str, float]:
    """Best events/s of each contender over interleaved rounds."""
    tokens = make_tokens(TOKENS)
    events = [Delta(value=token) for token in tokens]
    for contender in contenders:
        check(contender, tokens, events)
    best = dict.fromkeys((c.label for c in contenders), 0.0)
    for _ in range(settings.rounds):
        for contender in contenders:
            encode = contender.encode
            batches = 0
            started = time.process_time()
            while (elapsed := time.process_time() - started) < settings.round_seconds:
                encode(tokens, events)
                batches += 1
            best[contender.label] = max(best[contender.label], batches * len(tokens) / elapsed)
    return best


def report(rates: dict[str, float], settings: Settings) -> str:
    base = rates[HAND_ROLLED.label]
    rows = [
        [label, f"{rate:,.0f}", f"{1e9 / rate:,.0f}", f"{rate / base:.2f}x"] for label, rate in rates.items()
    ]
    return "\n".join(
        [
            table(
                f"Encoding: delta events/s, {TOKENS:,} tokens of 1-8 words (best of {settings.rounds} rounds)",
                ["contender", "events/s", "ns/event", "vs hand-rolled"],
                rows,
            ),
            targets_heading(settings.quick),
            "",
            verdict(
                "streamflow (events pre-built) / hand-rolled",
                rates[STREAMFLOW_PREBUILT.label] / base,
                TARGET_RATIO,
                at_least=True,
            ),
            verdict(
                "streamflow (building the Delta) / hand-rolled",
                rates[STREAMFLOW_BUILDING.label] / base,
                TARGET_RATIO,
                at_least=True,
            ),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None, *, header: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (short rounds)")
    args = parser.parse_args(argv)
    if header:
        print(f"Machine: {machine()}\n")
    noise = Noise()
    settings = QUICK if args.quick else FULL
    print(report(measure(CONTENDERS, settings), settings))
    print(f"During this benchmark, {noise.report()}.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
