"""Documentation that cannot drift from the code.

- Every fenced ``python`` block of README.md and docs/**/*.md runs: each file's blocks
  in order, in one namespace, in a scratch folder where ``examples/`` is reachable as
  from the repository root, on the fresh store the autouse fixture exports as
  ``$LOCALBATCH_HOME`` (the default store of ``DeployClient()``). A block preceded by
  an ``<!-- excerpt ... -->`` line is shown, not run (a cluster, a pytest session, or a
  feature still to merge: deleting the comment makes it a tested block).
- The README's two commands are the ones .ci/run runs, the README stays under
  10,000 characters, every relative link of README and docs resolves, every
  ``localbatch`` command the docs show exists in the parser with the flags shown, and
  the API reference covers the whole public surface.
- ``mkdocs build --strict`` passes (where the ``docs`` extra is installed).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [README, *PAGES]
CI = ROOT / ".ci" / "run"

#: Commands and flags that other branches add (Steps 9-12); the coordinator empties these
#: after the merge, and the test then checks them against the parser like the rest.
PENDING: set[str] = set()  # commands documented before they landed (none now)

_FENCE = re.compile(r"^(?P<fence>```+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.M | re.S)
_EXCERPT = re.compile(r"<!--\s*excerpt\b[^>]*-->\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CLI = re.compile(r"`localbatch ([a-z][a-z-]*)((?: [^`]*)?)`")
_FILE_BLOCK = re.compile(r"^# ([\w-]+(?:/[\w-]+)*\.py)\b")  # "# myapp/cars.py - ..."
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b")


class Block(NamedTuple):
    lang: str
    code: str
    excerpt: bool
    line: int

    @property
    def file(self) -> str | None:
        """The path a block stands for (its first line is ``# path.py``), else None."""
        m = _FILE_BLOCK.match(self.code) if self.lang == "python" else None
        return m.group(1) if m else None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with its language and excerpt mark."""
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append(Block(m.group("info").strip().split(" ")[0], m.group("body"),
                         bool(_EXCERPT.search(before)), text.count("\n", 0, m.start()) + 1))
    return out


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the Python blocks run --------------------------------------------------------------------


def _runs(b: Block) -> bool:
    return b.lang == "python" and not b.excerpt and b.file is None


RUNNABLE = [p for p in MARKDOWN if any(_runs(b) for b in blocks(p))]
PROJECTS = [p for p in MARKDOWN if any(b.file and not b.excerpt for b in blocks(p))]


def test_fences_are_recognised():
    """A python block indented into a list, or with a stray info string, would be skipped."""
    for path in MARKDOWN:
        text = path.read_text()
        assert not re.search(r"^[ \t]+```python", text, re.M), f"{_name(path)}: indented block"
        for b in blocks(path):
            assert b.lang in {"python", "console", "text", "bash", ""}, (_name(path), b)


@pytest.mark.parametrize("page", RUNNABLE, ids=[_name(p) for p in RUNNABLE])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The page's blocks, in order, in one namespace, as a reader would paste them."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")  # paths read as from the repo root
    monkeypatch.chdir(work)
    # DeployClient() and the SDK form's http host open $LOCALBATCH_HOME: a fresh store.
    monkeypatch.setenv("LOCALBATCH_HOME", str(tmp_path / "store"))
    # Not "__main__": cloudpickle then ships the blocks' functions by value, as it does a
    # script's, and no ``if __name__ == "__main__"`` block of an excerpt could run.
    namespace: dict = {"__name__": "docs_" + page.stem.replace("-", "_")}
    for block in filter(_runs, blocks(page)):
        code = compile(block.code, f"{_name(page)}:{block.line}", "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # shown to the reader as to a user, not errors
            exec(code, namespace)  # noqa: S102 - the documentation's own code
    from localbatch._workers.pool import WORKER_POOL

    WORKER_POOL.close()


@pytest.mark.parametrize("page", PROJECTS, ids=[_name(p) for p in PROJECTS])
def test_file_blocks_pass_their_tests(page: Path, tmp_path: Path):
    """Blocks that stand for files (an application and its tests) make a project whose
    pytest run passes, with localbatch's pytest plugin as an installed user gets it."""
    project = tmp_path / "project"
    files = [b for b in blocks(page) if b.file and not b.excerpt]
    for b in files:
        (project / b.file).parent.mkdir(parents=True, exist_ok=True)
        (project / b.file).write_text(b.code)
    (project / "data").symlink_to(ROOT / "examples" / "data")
    # Only the inline variant: the worker variant of the same test starts the ten workers
    # of the app's parallel_count=10 (~15 s on 2 cores); tests/test_plugin.py covers it.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-k", "inline",
                           *(b.file for b in files if "test_" in b.file)],
                          cwd=project, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LOCALBATCH_HOME": str(tmp_path / "store")})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def test_every_page_with_python_runs_some():
    """Excerpts are the exception: each page that shows Python runs most of it."""
    for path in MARKDOWN:
        py = [b for b in blocks(path) if b.lang == "python" and b.file is None]
        if path.name == "dask.md":  # needs a cluster
            continue
        assert sum(not b.excerpt for b in py) >= sum(b.excerpt for b in py), _name(path)


# -- the README -------------------------------------------------------------------------------


def _ci_steps() -> list[str]:
    return re.findall(r"^step '([^']+)'$", CI.read_text(), re.M)


def test_readme_starts_with_the_two_commands_ci_runs():
    lines = [ln.strip() for ln in README.read_text().splitlines() if ln.strip()]
    steps = _ci_steps()
    assert lines[:2] == steps[:2]
    assert lines[0] == "pip install . && python examples/quickstart.py"
    assert lines[1] == 'pip install ".[test]" && python -m pytest'
    assert any(s.startswith("pip install") and "mkdocs build --strict" in s for s in steps)


def test_ci_fails_on_the_first_failing_step(tmp_path: Path):
    script = CI.read_text().split("\nstep '", 1)[0]  # the preamble: options and step()
    probe = tmp_path / "probe"
    probe.write_text(script + "\nstep 'false && true'\necho still-running\n")
    proc = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "still-running" not in proc.stdout


def test_readme_is_one_screen():
    text = README.read_text()
    assert len(text) < 10_000, len(text)
    assert "batch_walkthrough.ipynb" in text and "parallel_count" in text
    assert "concurrency" in text or "concurrent" in text


# -- links ----------------------------------------------------------------------------------


def _relative_links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in _LINK.findall(text)
            if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", MARKDOWN, ids=[_name(p) for p in MARKDOWN])
def test_relative_links_resolve(page: Path):
    for target in _relative_links(page):
        resolved = (page.parent / target.split("#", 1)[0]).resolve()
        assert resolved.exists(), f"{_name(page)}: broken link {target}"
        if page.parent == DOCS:  # mkdocs only serves what is under docs/
            assert DOCS in resolved.parents, f"{_name(page)}: link leaves docs/: {target}"


def test_readme_links_the_docs_and_the_walkthrough():
    links = _relative_links(README)
    assert "examples/batch_walkthrough.ipynb" in links
    assert {f"docs/{p.name}" for p in PAGES if p.name != "index.md"} <= {
        t.split("#")[0] for t in links}


# -- the command line shown exists ----------------------------------------------------------


def _subparsers() -> dict:
    from localbatch._cli.parser import build_parser

    parser = build_parser()
    choices = next(a.choices for a in parser._actions if a.choices and "run" in a.choices)
    return {"": parser, **choices}


def _console_commands(path: Path) -> list[str]:
    out = []
    for b in blocks(path):
        if b.lang != "console":
            continue
        for line in b.code.splitlines():
            if line.startswith("$ localbatch ") or line.startswith("$ timeout "):
                command = re.split(r"\s+#\s", line[2:])[0]
                out.append(command.split(" | ")[0].split(" > ")[0])
    return out


def _shown(path: Path) -> list[tuple[str, list[str]]]:
    """(command, flags) of every ``localbatch ...`` the page shows."""
    text = path.read_text()
    shown = [(m.group(1), _FLAG.findall(m.group(2))) for m in _INLINE_CLI.finditer(text)]
    for command in _console_commands(path):
        words = shlex.split(command)
        words = words[words.index("localbatch") + 1:]
        name = next((w for w in words if not w.startswith("-")), "")
        shown.append((name, [w.split("=")[0] for w in words if w.startswith("-")]))
    return shown


@pytest.mark.parametrize("page", MARKDOWN, ids=[_name(p) for p in MARKDOWN])
def test_cli_commands_shown_exist(page: Path):
    parsers = _subparsers()
    for name, flags in _shown(page):
        if name in PENDING:
            continue
        assert name in parsers, f"{_name(page)}: no command `localbatch {name}`"
        known = set(parsers[name]._option_string_actions) | set(
            parsers[""]._option_string_actions)
        missing = [f for f in flags if f not in known and f not in PENDING]
        assert not missing, f"{_name(page)}: `localbatch {name}` has no {missing}"


@pytest.mark.parametrize("page", MARKDOWN, ids=[_name(p) for p in MARKDOWN])
def test_transcript_commands_parse(page: Path):
    """Each command of a session parses exactly as typed (arguments, values, order)."""
    from localbatch._cli.parser import build_parser

    for command in _console_commands(page):
        words = shlex.split(command)
        words = words[words.index("localbatch") + 1:]
        if PENDING & set(words):
            continue
        try:
            build_parser().parse_args(words)
        except SystemExit:
            pytest.fail(f"{_name(page)}: `localbatch {shlex.join(words)}` does not parse")


# -- the site builds and documents the whole public surface ------------------------------------


def test_api_reference_covers_the_public_surface():
    import localbatch

    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: localbatch\.(\w+)$", text, re.M))
    assert set(localbatch.__all__) - {"__version__"} <= documented


def test_mkdocs_build_strict(tmp_path: Path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
