"""``Batch`` and ``BatchResponse``: the SDK's asynchronous API, on the local store."""

from __future__ import annotations

import operator
import os
import sys
import threading
import warnings
from pathlib import Path
from pprint import pformat
from typing import TYPE_CHECKING, Any

import numpy as np

from ._engines.base import BatchOptions
from ._engines.executions import Executions
from ._engines.registry import get_engine
from ._errors import (
    BatchError,
    BatchNotStartedError,
    BatchTimeoutError,
    LocalBatchWarning,
    RowNotRecordedError,
    SchemaError,
)
from ._responses import ServiceResponse
from ._schema import InputTable, normalize_records
from ._store.arrow import ArrowSource, arrow_source
from ._store.executions import check_artifact_name
from ._store.fsutil import atomic_write_with
from ._store.keys import KeyedSource, keys_source
from ._store.registry import ServiceRecord
from ._store.results import ResultReader
from ._store.spool import CsvSource
from ._store.tables import failed_with_keys, frame_with_keys, result_frames, write_parquet
from ._views import batch_html, wait_with_progress

if TYPE_CHECKING:
    from ._service import Service

from ._store.states import TERMINAL

__all__ = ["Batch", "BatchResponse"]

#: Validated records, until ``start()`` spools them.
Records = InputTable | CsvSource | ArrowSource | KeyedSource

_OPTION_NAMES = {"max_attempts", "row_timeout", "init_timeout", "error_threshold",
                 "start_method", "console_limit", "artifact_limit", "output_limit"}


class _CallableState(str):
    """The state string, also callable: ``batch.state()`` (the SDK's stub, fixed)."""

    def __call__(self) -> str:
        return str(self)


def _options(start_method: str, parallel_count: int, options: dict[str, Any]) -> BatchOptions:
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"batch() got unexpected keyword argument(s): {', '.join(unknown)}")
    return BatchOptions.from_call(start_method, parallel_count, options)


_IGNORED = "ignoring columns that are not service inputs: "


def _validated_source(records: Any, record: ServiceRecord, keep: Any = None
                      ) -> Records:
    """Validated records (with their ``keep`` columns); their warnings point at the
    user's line, not at localbatch. Kept columns are not "ignored": the warning leaves
    them out, and is not given when the records are refused.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = keys_source(_validated(records, record), records, keep,
                             [n for n, _ in record.outputs])
    level = _user_stacklevel()
    kept = {keep} if isinstance(keep, str) else set(keep or ())
    for w in caught:
        text = str(w.message)
        if kept and text.startswith(_IGNORED):
            left = [c for c in text[len(_IGNORED):].split(", ") if c not in kept]
            if not left:
                continue
            w.message = w.category(_IGNORED + ", ".join(left))
        if issubclass(w.category, LocalBatchWarning):
            warnings.warn(w.message, w.category, stacklevel=level)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return source


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside localbatch, seen from our caller."""
    frame = sys._getframe(2)  # noqa: SLF001 - the documented way to a caller's frame
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("localbatch"):
        frame = frame.f_back
        level += 1
    return level


def _validated(records: Any, record: ServiceRecord) -> Records:
    inputs = record.inputs
    arrow = arrow_source(records, inputs) if inputs else None
    if arrow is not None:
        return arrow
    if isinstance(records, (str, os.PathLike)):
        path = Path(records)
        if path.suffix.lower() not in (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq"):
            raise TypeError(f"records path {str(path)!r} must be a .csv, .tsv or .parquet "
                            "file, or a folder of .parquet files")
        if not inputs:
            raise SchemaError("Attempt to batch a service with void inputs.")
        return CsvSource(path, inputs)
    return normalize_records(records, inputs)


class Batch:
    """A batch of records for one service: ``start()``, poll ``results()``, read rows."""

    def __init__(self, service: Service, records: Any = None, parallel_count: int = 10,
                 execution_id: str | None = None, **options: Any) -> None:
        # The SDK's public constructor: what a batch needs is taken from the service
        # once, here; after this no object reaches into another.
        record, executions = service._record, service._executions  # noqa: SLF001
        self._record: ServiceRecord = record
        self._executions: Executions = executions
        self._service_api = service.api
        engine = options.pop("engine", None)
        keep = options.pop("keep", None)
        self._engine = executions.engine if engine is None else get_engine(engine)
        self._options = _options(executions.start_method, parallel_count, options)
        self._execution_id = execution_id
        #: ``start()`` never starts twice, from any number of threads.
        self._start_lock = threading.Lock()
        self._records: Records | None = None
        if execution_id is None:
            self._records = _validated_source(records, record, keep)

    # SDK properties ----------------------------------------------------------------

    @property
    def api(self) -> str:
        """The batch endpoint, ``/api/{name}/{version}/batch``."""
        return f"{self._service_api}/batch"

    @property
    def records(self) -> Any:
        """The validated records until ``start()`` spools them; None afterwards."""
        return self._records

    @property
    def parallel_count(self) -> int:
        """How many rows run at once at most (the SDK's concurrency cap); settable before
        ``start()``."""
        return self._options.parallel_count

    @parallel_count.setter
    def parallel_count(self, value: int) -> None:
        self._options.parallel_count = value
        self._options.validate()

    @property
    def execution_id(self) -> str | None:
        """The execution's id once started (None before): ``get_batch(id)`` finds it again."""
        return self._execution_id

    @property
    def state(self) -> _CallableState:
        """The execution's state now; a string that can also be called (``state()``)."""
        return _CallableState(self._header()["state"])

    def __str__(self) -> str:
        return "<Batch> \n" + pformat({"_api": self.api, "_execution_id": self._execution_id,
                                       "_parallel_count": self.parallel_count},
                                      indent=4, width=1)

    __repr__ = __str__

    # running ------------------------------------------------------------------------

    def _id(self) -> str:
        if self._execution_id is None:
            raise BatchNotStartedError("Batch not started, `execution_id` is None: call "
                                       "start() first")
        return self._execution_id

    @property
    def _store(self) -> Any:
        return self._executions.store

    def _header(self) -> dict[str, Any]:
        return self._executions.header(self._id())

    def start(self) -> Batch:
        """Start scoring in the background and return at once (idempotent).

        Atomic: threads calling it together start one execution, and every one of
        them returns this batch with its id.
        """
        with self._start_lock:
            if self._execution_id is not None:
                return self
            if self._records is None:
                raise BatchNotStartedError("this Batch has no records to start")
            self._execution_id = self._executions.submit(self._record, self._records,
                                                         self._options, self._engine)
            self._records = None
        return self

    def results(self, show_partial_results: bool = True, **aliases: Any) -> BatchResponse:
        """The batch's state and counts, and its recorded rows."""
        for alias in ("showPartialResults", "showPartialResult"):
            if alias in aliases:
                show_partial_results = bool(aliases.pop(alias))
        if aliases:
            raise TypeError(f"results() got unexpected keyword argument(s): {', '.join(aliases)}")
        return self._response(self._header(), show_partial_results)

    def _response(self, header: dict[str, Any], show_partial_results: bool) -> BatchResponse:
        return BatchResponse(self._service_api, self._record, self._executions, header,
                             show_partial_results)

    def wait(self, timeout: float | None = None, progress: bool = False) -> BatchResponse:
        """Block until the batch ends (or its owner is found dead); the final response."""
        if progress:
            header = wait_with_progress(self._executions, self._id(), timeout)
        else:
            header = self._executions.wait(self._id(), timeout)
        if header["state"] not in TERMINAL:
            raise BatchTimeoutError(f"batch {self._id()} still {header['state']} after "
                                    f"{timeout:g}s")
        return self._response(header, True)

    def cancel(self) -> Batch:
        """Cancel: finished rows stay readable; on return no row of it runs or will start."""
        self._executions.cancel(self._id())
        return self

    def resume(self, force: bool = False, **options: Any) -> Batch:
        """Finish the rows without a record (after the owner died, or forced).

        Runs with the options the batch was started with; keyword arguments
        (``parallel_count``, ``row_timeout``, ...) override them.
        """
        self._executions.resume(self._id(), options, self._engine, force=force)
        return self

    def retry_failed(self, version: str | None = None, **options: Any) -> Batch:
        """Re-run only the failed rows (optionally on another version of the service)."""
        self._executions.retry_failed(self._id(), options, self._engine, version)
        return self

    def delete(self) -> None:
        """Remove a finished execution and its artifacts."""
        header = self._header()
        if header["state"] not in TERMINAL or (
                header.get("interrupted") is None and self._store.owner_alive(self._id())):
            raise BatchError(f"batch {self._id()} is {header['state']}: cancel it before "
                             "deleting")
        self._store.delete(self._id())

    # artifacts ------------------------------------------------------------------------

    def _reader(self) -> ResultReader:
        """A snapshot of which rows are recorded (outputs are not decoded)."""
        return self._executions.reader(self._id(), self._header(), None)

    def _recorded(self, index: Any, reader: ResultReader | None = None) -> int:
        index = _row_index(index)
        reader = reader or self._reader()
        if not reader.recorded(index):
            raise RowNotRecordedError(f"row {index} of batch {self._id()} has no recorded "
                                      f"result (rows are 0..{reader.total - 1})")
        return index

    def list_artifacts(self, index: int) -> list[str]:
        """The names of row ``index``'s artifacts (0-based rows)."""
        index = self._recorded(index)
        return self._store.list_artifacts(self._id(), index)

    def artifact(self, index: int, file_name: str | None = None, **aliases: Any) -> bytes:
        """The bytes of one artifact of row ``index`` (also ``fileName=``)."""
        file_name = aliases.pop("fileName", file_name)
        if aliases or file_name is None:
            raise TypeError("artifact(index, file_name) needs a file name")
        index = self._recorded(index)
        return self._store.read_artifact(self._id(), index, file_name)

    def download(self, index: int, file_name: str | None = None, destination: Any = None,
                 **aliases: Any) -> list[str]:
        """Write a row's artifact (or all of them) into ``destination`` (default: cwd now).

        Also ``fileName=`` and ``dest=``. Existing files are replaced (through a temp
        file and a rename, never written through a symlink); returns the paths written.
        """
        file_name = aliases.pop("fileName", file_name)
        destination = aliases.pop("dest", destination)
        if aliases:
            raise TypeError(f"download() got unexpected keyword argument(s): {', '.join(aliases)}")
        dest = _existing_dir(os.getcwd() if destination is None else destination)
        index = self._recorded(index)
        return self._write_row(index, file_name, dest)

    def _write_row(self, index: int, file_name: str | None, dest: Path) -> list[str]:
        names = [file_name] if file_name is not None else \
            self._store.list_artifacts(self._id(), index)
        return [str(_write_into(dest, check_artifact_name(name),
                                self._store.read_artifact(self._id(), index, name)))
                for name in names]

    def download_all(self, destination: Any) -> list[str]:
        """Every recorded row's artifacts into ``destination/<index>/<name>``."""
        dest = _existing_dir(destination)
        reader = self._reader()
        folder = self._store.path(self._id()) / "artifacts"
        try:
            rows = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
        except FileNotFoundError:
            rows = []
        written: list[str] = []
        for index in rows:
            if not reader.recorded(index) or not self._store.list_artifacts(self._id(), index):
                continue  # files of a row whose result is not committed yet
            sub = dest / str(index)
            if sub.is_symlink():
                sub.unlink()  # replaced like a file would be: never written through
            sub.mkdir(exist_ok=True)
            written += self._write_row(index, None, sub)
        return written


def _row_index(index: Any) -> int:
    """A 0-based row number: any integer (numpy's too), never a bool or a float."""
    if isinstance(index, (bool, np.bool_)):
        raise TypeError("index must be an int, not bool")
    try:
        return operator.index(index)
    except TypeError:
        raise TypeError(f"index must be an int, not {type(index).__name__}") from None


def _existing_dir(destination: Any) -> Path:
    dest = Path(destination)
    if not dest.is_dir():
        raise ValueError(f'No such file or directory "{dest}".')
    return dest


def _write_into(dest: Path, name: str, data: bytes) -> Path:
    """Overwrite ``dest/name`` through a temp file and a rename (never via a symlink)."""
    target = dest / name
    atomic_write_with(target, lambda fh: fh.write(data), mode=0o644)
    return target


class BatchResponse:
    """A snapshot of a batch: state, counts, and its rows (0-based, input order)."""

    def __init__(self, api: str, record: ServiceRecord, executions: Executions,
                 header: dict[str, Any], show_partial_results: bool) -> None:
        self._api = api
        self._record = record
        self._executions = executions
        self._header = header
        self._partial = show_partial_results
        self._reader: ResultReader | None = None

    @property
    def api(self) -> str:
        """The service's endpoint, ``/api/{name}/{version}``."""
        return self._api

    @property
    def execution_id(self) -> str:
        """The batch's id: ``service.get_batch(id)`` finds it again, from any process."""
        return str(self._header["execution_id"])

    @property
    def state(self) -> str:
        """``Pending``, ``InProgress``, ``Complete``, ``Failed`` or ``Canceled``."""
        return str(self._header["state"])

    @property
    def total_item_count(self) -> int:
        """The number of input rows."""
        return int(self._header["total"])

    @property
    def completed_item_count(self) -> int:
        """Rows with a recorded result (failed rows included)."""
        return int(self._header.get("completed") or 0)

    @property
    def failed_item_count(self) -> int:
        """Rows whose recorded result is an error."""
        return int(self._header.get("failed") or 0)

    @property
    def error(self) -> str:
        """Why the batch as a whole failed (``''`` unless it did)."""
        return str(self._header.get("error") or "")

    @property
    def resumable(self) -> bool:
        """Whether ``batch.resume()`` can finish the rows left."""
        return bool(self._header.get("resumable"))

    @property
    def header(self) -> dict[str, Any]:
        """The execution's stored header (times, options, engine), as a copy."""
        return dict(self._header)

    @property
    def _rows(self) -> ResultReader:
        if self._reader is None:
            self._reader = self._executions.reader(self.execution_id, self._header,
                                                   self._record)
        return self._reader

    def _finished(self) -> bool:
        return self.state in TERMINAL

    def execution(self, index: int) -> ServiceResponse:
        """Row ``index``'s ServiceResponse; LookupError if it has no recorded result."""
        if not self._partial and not self._finished():
            raise RowNotRecordedError(
                f"results are shown once the batch has finished (show_partial_results=False); "
                f"it is {self.state}")
        index = _row_index(index)
        row = self._rows.row(index)
        store, eid = self._executions.store, self.execution_id
        names = store.list_artifacts(eid, index) if self._record.artifacts else []
        files = {name: store.read_artifact(eid, index, name) for name in names
                 if name in self._record.artifacts}
        return ServiceResponse.from_row(self.api, self._record, row, files)

    @property
    def keep(self) -> list[str]:
        """The input columns stored beside the outputs (``svc.batch(..., keep=[...])``)."""
        return list(self._header.get("keep") or [])

    def to_frame(self) -> Any:
        """One row per recorded input row (input order): input index, the ``keep``
        columns, outputs, ``error``."""
        return frame_with_keys(self._rows, self.keep)

    def to_parquet(self, path: str | os.PathLike[str]) -> int:
        """Write ``to_frame()``'s table to a Parquet file, part by part (the whole table
        is never in memory); returns the number of rows written. Needs pyarrow."""
        return write_parquet(result_frames(self._rows, self.keep), Path(path),
                             lambda: self.to_frame().iloc[:0], self._record.outputs)

    def failed(self) -> Any:
        """The failed rows: row, input index, the ``keep`` columns, inputs, error type,
        message, attempts."""
        return failed_with_keys(self._rows, self.keep)

    def __str__(self) -> str:
        return (f"\n<BatchResponse> \n   api: {self.api} \n   execution_id: {self.execution_id}\n"
                f"   completed_item_count : {self.completed_item_count}\n"
                f"   total_item_count: {self.total_item_count}\n   state: {self.state}")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return batch_html(self)
