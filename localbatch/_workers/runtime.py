"""Child side: load a service once, run ``init`` once, score chunks of rows.

Run as a fresh interpreter calling :func:`main` (it never imports the caller's
``__main__``), or forked from the zygote of the ``forkserver``
start method. The same :class:`Runtime` runs rows for consume, batch, the
inline engine and Dask workers.

Protocol on the connection (pickled tuples)::

    parent → worker   ("load", {"path": revision_dir} | {"manifest": ..., "blobs": ...})
    worker → parent   ("ready", pid, init_seconds, init_console) | ("init_error", pid, error)
    parent → worker   ("chunk", chunk_id, indices, columns)
    worker → parent   ("result", chunk_id, payload)
    parent → worker   ("stop",)

While a chunk runs, the worker shows it on a shared-memory :class:`Board`: the
chunk id and, written just before each row is called, that row's start time. The
supervisor (which knows each chunk's row indices) reads the running row from it,
so it can charge a death or a timeout to that row only.
"""

from __future__ import annotations

import builtins
import contextlib
import dis
import io
import os
import pickle
import queue
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import SchemaError, ServiceLoadError
from .._format.columns import encode_column, kind_for_encoding
from .._schema import EncodingType, cast_value

__all__ = ["BOARD_ROWS", "Board", "Runtime", "main", "running_row"]

#: Rows a board has room for: at least the largest chunk any engine deals.
BOARD_ROWS = 1 << 18
BOARD_HEAD = struct.Struct("<q")  # the running chunk's id (-1: none), then the times
BOARD_BYTES = BOARD_HEAD.size + 8 * BOARD_ROWS
#: Rows watched one by one for fd-level output (C code, child processes) after
#: a worker starts or after such output was seen.
FD_WATCH_ROWS = 1000
#: Per-row caps that keep a runaway row from filling the disk.
DEFAULT_LIMITS = {"console_bytes": 1 << 20, "artifact_bytes": 64 << 20,
                  "output_bytes": 64 << 20}


class Board:
    """What a worker is running: ``int64 chunk id | float64 started[BOARD_ROWS]``.

    The row loop stores a row's start time just before calling it, and nothing
    else: the last non-zero time names the running row (the supervisor maps its
    position to a row index), the next row's start is this row's end, and a
    console write belongs to the last row started. One store per row is the whole
    cost of crash attribution. Shared through a file in ``/dev/shm`` with the
    supervisor; an anonymous map when rows run in the caller's process.
    """

    def __init__(self, path: str | None = None) -> None:
        import mmap

        if path:
            fd = os.open(path, os.O_RDWR)
            try:
                self._mm = mmap.mmap(fd, BOARD_BYTES)
            finally:
                os.close(fd)
        else:
            self._mm = mmap.mmap(-1, BOARD_BYTES)  # pages exist once touched
        self._id = memoryview(self._mm)[:BOARD_HEAD.size].cast("q")
        #: The per-row store goes through a memoryview: several times cheaper than numpy's.
        self.started = memoryview(self._mm)[BOARD_HEAD.size:].cast("d")
        self._times = np.frombuffer(self._mm, np.float64, BOARD_ROWS, BOARD_HEAD.size)

    def begin(self, chunk_id: int, n: int) -> None:
        if n > BOARD_ROWS:
            raise ValueError(f"a chunk of {n} rows is larger than a board ({BOARD_ROWS})")
        self._id[0] = -1  # a reader that sees the times change also sees the id change
        self._times[:n] = 0.0
        self._id[0] = chunk_id

    def end(self) -> None:
        self._id[0] = -1

    def times(self, n: int, finished: float) -> tuple[np.ndarray, np.ndarray]:
        """(started, ended) of a chunk's n rows: a row ends where the next one starts."""
        started = self._times[:n].copy()
        ended = np.empty(n)
        ended[:-1] = started[1:]
        if n:
            ended[-1] = finished
        return started, ended


def running_row(board: Any, indices_of: Callable[[int], Sequence[int] | None]
                ) -> tuple[int, float] | None:
    """(row index, start time) of the row a worker's board (a mapped file) names.

    ``indices_of`` gives the row indices of a chunk id the worker was sent. The
    id is read before and after the times, so a chunk change in between is seen.
    """
    for _ in range(3):
        (chunk_id,) = BOARD_HEAD.unpack_from(board, 0)
        indices = indices_of(chunk_id) if chunk_id >= 0 else None
        if indices is None or not len(indices):
            return None
        start = BOARD_HEAD.size
        times = np.frombuffer(board[start:start + 8 * len(indices)], np.float64)
        if BOARD_HEAD.unpack_from(board, 0)[0] != chunk_id:
            continue
        running = np.flatnonzero(times)
        if not len(running):
            return None
        k = int(running[-1])
        return int(indices[k]), float(times[k])
    return None


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


# -- loading -------------------------------------------------------------------


def _writes_globals(code: types.CodeType) -> bool:
    """Whether code (or code nested in it) can rebind a global name."""
    if "globals" in code.co_names:
        return True
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            return True
    return any(isinstance(c, types.CodeType) and _writes_globals(c) for c in code.co_consts)


def _functions_of(ns: dict[str, Any]) -> list[Any]:
    """Python functions whose globals are ``ns`` (the service function and its helpers)."""
    return [v for v in ns.values() if isinstance(v, types.FunctionType)
            and v.__globals__ is ns]


def _rebind(fn: Any, ns: dict[str, Any]) -> Any:
    new = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _loads(blob: bytes, label: str, manifest: dict[str, Any]) -> Any:
    import cloudpickle

    try:
        return cloudpickle.loads(blob)
    except Exception as exc:
        raise ServiceLoadError(
            f"cannot load {label} of service {manifest['name']} {manifest['version']}: "
            f"{type(exc).__name__}: {exc} ({_version_skew(manifest.get('versions', {}))})"
        ) from exc


def _version_skew(saved: dict[str, Any]) -> str:
    """Saved versions beside this interpreter's, naming the ones that differ."""
    here = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in saved:
        mod = sys.modules.get(name)
        if name != "python" and mod is not None:
            here[name] = str(getattr(mod, "__version__", "?"))
    shown = {"python": "Python"}
    differ = [f"saved with {shown.get(k, k)} {v}, this is {shown.get(k, k)} {here[k]}"
              for k, v in saved.items() if k in here and here[k] != v]
    listed = ", ".join(f"{k} {v}" for k, v in saved.items())
    return ("version skew: " + "; ".join(differ) if differ else f"saved with {listed}")


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
        self._call: Callable[[Sequence[Any]], Any] = _unloaded
        self._board: Board | None = None
        self._multi_ok = len(self.outputs) > 1 or (
            bool(self.outputs) and self.outputs[0][1] is not EncodingType.dataframe)

    # init -----------------------------------------------------------------

    def _globals_from_blobs(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for fname, blob in self._blobs.items():
            group, _, rest = fname.partition("-")
            if group in ("model", "object"):
                values[rest[:-4]] = _loads(blob, f"{group} {rest[:-4]!r}", self.manifest)
        return values

    def initialize(self) -> float:
        """Unpickle the service and run ``init`` once; returns init's duration."""
        t0 = time.perf_counter()
        values = self._globals_from_blobs()
        if self.kind == "fn":
            self._init_fn(values)
        elif self.kind == "str":
            self._init_str(values)
        else:
            model = values["model"]
            self._call = lambda args: _predict(model, args[0])
        self._blobs = {}
        return time.perf_counter() - t0

    def _init_fn(self, values: dict[str, Any]) -> None:
        fn = _loads(self._blobs["code.pkl"], "code_fn", self.manifest)
        files = self.manifest.get("code_files") or {}
        # The function's own captured globals are shared with helpers pickled beside
        # it, so models go into that dict: helpers then see them as globals too.
        ns = fn.__globals__
        ns.setdefault("__builtins__", builtins)
        if "init.pkl" in self._blobs:
            init = _loads(self._blobs["init.pkl"], "init_fn", self.manifest)
            _restore_filenames([init], files.get("init"))
            for key, value in init.__globals__.items():
                ns.setdefault(key, value)
            ns.update(values)
            _rebind(init, ns)()
        else:
            ns.update(values)
        _restore_filenames([fn, *(f for f in _functions_of(ns)
                                  if f.__module__ == fn.__module__)], files.get("code"))
        snapshot = dict(ns)
        if any(_writes_globals(f.__code__) for f in [fn, *_functions_of(ns)]):
            # Each call gets a fresh copy of the post-init globals: the namespace the
            # function and its helpers share is reset to the snapshot before the call.
            def call(args: Sequence[Any]) -> Any:
                ns.clear()
                ns.update(snapshot)
                return fn(*args)

            self._call = call
        else:
            # Nothing in the code can rebind a global, so one shared namespace is
            # indistinguishable from a fresh copy per call, and much cheaper.
            self._call = lambda args: fn(*args)
            self._direct = fn

    def _init_str(self, values: dict[str, Any]) -> None:
        ns: dict[str, Any] = {"__builtins__": builtins, "__name__": "__main__", **values}
        init = self.manifest.get("init_str")
        if init:
            exec(compile(init, "<init_str>", "exec"), ns)
        code = compile(self.manifest["code_str"], "<code_str>", "exec")
        names = [n for n, _ in self.inputs]
        outs = [n for n, _ in self.outputs]

        def call(args: Sequence[Any]) -> Any:
            fresh = dict(ns)
            fresh.update(zip(names, args, strict=False))
            exec(code, fresh)
            return {n: fresh.get(n) for n in outs}

        self._call = call

    # rows -----------------------------------------------------------------

    def _to_outputs(self, ret: Any) -> dict[str, Any]:
        if not self.outputs:
            return {}
        if self.kind == "str":
            return dict(ret)
        if (isinstance(ret, dict) and ret and self._multi_ok
                and set(ret) <= {n for n, _ in self.outputs}):
            return ret
        return {self.outputs[0][0]: ret}

    def run_rows(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
                 board: Board | None = None, cap_fd: int | None = None,
                 chunk_id: int = 0) -> dict[str, Any]:
        """Score rows; every user failure becomes that row's error, never an exception.

        The payload: ``index``, ``started``, ``ended`` (arrays), ``errors`` and
        ``console`` (a list per row, or None when no row failed / printed: read them
        with ``_commit.per_row``), ``outputs`` (encoded columns), ``artifacts``
        (``{row: {name: bytes}}``) and the worker's ``pid``.
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
                  board: Board, cap_fd: int | None) -> dict[str, Any]:
        n = len(indices)
        cols = [_python_values(columns[name]) for name, _ in self.inputs]
        errors: dict[int, tuple[str, str, str]] = {}
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
        error_list: list[tuple[str, str, str] | None] = [None] * n
        for k, error in errors.items():
            error_list[k] = error
        outputs = self._encode_outputs(self._collect(rets, error_list), error_list)
        started, ended = board.times(n, finished)
        consoles = self._consoles(n, fd_text, console)
        # Numeric fields go back as arrays and all-missing ones as None (see
        # payload_errors): cheap to pickle, no per-row work for the owner.
        return {"index": np.asarray(indices, np.int64), "started": started, "ended": ended,
                "errors": None if error_list.count(None) == n else error_list,
                "console": consoles,
                "outputs": outputs, "artifacts": artifacts, "pid": os.getpid()}

    def failed_chunk(self, indices: Sequence[int], exc: BaseException) -> dict[str, Any]:
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

    def _loop_fast(self, rows: Any, rets: list[Any], errors: dict[int, Any], started: Any
                   ) -> None:
        """The per-row loop without artifacts or fd watching: one clock read and one
        store per row besides the call (see :class:`Board`)."""
        fn, now = self._direct or _spread(self._call), time.time
        for k, args in enumerate(rows):
            started[k] = now()
            try:
                rets[k] = fn(*args)
            except BaseException as exc:  # noqa: B036 - user code: SystemExit too
                errors[k] = _error_of(exc)

    def _loop_full(self, rows: Any, indices: Sequence[int], rets: list[Any],
                   errors: dict[int, Any], started: Any, artifacts: dict[int, Any],
                   fd_row: int | None, cap_pos: int, fd_text: dict[int, str]) -> int:
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
                errors[k] = _error_of(exc)
            if fd_row is not None:
                size = _fd_size(fd_row)
                if size != cap_pos:
                    fd_text[k] = _read_fd(fd_row, cap_pos, size)
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

    def _collect(self, rets: list[Any], errors: list[Any]) -> dict[str, list[Any]]:
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

    # vectorised services ---------------------------------------------------------

    def _run_vectorized(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
                        board: Board) -> dict[str, Any]:
        """Call the code once per chunk with columns (pandas Series) instead of scalars.

        A chunk that raises is bisected until the failing rows are alone, so only
        they fail; a span's console output goes to its first row.
        """
        import pandas as pd

        n = len(indices)
        index = pd.Index(np.asarray(indices, np.int64))
        series = [pd.Series(columns[name], index=index, name=name) for name, _ in self.inputs]
        state = _VectorState(n, [name for name, _ in self.outputs])
        real_out, real_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = state.buf
        try:
            self._vector_span(series, 0, n, state, board.started)
        finally:
            sys.stdout, sys.stderr = real_out, real_err
        outputs = self._encode_outputs(state.columns(), state.errors)
        return {"index": np.asarray(indices, np.int64), "started": state.started,
                "ended": state.ended,
                "errors": None if state.errors.count(None) == n else state.errors,
                "console": None if state.consoles.count(None) == n else state.consoles,
                "outputs": outputs, "artifacts": {}, "pid": os.getpid()}

    def _vector_span(self, series: list[Any], lo: int, hi: int, state: _VectorState,
                     started: Any) -> None:
        t = started[lo] = time.time()  # the board names a span by its first row
        mark = state.buf.tell()
        try:
            ret = self._call([s.iloc[lo:hi] for s in series])
            per_row = self._split_vector(ret, hi - lo)
        except BaseException as exc:  # noqa: B036 - user code: SystemExit too
            if hi - lo == 1:
                state.errors[lo] = _error_of(exc)
                state.note(lo, hi, t, mark)
                return
            mid = (lo + hi) // 2
            self._vector_span(series, lo, mid, state, started)
            self._vector_span(series, mid, hi, state, started)
            return
        for name, values in per_row.items():
            state.put(name, lo, hi, values)
        state.note(lo, hi, t, mark)

    def _split_vector(self, ret: Any, m: int) -> dict[str, Any]:
        """One value per row for each output: a typed array where numpy's dtype is
        already the declared type (no Python object per row), else a list."""
        out: dict[str, Any] = {}
        encodings = dict(self.outputs)
        for name, value in self._to_outputs(ret).items():
            typed = _typed_array(encodings.get(name), value)
            if typed is not None:
                rows: Any = typed
            elif hasattr(value, "iloc") and hasattr(value, "columns"):
                rows = [value.iloc[i:i + 1].reset_index(drop=True) for i in range(len(value))]
            elif hasattr(value, "tolist"):
                rows = value.tolist()
            else:
                rows = list(value)
            if len(rows) != m:
                raise ValueError(f"vectorized output {name!r} has {len(rows)} values for "
                                 f"{m} rows")
            out[name] = rows
        return out

    def _with_workdir(self, call: Callable[[Sequence[Any]], Any], args: Sequence[Any],
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
                sink[index] = _collect(Path(work), self.artifacts,
                                       self.limits["artifact_bytes"])
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _encode_outputs(self, values: dict[str, list[Any]],
                        errors: list[tuple[str, str, str] | None]) -> dict[str, Any]:
        cap = self.limits["output_bytes"]
        for name, enc in self.outputs:
            column = values[name]
            if isinstance(column, np.ndarray) or _already_typed(enc, column):
                continue
            for k, value in enumerate(column):
                if value is None or errors[k] is not None:
                    column[k] = None
                    continue
                try:
                    column[k] = _capped(_cast_output(enc, value, name), name, cap)
                except (SchemaError, _TooLarge) as exc:
                    kind = "OutputTypeError" if isinstance(exc, SchemaError) else "OutputTooLarge"
                    errors[k] = (kind, str(exc), "")
                    for other in values.values():
                        other[k] = None
        return {name: encode_column(kind_for_encoding(enc.value), values[name])
                for name, enc in self.outputs}


_PLAIN = {EncodingType.numeric: float, EncodingType.integer: int,
          EncodingType.logical: bool}


def _already_typed(enc: EncodingType, column: list[Any]) -> bool:
    """A column of exact scalars of the declared type needs no per-value cast."""
    want = _PLAIN.get(enc)
    if want is None or not set(map(type, column)) <= {want, type(None)}:
        return False
    if want is int:
        ints = [v for v in column if v is not None]
        return not ints or (min(ints) >= -(2**63) and max(ints) < 2**63)
    return True


_DTYPE_KINDS = {EncodingType.numeric: ("f", np.float64), EncodingType.integer: ("iu", np.int64),
                EncodingType.logical: ("b", np.bool_)}


def _typed_array(enc: EncodingType | None, value: Any) -> np.ndarray | None:
    """A vectorised output as an array of the declared scalar type, if that is lossless."""
    want = _DTYPE_KINDS.get(enc) if enc is not None else None
    dtype = getattr(value, "dtype", None)
    if want is None or not isinstance(dtype, np.dtype) or dtype.kind not in want[0] \
            or getattr(value, "ndim", 1) != 1:
        return None
    array = np.asarray(value)
    if dtype.kind == "u" and len(array) and array.max() >= 2**63:
        return None  # beyond int64: the per-value path reports it
    return array.astype(want[1], copy=False)


class _VectorState:
    """Per-chunk bookkeeping of a vectorised call and its bisections."""

    def __init__(self, n: int, outputs: list[str]) -> None:
        self.n = n
        #: Per output: an array when one call returned the whole chunk typed, else a list.
        self.values: dict[str, Any] = {name: None for name in outputs}
        self.errors: list[tuple[str, str, str] | None] = [None] * n
        self.started = np.zeros(n)
        self.ended = np.zeros(n)
        self.consoles: list[str | None] = [None] * n
        self.buf = io.StringIO()

    def put(self, name: str, lo: int, hi: int, values: Any) -> None:
        column = self.values[name]
        if column is None and lo == 0 and hi == self.n and isinstance(values, np.ndarray):
            self.values[name] = values
            return
        if column is None:
            column = self.values[name] = [None] * self.n
        column[lo:hi] = values.tolist() if isinstance(values, np.ndarray) else values

    def columns(self) -> dict[str, Any]:
        return {name: [None] * self.n if column is None else column
                for name, column in self.values.items()}

    def note(self, lo: int, hi: int, started: float, mark: int) -> None:
        now = time.time()
        self.started[lo:hi] = started
        self.ended[lo:hi] = now
        text = self.buf.getvalue()[mark:]
        if text:
            self.consoles[lo] = (self.consoles[lo] or "") + text


class _TooLarge(Exception):
    pass


def _capped(value: Any, name: str, cap: int) -> Any:
    """Keep one row's output from filling the disk: text is cut with a marker."""
    if isinstance(value, str):
        if len(value) > cap:
            return value[:cap] + f"\n[localbatch: output truncated, {len(value) - cap} more " \
                                 "characters]"
        return value
    # The type, not the value: a missing attribute on a frame searches its columns.
    frame_like = hasattr(type(value), "memory_usage") and hasattr(type(value), "columns")
    size = None if frame_like else getattr(value, "nbytes", None)
    if frame_like:
        # A frame's cells are at most 8 bytes each (object cells count their pointer,
        # as a shallow memory_usage does): its shape settles the common case in a
        # microsecond, where memory_usage() costs ~100 us, 5% of a per-row predict.
        rows, cols = value.shape
        size = rows * cols * 8
        if size > cap:
            size = int(value.memory_usage(index=False, deep=False).sum())
    if size is not None and size > cap:
        raise _TooLarge(f"output {name!r} is {size} bytes, over the per-row cap of {cap} "
                        "(batch option output_limit)")
    return value


def _spread(call: Callable[[Sequence[Any]], Any]) -> Callable[..., Any]:
    return lambda *args: call(args)


def _unloaded(args: Sequence[Any]) -> Any:
    raise RuntimeError("service not initialized")


def _cast_output(enc: EncodingType, value: Any, name: str) -> Any:
    if enc is EncodingType.numeric and type(value) is float:
        return value
    if enc is EncodingType.dataframe:
        import pandas as pd

        if isinstance(value, pd.Series):
            return value.to_frame()
    return cast_value(enc, value, f"output {name!r}")


def _predict(model: Any, frame: Any) -> Any:
    """Realtime services: one prediction row per input row, as the SDK's outputData."""
    import numpy as np
    import pandas as pd

    pred = model.predict(frame)
    if isinstance(pred, pd.DataFrame):
        return pred.reset_index(drop=True)
    endog = getattr(getattr(model, "model", None), "endog_names", None)
    column = f"{endog}_Pred" if isinstance(endog, str) else "prediction"
    arr = np.asarray(pred)
    if arr.ndim == 2:
        return pd.DataFrame(arr, columns=[f"{column}_{j}" for j in range(arr.shape[1])])
    return pd.DataFrame({column: arr})


def _python_values(column: Any) -> Any:
    """Row functions get Python scalars (float, int, bool), as the SDK gave them."""
    return column.tolist() if isinstance(column, np.ndarray) and column.dtype != object \
        else column


def _error_of(exc: BaseException) -> tuple[str, str, str]:
    tb = exc.__traceback__
    # Drop the frames of localbatch itself: users want their own code's stack.
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("localbatch"):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return type(exc).__name__, str(exc), text


def _truncate(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    more = len(text) - cap
    return text[:cap] + f"\n[localbatch: console output truncated, {more} more characters]"


def _fd_size(fd: int | None) -> int:
    return os.fstat(fd).st_size if fd is not None else 0


def _read_fd(fd: int, start: int, end: int) -> str:
    return os.pread(fd, end - start, start).decode("utf-8", "replace")


def _collect(work: Path, names: list[str], cap: int) -> dict[str, bytes]:
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

        pdb.Pdb(stdout=real_out).set_trace(sys._getframe(1))

    sys.breakpointhook = hook
    try:
        yield
    finally:
        sys.breakpointhook = sys.__breakpointhook__


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_with_filename(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _restore_filenames(fns: Sequence[Any], filename: str | None) -> None:
    """cloudpickle 3 names by-value code "<dynamic-code>": give tracebacks, pdb and
    breakpoints the real file back (line numbers are kept)."""
    if not filename:
        return
    for fn in fns:
        if fn.__code__.co_filename == "<dynamic-code>":
            fn.__code__ = _with_filename(fn.__code__, filename)


# -- process entry points ------------------------------------------------------------


def _watch_owner(owner: int, parent: int) -> None:
    """Exit within ~0.25 s once the owner is gone, even mid-row."""
    def loop() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:
                os._exit(70)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(70)
            except PermissionError:
                pass

    threading.Thread(target=loop, name="localbatch-owner-watch", daemon=True).start()


def _capture_fds(scratch: str) -> int:
    """Send fd 1 and 2 (C-level writes, child processes) to a file we can attribute."""
    fd = os.open(os.path.join(scratch, "console.capture"), os.O_RDWR | os.O_CREAT |
                 os.O_APPEND | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return fd


def _load(spec: dict[str, Any], limits: dict[str, int] | None) -> Runtime:
    from .._store.fsutil import read_json
    from .._store.registry import read_blobs

    if "path" in spec:
        path = Path(spec["path"])
        manifest = read_json(path / "manifest.json")
        return Runtime(manifest, read_blobs(path, manifest), limits)
    from .._store.fsutil import sha256

    for fname, digest in spec["manifest"]["blobs"].items():
        if sha256(spec["blobs"][fname]) != digest:
            raise ServiceLoadError(f"service blob {fname} does not match its hash")
    return Runtime(spec["manifest"], spec["blobs"], limits)


def _send(conn: Any, msg: Any) -> None:
    conn.send_bytes(pickle.dumps(msg, protocol=5))


def serve(conn: Any, board_path: str | None, owner: int) -> None:
    """The worker's life: load, init, then chunks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_owner(owner, os.getppid())
    scratch = tempfile.mkdtemp(prefix="localbatch-worker-")
    os.environ["LOCALBATCH_SCRATCH"] = scratch
    os.chdir(scratch)
    cap_fd = _capture_fds(scratch)
    board = Board(board_path)
    try:
        _serve_loop(conn, board, cap_fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _serve_loop(conn: Any, board: Board, cap_fd: int) -> None:
    msg = pickle.loads(conn.recv_bytes())
    assert msg[0] == "load"
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runtime = _load(msg[1], msg[2] if len(msg) > 2 else None)
            seconds = runtime.initialize()
    except BaseException as exc:  # noqa: B036 - init's SystemExit is an init error too
        _send(conn, ("init_error", os.getpid(), _error_of(exc), buf.getvalue()))
        return
    _send(conn, ("ready", os.getpid(), seconds, buf.getvalue()))
    inbox = _drain(conn)
    while True:
        data = inbox.get()
        if data is None:
            return
        msg = pickle.loads(data)
        if msg[0] == "stop":
            return
        _, chunk_id, indices, columns = msg
        try:
            payload = runtime.run_rows(indices, columns, board, cap_fd, chunk_id)
        except Exception as exc:
            # A failure of localbatch's own code around the rows (not of the user's):
            # record it on every row of the chunk rather than die unexplained.
            payload = runtime.failed_chunk(indices, exc)
        _send(conn, ("result", chunk_id, payload))


def _drain(conn: Any) -> queue.SimpleQueue[bytes | None]:
    """Read the connection on a thread, so the parent's sends never wait on our rows.

    Without it, a parent sending the next chunk and a worker sending its result
    can both block on full socket buffers.
    """
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def loop() -> None:
        while True:
            try:
                inbox.put(conn.recv_bytes())
            except (EOFError, OSError):
                inbox.put(None)
                return

    threading.Thread(target=loop, name="localbatch-inbox", daemon=True).start()
    return inbox


def _zygote(conn: Any, owner: int) -> None:
    """forkserver start method: a warmed-up interpreter that forks workers on request.

    Replies are framed ``b"F" + pid`` (forked) and ``b"X" + pid + exit code`` (a
    child ended), so the owner learns exit statuses it cannot wait for itself.
    """
    import gc
    import select
    import socket

    # numpy and this module are loaded once here, so forked workers start warm. Not
    # pandas: importing it first would delay the first workers by ~0.4 s, and a
    # service that needs it imports it in each worker, on its own core.
    import numpy  # noqa: F401

    # Objects inherited by every fork stay out of the children's collections.
    gc.freeze()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=conn.fileno())
    # SIGCHLD wakes the select at once, so an owner waiting for an exit status
    # (after a kill) is answered in microseconds, not at the next poll.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    while True:
        _report_exits(sock)
        ready = select.select([sock, wake_r], [], [], 1.0)[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        if sock not in ready:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            _zygote_child(sock, fds[0], pickle.loads(msg), owner)
        os.close(fds[0])
        sock.sendall(b"F" + struct.pack("<q", pid))


def _report_exits(sock: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.sendall(b"X" + struct.pack("<qq", pid, os.waitstatus_to_exitcode(status)))


def _zygote_child(sock: Any, fd: int, board_path: str, owner: int) -> None:
    from multiprocessing.connection import Connection

    sock.close()
    os.setsid()
    try:
        serve(Connection(fd), board_path, owner)
    finally:
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    import argparse
    from multiprocessing.connection import Connection

    parser = argparse.ArgumentParser(prog="localbatch-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--board", default=None)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--zygote", action="store_true")
    args = parser.parse_args(argv)
    if args.zygote:
        _zygote(Connection(args.fd), args.owner)
    else:
        serve(Connection(args.fd), args.board, args.owner)
    os._exit(0)
