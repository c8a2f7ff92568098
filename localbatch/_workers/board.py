"""The board: which row a worker is running, shared by the worker and its supervisor.

A worker shows the chunk it runs on a shared-memory :class:`Board`: the chunk id
and, written just before each row is called, that row's start time. The
supervisor (which knows each chunk's row indices) reads the running row from it
with :func:`running_row`, so it can charge a death or a timeout to that row
only. Both sides import this module; neither imports the other's.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BOARD_BYTES", "BOARD_HEAD", "BOARD_ROWS", "Board", "running_row"]

#: Rows a board has room for: at least the largest chunk any engine deals.
BOARD_ROWS = 1 << 18
BOARD_HEAD = struct.Struct("<q")  # the running chunk's id (-1: none), then the times
BOARD_BYTES = BOARD_HEAD.size + 8 * BOARD_ROWS


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
