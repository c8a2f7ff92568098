"""Row functions of the integrity tests (corruption fuzz, verify/gc, store hygiene).

Each notes its runs under ``$FAULT_LOG`` (one file per run, named by the row) so a
test counts real executions independently of the store.
"""

from __future__ import annotations

from .faultfns import _note  # one run-log format for every fault test


def score(a, b):
    """a * b + 0.5; rows whose a ends in 7 raise; every 100th row writes out.txt."""
    _note(a)
    if int(a) % 10 == 7:
        raise ValueError(f"seven {a}")
    if int(a) % 100 == 0:
        with open("out.txt", "w") as fh:
            fh.write(f"row {a} artifact")
    print("scored", a)
    return a * b + 0.5
