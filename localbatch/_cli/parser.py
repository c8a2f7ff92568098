"""The argument parser: one table row per command, its flags in an ``_args_<cmd>`` beside it.

``--store`` and ``--debug`` are accepted before or after the command; the argument
types turn a bad value into argparse's usage error (exit status 2).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from .._version import __version__
from .commands import (
    cmd_artifacts,
    cmd_cancel,
    cmd_failed,
    cmd_logs,
    cmd_prune,
    cmd_results,
    cmd_services,
    cmd_show,
    cmd_status,
)
from .maintenance import cmd_gc, cmd_verify
from .running import cmd_resume, cmd_retry_failed, cmd_run

__all__ = ["build_parser"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

Command = Callable[[argparse.Namespace], int]
AddArgs = Callable[[argparse.ArgumentParser], None]


# -- argument types ------------------------------------------------------------------------


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 45s, 30m, 12h, 7d, 2w")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _number(convert: Callable[[str], Any], low: float, strict: bool, what: str
            ) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)`` above ``low`` (or at least ``low``)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not (value > low if strict else value >= low):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_positive_int = _number(int, 1, False, "a whole number >= 1")
_nonnegative_int = _number(int, 0, False, "a whole number >= 0")
_seconds = _number(float, 0.0, True, "a positive number of seconds")


# -- flags shared by several commands ----------------------------------------------------------


def _common(suppress: bool) -> argparse.ArgumentParser:
    """--store and --debug, accepted before or after the command."""
    default: Any = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--store", metavar="PATH", default=default,
                        help="the store folder (default: $LOCALBATCH_HOME, else a per-user "
                             "folder; the same as DeployClient())")
    parent.add_argument("--debug", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="show tracebacks and the library's log on stderr")
    return parent


def _progress_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--parallel-count", type=_positive_int, metavar="N",
                   help="worker processes (default: run: the number of CPUs; resume, "
                        "retry-failed: as the execution was started)")
    p.add_argument("--out", metavar="FILE",
                   help="write one row per input row to FILE (.csv, .tsv, .json, .parquet)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show the progress bar (default: when stderr is a terminal)")


def _id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID")


# -- each command's arguments --------------------------------------------------------------


def _args_services(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="only this service")


def _args_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", metavar="NAME[@VERSION]")
    p.add_argument("--json", action="store_true", help="the capabilities() dict as JSON")


def _args_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", metavar="NAME[@VERSION]",
                   help="the service (without a version: the latest)")
    p.add_argument("input", metavar="INPUT",
                   help="a .csv, .tsv or .parquet file, or a folder of .parquet files")
    _progress_flags(p)
    p.add_argument("--row-timeout", type=_seconds, metavar="S",
                   help="fail a row that runs longer than S seconds")
    p.add_argument("--max-attempts", type=_positive_int, default=3, metavar="N",
                   help="attempts for a row whose worker died (default 3)")
    p.add_argument("--error-threshold", type=_nonnegative_int, metavar="N",
                   help="fail the whole batch once more than N rows have failed")
    p.add_argument("--keep", action="append", metavar="COL",
                   help="carry this input column (an id, a key) into the results beside the "
                        "outputs; repeat for several")


def _args_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", metavar="ID", help="an execution id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="the header(s) as JSON")


def _args_rows(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("--out", metavar="FILE",
                   help="write to FILE (.csv, .tsv, .json, .parquet) instead of CSV on stdout")


def _args_artifacts(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("index", type=int, metavar="INDEX", help="the row (0-based)")
    p.add_argument("--download", metavar="DIR", help="write them into DIR")


def _args_resume(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("--force", action="store_true",
                   help="also a Canceled (or Failed, not resumable) execution")
    _progress_flags(p)


def _args_retry_failed(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("--version", dest="version", metavar="V",
                   help="on this version of the service (same inputs and outputs)")
    _progress_flags(p)


def _args_logs(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the execution ends")


def _args_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--older-than", type=_duration, required=True, metavar="AGE",
                   help="ended at least AGE ago: 45s, 30m, 12h, 7d, 2w")
    p.add_argument("--include-interrupted", action="store_true",
                   help="also delete resumable executions whose owner died")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")


def _args_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", metavar="ID",
                   help="only this execution (an id or a unique prefix)")


def _args_gc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")


#: (name, function, help, arguments), in the order ``--help`` lists them.
COMMANDS: tuple[tuple[str, Command, str, AddArgs], ...] = (
    ("services", cmd_services, "list services and their versions", _args_services),
    ("show", cmd_show, "show a service's capabilities", _args_show),
    ("run", cmd_run, "score a CSV, TSV or Parquet file with a service", _args_run),
    ("status", cmd_status, "list executions, or show one in detail", _args_status),
    ("results", cmd_results, "an execution's rows, one per input row", _args_rows),
    ("failed", cmd_failed, "an execution's failed rows and errors", _args_rows),
    ("artifacts", cmd_artifacts, "list (or download) the files a row wrote", _args_artifacts),
    ("cancel", cmd_cancel, "cancel an execution (recorded rows are kept)", _id),
    ("resume", cmd_resume, "run the rows an execution has not recorded yet", _args_resume),
    ("retry-failed", cmd_retry_failed, "re-run only the failed rows of an execution",
     _args_retry_failed),
    ("logs", cmd_logs, "print an execution's log", _args_logs),
    ("prune", cmd_prune, "delete finished executions and their artifacts", _args_prune),
    ("verify", cmd_verify, "check every file of the store (or an execution) for damage",
     _args_verify),
    ("gc", cmd_gc, "remove staging leftovers, dead owners' boards, unused revisions",
     _args_gc),
)


def build_parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog="localbatch", parents=[_common(suppress=False)],
        description="Score files with published localbatch services; watch and manage "
                    "executions.",
        epilog="exit status of run/resume/retry-failed: 0 all rows ok, 1 some rows failed, "
               "2 usage, 3 batch Failed, 4 Canceled (Ctrl-C), 5 input/service/store error")
    parser.add_argument("--version", action="version", version=f"localbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, func, help_text, add_args in COMMANDS:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        add_args(p)
    return parser
