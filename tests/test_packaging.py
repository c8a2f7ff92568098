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


@pytest.mark.skipif(not (REPO / "pyproject.toml").exists(), reason="needs the source tree")
@pytest.mark.timeout(300)
def test_the_wheel_contains_every_subpackage_and_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, timeout=280,
                   capture_output=True)
    (wheel,) = tmp_path.glob("localbatch-*.whl")
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
