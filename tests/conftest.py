"""Shared fixtures: every store lives under tmp_path; every test reaps its processes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

import numpy  # noqa: F401 - loaded once here: pytester's in-process runs unload new modules,
import pandas  # noqa: F401 - and numpy's C extension cannot be loaded twice in a process
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

# hypothesis imports libcst to explain a failing example, and that import warns
# (a DeprecationWarning, an error in this suite): imported once here, quietly, a
# failure of any property test reads as a failure instead of a pytest INTERNALERROR.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import libcst.metadata  # noqa: F401

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def client(store: Path):
    from localbatch import DeployClient

    c = DeployClient(str(store))
    yield c
    c.close()


@pytest.fixture
def mtcars():
    import pandas as pd

    return pd.read_csv(DATA / "mtcars.csv")


def _live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _children() -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process().children(recursive=True) if _live(p)]
    except psutil.Error:
        return []


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline()[-4:])}"
    except psutil.Error:
        return str(p.pid)


@pytest.fixture(autouse=True)
def _reap_processes():
    """No test may leave a worker (or anything it started) running."""
    yield
    from localbatch._engines.base import RUNS
    from localbatch._workers.pool import WORKER_POOL

    # A batch can read Complete a moment before its supervisor hands workers back.
    deadline = time.monotonic() + 10
    while RUNS.live() and time.monotonic() < deadline:
        time.sleep(0.02)
    WORKER_POOL.close()
    deadline = time.monotonic() + 5
    left = _children()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in _children() if not _is_zygote(p)]
    left = [p for p in left if _live(p)]
    described = [_describe(p) for p in left]
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"stray processes: {described}"


def _is_zygote(p: psutil.Process) -> bool:
    # The forkserver zygote lives as long as the test process, by design.
    try:
        return "--zygote" in p.cmdline()
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def _no_home_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeployClient() without a path must never touch the real per-user store in tests."""
    monkeypatch.setenv("LOCALBATCH_HOME", str(tmp_path / "default-store"))
    monkeypatch.setenv("LOCALBATCH_IDLE_TIMEOUT", os.environ.get("LOCALBATCH_IDLE_TIMEOUT", "60"))
