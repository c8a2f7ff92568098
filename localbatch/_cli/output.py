"""What the command line prints, and the tables it reads and writes.

Messages (``say`` on stdout, ``note`` on stderr), short times, text tables, sizes;
input paths (CSV/TSV/Parquet, streamed by the engine) and result tables written
to stdout or, through a temp file and a rename, to ``--out`` (Parquet part by part).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .._store.fsutil import atomic_write_with
from .._views import parse_time
from .exits import EXIT_USAGE, CliError

__all__ = [
    "check_out",
    "emit",
    "folder_size",
    "note",
    "read_input",
    "say",
    "short_time",
    "show_warning",
    "size_text",
    "text_table",
    "timing_text",
    "types_text",
    "write_frame",
    "write_response",
]

_INPUT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq")
_OUTPUT_SUFFIXES = (".csv", ".tsv", ".json", ".parquet")


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def note(message: str) -> None:
    print(f"localbatch: {message}", file=sys.stderr, flush=True)


def show_warning(message: Any, category: Any, filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    # One line per warning, without the file/line noise meant for developers.
    note(f"warning: {message}")


# -- times, tables, sizes ------------------------------------------------------------------


def short_time(value: Any) -> str:
    when = parse_time(value)
    if when is None:
        return "-"
    return dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def size_text(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


def folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def timing_text(timing: tuple[int | None, float] | None, done: int) -> str:
    if not timing or not timing[1]:
        return ""
    rows = done if timing[0] is None else timing[0]
    seconds = timing[1]
    return f" in {seconds:.1f}s" + (f" ({rows / seconds:,.1f} rows/s)" if rows else "")


def types_text(defs: list[dict[str, str]]) -> str:
    # Deferred: _schema pulls in numpy (~50 ms), which `localbatch --help` does not need.
    from .._schema import EncodingType

    return ", ".join(f"{d['name']}: {EncodingType.to_python(d['type'])}" for d in defs) or "-"


# -- reading and writing tables -----------------------------------------------------------


def read_input(path_text: str) -> str:
    """A CSV/TSV/Parquet path (streamed by the engine) or a folder of Parquet files."""
    path = Path(path_text)
    suffix = path.suffix.lower()
    if path.is_dir():
        _require_pyarrow("read a folder of Parquet files")
        return str(path)
    if suffix not in _INPUT_SUFFIXES:
        raise CliError(f"input {path} must be a .csv, .tsv or .parquet file")
    if not path.is_file():
        raise CliError(f"input file not found: {path}")
    if suffix in (".parquet", ".pq"):
        _require_pyarrow("read Parquet input")
    return str(path)


def _require_pyarrow(what: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise CliError(f'pyarrow is needed to {what}: pip install "localbatch[parquet]"'
                       ) from None


def check_out(out: str | None) -> Path | None:
    """Fail before scoring, not after, on an output path that cannot be written."""
    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() not in _OUTPUT_SUFFIXES:
        raise CliError(f"--out {out}: the file name must end in "
                       f"{', '.join(_OUTPUT_SUFFIXES)}", EXIT_USAGE)
    if path.suffix.lower() == ".parquet":
        _require_pyarrow("write Parquet output")
    if not path.parent.is_dir():
        raise CliError(f"--out {out}: folder {path.parent} does not exist")
    return path


def write_frame(frame: Any, path: Path) -> None:
    """Write through a temp file and a rename: a reader never sees half a file."""
    atomic_write_with(path, functools.partial(_write_as, frame, path.suffix.lower()),
                      mode=0o644)


def _write_as(frame: Any, suffix: str, fh: BinaryIO) -> None:
    if suffix == ".csv":
        frame.to_csv(fh)
    elif suffix == ".tsv":
        frame.to_csv(fh, sep="\t")
    elif suffix == ".json":
        fh.write(frame.reset_index().to_json(orient="records", indent=1, date_format="iso",
                                             default_handler=str).encode())
    else:
        frame.to_parquet(fh)


def write_response(resp: Any, path: Path) -> None:
    """A response's table to ``path``; Parquet part by part (never the whole table)."""
    if path.suffix.lower() == ".parquet":
        resp.to_parquet(path)
    else:
        write_frame(resp.to_frame(), path)


def emit(frame: Any, out: Path | None) -> None:
    if out is None:
        frame.to_csv(sys.stdout)
        sys.stdout.flush()
    else:
        write_frame(frame, out)
