"""Where the command line finds things: the store, a service, an execution.

Below ``main`` and the commands, so that both can import it without a cycle. The
second half works on the store's executions through an
:class:`~localbatch._engines.executions.Executions` of its own, opened on the
client's store path: the CLI never reads another object's privates.

Imports of the SDK are deferred: ``_client`` pulls in numpy and the engine (~100 ms),
which ``localbatch --help`` should not wait for.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ExecutionNotFoundError, ServiceNotFoundError
from .exits import CliError
from .output import folder_size

if TYPE_CHECKING:
    from .._batch import Batch
    from .._client import DeployClient
    from .._engines.executions import Executions
    from .._service import Service

__all__ = [
    "execution_folder",
    "executions_of",
    "find_service",
    "hint_prefix",
    "live_counts",
    "live_header",
    "open_client",
    "open_executions",
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
    store = executions_of(client).store
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


# -- the store's executions ------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _executions_at(path: Path) -> Executions:
    from .._engines.executions import Executions  # deferred: start-up cost

    return Executions.open(path)


def open_executions(args: argparse.Namespace) -> Executions:
    """The executions of the store the command line names."""
    return _executions_at(store_path(args))


def executions_of(client: DeployClient) -> Executions:
    """The executions of the client's store (one object per store in this process)."""
    return _executions_at(Path(client.store_path))


def live_header(client: DeployClient, execution_id: str) -> dict[str, Any]:
    """The header as readers must see it: a dead owner never reads as running."""
    return executions_of(client).header(execution_id)


def live_counts(client: DeployClient, header: dict[str, Any]) -> tuple[int, int]:
    """(recorded, failed) rows of a running execution, from its published parts.

    The owner rewrites the header's counters at most every 0.2 s and only when it
    commits, so they can trail the parts (and the owner's own progress bar, which
    also counts what it holds); the parts are what is recorded. During a retry the
    retried rows still have their old record: the header's counts are used then.
    """
    done, failed = int(header.get("completed") or 0), int(header.get("failed") or 0)
    if header.get("retried_with") is not None:
        return done, failed
    recorded, bad = executions_of(client).store.recorded_counts(header["execution_id"],
                                                                int(header["total"]))
    return max(done, recorded), max(failed, bad)


def owner_alive(client: DeployClient, execution_id: str) -> bool:
    return executions_of(client).store.owner_alive(execution_id)


def execution_folder(client: DeployClient, execution_id: str) -> Path:
    return executions_of(client).store.path(execution_id)


def rerun_batch(client: DeployClient, execution_id: str, parallel_count: int | None = None
                ) -> tuple[Batch, dict[str, Any]]:
    """The execution's Batch, and the option overrides of a resume or retry: it runs with
    the options it was started with, ``--parallel-count`` on top."""
    batch = client.get_execution(execution_id)
    return batch, ({} if parallel_count is None else {"parallel_count": parallel_count})


def prune_one(client: DeployClient, execution_id: str, dry_run: bool) -> int | None:
    """Delete one execution (unless ``dry_run``): its size, or None while it is owned."""
    store = executions_of(client).store
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
