"""The chunk result: what scoring a chunk of rows gives back, wherever the rows ran.

A worker process, the inline engine and a Dask task all produce it
(``Runtime.run_rows``); the supervisors read it and the committer turns it into
a part. It crosses process boundaries pickled, so it stays a plain dict: the
:class:`ChunkResult` TypedDict only names its keys. Per-row fields that are
missing on every row are sent as ``None`` (cheap to pickle, no per-row work for
the owner); read them with :func:`per_row`.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from .columns import Column

__all__ = ["ChunkResult", "RowError", "failed_rows", "index_array", "per_row"]

#: A row's failure: (exception type name, message, traceback text).
RowError = tuple[str, str, str]


class ChunkResult(TypedDict, total=False):
    """One chunk's rows, in the order they were sent."""

    #: Row numbers (int64 array, or a list).
    index: Any
    #: Per row ``time.time()`` when it started / ended (float arrays, or lists).
    started: Any
    ended: Any
    #: Per row its error or None; None when no row failed.
    errors: list[RowError | None] | None
    #: Per row its console text or None; None when no row printed.
    console: list[str | None] | None
    #: Encoded output columns by output name (None: a call that never ran).
    outputs: dict[str, Column] | None
    #: Files the rows left behind: ``{row number: {file name: bytes}}``.
    artifacts: dict[int, dict[str, bytes]]
    #: The process that ran the rows.
    pid: int
    #: Added by the committer: per row the attempt that produced it.
    attempts: Any
    #: Added by the committer for ``retry_failed``: per row its earlier errors (JSON).
    history: list[str | None]


def index_array(indices: Any) -> np.ndarray:
    """A chunk's row numbers as an int64 array (a ``range`` too, without a Python int each)."""
    if isinstance(indices, range):
        return np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    return np.asarray(indices, np.int64)


def per_row(result: ChunkResult, key: str) -> list[Any]:
    """A chunk result's per-row field as a list; None there stands for None on every row
    (``errors`` when no row failed, ``console`` when none printed)."""
    values = result[key]  # type: ignore[literal-required]
    return [None] * len(result["index"]) if values is None else values


def failed_rows(result: ChunkResult) -> int:
    """How many of the chunk's rows failed."""
    errors = result["errors"]
    return 0 if errors is None else len(errors) - errors.count(None)  # a C loop
