"""Vectorised services: the code is called once per chunk, with columns, not per row.

The inputs arrive as pandas Series (indexed by row number) and each output comes
back as one value per row. A call that raises is bisected until the failing rows
are alone, so only they fail; a span's console output (fd 1 and 2 too) goes to
its first row, and
the board names a span by its first row (see :class:`~.board.Board`).
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._format.chunk import RowError, index_array
from .._schema import EncodingType
from .loading import Call
from .protocol import row_error

__all__ = ["VectorizedChunk"]

_DTYPE_KINDS = {EncodingType.numeric: ("f", np.float64), EncodingType.integer: ("iu", np.int64),
                EncodingType.logical: ("b", np.bool_)}


class VectorizedChunk:
    """One chunk of a vectorised service: its calls, their bisections and what they gave."""

    def __init__(self, call: Call, to_outputs: Callable[[Any], dict[str, Any]],
                 outputs: list[tuple[str, EncodingType]], n: int,
                 fd_output: Callable[[], str] | None = None) -> None:
        self._call = call
        #: What the worker's fd 1 and 2 got since the last call (see :mod:`.capture`).
        self._fd_output = fd_output
        self._to_outputs = to_outputs
        self._encodings = dict(outputs)
        self.n = n
        #: Per output: an array when one call returned the whole chunk typed, else a list.
        self.values: dict[str, Any] = {name: None for name, _ in outputs}
        self.errors: list[RowError | None] = [None] * n
        self.started = np.zeros(n)
        self.ended = np.zeros(n)
        self.consoles: list[str | None] = [None] * n
        self.buf = io.StringIO()

    def run(self, indices: Sequence[int], columns: dict[str, Sequence[Any]],
            inputs: list[str], started: Any) -> None:
        """Call the code on the whole chunk (bisecting on failure); ``started`` is the
        board's row start times."""
        import pandas as pd  # vectorised services take Series: only they pay for pandas

        index = pd.Index(index_array(indices))
        series = [pd.Series(columns[name], index=index, name=name) for name in inputs]
        real_out, real_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.buf
        try:
            self._span(series, 0, self.n, started)
        finally:
            sys.stdout, sys.stderr = real_out, real_err

    def columns(self) -> dict[str, Any]:
        """Each output's values, one per row (None for rows that failed)."""
        return {name: [None] * self.n if column is None else column
                for name, column in self.values.items()}

    def _span(self, series: list[Any], lo: int, hi: int, started: Any) -> None:
        t = started[lo] = time.time()  # the board names a span by its first row
        mark = self.buf.tell()
        try:
            ret = self._call([s.iloc[lo:hi] for s in series])
            per_row = self._split(ret, hi - lo)
        except BaseException as exc:  # noqa: B036 - user code: SystemExit too
            if hi - lo == 1:
                self.errors[lo] = row_error(exc)
                self._note(lo, hi, t, mark)
                return
            mid = (lo + hi) // 2
            self._span(series, lo, mid, started)
            self._span(series, mid, hi, started)
            return
        for name, values in per_row.items():
            self._put(name, lo, hi, values)
        self._note(lo, hi, t, mark)

    def _split(self, ret: Any, m: int) -> dict[str, Any]:
        """One value per row for each output: a typed array where numpy's dtype is
        already the declared type (no Python object per row), else a list."""
        out: dict[str, Any] = {}
        for name, value in self._to_outputs(ret).items():
            typed = _typed_array(self._encodings.get(name), value)
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

    def _put(self, name: str, lo: int, hi: int, values: Any) -> None:
        column = self.values[name]
        if column is None and lo == 0 and hi == self.n and isinstance(values, np.ndarray):
            self.values[name] = values
            return
        if column is None:
            column = self.values[name] = [None] * self.n
        column[lo:hi] = values.tolist() if isinstance(values, np.ndarray) else values

    def _note(self, lo: int, hi: int, started: float, mark: int) -> None:
        now = time.time()
        self.started[lo:hi] = started
        self.ended[lo:hi] = now
        text = (self._fd_output() if self._fd_output else "") + self.buf.getvalue()[mark:]
        if text:
            self.consoles[lo] = (self.consoles[lo] or "") + text


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
