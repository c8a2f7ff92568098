"""pytest fixtures for testing code that consumes ML Server services, without a server.

Registered through localbatch's ``pytest11`` entry point, so installing
localbatch is enough. The plugin only defines fixtures: a test suite that does
not request them gets no ``azureml`` module, no store and no worker process.

- ``localbatch_client``: a ``DeployClient`` on a fresh store under ``tmp_path``;
- ``azureml_local``: the ``azureml`` drop-in installed for one test, its
  default store a fresh folder under ``tmp_path``.

Both take an engine by indirect parametrization, e.g.
``@pytest.mark.parametrize("azureml_local", ["inline"], indirect=True)`` runs
the test's batches in the test's own process. At teardown, batches the test
left running are canceled and warm workers are stopped.

The fixtures import the SDK when they run: the plugin itself is loaded by every
pytest session of an environment where localbatch is installed, and must cost
those sessions nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbatch._store.states import ACTIVE

__all__ = ["azureml_local", "localbatch_client"]



def _engine(request: pytest.FixtureRequest) -> Any:
    """The engine named by indirect parametrization (None: localbatch's default)."""
    return getattr(request, "param", None)


def _stop_store(store: Path) -> None:
    """Cancel the batches this process still runs on ``store``; stop warm workers."""
    from localbatch import DeployClient
    from localbatch._workers.pool import WORKER_POOL

    try:
        if store.is_dir():
            client = DeployClient(store)
            for header in client.list_executions():
                if header["state"] in ACTIVE and header.get("owner_pid") == os.getpid():
                    client.get_execution(header["execution_id"]).cancel()
    finally:
        WORKER_POOL.close()


@pytest.fixture
def localbatch_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A ``DeployClient`` on a fresh store under ``tmp_path``, closed at teardown.

    Parametrize it indirectly with an engine name (``"inline"``) to choose the
    client's engine.
    """
    from localbatch import DeployClient

    store = tmp_path / "localbatch-store"
    client = DeployClient(store, engine=_engine(request))
    try:
        yield client
    finally:
        _stop_store(store)
        client.close()


@pytest.fixture
def azureml_local(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The ``azureml`` drop-in for this test only; yields its ``DropIn`` handle.

    ``from azureml.deploy import DeployClient`` then works in the test and in the
    code it calls; ``DeployClient(HOST, use=MLServer, auth=...)`` opens a fresh
    store under ``tmp_path`` (``azureml_local.store``), also for subprocesses
    through ``$LOCALBATCH_HOME``. Parametrize it indirectly with an engine name
    (``"inline"``) to choose the drop-in clients' default engine.
    """
    from localbatch import compat

    store = tmp_path / "azureml-store"
    monkeypatch.setenv("LOCALBATCH_HOME", str(store))
    with compat.azureml(store, engine=_engine(request)) as handle:
        try:
            yield handle
        finally:
            _stop_store(handle.store)
