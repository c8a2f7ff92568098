"""Running rows: the per-row loops, console capture, working folders, output casting.

A :class:`Runtime` is one loaded service (see :mod:`.loading`). It scores the
rows of a chunk and returns a :class:`~localbatch._format.chunk.ChunkResult`;
every failure of the user's code becomes that row's error, never an exception.
The same Runtime runs rows in a worker process (:mod:`.child`: consume, batch,
Dask tasks) and in the caller's process (the inline engine).

While a chunk runs, each row's start time is written to the worker's
:class:`~.board.Board` just before the row is called: that names the running
row for crash attribution, times every row, and tells console writes which row
they belong to. fd-level output (C code, ``os.write``, child processes) goes to
the worker's capture file (see :mod:`.capture`), read after every row that
wrote to it, so it too belongs to its row.

In a worker, a :class:`~.isolation.RowGuard` undoes what a row did to the
process before the next row runs (its working folder, cwd, fds 0-2, signal
handlers, environment, ``sys.path``, child processes); the fast loop checks per
row only what costs nothing and leaves the full check to the end of the chunk.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._format.chunk import ChunkResult, RowError, index_array
from .._format.columns import encode_column, kind_for_encoding
from .._schema import EncodingType
from .board import Board
from .capture import FILL, FdCapture
from .isolation import RowGuard
from .loading import Call, load_callable
from .outputs import encode_outputs, python_values
from .protocol import row_error
from .vectorized import VectorizedChunk

__all__ = ["Runtime"]

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


class _Loop:
    """What a chunk's row loop fills in, and the fd-level output given to each row.

    fd 1 and 2 of a worker write to one capture file (see :mod:`.capture`): whether
    a row wrote there is read off a shared map after every row (~25 ns), so what a
    row wrote (C code, ``os.write``, its child processes) is that row's, exactly.
    """

    def __init__(self, rets: list[Any], errors: dict[int, RowError], started: Any,
                 console: _RowConsole, cap: FdCapture | None, fd_text: dict[int, str]) -> None:
        self.rets, self.errors, self.started, self.console = rets, errors, started, console
        self.fd_text = fd_text
        self.retire_noted = False
        self.cap = cap
        #: The last row given fd output (what the map did not show came after it).
        self.last_fd_row = -1
        if cap is not None:
            cap.begin()  # what was written between chunks is no row's

    def fd_output(self, k: int) -> None:
        """What row ``k`` wrote to fd 1 and 2 (read just after it)."""
        if self.cap is not None:
            self._give(k, self.cap.take())

    def fd_check(self, k: int) -> None:
        """After the guard looked at row ``k``: what it wrote by truncating the capture
        file (see :meth:`.FdCapture.check`)."""
        if self.cap is not None:
            self._give(k, self.cap.check())

    def _give(self, k: int, text: str) -> None:
        if text:
            self.fd_text[k] = self.fd_text.get(k, "") + text
            self.last_fd_row = k

    def settle(self, indices: Sequence[int]) -> None:
        """fd output the map could not show (see :meth:`.FdCapture.settle`): given to the
        chunk's last row, naming the rows it came from."""
        text = self.cap.settle() if self.cap is not None else ""
        if text:
            first, last = int(indices[self.last_fd_row + 1]), int(indices[-1])
            k = len(indices) - 1
            self.fd_text[k] = self.fd_text.get(k, "") + (
                f"[localbatch: written to fd 1 or 2 by one of rows {first}-{last}, in output "
                f"that began with byte 0xFF; from now on every row is checked]\n{text}")

    def note(self, k: int, guard: RowGuard) -> None:
        """Tell row ``k``'s console when it made the worker retire (once)."""
        if guard.retire and not self.retire_noted and k >= 0:
            self.retire_noted = True
            self.console.pieces.append(
                (k, f"\n[localbatch: {guard.retire}; the worker is replaced after this chunk]\n"))


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
        #: Restores the worker between rows (:mod:`.isolation`); None in the caller's process.
        self.guard: RowGuard | None = None
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
                 board: Board | None = None, cap: FdCapture | None = None,
                 chunk_id: int = 0) -> ChunkResult:
        """Score rows; every user failure becomes that row's error, never an exception.

        Returns a :class:`~localbatch._format.chunk.ChunkResult` (its ``errors`` and
        ``console`` are None when no row failed / printed: read them with ``per_row``).
        ``cap`` is the file fd 1 and 2 write to in a worker process (output of C
        code and child processes): that output is given to rows too.
        """
        board = board or self._own_board()
        board.begin(chunk_id, len(indices))
        try:
            if self.manifest.get("vectorized"):
                return self._guarded(lambda: self._run_vectorized(indices, columns, board, cap))
            return self._run_rows(indices, columns, board, cap)
        finally:
            board.end()

    def _guarded(self, run: Callable[[], ChunkResult]) -> ChunkResult:
        """A chunk called at once (vectorised): in its folder, and checked after."""
        if self.guard is None:
            return run()
        self.guard.enter()
        try:
            return run()
        finally:
            self.guard.after_chunk()

    def _own_board(self) -> Board:
        if self._board is None:
            self._board = Board()
        return self._board

    def _run_rows(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
                  board: Board, cap: FdCapture | None) -> ChunkResult:
        n = len(indices)
        cols = [python_values(columns[name]) for name, _ in self.inputs]
        errors: dict[int, RowError] = {}
        rets: list[Any] = [None] * n
        console = _RowConsole(board.started, n)
        real_out, real_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = console
        fd_text: dict[int, str] = {}
        artifacts: dict[int, dict[str, bytes]] = {}
        guard = self.guard
        home = os.getcwd() if guard is None else guard.home  # inline: the caller's folder
        debug = _debuggable(real_out) if self.inline else contextlib.nullcontext()
        rows = zip(*cols, strict=True) if cols else [()] * n
        loop = _Loop(rets, errors, board.started, console, cap, fd_text)
        try:
            debug.__enter__()
            if guard is not None:
                guard.enter()
            if self.artifacts or (guard is not None and guard.watch > 0):
                self._loop_full(rows, indices, loop, artifacts)
            else:
                self._loop_fast(rows, loop)
        finally:
            finished = time.time()
            debug.__exit__(None, None, None)
            sys.stdout, sys.stderr = real_out, real_err
            if guard is not None:
                guard.after_chunk()
                loop.note(n - 1, guard)
                loop.settle(indices)
            elif _cwd() != home:
                os.chdir(home)
        error_list: list[RowError | None] = [None] * n
        for k, error in errors.items():
            error_list[k] = error
        values, types = self._columns_from_returns(rets, error_list)
        outputs = encode_outputs(self.outputs, values, error_list, self.limits["output_bytes"],
                                 types)
        started, ended = board.times(n, finished)
        consoles = self._consoles(n, fd_text, console)
        # Numeric fields go back as arrays and all-missing ones as None (see
        # ChunkResult): cheap to pickle, no per-row work for the owner.
        return {"index": index_array(indices), "started": started, "ended": ended,
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
        return {"index": index_array(indices), "started": [now] * n, "ended": [now] * n,
                "errors": [error] * n, "console": [None] * n, "outputs": outputs,
                "artifacts": {}, "pid": os.getpid()}

    def _loop_fast(self, rows: Any, loop: _Loop) -> None:
        """The per-row loop without a check of its own: one clock read and one store
        per row besides the call (see :class:`~.board.Board`), and in a worker the
        checks that cost nothing (see :mod:`.isolation` and :mod:`.capture`; ~0.12 us a
        row in all)."""
        fn, now = self._direct or _spread(self._call), time.time
        rets, errors, started = loop.rets, loop.errors, loop.started
        guard = self.guard
        if guard is None:  # inline: rows run in the caller's process, as they are
            for k, args in enumerate(rows):
                started[k] = now()
                try:
                    rets[k] = fn(*args)
                except BaseException as exc:  # noqa: B036 - user code: SystemExit too
                    errors[k] = row_error(exc)
            return
        flags, console, path = guard.flags, loop.console, guard.path
        active, threads = threading._active, guard.threads  # noqa: SLF001 - a len() per row
        cap = loop.cap
        view, pos = (cap.view, cap.pos) if cap is not None else (_NEVER, 0)
        for k, args in enumerate(rows):
            started[k] = now()
            try:
                rets[k] = fn(*args)
            except BaseException as exc:  # noqa: B036 - user code: SystemExit too
                errors[k] = row_error(exc)
            if (flags.dirty or len(active) != threads or sys.path != path
                    or sys.stdout is not console or sys.stderr is not console):
                guard.after_row()
                loop.note(k, guard)
                loop.fd_check(k)  # before the map is read: the row may have truncated it
                if cap is not None:
                    view, pos = cap.view, cap.pos
                sys.stdout = sys.stderr = console
                threads = guard.threads
                guard.enter()
            # Inline, not loop.fd_output(): a method call per row would cost 2-3 times this.
            if view[pos] != FILL:
                loop.fd_output(k)  # after the restore: output of the children it killed too
                view, pos = cap.view, cap.pos  # type: ignore[union-attr]

    def _loop_full(self, rows: Any, indices: Sequence[int], loop: _Loop,
                   artifacts: dict[int, Any]) -> None:
        """The per-row loop that restores the worker after every row (see :mod:`.isolation`)
        and keeps each row's declared files."""
        call, guard, console = self._call, self.guard, loop.console
        rets, errors, started = loop.rets, loop.errors, loop.started
        for k, args in enumerate(rows):
            if guard is not None:
                guard.enter()
            started[k] = time.time()
            try:
                if guard is None and self.artifacts:
                    rets[k] = self._with_workdir(call, args, artifacts, int(indices[k]))
                else:
                    rets[k] = call(args)
            except BaseException as exc:  # noqa: B036 - user code: SystemExit too
                errors[k] = row_error(exc)
            if guard is None:
                continue
            if self.artifacts:
                artifacts[int(indices[k])] = _read_artifacts(
                    Path(guard.folder), self.artifacts, self.limits["artifact_bytes"])
            guard.after_row()
            loop.note(k, guard)
            loop.fd_check(k)
            loop.fd_output(k)
            sys.stdout = sys.stderr = console
        if guard is not None:
            guard.watch = max(0, guard.watch - len(loop.rets))

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
                              ) -> tuple[dict[str, list[Any]], dict[str, set[type]]]:
        """Return values → per-output columns (the SDK's first-output rule, or a dict),
        and the value types of the column that is the return values themselves."""
        if not self.outputs:
            return {}, {}
        values: dict[str, list[Any]] = {name: [None] * len(rets) for name, _ in self.outputs}
        returned = set(map(type, rets))  # a C loop: dict returns are rare
        if self.kind != "str" and not (self._multi_ok and any(issubclass(t, dict)
                                                              for t in returned)):
            values[self.outputs[0][0]] = rets
            return values, {self.outputs[0][0]: returned}
        for k, ret in enumerate(rets):
            if errors[k] is None:
                for name, value in self._to_outputs(ret).items():
                    values[name][k] = value
        return values, {}

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
                        board: Board, cap: FdCapture | None) -> ChunkResult:
        """One call per chunk (see :mod:`.vectorized`)."""
        n = len(indices)
        if cap is not None:
            cap.begin()  # what was written between chunks is no call's
        chunk = VectorizedChunk(self._call, self._to_outputs, self.outputs, n,
                                cap.take if cap is not None else None)
        chunk.run(indices, columns, [name for name, _ in self.inputs], board.started)
        outputs = encode_outputs(self.outputs, chunk.columns(), chunk.errors,
                                 self.limits["output_bytes"])
        return {"index": index_array(indices), "started": chunk.started,
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


#: The capture of a process without one: nothing is ever written to it.
_NEVER = bytes([FILL])


def _spread(call: Call) -> Callable[..., Any]:
    return lambda *args: call(args)


def _unloaded(args: Sequence[Any]) -> Any:
    raise RuntimeError("service not initialized")


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None  # deleted by a row


def _truncate(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    more = len(text) - cap
    return text[:cap] + f"\n[localbatch: console output truncated, {more} more characters]"


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

