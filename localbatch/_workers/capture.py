"""fd-level console capture of a worker: what C code, ``os.write`` and child processes print.

fd 1 and 2 of a worker point to one file, ``console.capture``, through one open
file description: they share one offset, and so does every child process that
inherits them, so each write lands right after the one before. After each row
the runtime asks whether the row wrote there, and takes what it wrote.

Asking costs no system call. The file is filled ahead of the offset with the
byte ``0xFF`` (no UTF-8 text starts with it) and mapped shared: a write reaches
the mapped page at once (one page cache), so ``view[pos] != 0xFF`` (~25 ns)
says whether anything was written since ``pos``. Asking the kernel instead (an
``lseek`` per row) cost 190-290 ns on this machine's virtual CPUs, as much as a
trivial row itself. Only when something was written does an ``lseek`` find
where it ends::

    file:  | rows' output, read | 0xFF 0xFF 0xFF ... (filled ahead) |
                                ^ pos: where the next write lands

Output that does start with ``0xFF`` (binary, or Latin-1 ``ÿ``) leaves the map
unchanged. :meth:`FdCapture.settle` finds it at the chunk's end (one ``lseek``):
it goes to the rows it could have come from, marked so, and from then on this
worker asks the kernel after every row (:attr:`FdCapture.exact`), so it cannot
happen twice.

A row can also truncate the file: opening ``/dev/stdout`` for writing opens it
anew with ``O_TRUNC``. Reading the map past a file's end kills the process
(SIGBUS), so :meth:`FdCapture.check` runs first whenever the row guard looks at
a row (Python's ``open`` for writing and starting a process both make it look),
and gives the row what the truncated file holds.
"""

from __future__ import annotations

import mmap
import os

__all__ = ["FILL", "FdCapture"]

#: The byte the file holds ahead of the offset.
FILL = 0xFF
#: Bytes kept filled ahead of the offset (a row that writes more is still seen: its
#: first byte lands in the map).
AHEAD = 1 << 16
#: Beyond this many bytes of output the file is cut back when a chunk begins.
KEEP = 1 << 20


class _Always:
    """The map of a worker that asks the kernel after every row: every byte says "written"."""

    def __getitem__(self, pos: int) -> int:
        return ~FILL


class FdCapture:
    """The capture file behind fd 1 and 2 of a worker, and where its next write lands."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        #: Where the next write lands: everything before it has been taken.
        self.pos = 0
        #: Ask the kernel after every row (output that started with ``FILL`` was seen).
        self.exact = False
        self._size = 0
        self._mm: mmap.mmap | None = None
        #: ``view[pos] != FILL``: something was written since ``pos`` (read it with :meth:`take`).
        self.view: memoryview | _Always = _Always()
        self._fill_ahead()

    def take(self) -> str:
        """What was written since the last take (decoded; ``""`` when nothing was)."""
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        if end <= self.pos:
            return ""
        data = os.pread(self.fd, end - self.pos, self.pos)
        self.pos = end
        if not self.exact and end + 1 > self._size - AHEAD // 2:
            self._fill_ahead()
        return data.decode("utf-8", "replace")

    def check(self) -> str:
        """After a row the guard looked at (it opened a file or started a process): what
        it wrote by truncating the file, and the file in order again.

        Opening ``/dev/stdout`` for writing (``open(..., "w")``, a shell's ``>``) opens
        this file anew and truncates it; reading the map past the new end would kill the
        worker (SIGBUS), so the guard's check comes first. Everything a truncated file
        holds was written since (its holes, left by writes at the old offset, dropped).
        A row that moved the offset back loses what it wrote after the move.
        """
        size = os.fstat(self.fd).st_size
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        truncated = size < (self.pos if self.exact else self._size)
        if not truncated and end >= self.pos:
            return ""
        data = os.pread(self.fd, size, 0).replace(b"\0", b"") if truncated else b""
        self._restart()
        return data.decode("utf-8", "replace")

    def settle(self) -> str:
        """At a chunk's end: output the map did not show (it started with ``FILL``).

        Returns it (``""`` almost always); from then on every row asks the kernel.
        """
        if self.exact or os.lseek(self.fd, 0, os.SEEK_CUR) == self.pos:
            return ""
        self.exact = True
        self.view = _Always()
        self._mm = None
        return self.take()

    def begin(self) -> str:
        """Before a chunk: what was written since the last one (no row's: ``init``'s, or a
        thread's between chunks), and the file started over once a lot was written."""
        text = self.check() + self.take()
        if self.pos > KEEP:
            self._restart()
        return text

    def _restart(self) -> None:
        """An empty file, written from its start (not while rows run)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.pos = self._size = 0
        if not self.exact:
            self._fill_ahead()

    def _fill_ahead(self) -> None:
        """Fill ``[pos, pos + AHEAD)`` with ``FILL`` and map the file anew."""
        start = max(self.pos, self._size)  # [pos, size) is still filled
        stop = self.pos + AHEAD
        if stop > start:
            os.pwrite(self.fd, bytes([FILL]) * (stop - start), start)
        self._size = max(self._size, stop)
        # A new map (never resized): the hot loop may still hold the old view, which
        # stays valid until it lets go of it.
        self._mm = mmap.mmap(self.fd, self._size, mmap.MAP_SHARED, mmap.PROT_READ)
        self.view = memoryview(self._mm)
