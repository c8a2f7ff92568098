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

Exit status of ``run``, ``resume`` and ``retry-failed``: 0 every row succeeded,
1 some rows failed, 2 usage error, 3 the batch Failed, 4 Canceled (Ctrl-C
included), 5 an input, service or store error. Errors are one line on stderr;
``--debug`` adds the traceback and the library's log.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._errors import (
    ExecutionNotFoundError,
    LocalBatchError,
    ServiceNotFoundError,
)
from .._version import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_CANCELED = 4
EXIT_ERROR = 5

_STATE_EXIT = {"Failed": EXIT_FAILED, "Canceled": EXIT_CANCELED}
_TERMINAL = ("Complete", "Failed", "Canceled")
_INPUT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq")
_OUTPUT_SUFFIXES = (".csv", ".tsv", ".json", ".parquet")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CliError(Exception):
    """A one-line reason and the exit status it maps to."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- small helpers ----------------------------------------------------------------------


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _note(message: str) -> None:
    print(f"localbatch: {message}", file=sys.stderr, flush=True)


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # One line per warning, without the file/line noise meant for developers.
    _note(f"warning: {message}")


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


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _short_time(value: Any) -> str:
    when = _timestamp(value)
    if when is None:
        return "-"
    return dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _size_text(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


def _folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# -- store, services, executions ---------------------------------------------------------


def _store_path(args: argparse.Namespace) -> Path:
    from .._client import default_store

    return Path(args.store).expanduser() if args.store else default_store()


def _client(args: argparse.Namespace) -> Any:
    """The store's client; a store that does not exist is an error, never created here."""
    from .._client import DeployClient

    path = _store_path(args)
    if not path.is_dir():
        raise CliError(f"no localbatch store at {path} (deploy a service first, or pass "
                       "--store PATH)")
    return DeployClient(str(path))


def _service(client: Any, spec: str) -> Any:
    """``NAME`` (latest version) or ``NAME@VERSION``; a name may itself contain '@'."""
    if "@" in spec:
        name, version = spec.rsplit("@", 1)
        try:
            return client.get_service(name, version=version)
        except ServiceNotFoundError as first:
            try:
                return client.get_service(spec)
            except ServiceNotFoundError:
                raise first from None
    return client.get_service(spec)


def _resolve_id(client: Any, text: str) -> str:
    """A full execution id, or a unique prefix of one (as ``status`` prints them)."""
    store = client._executions
    with contextlib.suppress(ExecutionNotFoundError):
        if store.exists(text):
            return text
    matches = [i for i in store.list_ids() if i.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CliError(f"execution id prefix {text!r} is ambiguous: "
                       f"{', '.join(sorted(matches)[:5])}")
    raise CliError(f"no execution with id {text!r} in {client.store_path}")


def _batch(client: Any, execution_id: str, parallel_count: int | None = None) -> Any:
    """The execution's Batch, with the options it was started with (for resume/retry)."""
    from .._engines.base import BatchOptions

    batch = client.get_execution(execution_id)
    header = client._executions.read_header(execution_id)
    stored = dict(header.get("options") or {})
    known = {k: stored[k] for k in ("max_attempts", "row_timeout", "init_timeout",
                                    "error_threshold", "start_method") if k in stored}
    options = BatchOptions(parallel_count=parallel_count or int(header.get("parallel_count")
                                                                 or os.cpu_count() or 1),
                           limits=dict(stored.get("limits") or {}), **known)
    batch._options = options.validate()
    return batch


def _hint_prefix(args: argparse.Namespace) -> str:
    return f"localbatch --store {args.store}" if args.store else "localbatch"


# -- reading and writing tables -----------------------------------------------------------


def _read_input(path_text: str, service: Any) -> Any:
    """A CSV/TSV path (streamed by the engine) or a Parquet file read as a frame."""
    path = Path(path_text)
    suffix = path.suffix.lower()
    if suffix not in _INPUT_SUFFIXES:
        raise CliError(f"input {path} must be a .csv, .tsv or .parquet file")
    if not path.is_file():
        raise CliError(f"input file not found: {path}")
    if suffix in (".parquet", ".pq"):
        import pandas as pd

        _require_pyarrow("read Parquet input")
        try:
            return pd.read_parquet(path)
        except Exception as exc:
            raise CliError(f"cannot read {path}: {exc}") from exc
    return str(path)


def _require_pyarrow(what: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise CliError(f"pyarrow is needed to {what}: pip install pyarrow") from None


def _check_out(out: str | None) -> Path | None:
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


def _write_frame(frame: Any, path: Path) -> None:
    """Write through a temp file and a rename: a reader never sees half a file."""
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if suffix == ".csv":
            frame.to_csv(tmp)
        elif suffix == ".tsv":
            frame.to_csv(tmp, sep="\t")
        elif suffix == ".json":
            frame.reset_index().to_json(tmp, orient="records", indent=1, date_format="iso",
                                        default_handler=str)
        else:
            frame.to_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _emit(frame: Any, out: Path | None) -> None:
    if out is None:
        frame.to_csv(sys.stdout)
        sys.stdout.flush()
    else:
        _write_frame(frame, out)


# -- running with progress ---------------------------------------------------------------


def _progress_disabled(args: argparse.Namespace) -> bool | None:
    if args.progress is None:
        return None  # tqdm: shown only when stderr is a terminal
    return not args.progress


def _follow(args: argparse.Namespace, batch: Any, begin: Callable[[], Any],
            out: Path | None, announce: Callable[[Any], None], work: int | None) -> int:
    """Start (or resume) the batch, show progress, and map its end to an exit status.

    ``work``: how many rows this command runs (None: all), for the rate it reports.
    """
    from .._views import wait_with_progress

    started = time.monotonic()
    try:
        begin()
        announce(batch)
        wait_with_progress(batch, None, file=sys.stderr, disable=_progress_disabled(args))
    except KeyboardInterrupt:
        return _interrupted(args, batch)
    return _finish(args, batch.results(), out, (work, time.monotonic() - started))


def _interrupted(args: argparse.Namespace, batch: Any) -> int:
    """Ctrl-C: cancel cleanly (finished rows stay recorded) and say how to go on."""
    if batch.execution_id is None:
        _note("interrupted before the batch started: nothing was recorded")
        return EXIT_CANCELED
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not
    try:                                                      # abandon the cancel halfway
        batch.cancel()
    finally:
        signal.signal(signal.SIGINT, previous)
    resp = batch.results()
    if resp.state != "Canceled":
        return _finish(args, resp, None, None)
    _note(f"canceled {resp.execution_id}: {resp.completed_item_count}/"
          f"{resp.total_item_count} rows recorded and kept ({resp.failed_item_count} failed)")
    _note(f"to run the remaining rows: {_hint_prefix(args)} resume {resp.execution_id} --force")
    return EXIT_CANCELED


def _finish(args: argparse.Namespace, resp: Any, out: Path | None,
            timing: tuple[int | None, float] | None) -> int:
    eid, state = resp.execution_id, resp.state
    done, total, failed = (resp.completed_item_count, resp.total_item_count,
                           resp.failed_item_count)
    if state == "Complete":
        if out is not None:
            _write_frame(resp.to_frame(), out)
        _say(f"Complete: {done}/{total} rows, {failed} failed{_timing_text(timing, done)}"
             + (f"; wrote {out}" if out is not None else ""))
        if failed:
            _note(f"{failed} row(s) failed: {_hint_prefix(args)} failed {eid}  "
                  f"(re-run them: {_hint_prefix(args)} retry-failed {eid})")
            return EXIT_ROWS_FAILED
        if out is None:
            _say(f"results: {_hint_prefix(args)} results {eid} --out FILE")
        return EXIT_OK
    if state == "Canceled":
        _note(f"{eid} was canceled: {done}/{total} rows recorded ({resp.error or 'by request'})")
        return EXIT_CANCELED
    _note(f"{eid} Failed: {resp.error or 'unknown error'} ({done}/{total} rows recorded)")
    if resp.resumable:
        _note(f"to finish it: {_hint_prefix(args)} resume {eid}")
    return _STATE_EXIT.get(state, EXIT_FAILED)


# -- commands ------------------------------------------------------------------------------


def _timing_text(timing: tuple[int | None, float] | None, done: int) -> str:
    if not timing or not timing[1]:
        return ""
    rows = done if timing[0] is None else timing[0]
    seconds = timing[1]
    return f" in {seconds:.1f}s" + (f" ({rows / seconds:,.1f} rows/s)" if rows else "")


def _types(defs: list[dict[str, str]]) -> str:
    from .._schema import EncodingType

    return ", ".join(f"{d['name']}: {EncodingType.to_python(d['type'])}" for d in defs) or "-"


def cmd_services(args: argparse.Namespace) -> int:
    path = _store_path(args)
    if not path.is_dir():
        _say(f"no services: no store at {path}")
        return EXIT_OK
    client = _client(args)
    metas = client.list_services(args.name) if args.name else client.list_services()
    if not metas:
        if args.name:
            raise CliError(f"No service found for {args.name}")
        _say(f"no services in {path}")
        return EXIT_OK
    metas.sort(key=lambda m: (m["name"], m["creationTime"]))
    rows = [(m["name"], m["version"],
             f"{_types(m['inputParameterDefinitions'])} -> "
             f"{_types(m['outputParameterDefinitions'])}",
             ", ".join(m["outputFileNames"]) or "-", _short_time(m["creationTime"]))
            for m in metas]
    _say(_table(["NAME", "VERSION", "INPUTS -> OUTPUTS", "ARTIFACTS", "CREATED"], rows))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    cap = _service(_client(args), args.service).capabilities()
    if args.json:
        _say(json.dumps(cap, indent=2, default=str))
        return EXIT_OK
    lines = [f"{cap['name']} {cap['version']}  ({cap['runtime']}, published "
             f"{_short_time(cap['creation_time'])} by {cap['published_by']})"]
    if cap["description"]:
        lines.append(f"  {cap['description']}")
    call = f"{cap['operation_id']}({', '.join(d['name'] for d in cap['inputs'])})"
    fields = [("call", call),
              ("inputs", _types(cap["inputs"])), ("outputs", _types(cap["outputs"])),
              ("artifacts", ", ".join(cap["artifacts"]) or "-"), ("api", cap["api"]),
              ("snapshot", cap["snapshot_id"])]
    lines += [f"  {k + ':':<11}{v}" for k, v in fields]
    _say("\n".join(lines))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    client = _client(args)
    service = _service(client, args.service)
    records = _read_input(args.input, service)
    options: dict[str, Any] = {"max_attempts": args.max_attempts}
    if args.row_timeout is not None:
        options["row_timeout"] = args.row_timeout
    if args.error_threshold is not None:
        options["error_threshold"] = args.error_threshold
    with _naming(args.input):
        batch = service.batch(records, parallel_count=args.parallel_count or os.cpu_count()
                              or 1, **options)

    def start() -> None:
        with _naming(args.input):
            batch.start()

    def announce(b: Any) -> None:
        # First line on stdout, flushed: a wrapper can pick the id up while it runs.
        _say(f"execution {b.execution_id}")

    return _follow(args, batch, start, out, announce, None)


@contextlib.contextmanager
def _naming(input_path: str) -> Any:
    """Input errors name the file: "in.csv: line 7: column 'hp' value 'x' is not ..."."""
    from .._errors import SchemaError

    try:
        yield
    except SchemaError as exc:
        raise CliError(f"{input_path}: {exc}") from exc


def cmd_resume(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    client = _client(args)
    eid = _resolve_id(client, args.id)
    batch = _batch(client, eid, args.parallel_count)
    header = batch.results().header
    state = header["state"]
    if state == "Complete":
        _say(f"{eid} is already Complete")
        return _finish(args, batch.results(), out, None)
    if state in ("Pending", "InProgress"):
        raise CliError(f"{eid} is running (owner pid {header.get('owner_pid')}): it cannot be "
                       "resumed now")
    if not args.force and (state == "Canceled" or not header.get("resumable")):
        raise CliError(f"{eid} is {state} ({header.get('error') or 'by request'}): "
                       f"{_hint_prefix(args)} resume {eid} --force runs its remaining rows")

    def announce(b: Any) -> None:
        _say(f"execution {eid} resumed: {header.get('completed') or 0}/{header['total']} rows "
             "already recorded")

    work = int(header["total"]) - int(header.get("completed") or 0)
    return _follow(args, batch, lambda: batch.resume(force=args.force), out, announce, work)


def cmd_retry_failed(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    client = _client(args)
    eid = _resolve_id(client, args.id)
    batch = _batch(client, eid, args.parallel_count)
    resp = batch.results()
    if resp.state not in _TERMINAL:
        raise CliError(f"{eid} is {resp.state}: wait for it to end, or cancel it, first")
    if resp.completed_item_count < resp.total_item_count:
        # The engine would run the never-run rows too: that is a resume, so say so.
        missing = resp.total_item_count - resp.completed_item_count
        force = "" if resp.resumable else " --force"
        raise CliError(f"{eid} is {resp.state} with {missing} row(s) never run: "
                       f"{_hint_prefix(args)} resume {eid}{force} first")
    if resp.failed_item_count == 0:
        _say(f"{eid}: no failed rows to retry")
        return _finish(args, resp, out, None)

    def announce(b: Any) -> None:
        version = f" with version {args.version}" if args.version else ""
        _say(f"execution {eid}: retrying {resp.failed_item_count} failed row(s){version}")

    return _follow(args, batch, lambda: batch.retry_failed(args.version), out, announce,
                   resp.failed_item_count)


def _owner_text(header: dict[str, Any], alive: bool) -> str:
    if header.get("interrupted"):
        return "died (resumable)"
    if header["state"] in ("Pending", "InProgress"):
        return f"pid {header.get('owner_pid')} alive" if alive else "-"
    return "-"


def cmd_status(args: argparse.Namespace) -> int:
    path = _store_path(args)
    if args.id is None and not path.is_dir():
        _say(f"no executions: no store at {path}")
        return EXIT_OK
    client = _client(args)
    if args.id is not None:
        return _status_one(args, client, _resolve_id(client, args.id))
    headers = client.list_executions()
    if args.json:
        _say(json.dumps(headers, indent=1, default=str))
        return EXIT_OK
    if not headers:
        _say(f"no executions in {path}")
        return EXIT_OK
    rows = [(h["execution_id"][:12], f"{h['service']} {h['version']}", h["state"],
             f"{h.get('completed') or 0}/{h['total']}", h.get("failed") or 0,
             _short_time(h.get("started") or h.get("created")),
             _owner_text(h, h["state"] in ("Pending", "InProgress")))
            for h in headers]
    _say(_table(["ID", "SERVICE", "STATE", "DONE/TOTAL", "FAILED", "STARTED", "OWNER"], rows))
    return EXIT_OK


def _status_one(args: argparse.Namespace, client: Any, eid: str) -> int:
    from .._engines.executions import effective_header
    from .._views import elapsed_seconds

    h = effective_header(client._executions, eid)
    if args.json:
        _say(json.dumps(h, indent=1, default=str))
        return EXIT_OK
    alive = h["state"] in ("Pending", "InProgress")
    done = int(h.get("completed") or 0)
    seconds = elapsed_seconds(h)
    timing = "-"
    if seconds is not None:
        timing = f"{seconds:.1f}s" + (f" ({done / seconds:,.1f} rows/s)" if done and seconds
                                      else "")
    fields = [
        ("execution", eid),
        ("service", f"{h['service']} {h['version']} (revision {h.get('revision')})"),
        ("state", h["state"]),
        ("rows", f"{done}/{h['total']} recorded, {h.get('failed') or 0} failed"),
        ("created", _short_time(h.get("created"))),
        ("started", _short_time(h.get("started"))),
        ("ended", _short_time(h.get("ended"))),
        ("elapsed", timing),
        ("parallel", f"{h.get('parallel_count')} worker(s), engine {h.get('engine')}"),
        ("owner", _owner_text(h, alive) if alive or h.get("interrupted") else
         f"pid {h.get('owner_pid')} (exited)"),
    ]
    if h.get("resumed"):
        fields.append(("resumed", f"{h['resumed']} time(s)"))
    if h.get("error"):
        fields.append(("error", h["error"]))
    if h.get("resumable"):
        fields.append(("next", f"{_hint_prefix(args)} resume {eid}"))
    elif h["state"] == "Complete" and h.get("failed"):
        fields.append(("next", f"{_hint_prefix(args)} failed {eid}"))
    _say("\n".join(f"{k + ':':<11}{v}" for k, v in fields))
    return EXIT_OK


def _snapshot(args: argparse.Namespace) -> tuple[Any, Any]:
    client = _client(args)
    batch = client.get_execution(_resolve_id(client, args.id))
    resp = batch.results()
    if resp.state not in _TERMINAL:
        _note(f"{resp.execution_id} is {resp.state}: {resp.completed_item_count}/"
              f"{resp.total_item_count} rows so far")
    return batch, resp


def cmd_results(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    _, resp = _snapshot(args)
    _emit(resp.to_frame(), out)
    if out is not None:
        _say(f"wrote {resp.completed_item_count} row(s) to {out}")
    return EXIT_OK


def cmd_failed(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    _, resp = _snapshot(args)
    frame = resp.failed()
    _emit(frame, out)
    if out is not None:
        _say(f"wrote {len(frame)} failed row(s) to {out}")
    return EXIT_OK


def cmd_artifacts(args: argparse.Namespace) -> int:
    client = _client(args)
    batch = client.get_execution(_resolve_id(client, args.id))
    names = batch.list_artifacts(args.index)
    if args.download is None:
        for name in names:
            _say(name)
        if not names:
            _note(f"row {args.index} has no artifacts")
        return EXIT_OK
    dest = Path(args.download)
    dest.mkdir(parents=True, exist_ok=True)
    for path in batch.download(args.index, destination=dest) if names else []:
        _say(path)
    if not names:
        _note(f"row {args.index} has no artifacts")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    eid = _resolve_id(client, args.id)
    batch = client.get_execution(eid)
    before = batch.results()
    if before.state in _TERMINAL and not before.header.get("interrupted"):
        _say(f"{eid} is already {before.state}")
        return EXIT_OK
    batch.cancel()
    resp = batch.results()
    _say(f"{eid} {resp.state}: {resp.completed_item_count}/{resp.total_item_count} rows "
         "recorded and kept")
    return EXIT_OK


def _log_files(folder: Path) -> list[Path]:
    rotated = sorted(folder.glob("execution.log.*"),
                     key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [p for p in rotated if p.suffix[1:].isdigit()] + [folder / "execution.log"]


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    eid = _resolve_id(client, args.id)
    folder = client._executions.path(eid)
    files = _log_files(folder)
    for path in files[:-1]:
        sys.stdout.write(path.read_text(errors="replace"))
    current = files[-1]
    position = _copy_from(current, 0)
    if not args.follow:
        return EXIT_OK
    try:
        _tail(client, eid, current, position)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops following
    return EXIT_OK


def _copy_from(path: Path, position: int) -> int:
    """Copy ``path`` from ``position`` to stdout; the new position (0 after a rotation)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < position:
                position = 0  # rotated: the current file starts over
            fh.seek(position)
            data = fh.read()
    except FileNotFoundError:
        return 0
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return position + len(data)


def _tail(client: Any, eid: str, path: Path, position: int) -> None:
    """Follow the log until the execution has ended and its owner has let go."""
    from .._engines.executions import effective_header

    while True:
        # Checked before the read: the last lines, written before the end, still show.
        ended = (effective_header(client._executions, eid)["state"] in _TERMINAL
                 and not client._executions.owner_alive(eid))
        position = _copy_from(path, position)
        if ended:
            return
        time.sleep(0.2)


def cmd_prune(args: argparse.Namespace) -> int:
    path = _store_path(args)
    if not path.is_dir():
        _say(f"nothing to prune: no store at {path}")
        return EXIT_OK
    client = _client(args)
    store = client._executions
    cutoff = time.time() - args.older_than
    deleted = freed = running = resumable = newer = 0
    verb = "would delete" if args.dry_run else "deleted"
    for h in client.list_executions():
        eid = h["execution_id"]
        if h["state"] not in _TERMINAL:
            running += 1
            continue
        if (h.get("interrupted") or h.get("resumable")) and not args.include_interrupted:
            resumable += 1
            continue
        when = _timestamp(h.get("ended") or h.get("updated") or h.get("created"))
        if when is None or when > cutoff:
            newer += 1
            continue
        # Holding the owner lock while deleting: a resume starting right now waits, or wins.
        lock = store.take_ownership(eid, attempts=5)
        if lock is None:
            running += 1
            continue
        try:
            size = _folder_size(store.path(eid))
            if not args.dry_run:
                store.delete(eid)
        finally:
            lock.release()
        deleted += 1
        freed += size
        _say(f"{verb} {eid}  {h['service']} {h['version']}  {h['state']}  "
             f"{_short_time(h.get('ended') or h.get('created'))}")
    kept = [f"{running} running"] if running else []
    if resumable:
        kept.append(f"{resumable} resumable (--include-interrupted deletes them)")
    if newer:
        kept.append(f"{newer} newer than --older-than")
    _say(f"{verb} {deleted} execution(s), {_size_text(freed)}"
         + (f"; kept {', '.join(kept)}" if kept else ""))
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------


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


def _parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog="localbatch", parents=[_common(suppress=False)],
        description="Score files with published localbatch services; watch and manage "
                    "executions.",
        epilog="exit status of run/resume/retry-failed: 0 all rows ok, 1 some rows failed, "
               "2 usage, 3 batch Failed, 4 Canceled (Ctrl-C), 5 input/service/store error")
    parser.add_argument("--version", action="version", version=f"localbatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("services", cmd_services, "list services and their versions")
    p.add_argument("name", nargs="?", help="only this service")

    p = add("show", cmd_show, "show a service's capabilities")
    p.add_argument("service", metavar="NAME[@VERSION]")
    p.add_argument("--json", action="store_true", help="the capabilities() dict as JSON")

    p = add("run", cmd_run, "score a CSV, TSV or Parquet file with a service")
    p.add_argument("service", metavar="NAME[@VERSION]",
                   help="the service (without a version: the latest)")
    p.add_argument("input", metavar="INPUT", help="a .csv, .tsv or .parquet file")
    _progress_flags(p)
    p.add_argument("--row-timeout", type=_seconds, metavar="S",
                   help="fail a row that runs longer than S seconds")
    p.add_argument("--max-attempts", type=_positive_int, default=3, metavar="N",
                   help="attempts for a row whose worker died (default 3)")
    p.add_argument("--error-threshold", type=_nonnegative_int, metavar="N",
                   help="fail the whole batch once more than N rows have failed")

    p = add("status", cmd_status, "list executions, or show one in detail")
    p.add_argument("id", nargs="?", metavar="ID", help="an execution id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="the header(s) as JSON")

    for name, func, text in (("results", cmd_results, "an execution's rows, one per input row"),
                             ("failed", cmd_failed, "an execution's failed rows and errors")):
        p = add(name, func, text)
        p.add_argument("id", metavar="ID")
        p.add_argument("--out", metavar="FILE",
                       help="write to FILE (.csv, .tsv, .json, .parquet) instead of CSV on "
                            "stdout")

    p = add("artifacts", cmd_artifacts, "list (or download) the files a row wrote")
    p.add_argument("id", metavar="ID")
    p.add_argument("index", type=int, metavar="INDEX", help="the row (0-based)")
    p.add_argument("--download", metavar="DIR", help="write them into DIR")

    p = add("cancel", cmd_cancel, "cancel an execution (recorded rows are kept)")
    p.add_argument("id", metavar="ID")

    p = add("resume", cmd_resume, "run the rows an execution has not recorded yet")
    p.add_argument("id", metavar="ID")
    p.add_argument("--force", action="store_true",
                   help="also a Canceled (or Failed, not resumable) execution")
    _progress_flags(p)

    p = add("retry-failed", cmd_retry_failed, "re-run only the failed rows of an execution")
    p.add_argument("id", metavar="ID")
    p.add_argument("--version", dest="version", metavar="V",
                   help="on this version of the service (same inputs and outputs)")
    _progress_flags(p)

    p = add("logs", cmd_logs, "print an execution's log")
    p.add_argument("id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the execution ends")

    p = add("prune", cmd_prune, "delete finished executions and their artifacts")
    p.add_argument("--older-than", type=_duration, required=True, metavar="AGE",
                   help="ended at least AGE ago: 45s, 30m, 12h, 7d, 2w")
    p.add_argument("--include-interrupted", action="store_true",
                   help="also delete resumable executions whose owner died")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    return parser


# -- entry point ----------------------------------------------------------------------------


def _setup(debug: bool) -> None:
    warnings.showwarning = _show_warning
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
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
        _note("interrupted")
        return EXIT_CANCELED
    except CliError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        _note(f"error: {exc}")
        return exc.code
    except Exception as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        internal = not isinstance(exc, (LocalBatchError, OSError, ValueError, LookupError))
        _note(f"error: {_one_line(exc)}" + (" (internal error: --debug shows the traceback)"
                                            if internal and not args.debug else ""))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
