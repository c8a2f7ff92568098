"""The worker's board: how the supervisor learns which row a worker is running."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from localbatch._engines.dask import DaskSupervisor
from localbatch._engines.local import LocalSupervisor
from localbatch._workers.board import BOARD_ROWS, Board, running_row
from localbatch._workers.runtime import _RowConsole


def test_the_last_row_started_is_the_running_row() -> None:
    board = Board()
    chunks = {7: np.array([10, 11, 12, 13, 14])}
    assert running_row(board._mm, chunks.get) is None  # nothing begun
    board.begin(7, 5)
    assert running_row(board._mm, chunks.get) is None  # begun, no row started yet
    for k, t in enumerate([100.0, 101.0, 102.5]):
        board.started[k] = t
    assert running_row(board._mm, chunks.get) == (12, 102.5)
    board.end()
    assert running_row(board._mm, chunks.get) is None


def test_a_new_chunk_forgets_the_last_ones_rows() -> None:
    board = Board()
    chunks = {1: np.arange(100), 2: np.arange(100, 110)}
    board.begin(1, 100)
    for k in range(60):
        board.started[k] = 1.0 + k
    board.end()
    board.begin(2, 10)
    assert running_row(board._mm, chunks.get) is None
    board.started[0] = 5.0
    assert running_row(board._mm, chunks.get) == (100, 5.0)
    assert running_row(board._mm, {}.get) is None  # a chunk it was not sent


def test_rows_end_where_the_next_one_starts() -> None:
    board = Board()
    board.begin(3, 3)
    for k, t in enumerate([10.0, 12.0, 15.0]):
        board.started[k] = t
    started, ended = board.times(3, finished=20.0)
    assert started.tolist() == [10.0, 12.0, 15.0]
    assert ended.tolist() == [12.0, 15.0, 20.0]


def test_a_chunk_larger_than_a_board_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than a board"):
        Board().begin(1, BOARD_ROWS + 1)


@pytest.mark.parametrize("engine", [LocalSupervisor, DaskSupervisor])
def test_no_engine_deals_a_chunk_larger_than_a_board(engine: type) -> None:
    assert max(engine.max_chunk, engine.max_vector_chunk) <= BOARD_ROWS


def test_console_writes_go_to_the_row_running_when_they_were_written() -> None:
    board = Board()
    board.begin(1, 4)
    console = _RowConsole(board.started, 4)
    real = sys.stdout
    sys.stdout = console
    try:
        board.started[0] = 1.0
        print("zero")
        board.started[1] = 2.0  # row 1 prints nothing
        board.started[2] = 3.0
        print("two", end="")
        console.write("!")
        board.started[3] = 4.0
    finally:
        sys.stdout = real
    assert console.by_row() == {0: "zero\n", 2: "two!"}
    assert console.writable() and not console.isatty()
    with pytest.raises(TypeError):
        console.write(b"bytes")  # type: ignore[arg-type]
    assert isinstance(console, io.TextIOBase)
