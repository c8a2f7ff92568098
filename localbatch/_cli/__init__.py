"""The ``localbatch`` command line: score files, watch and manage executions.

::

    localbatch services [NAME]                 published services and versions
    localbatch show NAME[@VERSION]             one service's capabilities
    localbatch run NAME[@VERSION] INPUT        score a CSV/TSV/Parquet file, with progress
    localbatch status [ID]                     executions, or one in detail
    localbatch results|failed ID [--out F]     rows (CSV on stdout, or a file)
    localbatch artifacts ID INDEX [--download DIR]
    localbatch cancel|resume|retry-failed ID
    localbatch logs ID [--follow]
    localbatch prune --older-than 7d
    localbatch verify [ID]                     damaged files (exit 1), or "intact"
    localbatch gc [--dry-run]                  remove leftovers and unused revisions

Exit status of ``run``, ``resume`` and ``retry-failed``: 0 every row succeeded,
1 some rows failed, 2 usage error, 3 the batch Failed, 4 Canceled (Ctrl-C
included), 5 an input, service or store error. Errors are one line on stderr;
``--debug`` adds the traceback and the library's log.

The modules, each importing only those below it::

    __init__   main(): parse, dispatch, map an exception to one line and a status
    parser     the argparse tree: one row per command, argument types
    running    run / resume / retry-failed, following progress
    commands   services / show / status / results / failed / artifacts / cancel / logs / prune
    maintenance  verify / gc
    lookup     store, service and execution lookup; the CLI's only reach into the engine
    output     messages, text tables, times, sizes, input readers, frame writers
    exits      exit statuses and CliError
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from .._errors import LocalBatchError
from .exits import EXIT_CANCELED, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError
from .output import note, show_warning
from .parser import build_parser

__all__ = ["main"]


def _setup(debug: bool) -> None:
    warnings.showwarning = show_warning
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s"))
        logger = logging.getLogger("localbatch")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if isinstance(exc, (CliError, LocalBatchError)):
        return message
    return f"{type(exc).__name__}: {message}"


def _failed(exc: Exception, debug: bool) -> int:
    """Report an error in one line (``--debug``: after its traceback); its exit status."""
    if debug:
        traceback.print_exc()
    if isinstance(exc, CliError):
        note(f"error: {exc}")
        return exc.code
    internal = not isinstance(exc, (LocalBatchError, OSError, ValueError, LookupError))
    note(f"error: {_one_line(exc)}" + (" (internal error: --debug shows the traceback)"
                                       if internal and not debug else ""))
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup(args.debug)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # ``localbatch results ID | head``: the reader left; that is not an error.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        note("interrupted")
        return EXIT_CANCELED
    except Exception as exc:
        return _failed(exc, args.debug)
