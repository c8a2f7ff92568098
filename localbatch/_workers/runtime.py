"""Running rows: the per-row loops, console capture, working folders, output casting.

A :class:`Runtime` is one loaded service (see :mod:`.loading`). It scores the
rows of a chunk and returns a :class:`~localbatch._format.chunk.ChunkResult`;
every failure of the user's code becomes that row's error, never an exception.
The same Runtime runs rows in a worker process (:mod:`.child`: consume, batch,
Dask tasks) and in the caller's process (the inline engine).

While a chunk runs, each row's start time is written to the worker's
:class:`~.board.Board` just before the row is called: that names the running
row for crash attribution, times every row, and tells console writes which row
they belong to.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._format.chunk import ChunkResult, RowError
from .._format.columns import encode_column, kind_for_encoding
from .._schema import EncodingType
from .board import Board
from .loading import Call, load_callable
from .outputs import encode_outputs, python_values
from .protocol import row_error
from .vectorized import VectorizedChunk

__all__ = ["Runtime"]

#: Rows watched one by one for fd-level output (C code, child processes) after
#: a worker starts or after such output was seen.
FD_WATCH_ROWS = 1000
#: Per-row caps that keep a runaway row from filling the disk.
DEFAULT_LIMITS = {"console_bytes": 1 << 20, "artifact_bytes": 64 << 20,
                  "output_bytes": 64 << 20}


class _RowConsole(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` during a chunk: each write goes to the running row.

    The running row is found from the board when something is written, so rows
    that print nothing cost nothing.
    """

    def __init__(self, started: Any, n: int) -> None:
        self._started = started
        self._n = n
        self._k = 0
        self.pieces: list[tuple[int, str]] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        k, started = self._k, self._started
        while k + 1 < self._n and started[k + 1] != 0.0:
            k += 1
        self._k = k
        if text:
            self.pieces.append((k, text))
        return len(text)

    def by_row(self) -> dict[int, str]:
        rows: dict[int, list[str]] = {}
        for k, text in self.pieces:
            rows.setdefault(k, []).append(text)
        return {k: "".join(texts) for k, texts in rows.items()}


class Runtime:
    """A loaded service: its globals after ``init`` and the code that scores a row."""

    def __init__(self, manifest: dict[str, Any], blobs: dict[str, bytes],
                 limits: dict[str, int] | None = None) -> None:
        self.manifest = manifest
        self.inputs = [(d["name"], EncodingType(d["type"])) for d in manifest["inputs"]]
        self.outputs = [(d["name"], EncodingType(d["type"])) for d in manifest["outputs"]]
        self.artifacts: list[str] = list(manifest["artifacts"])
        self.kind: str = manifest["kind"]
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self._blobs = blobs
        self._fd_watch_rows = FD_WATCH_ROWS
        #: Rows run in the caller's process (engine="inline"): breakpoints reach the terminal.
        self.inline = False
        #: The service function itself, when it can be called as is (the hot path).
        self._direct: Callable[..., Any] | None = None
        self._call: Call = _unloaded
        self._board: Board | None = None
        self._multi_ok = len(self.outputs) > 1 or (
            bool(self.outputs) and self.outputs[0][1] is not EncodingType.dataframe)

    def initialize(self) -> float:
        """Unpickle the service and run ``init`` once; returns init's duration."""
        t0 = time.perf_counter()
        self._call, self._direct = load_callable(self.manifest, self._blobs)
        self._blobs = {}
        return time.perf_counter() - t0

    # rows -----------------------------------------------------------------

    def run_rows(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
                 board: Board | None = None, cap_fd: int | None = None,
                 chunk_id: int = 0) -> ChunkResult:
        """Score rows; every user failure becomes that row's error, never an exception.

        Returns a :class:`~localbatch._format.chunk.ChunkResult` (its ``errors`` and
        ``console`` are None when no row failed / printed: read them with ``per_row``).
        ``cap_fd`` is the file fd 1 and 2 write to in a worker process (output of C
        code and child processes): that output is given to rows too.
        """
        board = board or self._own_board()
        board.begin(chunk_id, len(indices))
        try:
            if self.manifest.get("vectorized"):
                return self._run_vectorized(indices, columns, board)
            return self._run_rows(indices, columns, board, cap_fd)
        finally:
            board.end()

    def _own_board(self) -> Board:
        if self._board is None:
            self._board = Board()
        return self._board

    def _run_rows(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
                  board: Board, cap_fd: int | None) -> ChunkResult:
        n = len(indices)
        cols = [python_values(columns[name]) for name, _ in self.inputs]
        errors: dict[int, RowError] = {}
        rets: list[Any] = [None] * n
        console = _RowConsole(board.started, n)
        real_out, real_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = console
        cap_pos = _fd_size(cap_fd)
        # An fstat per row costs more than a trivial row: watch fd-level output per
        # row only while this service has been seen writing there (or is new).
        per_row_fd = cap_fd is not None and self._fd_watch_rows > 0
        fd_text: dict[int, str] = {}
        artifacts: dict[int, dict[str, bytes]] = {}
        home = os.getcwd()
        debug = _debuggable(real_out) if self.inline else contextlib.nullcontext()
        rows = zip(*cols, strict=True) if cols else [()] * n
        try:
            debug.__enter__()
            if self.artifacts or per_row_fd:
                cap_pos = self._loop_full(rows, indices, rets, errors, board.started, artifacts,
                                          cap_fd if per_row_fd else None, cap_pos, fd_text)
            else:
                self._loop_fast(rows, rets, errors, board.started)
        finally:
            finished = time.time()
            debug.__exit__(None, None, None)
            sys.stdout, sys.stderr = real_out, real_err
            # A row that changed directory must not move later calls (checked per
            # chunk, not per row: a syscall per row costs more than a trivial row).
            if os.getcwd() != home:
                os.chdir(home)
        if per_row_fd:
            self._fd_watch_rows = max(0, self._fd_watch_rows - n)
        elif cap_fd is not None and n and _fd_size(cap_fd) != cap_pos:
            # Unexpected fd-level output: give it to the chunk's last row, and watch
            # per row from now on.
            fd_text[n - 1] = _read_fd(cap_fd, cap_pos, _fd_size(cap_fd))
            self._fd_watch_rows = FD_WATCH_ROWS
        error_list: list[RowError | None] = [None] * n
        for k, error in errors.items():
            error_list[k] = error
        outputs = encode_outputs(self.outputs, self._columns_from_returns(rets, error_list),
                                 error_list, self.limits["output_bytes"])
        started, ended = board.times(n, finished)
        consoles = self._consoles(n, fd_text, console)
        # Numeric fields go back as arrays and all-missing ones as None (see
        # ChunkResult): cheap to pickle, no per-row work for the owner.
        return {"index": np.asarray(indices, np.int64), "started": started, "ended": ended,
                "errors": None if error_list.count(None) == n else error_list,
                "console": consoles,
                "outputs": outputs, "artifacts": artifacts, "pid": os.getpid()}

    def failed_chunk(self, indices: Sequence[int], exc: BaseException) -> ChunkResult:
        """Every row of a chunk failed with ``exc`` (outputs missing)."""
        n = len(indices)
        now = time.time()
        error = ("LocalBatchInternalError", f"{type(exc).__name__}: {exc}",
                 "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        outputs = {name: encode_column(kind_for_encoding(enc.value), [None] * n)
                   for name, enc in self.outputs}
        return {"index": np.asarray(indices, np.int64), "started": [now] * n, "ended": [now] * n,
                "errors": [error] * n, "console": [None] * n, "outputs": outputs,
                "artifacts": {}, "pid": os.getpid()}

    def _loop_fast(self, rows: Any, rets: list[Any], errors: dict[int, RowError], started: Any
                   ) -> None:
        """The per-row loop without artifacts or fd watching: one clock read and one
        store per row besides the call (see :class:`~.board.Board`)."""
        fn, now = self._direct or _spread(self._call), time.time
        for k, args in enumerate(rows):
            started[k] = now()
            try:
                rets[k] = fn(*args)
            except BaseException as exc:  # noqa: B036 - user code: SystemExit too
                errors[k] = row_error(exc)

    def _loop_full(self, rows: Any, indices: Sequence[int], rets: list[Any],
                   errors: dict[int, RowError], started: Any, artifacts: dict[int, Any],
                   capture_fd: int | None, cap_pos: int, fd_text: dict[int, str]) -> int:
        """The per-row loop with a working folder per row and fd-level capture."""
        call = self._call
        for k, args in enumerate(rows):
            started[k] = time.time()
            try:
                if self.artifacts:
                    rets[k] = self._with_workdir(call, args, artifacts, int(indices[k]))
                else:
                    rets[k] = call(args)
            except BaseException as exc:  # noqa: B036 - user code: SystemExit too
                errors[k] = row_error(exc)
            if capture_fd is not None:
                size = _fd_size(capture_fd)
                if size != cap_pos:
                    fd_text[k] = _read_fd(capture_fd, cap_pos, size)
                    cap_pos = size
                    self._fd_watch_rows = FD_WATCH_ROWS
        return cap_pos

    def _consoles(self, n: int, fd_text: dict[int, str], console: _RowConsole
                  ) -> list[str | None] | None:
        """Each row's console text (fd-level output first), None when nothing was printed."""
        if not fd_text and not console.pieces:
            return None  # the common case
        consoles: list[str | None] = [None] * n
        cap = self.limits["console_bytes"]
        printed = console.by_row()
        for k in sorted(set(fd_text) | set(printed)):
            consoles[k] = _truncate(fd_text.get(k, "") + printed.get(k, ""), cap)
        return consoles

    def _columns_from_returns(self, rets: list[Any], errors: list[RowError | None]
                              ) -> dict[str, list[Any]]:
        """Return values → per-output columns (the SDK's first-output rule, or a dict)."""
        if not self.outputs:
            return {}
        values: dict[str, list[Any]] = {name: [None] * len(rets) for name, _ in self.outputs}
        returned = set(map(type, rets))  # a C loop: dict returns are rare
        if self.kind != "str" and not (self._multi_ok and any(issubclass(t, dict)
                                                              for t in returned)):
            values[self.outputs[0][0]] = rets
            return values
        for k, ret in enumerate(rets):
            if errors[k] is None:
                for name, value in self._to_outputs(ret).items():
                    values[name][k] = value
        return values

    def _to_outputs(self, ret: Any) -> dict[str, Any]:
        if not self.outputs:
            return {}
        if self.kind == "str":
            return dict(ret)
        if (isinstance(ret, dict) and ret and self._multi_ok
                and set(ret) <= {n for n, _ in self.outputs}):
            return ret
        return {self.outputs[0][0]: ret}

    def _run_vectorized(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
                        board: Board) -> ChunkResult:
        """One call per chunk (see :mod:`.vectorized`)."""
        n = len(indices)
        chunk = VectorizedChunk(self._call, self._to_outputs, self.outputs, n)
        chunk.run(indices, columns, [name for name, _ in self.inputs], board.started)
        outputs = encode_outputs(self.outputs, chunk.columns(), chunk.errors,
                                 self.limits["output_bytes"])
        return {"index": np.asarray(indices, np.int64), "started": chunk.started,
                "ended": chunk.ended,
                "errors": None if chunk.errors.count(None) == n else chunk.errors,
                "console": None if chunk.consoles.count(None) == n else chunk.consoles,
                "outputs": outputs, "artifacts": {}, "pid": os.getpid()}

    def _with_workdir(self, call: Call, args: Sequence[Any],
                      sink: dict[int, dict[str, bytes]], index: int) -> Any:
        """Run a row in a fresh folder; its declared files are kept even if it raised."""
        home = os.getcwd()
        work = tempfile.mkdtemp(prefix="row-", dir=os.environ.get("LOCALBATCH_SCRATCH"))
        try:
            os.chdir(work)
            try:
                return call(args)
            finally:
                os.chdir(home)
                sink[index] = _read_artifacts(Path(work), self.artifacts,
                                              self.limits["artifact_bytes"])
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _spread(call: Call) -> Callable[..., Any]:
    return lambda *args: call(args)


def _unloaded(args: Sequence[Any]) -> Any:
    raise RuntimeError("service not initialized")


def _truncate(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    more = len(text) - cap
    return text[:cap] + f"\n[localbatch: console output truncated, {more} more characters]"


def _fd_size(fd: int | None) -> int:
    return os.fstat(fd).st_size if fd is not None else 0


def _read_fd(fd: int, start: int, end: int) -> str:
    return os.pread(fd, end - start, start).decode("utf-8", "replace")


def _read_artifacts(work: Path, names: list[str], cap: int) -> dict[str, bytes]:
    files = {}
    for name in names:
        path = work / name
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                data = fh.read(cap + 1)
            if len(data) > cap:
                data = data[:cap] + b"\n[localbatch: artifact truncated]"
            files[name] = data
    return files


@contextlib.contextmanager
def _debuggable(real_out: Any) -> Iterator[None]:
    """Inline rows: ``breakpoint()`` talks to the terminal, not to the row's capture."""
    if sys.breakpointhook is not sys.__breakpointhook__ or os.environ.get("PYTHONBREAKPOINT"):
        yield
        return

    def hook(*args: Any, **kwargs: Any) -> None:
        import pdb

        pdb.Pdb(stdout=real_out).set_trace(sys._getframe(1))  # noqa: SLF001 - the caller's frame

    sys.breakpointhook = hook
    try:
        yield
    finally:
        sys.breakpointhook = sys.__breakpointhook__

