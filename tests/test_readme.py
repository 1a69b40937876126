"""The README's promise, checked from a fresh clone: its two commands run as written.

The README opens with one code block of exactly two commands: the first makes a virtual
environment, installs ``.[demo]`` into it and runs the demo; the second,
``bash scripts/test.sh``, runs the whole suite.

- The first is run here for real, in a ``git clone`` of the committed ``HEAD`` (no
  uncommitted change can help it), with ``bash -c``: ``python3 -m venv`` and ``pip``
  install from whatever index the environment configures. The demo must then answer on
  its port within 60 seconds of the start: ``GET /`` with the demo's page, and the GET
  stream endpoint the demo's README documents with a ``done`` event.
- The second is not run here: it runs this test, so it would recurse. CI runs it:
  ``.ci/run`` is exactly that command, from the repository root. Here only its shape is
  checked (this file, ``.ci/run`` and ``scripts/test.sh`` agree).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest

from streamflow.client import aiter_sse
from tests.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = "bash scripts/test.sh"
DEMO_WITHIN = 60.0  # seconds from running the first command to a demo that streams
DEMO_ADDRESS = "127.0.0.1:8000"  # where the README and the demo's README say the demo is


def readme_commands(readme: Path) -> list[str]:
    """The commands in the first fenced code block of ``readme``, one per line."""
    block = re.search(r"^```[^\n]*\n(.*?)^```", readme.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert block, f"{readme} has no fenced code block"
    return [
        line.strip() for line in block[1].splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def links(command: str) -> list[list[str]]:
    """The words of each command of an ``&&`` chain; any other shell operator fails."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    chain: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            chain.append([])
        else:
            assert not set(token) <= set("&|;()<>"), f"unexpected {token!r} in {command!r}"
            chain[-1].append(token)
    return chain


def check_demo_command(command: str) -> None:
    """``python3 -m venv .venv && .venv/bin/pip install -e ".[demo]" && .venv/bin/python
    examples/demo/app.py``, or the same in other words: a new venv, ``.[demo]`` installed into
    it, and the demo run by its Python."""
    chain = links(command)
    assert len(chain) >= 3, command
    make_venv, run_demo = chain[0], chain[-1]
    assert make_venv[1:3] == ["-m", "venv"], command
    venv = Path(make_venv[3])
    installs = [link for link in chain[1:-1] if "install" in link and ".[demo]" in link]
    assert installs, f"nothing installs .[demo]: {command}"
    (install,) = installs
    assert Path(install[0]) in (venv / "bin" / "pip", venv / "bin" / "python"), command
    assert [Path(word) for word in run_demo] == [venv / "bin" / "python", Path("examples/demo/app.py")], (
        command
    )


def test_the_readme_opens_with_the_demo_and_the_test_command_ci_runs() -> None:
    commands = readme_commands(ROOT / "README.md")
    assert len(commands) == 2, commands
    check_demo_command(commands[0])
    assert commands[1] == TEST_COMMAND

    # CI runs the same command, from the repository root, and nothing else.
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line and not line.startswith("#")]
    assert steps[-1].removeprefix("exec ") == TEST_COMMAND, steps
    assert 'cd "$(dirname "$0")/.."' in steps, steps
    assert all(step.startswith(("set ", "cd ")) for step in steps[:-1]), steps

    # What the README says the test command does: install, lint, format, types, every test.
    script = (ROOT / "scripts" / "test.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    for step in (
        '-m pip install --quiet --disable-pip-version-check -e ".[test]"',
        "npm ci",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy --strict src",
        '.venv/bin/python -m pytest "$@"',
    ):
        assert step in code, f"scripts/test.sh no longer runs {step!r}"


def fresh_environment(port: int) -> dict[str, str]:
    """This environment as a new shell would have it: no virtual environment active, none of
    the demo's settings but its port, and no model key (the README promises none is needed).
    The package index settings (``PIP_*``, pip.conf) stay."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("STREAMFLOW_", "OPENAI_"))
        and name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "").split(os.pathsep) if not entry.startswith(str(ROOT))
    )
    env["STREAMFLOW_DEMO_PORT"] = str(port)
    return env


def documented_stream(demo_readme: Path, base: str) -> str | None:
    """The first ``curl`` GET of a stream in the demo's README, pointed at ``base``."""
    for line in demo_readme.read_text(encoding="utf-8").splitlines():
        words = shlex.split(line) if line.lstrip().startswith("curl ") else []
        if words and not {"-d", "--data", "-X", "--json"} & set(words):
            urls = [word for word in words if word.startswith(f"http://{DEMO_ADDRESS}/")]
            if urls and not re.search(r"[{<]", urls[0]):
                return base + urls[0].removeprefix(f"http://{DEMO_ADDRESS}")
    return None


async def read_stream(url: str, within: float) -> list[tuple[str, str]]:
    """(event name, data) of each event of the stream at ``url``, until ``done``."""
    received: list[tuple[str, str]] = []
    with anyio.fail_after(within):
        async with (
            httpx.AsyncClient(timeout=within) as http,
            http.stream("GET", url, headers={"accept": "text/event-stream"}) as response,
        ):
            assert response.status_code == 200, url
            assert response.headers["content-type"].startswith("text/event-stream"), url
            async for sse in aiter_sse(response.aiter_bytes()):
                received.append((sse.event, sse.data))
                if sse.event == "done" or _type(sse.data) == "done":
                    break
    return received


def _type(data: str) -> object:
    try:
        decoded = json.loads(data)
    except ValueError:
        return None
    return decoded.get("type") if isinstance(decoded, dict) else None


@pytest.mark.timeout(300)  # the clone, the install (bounded to 60 s below) and the clean-up
def test_the_first_command_serves_the_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    clone = tmp_path / "streamflow"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True)
    cloned = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    )
    assert cloned.stdout.strip() == head

    commands = readme_commands(clone / "README.md")
    assert len(commands) == 2, commands
    check_demo_command(commands[0])
    assert not (clone / ".venv").exists()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "command.log"
    with log.open("wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(
            ["bash", "-c", commands[0]],
            cwd=clone,
            env=fresh_environment(port),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: bash, pip, then the demo
        )
    deadline = started + DEMO_WITHIN

    def output() -> str:
        return log.read_text(errors="replace")[-6000:]

    try:
        page = None
        while page is None:
            assert process.poll() is None, f"the command exited with {process.returncode}:\n{output()}"
            assert time.monotonic() < deadline, (
                f"nothing answered on {base} in {DEMO_WITHIN:.0f}s:\n{output()}"
            )
            try:
                page = httpx.get(base + "/", timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
        assert page.status_code == 200, page.text
        assert re.search(r"<title>[^<]*streamflow[^<]*</title>", page.text), page.text[:500]
        assert (clone / ".venv" / "bin" / "python").exists()  # the command's own venv runs it

        stream = documented_stream(clone / "examples" / "demo" / "README.md", base)
        assert stream, "examples/demo/README.md documents no `curl` GET of a stream"
        events = anyio.run(read_stream, stream, max(deadline - time.monotonic(), 1.0))
        assert events, stream
        assert _type(events[-1][1]) == "done" or events[-1][0] == "done", events[-3:]
        assert not any(_type(data) == "error" for _, data in events), events
        assert time.monotonic() < deadline, f"the demo streamed, but {DEMO_WITHIN:.0f}s after the start"
        elapsed = time.monotonic() - started
        print(f"the README's first command served the demo's stream {elapsed:.1f}s after it started")
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole process group (bash, pip or the demo), then SIGKILL to what is left."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        until = time.monotonic() + grace
        while time.monotonic() < until:
            process.poll()
            try:
                os.killpg(process.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            continue
        break
    process.wait(timeout=5)
