"""pytest fixtures for testing code that consumes ML Server services, without a server.

Registered through the ``pytest11`` entry point. Nothing is imported or
activated unless a test asks for a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["azureml_local", "localbatch_client"]


@pytest.fixture
def localbatch_client(tmp_path: Any) -> Iterator[Any]:
    """A ``DeployClient`` on a fresh store under ``tmp_path``; warm workers stop at teardown."""
    from localbatch import DeployClient

    client = DeployClient(str(tmp_path / "localbatch-store"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def azureml_local(tmp_path: Any, monkeypatch: Any) -> Iterator[Any]:
    """The ``azureml`` drop-in for this test only, on a fresh default store under tmp_path."""
    from localbatch import compat
    from localbatch._pool import WORKER_POOL

    monkeypatch.setenv("LOCALBATCH_HOME", str(tmp_path / "azureml-store"))
    with compat.azureml() as handle:
        try:
            yield handle
        finally:
            WORKER_POOL.close()
