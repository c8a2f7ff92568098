"""The engine seam: options, the context an engine runs in, and its handle.

An engine runs the rows of one execution that have no record yet and commits
them through the execution's :class:`~localbatch._store.commit.Committer`. The local
process engine, the inline engine and the Dask engine implement it.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigurationError
from .._format.columns import Column, decode_all
from .._schema import EncodingType
from .._store.commit import Committer
from .._store.executions import ExecutionStore, OwnerLock
from .._store.registry import ServiceRecord
from .._workers.process import START_METHODS

__all__ = ["RUNS", "BatchOptions", "Chunk", "DoneHandle", "Engine", "RunContext", "RunHandle",
           "Runs", "input_chunks"]


@dataclass
class Chunk:
    """A dispatch chunk: rows (by index) and their input columns (lists or arrays)."""

    id: int
    indices: np.ndarray  # int64 row numbers
    columns: dict[str, Any]
    #: When it was handed to a worker (for the adaptive chunk size).
    sent: float = 0.0
    #: Runs with nothing else of its batch beside it (a row suspected of killing workers).
    alone: bool = False

    def split(self, positions: list[int]) -> tuple[np.ndarray, dict[str, Any]]:
        """The indices and columns of some of its rows, by position."""
        return (np.asarray(self.indices, np.int64)[positions],
                {k: v[positions] if isinstance(v, np.ndarray) else [v[p] for p in positions]
                 for k, v in self.columns.items()})


#: The per-row caps as ``svc.batch`` names them, by their key in ``BatchOptions.limits``.
LIMIT_OPTIONS = {"console_limit": "console_bytes", "artifact_limit": "artifact_bytes",
                 "output_limit": "output_bytes"}


@dataclass
class BatchOptions:
    """Per-batch options (keyword arguments of ``svc.batch``), checked as they are set.

    Every field is validated on assignment (in ``__init__`` too), so a bad value
    raises ``ConfigurationError`` naming the option and the value where the user
    passed it — ``svc.batch(...)``, ``batch.parallel_count = ...``, the CLI,
    ``resume``/``retry_failed`` overrides — and is never stored: counts are ints
    (a bool is not a number here), seconds are finite and positive (NaN would
    disable a timeout), caps are whole positive numbers of bytes.
    """

    parallel_count: int = 10
    max_attempts: int = 3
    row_timeout: float | None = None
    init_timeout: float | None = 300.0
    error_threshold: int | None = None
    start_method: str = "spawn"
    limits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_call(cls, start_method: str, parallel_count: Any, options: dict[str, Any]
                  ) -> BatchOptions:
        """The options of a ``svc.batch(records, parallel_count, **options)`` call."""
        limits = {key: options.pop(name) for name, key in LIMIT_OPTIONS.items()
                  if name in options}
        options.setdefault("start_method", start_method)
        return cls(parallel_count=parallel_count, limits=limits, **options)

    def __setattr__(self, name: str, value: Any) -> None:
        check = _CHECKS.get(name)
        super().__setattr__(name, value if check is None else check(name, value))

    def validate(self) -> BatchOptions:
        """Every field checked again (they are on assignment; kept for callers)."""
        for name in _CHECKS:
            setattr(self, name, getattr(self, name))
        return self

    def to_json(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "row_timeout": self.row_timeout,
                "init_timeout": self.init_timeout, "error_threshold": self.error_threshold,
                "start_method": self.start_method, "limits": dict(self.limits)}


def _refuse(name: str, value: Any, rule: str) -> ConfigurationError:
    return ConfigurationError(f"{name} must be {rule}, not {value!r}"[:300])


def _count(minimum: int, none_ok: bool = False) -> Any:
    """A check of a whole number >= ``minimum`` (numpy ints too; bools and floats not)."""
    def check(name: str, value: Any) -> Any:
        if value is None and none_ok:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                or value < minimum:
            rule = f"an int >= {minimum}" + (" or None" if none_ok else "")
            raise _refuse(name, value, rule)
        return int(value)
    return check


def _seconds(name: str, value: Any) -> Any:
    """Seconds: a finite number > 0, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise _refuse(name, value, "a finite number of seconds > 0, or None for no limit")
    return float(value)


def _start_method(name: str, value: Any) -> Any:
    if value not in START_METHODS:
        raise _refuse(name, value, f"one of {', '.join(START_METHODS)}")
    return value


def _limits(name: str, value: Any) -> Any:
    """The per-row caps: whole numbers of bytes >= 1 (an integral float is taken)."""
    if not isinstance(value, dict):
        raise _refuse(name, value, "a dict of byte caps")
    out = {}
    for key, cap in value.items():
        option = next((n for n, k in LIMIT_OPTIONS.items() if k == key), None)
        if option is None:
            raise _refuse(name, key, f"one of {', '.join(LIMIT_OPTIONS.values())}")
        whole = int(cap) if isinstance(cap, float) and math.isfinite(cap) \
            and cap.is_integer() else cap  # output_limit=100e6
        try:
            out[key] = _count(1)(option, whole)
        except ConfigurationError:
            raise _refuse(option, cap, "a whole number of bytes >= 1") from None
    return out


_CHECKS = {"parallel_count": _count(1), "max_attempts": _count(1),
           "row_timeout": _seconds, "init_timeout": _seconds,
           "error_threshold": _count(0, none_ok=True), "start_method": _start_method,
           "limits": _limits}


@dataclass
class RunContext:
    """Everything an engine needs to run the unrecorded rows of one execution."""

    store: ExecutionStore
    record: ServiceRecord
    committer: Committer
    lock: OwnerLock
    options: BatchOptions
    log: Any


class RunHandle(ABC):
    """One run of an execution by this process: what the facade waits on or cancels."""

    #: The execution's id.
    id: str
    #: Set once the run has let go of everything (workers, ownership, log).
    done: threading.Event
    #: The run's single writer; None for a run that ended before ``run()`` returned.
    committer: Committer | None = None

    @abstractmethod
    def cancel(self, timeout: float | None = None) -> bool: ...


class Runs:
    """The runs this process started (any engine), by execution id.

    A finished run stays listed, so a late ``wait()`` returns at once; ``live()``
    are the ones still working. A ``fork()``ed child starts with none: the
    parent's runs are threads the child does not have (their handles would never
    be done, and a ``wait()`` on them would never return), so the child sees
    those executions through the store, as any other process does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunHandle] = {}

    def forget(self) -> None:
        """Drop every run, and a lock another thread may have held at the fork."""
        self._lock = threading.Lock()
        self._runs = {}

    def add(self, handle: RunHandle) -> None:
        with self._lock:
            self._runs[handle.id] = handle

    def get(self, execution_id: str) -> RunHandle | None:
        return self._runs.get(execution_id)

    def owns(self, execution_id: str) -> bool:
        """Whether a run of this process is still working on the execution."""
        handle = self._runs.get(execution_id)
        return handle is not None and not handle.done.is_set()

    def live(self) -> list[RunHandle]:
        with self._lock:
            return [h for h in self._runs.values() if not h.done.is_set()]


#: The runs of this process.
RUNS = Runs()
os.register_at_fork(after_in_child=RUNS.forget)


class Engine(ABC):
    """Runs an execution's pending rows and commits them through ``ctx.committer``."""

    #: Name used in ``svc.batch(..., engine=name)``.
    name: ClassVar[str]
    #: Whether rows are isolated from the caller (a crash is charged to the row).
    isolates_rows: ClassVar[bool] = True

    def prepare(self, record: ServiceRecord, options: BatchOptions, rows: int | None) -> None:
        """Start what a batch of ``rows`` rows (None: not known yet) will need, while
        its inputs are being spooled; nothing by default."""
        return None

    @abstractmethod
    def run(self, ctx: RunContext) -> RunHandle: ...


class DoneHandle(RunHandle):
    """The handle of a run that ended before ``run()`` returned (inline, failed start)."""

    def __init__(self, execution_id: str) -> None:
        self.id = execution_id
        self.done = threading.Event()
        self.done.set()

    def cancel(self, timeout: float | None = None) -> bool:
        return True


def input_chunks(store: ExecutionStore, execution_id: str, inputs: list[tuple[str, Any]],
                 recorded: np.ndarray) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Rows without a record, one input part at a time (bounded memory)."""
    for part in store.iter_inputs(execution_id, take=True):
        rows = part.column("row").buffers["values"]
        keep = np.flatnonzero(~recorded[rows])
        if len(keep) == 0:
            continue
        cols = {name: _input_values(part.column(f"in.{name}"), enc) for name, enc in inputs}
        if len(keep) < len(rows):
            sel = keep.tolist()
            cols = {k: v[keep] if isinstance(v, np.ndarray) else [v[p] for p in sel]
                    for k, v in cols.items()}
        yield rows[keep], cols


def _input_values(column: Column, enc: EncodingType) -> Any:
    kind, bufs = column.kind, column.buffers
    if kind in ("float", "int", "bool") and not bufs["mask"].any():
        # Sent to workers as arrays (a memcpy to pickle); they make Python values.
        return bufs["values"]
    values = decode_all(column)
    if enc in (EncodingType.vector, EncodingType.matrix):
        return [None if v is None else np.asarray(v) for v in values]
    return values
