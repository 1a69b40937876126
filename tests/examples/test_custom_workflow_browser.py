"""The custom workflow's page in Debian's headless Chromium: its ``EventSource`` with one
listener per ``NamedEventEncoder`` event name renders the run's text, progress and step
outputs, and a failed run's ``stream_error`` (never the browser's own ``error``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from streamflow import Delta, StepEnd
from tests.browser import artifact, drive, finished

pytestmark = pytest.mark.slow

TOPIC = 'caf\u00e9 <b>markup</b> & "quotes"'  # markup typed by the user stays text

STATE = """({
  status: document.querySelector("#status").textContent,
  statusClass: document.querySelector("#status").className,
  text: document.querySelector("#text").textContent,
  errors: [...document.querySelectorAll("#errors .banner")].map((e) => e.textContent),
  outputs: [...document.querySelectorAll("#outputs > div")].map((d) => [
    d.querySelector("strong").textContent, JSON.parse(d.querySelector("pre").textContent)]),
  progress: [document.querySelector("#progress").value, document.querySelector("#progress").max],
  bold: document.querySelectorAll("#text b, #outputs b").length,
  logNames: [...document.querySelector("#log").textContent.matchAll(/event: (\\S+)/g)].map((m) => m[1]),
})"""


def scenario(name: str, button: str) -> dict[str, Any]:
    return {
        "name": name,
        "path": "/",
        "actions": [{"fill": ["#topic", TOPIC]}, {"click": f"#run-form button[value={button}]"}],
        "until": "/^(Done|Failed)/.test(document.querySelector('#status').textContent)",
        "wait": 300,  # a closed EventSource must stay closed (no second run)
        "state": STATE,
        "screenshot": artifact(f"custom-workflow-{name}.png"),
    }


@pytest.fixture(scope="module")
def results(start_example: Callable[..., tuple[str, Path]]) -> dict[str, Any]:
    url, _ = start_example(
        "custom_workflow/app.py", "--port", "0", "--delay", "0.01", banner="streamflow custom workflow: "
    )
    return drive(url, [scenario("sync", "sync"), scenario("failing", "failing")])


@pytest.fixture(scope="module")
def steps(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_example("custom_workflow/workflow.py")


def test_the_page_renders_the_whole_run(results: dict[str, Any], steps: ModuleType) -> None:
    state = finished(results["sync"])
    expected = [
        item if not isinstance(item, str) else Delta(value=item) for item in steps.report(TOPIC, delay=0)
    ]
    # EventSource hands data with CR and CRLF turned into LF; JSON escapes them, so the
    # text arrives exactly as the workflow yielded it.
    assert state["text"] == "".join(event.value for event in expected if isinstance(event, Delta))
    assert state["outputs"] == [[e.step, e.output] for e in expected if isinstance(e, StepEnd)]
    assert state["progress"] == [3, 3]
    assert state["status"].startswith("Done in ")
    assert state["errors"] == []
    assert state["bold"] == 0
    assert state["logNames"] == [event.type for event in expected] + ["done"]
    runs = [url for url in results["sync"]["requests"] if "/run/" in url]
    assert len(runs) == 1, runs


def test_a_failed_run_shows_stream_error_not_a_connection_failure(results: dict[str, Any]) -> None:
    state = finished(results["failing"])
    assert state["errors"] == ["The stream failed because of an internal error. (internal_error)"]
    assert state["status"].startswith("Failed after ")
    assert state["statusClass"] == "error"
    assert state["logNames"] == ["step_start", "delta", "step_end", "step_start", "stream_error", "done"]
