"""The commands that read and manage the store: everything but running a batch.

``services`` and ``show`` read the registry; ``status``, ``results``, ``failed``,
``artifacts`` and ``logs`` read executions (a running one too: they print what is
recorded so far); ``cancel`` and ``prune`` change them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._store.states import ACTIVE, TERMINAL, ExecutionState
from .._views import elapsed_seconds, parse_time
from .exits import EXIT_OK, CliError
from .lookup import (
    execution_folder,
    find_service,
    hint_prefix,
    live_counts,
    live_header,
    open_client,
    owner_alive,
    prune_one,
    resolve_id,
    store_path,
)
from .output import (
    check_out,
    emit,
    note,
    say,
    short_time,
    size_text,
    text_table,
    types_text,
    write_response,
)

if TYPE_CHECKING:
    from .._batch import Batch, BatchResponse
    from .._client import DeployClient

__all__ = [
    "cmd_artifacts",
    "cmd_cancel",
    "cmd_failed",
    "cmd_logs",
    "cmd_prune",
    "cmd_results",
    "cmd_services",
    "cmd_show",
    "cmd_status",
]


# -- services ------------------------------------------------------------------------------


def cmd_services(args: argparse.Namespace) -> int:
    path = store_path(args)
    if not path.is_dir():
        say(f"no services: no store at {path}")
        return EXIT_OK
    client = open_client(args)
    metas = client.list_services(args.name) if args.name else client.list_services()
    if not metas:
        if args.name:
            client.get_service(args.name)  # raises, saying what there is
            raise CliError(f"No service found for {args.name}")
        say(f"no services in {path}")
        return EXIT_OK
    metas.sort(key=lambda m: (m["name"], m["creationTime"]))
    rows = [(m["name"], m["version"],
             f"{types_text(m['inputParameterDefinitions'])} -> "
             f"{types_text(m['outputParameterDefinitions'])}",
             ", ".join(m["outputFileNames"]) or "-", short_time(m["creationTime"]))
            for m in metas]
    say(text_table(["NAME", "VERSION", "INPUTS -> OUTPUTS", "ARTIFACTS", "CREATED"], rows))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    cap = find_service(open_client(args), args.service).capabilities()
    if args.json:
        say(json.dumps(cap, indent=2, default=str))
        return EXIT_OK
    lines = [f"{cap['name']} {cap['version']}  ({cap['runtime']}, published "
             f"{short_time(cap['creation_time'])} by {cap['published_by']})"]
    if cap["description"]:
        lines.append(f"  {cap['description']}")
    call = f"{cap['operation_id']}({', '.join(d['name'] for d in cap['inputs'])})"
    fields = [("call", call),
              ("inputs", types_text(cap["inputs"])), ("outputs", types_text(cap["outputs"])),
              ("artifacts", ", ".join(cap["artifacts"]) or "-"), ("api", cap["api"]),
              ("snapshot", cap["snapshot_id"])]
    lines += [f"  {k + ':':<11}{v}" for k, v in fields]
    say("\n".join(lines))
    return EXIT_OK


# -- status --------------------------------------------------------------------------------


def _owner_text(header: dict[str, Any], alive: bool) -> str:
    if header.get("interrupted"):
        return "died (resumable)"
    if header["state"] in ACTIVE:
        return f"pid {header.get('owner_pid')} alive" if alive else "-"
    return "-"


def cmd_status(args: argparse.Namespace) -> int:
    path = store_path(args)
    if args.id is None and not path.is_dir():
        say(f"no executions: no store at {path}")
        return EXIT_OK
    client = open_client(args)
    if args.id is not None:
        return _status_one(args, client, resolve_id(client, args.id))
    headers = client.list_executions()
    if args.json:
        say(json.dumps(headers, indent=1, default=str))
        return EXIT_OK
    if not headers:
        say(f"no executions in {path}")
        return EXIT_OK
    rows = []
    for h in headers:
        done, failed = live_counts(client, h) if h["state"] in ACTIVE else (
            h.get("completed") or 0, h.get("failed") or 0)
        rows.append((h["execution_id"][:12], f"{h['service']} {h['version']}", h["state"],
                     f"{done}/{h['total']}", failed,
                     short_time(h.get("first_started") or h.get("started") or h.get("created")),
                     _owner_text(h, h["state"] in ACTIVE)))
    say(text_table(["ID", "SERVICE", "STATE", "DONE/TOTAL", "FAILED", "STARTED", "OWNER"], rows))
    return EXIT_OK


def _status_one(args: argparse.Namespace, client: DeployClient, eid: str) -> int:
    h = live_header(client, eid)
    if args.json:
        say(json.dumps(h, indent=1, default=str))
        return EXIT_OK
    alive = h["state"] in ACTIVE
    done, failed = live_counts(client, h) if alive else (int(h.get("completed") or 0),
                                                         int(h.get("failed") or 0))
    fields = [
        ("execution", eid),
        ("service", f"{h['service']} {h['version']} (revision {h.get('revision')})"),
        ("state", h["state"]),
        ("rows", f"{done}/{h['total']} recorded, {failed} failed"),
        ("created", short_time(h.get("created"))),
        ("started", short_time(h.get("first_started") or h.get("started"))),
        ("ended", short_time(h.get("ended"))),
        ("elapsed", _timing(h, done)),
        ("parallel", f"{h.get('parallel_count')} worker(s), engine {h.get('engine')}"),
        ("owner", _owner_text(h, alive) if alive or h.get("interrupted") else
         f"pid {h.get('owner_pid')} (exited)"),
    ]
    if h.get("resumed"):
        fields.append(("resumed", f"{h['resumed']} time(s)"))
    if h.get("first_started"):
        what = "retried" if h.get("retried_with") else "last run"
        fields.append((what, f"started {short_time(h.get('started'))}"
                             + (f" (version {h['retried_with']})" if h.get("retried_with")
                                else "")))
    if h.get("error"):
        fields.append(("error", h["error"]))
    if h.get("resumable"):
        fields.append(("next", f"{hint_prefix(args)} resume {eid}"))
    elif h["state"] == ExecutionState.COMPLETE and h.get("failed"):
        fields.append(("next", f"{hint_prefix(args)} failed {eid}"))
    say("\n".join(f"{k + ':':<11}{v}" for k, v in fields))
    return EXIT_OK


def _timing(h: dict[str, Any], done: int) -> str:
    """Time spent running over every run, and the rate over that time (a retry of a
    few rows does not make a batch look fast)."""
    seconds = elapsed_seconds(h)
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" + (f" ({done / seconds:,.1f} rows/s)" if done and seconds
                                else "")


# -- rows and artifacts --------------------------------------------------------------------


def _snapshot(args: argparse.Namespace) -> tuple[Batch, BatchResponse]:
    client = open_client(args)
    batch = client.get_execution(resolve_id(client, args.id))
    resp = batch.results()
    if resp.state not in TERMINAL:
        note(f"{resp.execution_id} is {resp.state}: {resp.completed_item_count}/"
             f"{resp.total_item_count} rows so far")
    return batch, resp


def cmd_results(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    _, resp = _snapshot(args)
    if out is None:
        emit(resp.to_frame(), None)
    else:
        write_response(resp, out)
    if out is not None:
        say(f"wrote {resp.completed_item_count} row(s) to {out}")
    return EXIT_OK


def cmd_failed(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    _, resp = _snapshot(args)
    frame = resp.failed()
    if len(frame) == 0 and out is None:
        # A bare CSV header reads like a broken command; say it in words.
        say(f"no failed rows ({resp.completed_item_count}/{resp.total_item_count} rows "
            "recorded)")
        return EXIT_OK
    emit(frame, out)
    if out is not None:
        say(f"wrote {len(frame)} failed row(s) to {out}")
    return EXIT_OK


def cmd_artifacts(args: argparse.Namespace) -> int:
    client = open_client(args)
    batch = client.get_execution(resolve_id(client, args.id))
    names = batch.list_artifacts(args.index)
    if args.download is None:
        for name in names:
            say(name)
        if not names:
            note(f"row {args.index} has no artifacts")
        return EXIT_OK
    dest = _download_dir(Path(args.download))
    for path in batch.download(args.index, destination=dest) if names else []:
        say(path)
    if not names:
        note(f"row {args.index} has no artifacts")
    return EXIT_OK


def _download_dir(dest: Path) -> Path:
    """``--download DIR``: DIR is made if missing, its parent never (a typo in a path
    must not grow a tree of folders somewhere)."""
    if dest.exists() and not dest.is_dir():
        raise CliError(f"--download {dest}: not a folder")
    if not dest.exists():
        if not dest.parent.is_dir():
            raise CliError(f"--download {dest}: folder {dest.parent} does not exist")
        dest.mkdir()
    return dest


def cmd_cancel(args: argparse.Namespace) -> int:
    client = open_client(args)
    eid = resolve_id(client, args.id)
    batch = client.get_execution(eid)
    before = batch.results()
    if before.state in TERMINAL and not before.header.get("interrupted"):
        say(f"{eid} is already {before.state}")
        return EXIT_OK
    batch.cancel()
    resp = batch.results()
    say(f"{eid} {resp.state}: {resp.completed_item_count}/{resp.total_item_count} rows "
        "recorded and kept")
    if resp.state == ExecutionState.CANCELED and \
            resp.completed_item_count < resp.total_item_count:
        say(f"to run the remaining rows: {hint_prefix(args)} resume {eid} --force")
    return EXIT_OK


# -- logs ----------------------------------------------------------------------------------


def _log_files(folder: Path) -> list[Path]:
    rotated = sorted(folder.glob("execution.log.*"),
                     key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [p for p in rotated if p.suffix[1:].isdigit()] + [folder / "execution.log"]


def cmd_logs(args: argparse.Namespace) -> int:
    client = open_client(args)
    eid = resolve_id(client, args.id)
    files = _log_files(execution_folder(client, eid))
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


def _tail(client: DeployClient, eid: str, path: Path, position: int) -> None:
    """Follow the log until the execution has ended and its owner has let go."""
    while True:
        # Checked before the read: the last lines, written before the end, still show.
        ended = (live_header(client, eid)["state"] in TERMINAL
                 and not owner_alive(client, eid))
        position = _copy_from(path, position)
        if ended:
            return
        time.sleep(0.2)


# -- prune ---------------------------------------------------------------------------------


def _kept_because(h: dict[str, Any], args: argparse.Namespace, cutoff: float) -> str | None:
    """Why prune keeps this execution ("running", "resumable", "newer"); None: it may go."""
    if h["state"] not in TERMINAL:
        return "running"
    if (h.get("interrupted") or h.get("resumable")) and not args.include_interrupted:
        return "resumable"
    when = parse_time(h.get("ended") or h.get("updated") or h.get("created"))
    if when is None or when > cutoff:
        return "newer"
    return None


def cmd_prune(args: argparse.Namespace) -> int:
    path = store_path(args)
    if not path.is_dir():
        say(f"nothing to prune: no store at {path}")
        return EXIT_OK
    client = open_client(args)
    cutoff = time.time() - args.older_than
    kept: Counter[str] = Counter()
    deleted = freed = 0
    verb = "would delete" if args.dry_run else "deleted"
    for h in client.list_executions():
        eid = h["execution_id"]
        reason = _kept_because(h, args, cutoff)
        size = prune_one(client, eid, args.dry_run) if reason is None else None
        if size is None:
            kept[reason or "running"] += 1  # no reason: its owner holds it, so it runs
            continue
        deleted += 1
        freed += size
        say(f"{verb} {eid}  {h['service']} {h['version']}  {h['state']}  "
            f"{short_time(h.get('ended') or h.get('created'))}")
    say(f"{verb} {deleted} execution(s), {size_text(freed)}" + _kept_text(kept))
    return EXIT_OK


def _kept_text(kept: Counter[str]) -> str:
    parts = [f"{kept['running']} running"] if kept["running"] else []
    if kept["resumable"]:
        parts.append(f"{kept['resumable']} resumable (--include-interrupted deletes them)")
    if kept["newer"]:
        parts.append(f"{kept['newer']} newer than --older-than")
    return f"; kept {', '.join(parts)}" if parts else ""
