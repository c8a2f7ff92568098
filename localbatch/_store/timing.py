"""Running time across the runs of one execution (first run, resumes, retries).

Each run's owner writes ``started`` (and ``ended``) for its own run. Before a
rerun (``resume``, ``retry_failed``) replaces them, :func:`carry_run_time` keeps
the first start as ``first_started`` and adds the run that ended to
``earlier_seconds``, so ``status`` can report when the execution really started
and a rate over the time spent running, not over the last retry of a few rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["carry_run_time", "parse_time", "run_seconds"]


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of a stored ISO timestamp; None if absent or unreadable."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def run_seconds(header: dict[str, Any], now: float) -> float | None:
    """Seconds spent running so far: earlier runs, plus this one to its end (or ``now``)."""
    started = parse_time(header.get("started"))
    earlier = float(header.get("earlier_seconds") or 0.0)
    if started is None:
        return earlier or None
    ended = parse_time(header.get("ended"))
    return earlier + max(0.0, (ended if ended is not None else now) - started)


def carry_run_time(header: dict[str, Any]) -> None:
    """Before a rerun overwrites ``started``/``ended``: keep what the last run took."""
    if header.get("started") is None:
        return
    header.setdefault("first_started", header["started"])
    # A run whose owner died has no end: its last header write is the best one known.
    ended = parse_time(header.get("ended") or header.get("updated"))
    started = parse_time(header["started"])
    if ended is not None and started is not None:
        header["earlier_seconds"] = float(header.get("earlier_seconds") or 0.0) + max(
            0.0, ended - started)
