"""Where the command line finds things: the store, a service, an execution.

Below ``main`` and the commands, so that both can import it without a cycle. The
second half, "reach into the engine", is the only place the CLI touches engine and
store internals (``client._executions``, ``effective_header``, a Batch's options);
each such function is marked ``# lead: switch to Executions``.

Imports of the SDK are deferred: ``_client`` pulls in numpy and the engine (~100 ms),
which ``localbatch --help`` should not wait for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ExecutionNotFoundError, ServiceNotFoundError
from .exits import CliError
from .output import folder_size

if TYPE_CHECKING:
    from .._batch import Batch
    from .._client import DeployClient
    from .._service import Service
    from .._store.executions import ExecutionStore

__all__ = [
    "execution_folder",
    "find_service",
    "hint_prefix",
    "live_header",
    "open_client",
    "owner_alive",
    "prune_one",
    "rerun_batch",
    "resolve_id",
    "store_path",
]


def store_path(args: argparse.Namespace) -> Path:
    from .._client import default_store  # deferred: start-up cost (module docstring)

    return Path(args.store).expanduser() if args.store else default_store()


def open_client(args: argparse.Namespace) -> DeployClient:
    """The store's client; a store that does not exist is an error, never created here."""
    from .._client import DeployClient  # deferred: start-up cost (module docstring)

    path = store_path(args)
    if not path.is_dir():
        raise CliError(f"no localbatch store at {path} (deploy a service first, or pass "
                       "--store PATH)")
    return DeployClient(str(path))


def find_service(client: DeployClient, spec: str) -> Service:
    """``NAME`` (latest version) or ``NAME@VERSION``; a name may itself contain '@'."""
    if "@" in spec:
        name, version = spec.rsplit("@", 1)
        try:
            return client.get_service(name, version=version)
        except ServiceNotFoundError as first:
            try:
                return client.get_service(spec)
            except ServiceNotFoundError:
                raise first from None
    return client.get_service(spec)


def resolve_id(client: DeployClient, text: str) -> str:
    """A full execution id, or a unique prefix of one (as ``status`` prints them)."""
    store = _store(client)
    with contextlib.suppress(ExecutionNotFoundError):
        if store.exists(text):
            return text
    matches = [i for i in store.list_ids() if i.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CliError(f"execution id prefix {text!r} is ambiguous: "
                       f"{', '.join(sorted(matches)[:5])}")
    raise CliError(f"no execution with id {text!r} in {client.store_path}")


def hint_prefix(args: argparse.Namespace) -> str:
    return f"localbatch --store {args.store}" if args.store else "localbatch"


# -- reach into the engine: every private access of the CLI, in one place ---------------------


# lead: switch to Executions
def _store(client: DeployClient) -> ExecutionStore:
    return client._executions


# lead: switch to Executions
def live_header(client: DeployClient, execution_id: str) -> dict[str, Any]:
    """The header as readers must see it: a dead owner never reads as running."""
    from .._engines.executions import effective_header  # deferred: start-up cost

    return effective_header(_store(client), execution_id)


# lead: switch to Executions
def owner_alive(client: DeployClient, execution_id: str) -> bool:
    return _store(client).owner_alive(execution_id)


# lead: switch to Executions
def execution_folder(client: DeployClient, execution_id: str) -> Path:
    return _store(client).path(execution_id)


# lead: switch to Executions (its stored options replace this rebuild)
def rerun_batch(client: DeployClient, execution_id: str, parallel_count: int | None = None
                ) -> Batch:
    """The execution's Batch, with the options it was started with (for resume/retry)."""
    from .._engines.base import BatchOptions  # deferred: start-up cost

    batch = client.get_execution(execution_id)
    header = _store(client).read_header(execution_id)
    stored = dict(header.get("options") or {})
    known = {k: stored[k] for k in ("max_attempts", "row_timeout", "init_timeout",
                                    "error_threshold", "start_method") if k in stored}
    options = BatchOptions(parallel_count=parallel_count or int(header.get("parallel_count")
                                                                 or os.cpu_count() or 1),
                           limits=dict(stored.get("limits") or {}), **known)
    batch._options = options.validate()
    return batch


# lead: switch to Executions
def prune_one(client: DeployClient, execution_id: str, dry_run: bool) -> int | None:
    """Delete one execution (unless ``dry_run``): its size, or None while it is owned."""
    store = _store(client)
    # Holding the owner lock while deleting: a resume starting right now waits, or wins.
    lock = store.take_ownership(execution_id, attempts=5)
    if lock is None:
        return None
    try:
        size = folder_size(store.path(execution_id))
        if not dry_run:
            store.delete(execution_id)
    finally:
        lock.release()
    return size
