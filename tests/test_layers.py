"""The package's layering, as a failing build: imports point down, and nothing cycles.

Read from the source (AST), not from a running interpreter, so an import inside a
function counts as much as one at the top; imports under ``if TYPE_CHECKING:``
are for type checkers only and do not count.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import localbatch

PACKAGE = Path(localbatch.__file__).parent
ROOT = PACKAGE.parent

#: Highest first. A module may import modules of its own entry or of any entry below.
LAYERS: list[set[str]] = [
    {"__init__", "compat", "_pytest_plugin"},
    {"_client", "_definition", "_service", "_responses", "_batch", "_views", "_cli"},
    {"_engines"},
    {"_workers"},
    {"_store"},
    {"_format", "_schema", "_logging", "_errors", "_version"},
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name ('localbatch._store.commit')."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    entry = parts[1] if len(parts) > 1 else "__init__"
    for level, names in enumerate(LAYERS):
        if entry in names:
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run (anywhere but under ``if TYPE_CHECKING:``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            children: list[ast.AST] = list(child.orelse)
        else:
            children = [child]
        for each in children:
            if isinstance(each, (ast.Import, ast.ImportFrom)):
                yield each
            yield from _runtime_imports(each)


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    parts = module.split(".")
    parts = parts if is_package else parts[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _edges(module: str) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for localbatch imports."""
    tree = ast.parse(MODULES[module].read_text())
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "localbatch":
                    yield alias.name, None, node.lineno
            continue
        base = _base(module, node)
        if base.split(".")[0] != "localbatch":
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:  # ``from . import module``
                yield sub, None, node.lineno
            else:
                yield base, alias.name, node.lineno


GRAPH = {m: sorted({target for target, _, _ in _edges(m) if target != m}) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = [f"line {line}: {target}" for target, _, line in _edges(module)
              if target in MODULES and _layer(target) < _layer(module)]
    assert not upward, f"{module} imports a higher layer: {upward}"


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components larger than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_runtime_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def _all_of(module: str) -> set[str] | None:
    tree = ast.parse(MODULES[module].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_names_imported_across_modules_are_in_all(module):
    missing = []
    for target, name, line in _edges(module):
        if name is None or target not in MODULES or target == "localbatch":
            continue
        exported = _all_of(target)
        if exported is None or name not in exported:
            missing.append(f"line {line}: {name} from {target}")
    assert not missing, f"{module} imports names its source does not export: {missing}"


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    return set(out.stdout.split())


def test_the_worker_child_imports_nothing_of_the_parent_side():
    loaded = _imported_after("import localbatch._workers.child")
    parent_side = {"localbatch._engines", "localbatch._store.commit",
                   "localbatch._engines.supervisor", "localbatch._client", "pandas"}
    assert not parent_side & loaded


def test_the_command_line_starts_without_numpy_or_the_engine():
    """``localbatch --help`` stays fast: the SDK and the engine load when a command runs."""
    loaded = _imported_after("import localbatch._cli")
    assert not {"numpy", "pandas", "localbatch._engines", "localbatch._client"} & loaded


def test_the_dask_task_module_imports_no_supervisor_or_store_writer():
    loaded = _imported_after("import localbatch._engines.dask_tasks")
    caller_side = {"localbatch._engines.supervisor", "localbatch._engines.base",
                   "localbatch._store.commit", "localbatch._engines.dask", "distributed"}
    assert not caller_side & loaded


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean():
    """Style and the private-access rule (SLF): ``other._private`` fails the build."""
    repo = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "localbatch", "tests",
                          "bench"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, textwrap.shorten(out.stdout, 3000)
