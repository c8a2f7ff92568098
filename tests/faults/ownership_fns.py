"""Row functions of the ownership and disk-error tests (pickled by value)."""

from __future__ import annotations

import os
import time


def big_artifact(a, b):
    """Writes an artifact of ``b`` KiB (fills a small file system quickly)."""
    log = os.environ.get("FAULT_LOG")
    if log:
        with open(os.path.join(log, f"{int(a)}-{os.getpid()}-{time.monotonic_ns()}"), "w"):
            pass
    with open("blob.bin", "wb") as fh:
        fh.write(bytes([int(a) % 251]) * (int(b) << 10))
    return a * 2.0
