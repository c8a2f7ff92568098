"""The built wheel holds every subpackage: a folder added to the package ships.

A hand-written ``packages`` list silently drops new folders from the wheel while
editable installs and the tests still pass; this builds the real wheel.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


def _build_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder), str(REPO)], check=True, timeout=280,
                   capture_output=True)
    (wheel,) = folder.glob("localbatch-*.whl")
    return wheel


needs_source = pytest.mark.skipif(not (REPO / "pyproject.toml").exists(),
                                  reason="needs the source tree")


@needs_source
@pytest.mark.timeout(300)
def test_the_wheel_contains_every_subpackage_and_py_typed(tmp_path):
    wheel = _build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "localbatch"
    sources = {p.relative_to(REPO).as_posix() for p in package.rglob("*.py")}
    assert sources - shipped == set()
    assert "localbatch/_workers/child.py" in shipped
    assert "localbatch/py.typed" in shipped
    entry_points = next(n for n in shipped if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "localbatch = localbatch._cli:main" in text
    assert "localbatch = localbatch._pytest_plugin" in text


@needs_source
@pytest.mark.timeout(300)
def test_the_installed_wheel_runs_the_cli_a_batch_and_the_pytest_plugin(tmp_path):
    """Not only editable: the wheel in a fresh environment, away from the source tree."""
    wheel = _build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    # The project's dependencies come from this environment; localbatch from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    python = venv / "bin" / "python"
    # --ignore-installed: a localbatch installed outside the venv (as CI installs it) must
    # not count as already there.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                    str(wheel)],
                   check=True, timeout=120, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> str:
        out = subprocess.run(list(args), cwd=work, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert run(str(python), "-m", "localbatch._cli", "--help").startswith("usage: localbatch")
    assert run(str(venv / "bin" / "localbatch"), "--version").strip()
    script = (
        "import localbatch, sys\n"
        "c = localbatch.DeployClient('store')\n"
        "svc = c.service('w').version('1').code_str('r = a * 2').inputs(a=float)"
        ".outputs(r=float).deploy()\n"
        "r = svc.batch({'a': [1.0, 2.0]}, parallel_count=2).start().wait(60)\n"
        "print(localbatch.__file__, r.state, r.to_frame()['r'].tolist())\n")
    where, state, values = run(str(python), "-c", script).split(" ", 2)
    assert where.startswith(str(venv)) and (state, values.strip()) == ("Complete", "[2.0, 4.0]")
    # The pytest plugin, found through the installed wheel's entry point.
    (work / "test_fixture.py").write_text(
        "import localbatch\n"
        "def test_fixture(localbatch_client):\n"
        f"    assert localbatch.__file__.startswith({str(venv)!r})\n"
        "    assert localbatch_client.list_services() == []\n")
    assert "1 passed" in run(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "test_fixture.py")
