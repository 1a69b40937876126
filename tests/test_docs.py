"""The documentation site: it builds with no warning, its protocol reference covers every event
type of the code, and the Python snippets of its pages still work.

Snippets: every fenced ```python block in ``docs/*.md`` is a test. An HTML comment on the line
before the fence says how (a block without one must run as it is):

- (none): run in a fresh module; it must not raise;
- ``<!-- docs-test: app -->``: run after ``app = FastAPI()`` and an ``answer(prompt)`` source,
  the names of Getting started that the endpoint snippets use;
- ``<!-- docs-test: continue -->``: run in the module of the page's previous Python block;
- ``<!-- docs-test: compile -->``: only compiled, for a block that needs a running server, a
  framework's objects or a module of the reader's (``from app import app``).

``<!-- docs-test: output -->`` before a ```text or ```console block says that the block is
exactly what the page's previous Python block prints. After a block has run, the ``test_*``
functions it defined that take no arguments (the hypothesis tests of the testing page) are
called too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import BaseModel

from streamflow.events import Event

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MODES = ("run", "app", "continue", "compile")

APP_PRELUDE = """
from fastapi import FastAPI

app = FastAPI()


async def answer(prompt: str):
    yield "You asked: "
    yield prompt
"""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<mode>[\w-]+)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    mode: str
    expected_output: str | None = None  # what a "docs-test: output" block after it shows
    previous: Block | None = field(default=None, repr=False)  # the page's previous Python block

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a page, Python ones linked to the page's previous one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    previous_python: Block | None = None
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].startswith(indent + fence):
            end += 1
        code = "\n".join(line[len(indent) :] for line in lines[index + 1 : end])
        marker = _MARKER.match(lines[index - 1]) if index else None
        mode = marker["mode"] if marker else "run"
        language = opening["info"].lower()
        block = Block(path.name, index + 1, language, code, mode)
        if language in ("python", "py"):
            assert mode in MODES, f"{block.id}: unknown docs-test mode {mode!r}"
            block.previous = previous_python
            previous_python = block
            found.append(block)
        elif mode == "output":
            assert previous_python is not None, f"{block.id}: an output block with no Python block before it"
            previous_python.expected_output = code
        else:
            assert marker is None, f"{block.id}: docs-test: {mode} on a {language or 'plain'} block"
        index = end + 1
    return found


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [block for page in PAGES for block in _blocks(page)]


# --- the site --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert "WARNING" not in result.stderr, result.stderr
    return out


def _event_models() -> list[type[BaseModel]]:
    union = typing.get_args(Event)[0]  # Annotated[StepStart | Delta | ..., Field(discriminator=...)]
    models = [model for model in typing.get_args(union) if issubclass(model, BaseModel)]
    assert len(models) >= 8
    return models


def test_the_site_builds_strict(site: Path) -> None:
    for page in PAGES:
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file(), f"{page.name} was not built"


def test_the_protocol_reference_lists_every_event_type_and_field(site: Path) -> None:
    html = (site / "protocol" / "index.html").read_text(encoding="utf-8")
    assert "protocol-reference:" not in html, "a marker was left in the page"
    for model in _event_models():
        event_type = model.model_fields["type"].default
        assert f'href="#{event_type}"' in html, f"the summary table has no row for {event_type!r}"
        heading = re.search(rf'<h3 id="{re.escape(event_type)}">', html)
        assert heading is not None, f"the reference has no section for {event_type!r}"
        section = re.split(r"<h[23][ >]", html[heading.end() :], maxsplit=1)[0]
        assert model.__name__ in html[heading.start() : heading.end() + 200]
        for name in model.model_fields:
            assert f"<code>{name}</code>" in section, f"{event_type}.{name} is not in the reference"


def test_the_reference_hook_refuses_a_protocol_page_without_its_markers() -> None:
    from mkdocs.exceptions import PluginError

    path = DOCS / "hooks" / "protocol_reference.py"
    spec = importlib.util.spec_from_file_location("protocol_reference", path)
    assert spec is not None
    assert spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri="protocol.md"))
    with pytest.raises(PluginError, match="protocol-reference: summary"):
        hook.on_page_markdown("# Protocol\n", page=page, config=None, files=None)
    other = types.SimpleNamespace(file=types.SimpleNamespace(src_uri="faq.md"))
    assert hook.on_page_markdown("# FAQ\n", page=other, config=None, files=None) == "# FAQ\n"


# --- the snippets ----------------------------------------------------------------------------


def _module(block: Block) -> types.ModuleType:
    name = "docs_" + re.sub(r"\W", "_", block.id)
    module = types.ModuleType(name)
    module.__file__ = str(DOCS / block.page)
    sys.modules[name] = module  # pydantic, dataclasses and FastAPI look the module up by name
    return module


_MODULES: dict[str, types.ModuleType] = {}  # block id -> the module it ran in


def _run(block: Block) -> tuple[types.ModuleType, str]:
    """Run ``block`` as its mode says (running the page's earlier blocks it continues first);
    return its module and what it printed."""
    code = compile(block.code, block.id, "exec")
    if block.mode == "continue":
        assert block.previous is not None, f"{block.id}: nothing to continue"
        assert block.previous.mode != "compile", f"{block.id}: continues a block that does not run"
        module = _MODULES.get(block.previous.id) or _run(block.previous)[0]
    else:
        module = _module(block)
        if block.mode == "app":
            exec(compile(APP_PRELUDE, "<docs-test: app>", "exec"), module.__dict__)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, module.__dict__)
    _MODULES[block.id] = module
    return module, printed.getvalue()


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_snippet(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if block.mode == "compile":
        compile(block.code, block.id, "exec")
        assert block.expected_output is None, f"{block.id}: only compiled, so its output cannot be checked"
        return
    module, printed = _run(block)
    if block.expected_output is not None:
        assert printed.rstrip("\n") == block.expected_output.rstrip("\n")
    for name, function in list(vars(module).items()):
        if not (name.startswith("test_") and inspect.isfunction(function)):
            continue
        defined_here = inspect.unwrap(function).__code__.co_filename == block.id
        # A test with no parameters (hypothesis's @given supplies its own) runs; fixtures do not.
        takes_nothing = not inspect.signature(function).parameters
        if defined_here and takes_nothing and not inspect.iscoroutinefunction(function):
            function()


def test_the_snippet_convention_is_in_use() -> None:
    modes = {block.mode for block in BLOCKS}
    assert {"run", "app", "compile"} <= modes
    assert any(block.expected_output is not None for block in BLOCKS)
