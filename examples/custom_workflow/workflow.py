"""A custom three-step workflow -- ``fetch`` -> ``analyze`` -> ``summarize`` -- written twice.

``report`` is a plain **sync** generator with blocking calls in it (``time.sleep`` stands
for ``requests``, a database driver or a sync SDK). You can hand it to
``EventStreamResponse`` as it is: streamflow advances a sync iterable in a worker thread,
so the blocking calls never stall the event loop or the other requests.

``areport`` is the same workflow as an **async** generator, the form to use when your
calls are awaitable (``httpx``, ``asyncpg``, an async SDK).

Both yield ``StepStart(step, index=i, total=n)`` for progress, plain ``str`` for text
(each becomes a ``delta`` event) and ``StepEnd(step, output=...)`` with a JSON result.
``report(..., fail=True)`` raises in the middle, to show what a client sees then.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Final

import anyio
from pydantic import JsonValue

from streamflow import Event, StepEnd, StepStart

__all__ = ["CORPUS", "DEFAULT_DELAY", "STEPS", "Document", "areport", "report"]

DEFAULT_DELAY: Final = 0.6
"""Seconds each blocking call takes; every streamed word of the summary takes 1/20 of it."""

STEPS: Final = ("fetch", "analyze", "summarize")


@dataclass(frozen=True)
class Document:
    title: str
    text: str


CORPUS: Final = (
    Document(
        "Server-Sent Events",
        "Server-Sent Events stream text from a server to a browser over one long HTTP response. "
        "Each event is a few lines of text ended by a blank line.",
    ),
    Document(
        "Keep-alive comments",
        "A proxy may close a stream that stays silent. A comment line sent every few seconds "
        "keeps the stream open and is ignored by every client.",
    ),
    Document(
        "Cancellation",
        "When the browser goes away the server should stop the work at once, so the stream "
        "stops spending time and tokens on a reader that left.",
    ),
)

_STOPWORDS: Final = frozenset(
    {"a", "an", "and", "at", "by", "each", "every", "few", "from", "is", "it", "of", "on", "one", "over"}
    | {"so", "that", "the", "to", "when", "which"}
)


def find_documents(topic: str) -> list[Document]:
    """The documents sharing a word with ``topic`` (all of them if none does)."""
    wanted = set(_words(topic))
    found = [doc for doc in CORPUS if wanted & set(_words(doc.text))]
    return found or list(CORPUS)


@dataclass(frozen=True)
class Stats:
    documents: int
    words: int
    top_words: list[str]

    def as_json(self) -> dict[str, JsonValue]:
        return {"documents": self.documents, "words": self.words, "top_words": list(self.top_words)}


def word_stats(documents: list[Document]) -> Stats:
    words = [word for doc in documents for word in _words(doc.text)]
    counts = Counter(word for word in words if word not in _STOPWORDS)
    return Stats(len(documents), len(words), [word for word, _ in counts.most_common(3)])


def summary(topic: str, documents: list[Document]) -> str:
    titles = "\n".join(f"- {doc.title}" for doc in documents)
    return f"Report on {topic!r}.\n\nSources:\n{titles}\n\nIn short: {documents[0].text}"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def report(topic: str, *, delay: float = DEFAULT_DELAY, fail: bool = False) -> Iterator[Event | str]:
    """The workflow as a sync generator: blocking calls are fine here."""
    total = len(STEPS)

    yield StepStart(step="fetch", index=1, total=total)
    time.sleep(delay)  # a blocking call: requests.get(...), a database query...
    documents = find_documents(topic)
    yield f"Found {len(documents)} document{'s' if len(documents) != 1 else ''}.\n"
    yield StepEnd(step="fetch", output={"titles": [doc.title for doc in documents]})

    yield StepStart(step="analyze", index=2, total=total)
    time.sleep(delay)
    if fail:
        # Exception text can hold secrets: by default the client gets a generic error
        # event instead, and the exception goes to the server log with its traceback.
        raise ConnectionError("analytics DB postgres://report:s3cret@db.internal/prod refused the connection")
    stats = word_stats(documents)
    yield f"{stats.words} words; most frequent: {', '.join(stats.top_words)}.\n"
    yield StepEnd(step="analyze", output=stats.as_json())

    yield StepStart(step="summarize", index=3, total=total)
    text = summary(topic, documents)
    for word in re.findall(r"\S+\s*|\s+", text):
        time.sleep(delay / 20)  # a sync LLM client producing the next token
        yield word
    yield StepEnd(step="summarize", output={"characters": len(text)})


async def areport(topic: str, *, delay: float = DEFAULT_DELAY) -> AsyncIterator[Event | str]:
    """The same workflow as an async generator: await your calls instead of blocking."""
    total = len(STEPS)

    yield StepStart(step="fetch", index=1, total=total)
    await anyio.sleep(delay)  # an awaited call: await http.get(...), await db.fetch(...)
    documents = find_documents(topic)
    yield f"Found {len(documents)} document{'s' if len(documents) != 1 else ''}.\n"
    yield StepEnd(step="fetch", output={"titles": [doc.title for doc in documents]})

    yield StepStart(step="analyze", index=2, total=total)
    await anyio.sleep(delay)
    stats = word_stats(documents)
    yield f"{stats.words} words; most frequent: {', '.join(stats.top_words)}.\n"
    yield StepEnd(step="analyze", output=stats.as_json())

    yield StepStart(step="summarize", index=3, total=total)
    text = summary(topic, documents)
    for word in re.findall(r"\S+\s*|\s+", text):
        await anyio.sleep(delay / 20)  # an async LLM client producing the next token
        yield word
    yield StepEnd(step="summarize", output={"characters": len(text)})
