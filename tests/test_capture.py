"""The fd capture of a worker (``_workers/capture.py``): what a row writes to fd 1 and 2
is that row's, read off a shared map without a system call per row.

The property test plays chunks of rows against a real capture file: each row writes
any number of byte strings through fd 1 and fd 2 (two fds sharing one offset, as in a
worker), some longer than the filled window, some starting with the fill byte. After
each row the fast loop's own check runs (``view[pos] != FILL`` and then ``take``),
and at each chunk's end ``settle`` and ``begin``. The model says what each row must
get: its own bytes exactly, except output that begins with ``0xFF``, which the map
cannot show: from there to the chunk's end everything goes to ``settle`` (and from
then on every row is checked by the kernel, so it is exact again). What is written
between chunks (``init``, a thread a row left) is no row's: ``begin`` takes it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from localbatch._workers.capture import AHEAD, FILL, KEEP, FdCapture

FF = bytes([FILL])

small = st.binary(max_size=40)
writes = st.lists(st.one_of(
    small, small, small, small,
    st.binary(max_size=8).map(lambda b: FF + b),  # the fill byte first
    st.integers(AHEAD // 2, 2 * AHEAD).map(lambda n: b"x" * n),  # beyond the window
), max_size=3)
#: A chunk: what is written before it (init, a thread between chunks), then its rows.
chunks = st.lists(st.tuples(writes, st.lists(writes, min_size=1, max_size=10)),
                  min_size=1, max_size=5)


def play(cap: FdCapture, fds: list[int], chunk: list[list[bytes]],
         before: list[bytes] = ()) -> tuple[list[str], str, str]:
    """Run one chunk the way the fast loop does: (per row what it was given, settled),
    after ``before`` was written between chunks (``begin`` takes it: no row's)."""
    for data in before:
        os.write(fds[0], data)
    between = cap.begin()
    assert between == b"".join(before).decode("utf-8", "replace")
    got = []
    for k, row in enumerate(chunk):
        for i, data in enumerate(row):
            os.write(fds[(k + i) % len(fds)], data)
        got.append(cap.take() if cap.view[cap.pos] != FILL else "")
    return got, cap.settle(), between


def expected(chunk: list[list[bytes]], exact: bool) -> tuple[list[str], str]:
    """What the model says each row gets, and what settle finds."""
    rows, missed = [], b""
    for row in chunk:
        data = b"".join(row)
        if not exact and (missed or data[:1] == FF):
            missed += data
            rows.append("")
        else:
            rows.append(data.decode("utf-8", "replace"))
    return rows, missed.decode("utf-8", "replace")


@settings(max_examples=150, deadline=None)
@given(chunks)
def test_each_row_gets_exactly_what_it_wrote(tmp_path_factory, played):
    path = tmp_path_factory.mktemp("cap") / "console.capture"
    cap = FdCapture(str(path))
    fds = [cap.fd, os.dup(cap.fd)]  # fd 1 and 2 of a worker: one offset
    try:
        for before, chunk in played:
            exact = cap.exact
            want_rows, want_settled = expected(chunk, exact)
            got_rows, settled, _ = play(cap, fds, chunk, before)
            assert got_rows == want_rows
            assert settled == want_settled
            assert cap.exact == (exact or bool(want_settled))
    finally:
        os.close(fds[1])
        os.close(cap.fd)


def test_the_file_starts_over_between_chunks_once_it_is_large(tmp_path):
    cap = FdCapture(str(tmp_path / "console.capture"))
    big = b"y" * (KEEP + 10)
    got, settled, _ = play(cap, [cap.fd], [[big], [b"after"]])
    assert got == [big.decode(), "after"] and settled == ""
    assert os.fstat(cap.fd).st_size > KEEP
    got, _, _ = play(cap, [cap.fd], [[b"next chunk"]])
    assert got == ["next chunk"] and os.fstat(cap.fd).st_size <= AHEAD + len("next chunk")


def test_a_child_process_writing_to_the_inherited_fd_is_seen(tmp_path):
    cap = FdCapture(str(tmp_path / "console.capture"))
    subprocess.run([sys.executable, "-c", "import os; os.write(1, b'from a child')"],
                   stdout=cap.fd, check=True)
    assert cap.view[cap.pos] != FILL and cap.take() == "from a child"
    assert cap.view[cap.pos] == FILL and cap.take() == ""


def test_a_truncated_file_gives_what_was_written_since_and_is_in_order_again(tmp_path):
    """What ``open("/dev/stdout", "w")`` does to a worker's capture file: a new open that
    truncates it. The guard's check (``check``) runs before the map is read again."""
    path = tmp_path / "console.capture"
    cap = FdCapture(str(path))
    play(cap, [cap.fd], [[b"x" * 9000]])  # the offset well past the first page
    with open(path, "w") as reopened:
        reopened.write("written anew")
    os.write(cap.fd, b"+fd")  # lands at the old offset, past a hole
    assert cap.check() == "written anew+fd"
    got, settled, _ = play(cap, [cap.fd], [[b"after"], [b"\xff binary"], [b"more"]])
    assert got == ["after", "", ""] and settled == "\ufffd binarymore"


def test_an_offset_moved_back_loses_only_what_was_written_after_the_move(tmp_path):
    cap = FdCapture(str(tmp_path / "console.capture"))
    play(cap, [cap.fd], [[b"first"]])
    os.lseek(cap.fd, 0, os.SEEK_SET)
    os.write(cap.fd, b"over")
    assert cap.check() == ""
    got, settled, _ = play(cap, [cap.fd], [[b"then"], [b"and on"]])
    assert got == ["then", "and on"] and settled == ""
