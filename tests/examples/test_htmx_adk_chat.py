"""End to end: ``python examples/htmx_adk_chat/app.py`` over real HTTP, then two browsers chatting at once.

The app runs as a user starts it (``--port 0``), with its scripted ADK model. Each test visitor is
an httpx client with its own cookie jar, as each browser has its own cookie. The tests check:

- the page, the visitor cookie, and htmx + htmx-ext-sse served from ``examples/vendor/``;
- a message (``POST /chat``) answers with the turn, whose stream gives exactly the run's
  fragments: the tool call and its result, the text (an answer line break is a real one: a
  multi-line ``data:``, never ``<br/>``), the end, ``done``; with ``run.N`` ids, resumable;
- two visitors chatting at the same time each get exactly their own answer;
- another visitor's session or run gets exactly the answer of an unknown one (404, the same
  bytes: no oracle), and so do messages to them; a visitor without the cookie is refused;
- markup typed by the user, repeated by the model, or passed to the tool is escaped everywhere;
- a message while an answer is streaming is refused with a notice (``busy="reject"``), or waits
  for the answer to end (``--busy queue``);
- in Chromium, two contexts chat at once: each page shows only its own answers, exactly, with the
  tool call; a ``<script>`` in the answer runs nothing; a refused message shows the notice.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamflow.sse import ServerSentEvent, SSEDecoder
from tests.browser import artifact, drive, finished

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

EXAMPLE = "htmx_adk_chat/app.py"
BANNER = "streamflow htmx + ADK chat: "
VENDOR = Path(__file__).resolve().parents[2] / "examples" / "vendor"
DELAY = 0.04  # the scripted model's seconds per chunk: a weather answer streams for about half a second

PARIS = "What is the weather in Paris?"
TOKYO = "weather in Tokyo, please"
CODE = "Show me some code"
XSS = '<script>window.__pwned=1</script> & <img src=x onerror="window.__pwned=2">'

HINT = (
    "I am a scripted model, so I know two things: the weather in Paris, Tokyo or Cairo, "
    "and a code example. Ask me for either."
)
CODE_ANSWER = (
    "Here is a loop that skips the odd numbers:\n\n"
    "```python\n"
    "for n in range(6):\n"
    "    if n % 2:\n"
    "        continue  # odd: skip\n"
    "\n"
    '    print(n, "<", 6)\n'
    "```\n\n"
    "It prints 0, 2 and 4."
)

START = ("step", '<div class="sf-step sf-step-start"><span class="sf-step-name">assistant</span></div>')
END = ("step", '<div class="sf-step sf-step-end"><span class="sf-step-name">assistant</span></div>')
DONE = ("done", "")

# The whole stream of "What is the weather in Paris?", fragment by fragment.
PARIS_STREAM = [
    START,
    (
        "tool",
        '<div class="sf-tool sf-tool-call"><span class="sf-tool-name">get_weather</span>'
        '<pre class="sf-tool-arguments">{\n  &quot;city&quot;: &quot;Paris&quot;\n}</pre></div>',
    ),
    (
        "tool",
        '<div class="sf-tool sf-tool-result"><span class="sf-tool-name">get_weather</span>'
        '<pre class="sf-tool-output">{\n  &quot;city&quot;: &quot;Paris&quot;,\n  &quot;celsius&quot;: 21,\n'
        "  &quot;sky&quot;: &quot;sunny&quot;,\n  &quot;wind_kmh&quot;: 12\n}</pre></div>",
    ),
    ("delta", "In "),
    ("delta", "Paris "),
    ("delta", "it "),
    ("delta", "is "),
    ("delta", "21 "),
    ("delta", "°C, "),
    ("delta", "sunny.\n"),
    ("delta", "Wind: "),
    ("delta", "12 "),
    ("delta", "km/h."),
    END,
    DONE,
]
PARIS_ANSWER = "In Paris it is 21 °C, sunny.\nWind: 12 km/h."
TOKYO_ANSWER = "In Tokyo it is 17 °C, light rain.\nWind: 20 km/h."

NOTICE = '<p class="notice" role="alert">{}</p>\n'
BUSY = "Still answering your previous message. Send this one when the answer is complete."
UNAVAILABLE = "This conversation is not available. Reload the page to start a new one."
NOT_FOUND = '{"detail":"Not Found"}'  # FastAPI's answer to the hub's HTTPException(404)
NO_COOKIE = "Your browser sent no chat cookie. Allow cookies for this site and reload the page."


def words(text: str) -> list[str]:
    """The scripted model's chunks: each word with the whitespace after it."""
    return re.findall(r"\S+\s*|\s+", text)


def weather_stream(city: str, celsius: int, sky: str, wind: int, answer: str) -> list[tuple[str, str]]:
    def pre(css: str, lines: list[str]) -> str:
        return f'<pre class="{css}">' + "\n".join(lines) + "</pre></div>"

    quoted = [f"  &quot;city&quot;: &quot;{city}&quot;"]
    output = [
        *(line + "," for line in quoted),
        f"  &quot;celsius&quot;: {celsius},",
        f"  &quot;sky&quot;: &quot;{sky}&quot;,",
        f"  &quot;wind_kmh&quot;: {wind}",
    ]
    name = '<span class="sf-tool-name">get_weather</span>'
    return [
        START,
        ("tool", f'<div class="sf-tool sf-tool-call">{name}' + pre("sf-tool-arguments", ["{", *quoted, "}"])),
        ("tool", f'<div class="sf-tool sf-tool-result">{name}' + pre("sf-tool-output", ["{", *output, "}"])),
        *(("delta", escape(word)) for word in words(answer)),
        END,
        DONE,
    ]


def text_stream(answer: str) -> list[tuple[str, str]]:
    """The stream of an answer without a tool call: the text, word by word, escaped."""
    return [START, *(("delta", escape(word)) for word in words(answer)), END, DONE]


def test_the_expected_streams_agree() -> None:
    """The literal Paris stream and the builder used for the other cities say the same."""
    assert weather_stream("Paris", 21, "sunny", 12, PARIS_ANSWER) == PARIS_STREAM
    assert "".join(data for kind, data in PARIS_STREAM if kind == "delta") == PARIS_ANSWER


# --- the app and its visitors ------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(start_example: Callable[..., tuple[str, Path]]) -> str:
    url, _ = start_example(EXAMPLE, "--port", "0", "--delay", str(DELAY), banner=BANNER)
    return url


@pytest.fixture(scope="module")
def queue_chat(start_example: Callable[..., tuple[str, Path]]) -> str:
    """The same app with ``busy="queue"``, configured through the environment."""
    env = {"STREAMFLOW_CHAT_PORT": "0", "STREAMFLOW_CHAT_DELAY": str(DELAY), "STREAMFLOW_CHAT_BUSY": "queue"}
    url, _ = start_example(EXAMPLE, banner=BANNER, env=env)
    return url


class Turn:
    """The answer of a successful ``POST /chat``: the turn's HTML, its stream, its session."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.text
        self.html = response.text
        found = re.search(r'sse-connect="(/sessions/([^/"]+)/stream\?run=([^"&]+))"', self.html)
        assert found, self.html
        self.stream, self.session, self.run = found[1], found[2], found[3]


class Visitor:
    """A browser: its own cookie jar (from the page, unless ``page=False``), and the page's
    session once its first message made one. ``async with Visitor(url) as alice: ...``"""

    def __init__(self, base_url: str, *, page: bool = True, http: httpx.AsyncClient | None = None) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=30)
        self.page = page
        self.session = ""

    async def __aenter__(self) -> Visitor:
        await self.http.__aenter__()
        if self.page:
            await self.open_page()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def tab(self) -> Visitor:
        """The same browser in another tab: the same cookie, a page of its own."""
        return Visitor("", http=self.http)

    async def open_page(self) -> httpx.Response:
        response = await self.http.get("/")
        assert response.status_code == 200
        return response

    async def post(self, message: str, session: str | None = None) -> httpx.Response:
        data = {"message": message, "session": self.session if session is None else session}
        return await self.http.post("/chat", data=data)

    async def send(self, message: str) -> Turn:
        turn = Turn(await self.post(message))
        self.session = self.session or turn.session
        assert turn.session == self.session
        return turn


async def read(
    http: httpx.AsyncClient, path: str, *, headers: dict[str, str] | None = None, limit: int | None = None
) -> tuple[list[ServerSentEvent], bytes]:
    """The events of a stream up to its ``done`` (or its first ``limit`` events: a dropped connection)."""
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    raw = b""
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        async for chunk in response.aiter_bytes():
            raw += chunk
            events += decoder.feed(chunk)
            if any(event.event == "done" for event in events) or len(events) >= (limit or len(events) + 1):
                break
    if limit is not None:
        events = events[:limit]
    assert decoder.retry == 1000
    return events, raw


def answer(response: httpx.Response) -> tuple[int, str | None, bytes]:
    """What a refusal tells: its status, content type and body."""
    return response.status_code, response.headers.get("content-type"), response.content


def fragments(events: list[ServerSentEvent]) -> list[tuple[str, str]]:
    return [(event.event, event.data) for event in events]


async def read_all(http: httpx.AsyncClient, path: str, **kwargs: Any) -> list[tuple[str, str]]:
    events, _ = await read(http, path, **kwargs)
    return fragments(events)


def turn_html(message: str, turn: Turn, *, first: bool) -> str:
    session_input = (
        f'<input type="hidden" id="session" name="session" value="{turn.session}" hx-swap-oob="true">\n'
        if first
        else ""
    )
    return session_input + (
        '<article class="turn">\n'
        f'  <p class="you">{escape(message)}</p>\n'
        f'  <div class="reply" sse-connect="/sessions/{turn.session}/stream?run={turn.run}"'
        ' sse-close="done">\n'
        '    <div class="activity" sse-swap="step,tool" hx-swap="beforeend"></div>\n'
        '    <div class="answer sf-message" sse-swap="delta" hx-swap="beforeend"></div>\n'
        '    <div class="errors" sse-swap="stream_error"></div>\n'
        '    <p class="status" sse-swap="done">Thinking…</p>\n'
        "  </div>\n"
        "</article>\n"
    )


# --- the page --------------------------------------------------------------------------------


async def test_the_page_gives_a_visitor_cookie_and_serves_htmx_itself(chat: str) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", chat)
    assert not chat.endswith(":8002")
    async with Visitor(chat, page=False) as guest:
        first = await guest.open_page()
        again = await guest.open_page()
        scripts = {
            name: await guest.http.get(f"/static/{name}")
            for name in sorted(p.name for p in VENDOR.glob("*.js"))
        }
        unknown = await guest.http.get("/static/app.py")

    cookie = first.headers["set-cookie"]
    assert re.fullmatch(r"chat_visitor=[A-Za-z0-9_-]{43}; HttpOnly; Path=/; SameSite=lax", cookie), cookie
    assert "set-cookie" not in again.headers, "a visitor keeps its cookie"
    assert first.headers["cache-control"] == "no-store"
    page = first.text
    assert '<body hx-ext="sse">' in page
    assert '<form id="ask" hx-post="/chat" hx-target="#chat" hx-swap="beforeend show:#ask:bottom"' in page
    assert '<input type="hidden" id="session" name="session" value="">' in page
    assert '<script src="/static/htmx-2.0.11.min.js"></script>' in page
    assert '<script src="/static/htmx-ext-sse-2.2.4.min.js"></script>' in page
    assert '{"code": "^(403|404|409|422)$", "swap": true, "error": true}' in page
    assert '<span id="pending" class="htmx-indicator">Sending…</span>' in page
    assert "$" not in page.replace('$"', ""), "every template placeholder was filled"
    # Nothing from elsewhere: no CDN script, stylesheet, font or image.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"@import|url\(", page)

    assert sorted(scripts) == ["htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js"]
    for name, response in scripts.items():
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        assert response.content == (VENDOR / name).read_bytes()
    assert unknown.status_code == 404


# --- one visitor -------------------------------------------------------------------------------


async def test_a_message_starts_a_run_whose_stream_is_exactly_its_fragments(chat: str) -> None:
    async with Visitor(chat) as alice:
        response = await alice.post(PARIS)
        turn = Turn(response)
        alice.session = turn.session
        events, raw = await read(alice.http, turn.stream)

    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == turn_html(PARIS, turn, first=True)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", turn.session), "token_urlsafe(24): unguessable"
    assert fragments(events) == PARIS_STREAM
    assert [event.id for event in events] == [f"{turn.run}.{n}" for n in range(1, len(PARIS_STREAM) + 1)]
    # The answer's line break is a second data: line, not an end of event and not a <br/>.
    assert f"id: {turn.run}.10\nevent: delta\ndata: sunny.\ndata: \n\n".encode() in raw
    assert b"<br" not in raw


async def test_a_conversation_keeps_its_session_and_the_session_stream_serves_its_latest_run(
    chat: str,
) -> None:
    async with Visitor(chat) as alice:
        first = await alice.send(PARIS)
        assert await read_all(alice.http, first.stream) == PARIS_STREAM
        second_response = await alice.post(CODE)
        second = Turn(second_response)
        by_run = await read_all(alice.http, second.stream)
        by_session = await read_all(alice.http, f"/sessions/{alice.session}/stream")

    assert second.session == first.session
    assert second.run != first.run
    assert second_response.text == turn_html(CODE, second, first=False), "no second session input"
    assert by_run == by_session == text_stream(CODE_ANSWER)


async def test_a_code_block_keeps_its_blank_line_and_indentation(chat: str) -> None:
    async with Visitor(chat) as alice:
        turn = await alice.send(CODE)
        events, raw = await read(alice.http, turn.stream)

    deltas = [data for kind, data in fragments(events) if kind == "delta"]
    assert "".join(deltas) == escape(CODE_ANSWER)
    assert "\n```python\nfor n in range(6):\n    if n % 2:\n        continue  # odd: skip\n\n" in "".join(
        deltas
    )
    # The blank line inside the block: the chunk "skip\n\n    " (the next line's indentation at its
    # end) is one event of three data lines, and the browser joins them with LF again.
    assert b"event: delta\ndata: skip\ndata: \ndata:     \n\n" in raw
    assert b"<br" not in raw


async def test_a_reconnection_resumes_after_its_last_event_id(chat: str) -> None:
    async with Visitor(chat) as alice:
        turn = await alice.send(PARIS)
        cut, _ = await read(alice.http, turn.stream, limit=5)  # the connection drops, the run goes on
        last_id = cut[-1].id
        resumed, _ = await read(alice.http, turn.stream, headers={"Last-Event-ID": last_id})
        by_query, _ = await read(alice.http, f"{turn.stream}&last_event_id={turn.run}.12")

    assert fragments(cut) == PARIS_STREAM[:5]
    assert last_id == f"{turn.run}.5"
    assert fragments(resumed) == PARIS_STREAM[5:]
    assert [event.id for event in resumed] == [f"{turn.run}.{n}" for n in range(6, 16)]
    assert fragments(by_query) == PARIS_STREAM[12:]


async def test_messages_are_checked_before_anything_runs(chat: str) -> None:
    async with Visitor(chat) as alice:
        empty = await alice.post("  \r\n ")
        too_long = await alice.post("x" * 2001)
        longest = await alice.send("x" * 2000)
        await read_all(alice.http, longest.stream)
        multi_line = await alice.send("first line\r\nsecond line")
        multi_line_stream = await read_all(alice.http, multi_line.stream)

    assert (empty.status_code, empty.text) == (422, NOTICE.format("Write a message first."))
    assert (too_long.status_code, too_long.text) == (
        422,
        NOTICE.format("Your message is too long: at most 2000 characters."),
    )
    assert '<p class="you">first line\nsecond line</p>' in multi_line.html, "CRLF from the form is a LF"
    assert multi_line_stream == text_stream(f"You said: first line\nsecond line\n\n{HINT}")


# --- escaping ----------------------------------------------------------------------------------


async def test_markup_is_text_in_the_turn_in_the_answer_and_in_the_tool_call(chat: str) -> None:
    async with Visitor(chat) as alice:
        echo = await alice.send(XSS)
        echo_stream = await read_all(alice.http, echo.stream)
        tool = await alice.send("weather in <b>Atlantis</b>?")
        tool_stream = await read_all(alice.http, tool.stream)

    escaped = (
        "&lt;script&gt;window.__pwned=1&lt;/script&gt; &amp; "
        "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;"
    )
    assert escape(XSS) == escaped
    assert f'<p class="you">{escaped}</p>' in echo.html
    answer = f"You said: {XSS}\n\n{HINT}"
    assert echo_stream == text_stream(answer)
    assert "".join(data for kind, data in echo_stream if kind == "delta") == escape(answer)

    sorry = "Sorry, the weather service has no weather data for <b>Atlantis</b>.\nI know Paris, Tokyo, Cairo."
    name = '<span class="sf-tool-name">get_weather</span>'
    assert tool_stream == [
        START,
        (
            "tool",
            f'<div class="sf-tool sf-tool-call">{name}<pre class="sf-tool-arguments">'
            "{\n  &quot;city&quot;: &quot;&lt;b&gt;Atlantis&lt;/b&gt;&quot;\n}</pre></div>",
        ),
        (
            "tool",
            f'<div class="sf-tool sf-tool-result sf-tool-error">{name}<pre class="sf-tool-output">'
            "{\n  &quot;error&quot;: "
            "&quot;no weather data for &lt;b&gt;Atlantis&lt;/b&gt;&quot;\n}</pre></div>",
        ),
        *(("delta", escape(word)) for word in words(sorry)),
        END,
        DONE,
    ]
    for _, data in echo_stream + tool_stream:
        assert "<script" not in data
        assert "<img" not in data
        assert "<b>" not in data


# --- many visitors -------------------------------------------------------------------------------


async def test_two_visitors_chatting_at_once_each_get_exactly_their_own_answer(chat: str) -> None:
    async with Visitor(chat) as alice, Visitor(chat) as bob:
        alice_turn, bob_turn = await asyncio.gather(alice.send(PARIS), bob.send(TOKYO))
        alice_stream, bob_stream = await asyncio.gather(
            read_all(alice.http, alice_turn.stream), read_all(bob.http, bob_turn.stream)
        )
        # The same visitor in a second tab gets a conversation of its own.
        tab = alice.tab()
        tab_turn = await tab.send(CODE)
        tab_stream = await read_all(alice.http, tab_turn.stream)

    assert len({alice.session, bob.session, tab.session}) == 3
    assert alice_stream == PARIS_STREAM
    assert bob_stream == weather_stream("Tokyo", 17, "light rain", 20, TOKYO_ANSWER)
    assert tab_stream == text_stream(CODE_ANSWER)


async def test_another_visitors_session_is_refused(chat: str) -> None:
    async with (
        Visitor(chat) as alice,
        Visitor(chat) as mallory,
        Visitor(chat, page=False) as nobody,  # never opened the page: no cookie
    ):
        turn = await alice.send(PARIS)
        mallory_turn = await mallory.send(CODE)
        await read_all(mallory.http, mallory_turn.stream)
        refused = {
            "session stream": await mallory.http.get(f"/sessions/{alice.session}/stream"),
            "run stream": await mallory.http.get(turn.stream),
            "no cookie": await nobody.http.get(turn.stream),
        }
        post = await mallory.post("weather in Cairo", session=alice.session)
        post_without_cookie = await nobody.post("weather in Cairo", session=alice.session)
        async with httpx.AsyncClient(base_url=chat, cookies={"chat_visitor": "x" * 43}) as forger:
            forged = await forger.get(turn.stream)  # a well-formed cookie of no one
        # What Mallory gets for sessions and runs that do not exist, to compare.
        unknown = {
            "session stream": await mallory.http.get("/sessions/no-such-session/stream"),
            "run stream": await mallory.http.get(f"/sessions/{alice.session}/stream?run=no-such-run"),
            "own session, unknown run": await mallory.http.get(
                f"/sessions/{mallory.session}/stream?run=no-such-run"
            ),
            "post": await mallory.post("weather in Cairo", session="no-such-session"),
        }
        alice_stream = await read_all(alice.http, turn.stream)

    for what, response in refused.items():
        assert (what, response.status_code, response.text) == (what, 404, NOT_FOUND)
    assert (forged.status_code, forged.text) == (404, NOT_FOUND)
    assert (post.status_code, post.text) == (404, NOTICE.format(UNAVAILABLE))
    assert (post_without_cookie.status_code, post_without_cookie.text) == (403, NOTICE.format(NO_COOKIE))
    assert alice_stream == PARIS_STREAM, "nothing of Mallory's reached Alice's session"
    # No oracle: a refused session or run and an unknown one are answered byte for byte the same.
    assert answer(refused["session stream"]) == answer(unknown["session stream"])
    assert answer(refused["session stream"]) == (404, "application/json", NOT_FOUND.encode())
    for refusal in (refused["run stream"], refused["no cookie"], forged):
        assert answer(refusal) == answer(unknown["run stream"]) == answer(unknown["own session, unknown run"])
    assert answer(post) == answer(unknown["post"])
    assert answer(post) == (404, "text/html; charset=utf-8", NOTICE.format(UNAVAILABLE).encode())


async def test_an_unknown_session_or_run_is_404(chat: str) -> None:
    async with Visitor(chat) as alice, Visitor(chat) as bob:
        turn = await alice.send(PARIS)
        bob_turn = await bob.send(CODE)
        unknown_session = await alice.http.get("/sessions/no-such-session/stream")
        unknown_run = await alice.http.get(f"/sessions/{alice.session}/stream?run=no-such-run")
        # A run exists, but not in this session: the session in the path must be the run's.
        run_of_another_session = await bob.http.get(f"/sessions/{bob.session}/stream?run={turn.run}")
        post = await alice.post(PARIS, session="no-such-session")
        await read_all(alice.http, turn.stream)
        await read_all(bob.http, bob_turn.stream)

    assert (unknown_session.status_code, unknown_session.text) == (404, NOT_FOUND)
    assert (unknown_run.status_code, unknown_run.text) == (404, NOT_FOUND)
    assert (run_of_another_session.status_code, run_of_another_session.text) == (404, NOT_FOUND)
    assert answer(run_of_another_session) == answer(unknown_run) == answer(unknown_session)
    assert (post.status_code, post.text) == (404, NOTICE.format(UNAVAILABLE))


# --- the busy policy -------------------------------------------------------------------------------


async def test_a_message_during_an_answer_is_refused_with_a_notice(chat: str) -> None:
    async with Visitor(chat) as alice:
        turn = await alice.send(PARIS)
        async with alice.http.stream("GET", turn.stream) as response:
            decoder = SSEDecoder()
            events: list[ServerSentEvent] = []
            busy = None
            async for chunk in response.aiter_bytes():
                events += decoder.feed(chunk)
                if busy is None and any(event.event == "tool" for event in events):
                    busy = await alice.post(CODE)  # the answer has not begun yet
                    assert not any(event.event == "done" for event in events)
        after = await alice.send(CODE)
        after_stream = await read_all(alice.http, after.stream)

    assert busy is not None
    assert (busy.status_code, busy.text) == (409, NOTICE.format(BUSY))
    assert fragments(events) == PARIS_STREAM, "the refused message changed nothing in the answer"
    assert after.session == turn.session
    assert after_stream == text_stream(CODE_ANSWER)


async def test_with_busy_queue_a_message_waits_for_the_answer_in_progress(queue_chat: str) -> None:
    async with Visitor(queue_chat) as alice:
        page = (await alice.open_page()).text
        turn = await alice.send(PARIS)
        queued: asyncio.Task[httpx.Response] | None = None
        checked = False
        async with alice.http.stream("GET", turn.stream) as response:
            decoder = SSEDecoder()
            events: list[ServerSentEvent] = []
            async for chunk in response.aiter_bytes():
                events += decoder.feed(chunk)
                if queued is None and any(event.event == "tool" for event in events):
                    queued = asyncio.create_task(alice.post(CODE))
                if not checked and sum(event.event == "delta" for event in events) >= 5:
                    checked = True  # half of the answer is still to come
                    assert queued is not None
                    assert not queued.done(), "the second message waits while the first is answered"
        assert queued is not None
        assert checked
        second = Turn(await queued)
        second_stream = await read_all(alice.http, second.stream)

    assert (
        '<span id="pending" class="htmx-indicator">Sending… (after the answer in progress, if any)</span>'
        in page
    )
    assert fragments(events) == PARIS_STREAM
    assert (second.session, second.run != turn.run) == (turn.session, True)
    assert second_stream == text_stream(CODE_ANSWER)


# --- in the browser ------------------------------------------------------------------------------

TURNS_DONE = (
    "(n) => document.querySelectorAll('#chat .turn').length === n"
    " && [...document.querySelectorAll('#chat .status')].every((s) => s.textContent === '')"
)


def turns_done(n: int) -> str:
    return f"({TURNS_DONE})({n})"


STATE = """(() => {
  const text = (el) => (el ? el.textContent : null);
  return {
    turns: [...document.querySelectorAll('#chat .turn')].map((t) => ({
      you: text(t.querySelector('.you')),
      activity: [...t.querySelectorAll('.activity > div')].map((d) => [d.className, d.textContent]),
      answer: text(t.querySelector('.answer')),
      answerHtml: t.querySelector('.answer').innerHTML,
      errors: text(t.querySelector('.errors')),
      status: text(t.querySelector('.status')),
    })),
    notices: [...document.querySelectorAll('#chat .notice')].map((n) => n.textContent),
    chat: document.querySelector('#chat').textContent,
    pwned: window.__pwned === undefined ? null : window.__pwned,
    images: document.querySelectorAll('#chat img').length,
    scripts: document.querySelectorAll('#chat script').length,
    session: document.querySelector('#session').value,
    message: document.querySelector('#message').value,
  };
})()"""


def activity(arguments: str, output: str) -> list[list[str]]:
    return [
        ["sf-step sf-step-start", "assistant"],
        ["sf-tool sf-tool-call", f"get_weather{arguments}"],
        ["sf-tool sf-tool-result", f"get_weather{output}"],
        ["sf-step sf-step-end", "assistant"],
    ]


def test_two_browsers_chat_at_once_and_see_only_their_own_answers(chat: str) -> None:
    alice_xss = f"Repeat this: {XSS}"
    scenarios = [
        {
            "name": "alice",
            "path": "/",
            "actions": [
                {"fill": ["#message", PARIS]},
                {"click": "#send"},
                {"waitFor": turns_done(1)},
                {"fill": ["#message", alice_xss]},
                {"click": "#send"},
            ],
            "until": turns_done(2),
            "wait": 1500,  # longer than the retry time: a page that did not close would reconnect
            "state": STATE,
            "screenshot": artifact("htmx-adk-alice.png"),
        },
        {
            "name": "bob",
            "path": "/",
            "actions": [
                {"fill": ["#message", TOKYO]},
                {"click": "#send"},
                {"waitFor": "document.querySelector('#chat .sf-tool-call') !== null"},
                {"fill": ["#message", CODE]},
                {"click": "#send"},  # while the Tokyo answer streams: refused
                {"waitFor": "document.querySelector('#chat .notice') !== null"},
                {"screenshot": artifact("htmx-adk-bob-busy.png")},
                {"waitFor": turns_done(1)},
                {"click": "#send"},  # the refused message is still in the box: send it again
            ],
            "until": turns_done(2),
            "wait": 1500,
            "state": STATE,
            "screenshot": artifact("htmx-adk-bob.png"),
        },
    ]
    results = drive(chat, scenarios)
    alice, bob = finished(results["alice"]), finished(results["bob"])

    paris_arguments = '{\n  "city": "Paris"\n}'
    paris_output = '{\n  "city": "Paris",\n  "celsius": 21,\n  "sky": "sunny",\n  "wind_kmh": 12\n}'
    tokyo_arguments = '{\n  "city": "Tokyo"\n}'
    tokyo_output = '{\n  "city": "Tokyo",\n  "celsius": 17,\n  "sky": "light rain",\n  "wind_kmh": 20\n}'
    done = {"errors": "", "status": ""}
    assert alice["turns"] == [
        {
            "you": PARIS,
            "activity": activity(paris_arguments, paris_output),
            "answer": PARIS_ANSWER,
            "answerHtml": PARIS_ANSWER,
            **done,
        },
        {
            "you": alice_xss,
            "activity": [["sf-step sf-step-start", "assistant"], ["sf-step sf-step-end", "assistant"]],
            "answer": f"You said: {alice_xss}\n\n{HINT}",
            "answerHtml": escape(f"You said: {alice_xss}\n\n{HINT}", quote=False),
            **done,
        },
    ]
    assert bob["turns"] == [
        {
            "you": TOKYO,
            "activity": activity(tokyo_arguments, tokyo_output),
            "answer": TOKYO_ANSWER,
            "answerHtml": TOKYO_ANSWER,
            **done,
        },
        {
            "you": CODE,
            "activity": [["sf-step sf-step-start", "assistant"], ["sf-step sf-step-end", "assistant"]],
            "answer": CODE_ANSWER,
            "answerHtml": escape(CODE_ANSWER, quote=False),
            **done,
        },
    ]
    assert alice["notices"] == []
    assert bob["notices"] == [BUSY]
    # Isolated: neither page shows anything of the other's conversation.
    assert "light rain" not in alice["chat"]
    assert "odd numbers" not in alice["chat"]
    assert "Paris" not in bob["chat"]
    assert "sunny" not in bob["chat"]
    assert "pwned" not in bob["chat"]
    assert alice["session"]
    assert bob["session"]
    assert alice["session"] != bob["session"]
    assert alice["message"] == bob["message"] == "", "each sent message left the box"
    # The model's markup is text: no element from it, nothing ran.
    assert alice["pwned"] is None
    assert bob["pwned"] is None
    assert alice["images"] == alice["scripts"] == 0
    assert "<br" not in alice["turns"][0]["answerHtml"] + bob["turns"][1]["answerHtml"]

    for name, posts in (("alice", 2), ("bob", 3)):
        requests = results[name]["requests"]
        assert sum(url.endswith("/chat") for url in requests) == posts
        streams = [url for url in requests if "/stream?run=" in url]
        assert len(streams) == 2, f"{name}: one stream per turn, closed on done, never reopened: {streams}"
        assert all(
            url.startswith(f"{chat}/sessions/{finished(results[name])['session']}/") for url in streams
        )
    assert results["alice"]["consoleErrors"] == []
    # The refused message is an HTTP 409: Chromium and htmx log it, and nothing else went wrong.
    assert sorted(error["text"] for error in results["bob"]["consoleErrors"]) == [
        "Failed to load resource: the server responded with a status of 409 (Conflict)",
        "Response Status Error Code 409 from /chat, [object HTMLElement]",
    ]
