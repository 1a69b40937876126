"""What the proxy keeps of each request: the prompt and every event it sent, in memory.

The events are recorded by :class:`RecordingEncoder`, the encoder of the response: it
sees exactly the events that go on the wire, in order, including the ``error`` and
``done`` that streamflow adds itself. A transcript is therefore what the client was sent,
not what the proxy meant to send.

:class:`TranscriptStore` keeps the last ``keep`` transcripts in a dict. To keep them for
longer, or across replicas, give it the same three methods over a database.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from streamflow import Done, Error, Event, JSONEncoder

__all__ = ["RecordingEncoder", "Status", "Transcript", "TranscriptStore"]

Status = Literal["streaming", "complete", "failed", "cancelled"]


@dataclass
class Transcript:
    id: str
    prompt: str
    started_at: float = field(default_factory=time.time)
    events: list[Event] = field(default_factory=list)
    ended: bool = False  # the response is over (set after a disconnect too)

    @property
    def status(self) -> Status:
        """``complete`` or ``failed`` (an ``error`` was sent) once ``done`` was sent;
        ``cancelled`` if the response ended without it (the client left)."""
        if self.events and isinstance(self.events[-1], Done):
            return "failed" if any(isinstance(event, Error) for event in self.events) else "complete"
        return "cancelled" if self.ended else "streaming"

    def end(self) -> None:
        self.ended = True

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "status": self.status,
            "started_at": self.started_at,
            "events": len(self.events),
        }

    def to_json(self) -> dict[str, Any]:
        """The summary, with ``events`` as the wire JSON of each event."""
        return {**self.summary(), "events": [json.loads(event.to_json()) for event in self.events]}


class TranscriptStore:
    """The last ``keep`` transcripts, oldest first."""

    def __init__(self, keep: int = 1000) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep!r}")
        self.keep = keep
        self._transcripts: OrderedDict[str, Transcript] = OrderedDict()

    def create(self, prompt: str) -> Transcript:
        transcript = Transcript(id=uuid.uuid4().hex, prompt=prompt)
        self._transcripts[transcript.id] = transcript
        while len(self._transcripts) > self.keep:
            self._transcripts.popitem(last=False)
        return transcript

    def get(self, transcript_id: str) -> Transcript | None:
        return self._transcripts.get(transcript_id)

    def all(self) -> list[Transcript]:
        return list(self._transcripts.values())


class RecordingEncoder(JSONEncoder):
    """``JSONEncoder`` frames, and each event appended to ``transcript`` once encoded."""

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript

    def encode(self, event: Event, *, id: str | None = None) -> bytes:  # noqa: A002
        data = super().encode(event, id=id)
        self.transcript.events.append(event)  # after encoding: an event that failed was not sent
        return data
