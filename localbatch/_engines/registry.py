"""Engines by name: where a batch's rows run. A small seam with interchangeable backends.

- ``local`` (default): supervised worker processes on this machine (``local.py``);
- ``inline``: rows run in the calling thread during ``start()`` (``inline.py``);
- ``dask``: chunks of rows on a Dask cluster (``localbatch[dask]``), results
  committed to the same local store (``dask.py``). Imported only when asked for,
  like joblib's ``EXTERNAL_BACKENDS``: dask is heavy, and the local engine never
  needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import ConfigurationError
from .._store.registry import ServiceRecord
from .base import Engine
from .inline import InlineEngine
from .local import LocalEngine, warm

__all__ = ["ENGINES", "EXTERNAL_ENGINES", "get_engine", "warm_service"]


def _dask_engine(client: Any = None) -> Engine:
    from .dask import DaskEngine  # dask is imported only by those who ask for it

    return DaskEngine(client)


#: Engines by the name ``svc.batch(..., engine=name)`` takes.
ENGINES: dict[str, Callable[[], Engine]] = {"local": LocalEngine, "inline": InlineEngine}
#: Engines whose module (and library) is imported on first use.
EXTERNAL_ENGINES: dict[str, Callable[[], Engine]] = {"dask": _dask_engine}


def get_engine(engine: Any) -> Engine:
    """An engine from a name, an Engine, or a ``dask.distributed.Client``."""
    if engine is None:
        return LocalEngine()
    if isinstance(engine, Engine):
        return engine
    if isinstance(engine, str):
        factory = ENGINES.get(engine) or EXTERNAL_ENGINES.get(engine)
        if factory is None:
            raise ConfigurationError(
                f"unknown engine {engine!r}: use 'local', 'inline', 'dask' or a "
                "dask.distributed.Client")
        return factory()
    if type(engine).__module__.startswith("distributed"):
        return _dask_engine(engine)
    raise ConfigurationError(f"engine must be 'local', 'inline' or a dask.distributed.Client, "
                             f"not {type(engine).__name__}")


def warm_service(engine: Engine, record: ServiceRecord, start_method: str) -> None:
    """Start loading a service where its batches will run, ahead of need (at deploy();
    get_service() never loads code): the local engine's warm template; nothing for the others."""
    if isinstance(engine, LocalEngine):
        warm(record, start_method)
