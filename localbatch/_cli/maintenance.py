"""``verify`` and ``gc``: check every file of a store, remove what nothing will use.

``localbatch verify [ID]`` prints one line per damaged file (and per note) and
exits 1 when something is damaged, 0 when the store (or the execution) is
intact; ``localbatch gc [--dry-run]`` prints what it removed (or would remove).
Both are the client's :meth:`verify` / :meth:`gc` (``_store/maintenance.py``).
"""

from __future__ import annotations

import argparse

from .exits import EXIT_OK, EXIT_ROWS_FAILED
from .lookup import open_client, resolve_id, store_path
from .output import say, size_text

__all__ = ["EXIT_DAMAGED", "cmd_gc", "cmd_verify"]

#: ``verify`` found damage (the status ``run`` uses for "some rows failed").
EXIT_DAMAGED = EXIT_ROWS_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    client = open_client(args)
    eid = resolve_id(client, args.id) if args.id else None
    findings = client.verify(eid)
    for finding in findings:
        say(str(finding))
    damaged = sum(f.damaged for f in findings)
    what = f"execution {eid}" if eid else f"store {client.store_path}"
    if damaged:
        say(f"{what}: {damaged} damaged file(s)")
        return EXIT_DAMAGED
    say(f"{what}: intact" + (f" ({len(findings)} note(s))" if findings else ""))
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    path = store_path(args)
    if not path.is_dir():
        say(f"nothing to collect: no store at {path}")
        return EXIT_OK
    removed = open_client(args).gc(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for item in removed:
        say(f"{verb} {item}")
    say(f"{verb} {len(removed)} item(s), {size_text(sum(r.size for r in removed))}")
    return EXIT_OK
