"""Page tests in Debian's headless chromium, driven by ``tests/browser/drive.mjs``.

:func:`drive` runs scenarios (see the driver's header for their shape) against a running
server and returns, per scenario, ``{finished, requests, pageErrors, consoleErrors, state}``.
It skips, saying why, when node, chromium or ``node_modules`` is missing; in CI
(``CI=true``) such a skip is a failure (see ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "drive.mjs"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")


def require_browser() -> None:
    """Skip (with the reason) unless node, Debian's chromium and playwright-core are there."""
    if shutil.which("node") is None or not CHROMIUM.exists():
        pytest.skip("needs node and Debian's /usr/bin/chromium (bash scripts/test.sh installs them)")
    if not (ROOT / "node_modules" / "playwright-core").exists():
        pytest.skip("node_modules not installed (npm ci)")


def artifact(name: str) -> str:
    """The path of a test artifact (a screenshot) under ``test-artifacts/``."""
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


def drive(base_url: str, scenarios: list[dict[str, Any]], *, timeout: float = 120) -> dict[str, Any]:
    """Run ``scenarios`` in one chromium against ``base_url``; every page request must stay
    on that server (no CDN, no network)."""
    require_browser()
    done = subprocess.run(
        ["node", str(DRIVER), base_url, json.dumps(scenarios)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"driver failed:\n{done.stderr}\n{done.stdout}"
    results: dict[str, Any] = json.loads(done.stdout)
    for name, result in results.items():
        foreign = [
            url
            for url in result["requests"]
            if not url.startswith(base_url + "/") and not url.startswith("data:")
        ]
        assert foreign == [], f"{name}: requests that left the test server: {foreign}"
    return results


def finished(result: dict[str, Any]) -> Any:
    """The state of a scenario that ran to its ``until`` with no page error."""
    assert result["finished"], result["pageErrors"]
    assert result["pageErrors"] == [], result["pageErrors"]
    return result["state"]
