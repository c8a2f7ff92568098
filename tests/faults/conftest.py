"""Fixtures of the fault suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def fault_log(tmp_path, monkeypatch):
    """A side channel where fault functions note every real execution of a row."""
    log = tmp_path / "runs"
    log.mkdir()
    monkeypatch.setenv("FAULT_LOG", str(log))
    return log
