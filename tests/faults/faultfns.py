"""Service functions that misbehave on purpose (loaded by workers, pickled by value).

Each logs its executions to a side channel (one file per attempt under
``$FAULT_LOG``) so tests can count real runs independently of the store.
"""

from __future__ import annotations

import os
import time
import uuid


def _note(a):
    log = os.environ.get("FAULT_LOG")
    if log:
        with open(os.path.join(log, f"{int(a)}-{uuid.uuid4().hex[:8]}"), "w") as fh:
            fh.write(str(os.getpid()))


def die(a, b):
    """Row ``b`` kills its worker in the way FAULT_MODE names; every other row adds."""
    _note(a)
    if a == b:
        mode = os.environ.get("FAULT_MODE", "sigkill")
        if mode == "sigkill":
            os.kill(os.getpid(), 9)
        elif mode == "segfault":
            import ctypes

            ctypes.string_at(0)
        elif mode == "exit":
            os._exit(1)
        elif mode == "oom":
            hog = bytearray(300 << 20)  # noqa: F841 - a large allocation, then the OOM killer
            os.kill(os.getpid(), 9)
    return a * 2.0 + b


def die_once(a, b):
    """Row ``b`` kills its worker on its first attempt only (a transient crash)."""
    _note(a)
    marker = os.path.join(os.environ["FAULT_LOG"], f"died-{int(a)}")
    if a == b and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return a * 2.0 + b


def raise_exit(a, b):
    _note(a)
    if a == b:
        raise SystemExit(4)
    if a == b + 1:
        raise KeyboardInterrupt
    return a * 2.0 + b


def hang(a, b):
    """Row ``b`` hangs (with a child process of its own); other rows are quick."""
    _note(a)
    if a == b:
        import subprocess

        child = subprocess.Popen(["sleep", "120"])
        with open(os.path.join(os.environ["FAULT_LOG"], "child.pid"), "w") as fh:
            fh.write(str(child.pid))
        time.sleep(120)
    return a * 2.0 + b


def slow(a, b):
    _note(a)
    time.sleep(b)
    return a * 2.0


def flaky(a, b):
    """Rows with a multiple of ``b`` raise; used for thresholds and retry_failed."""
    _note(a)
    if int(a) % int(b) == 0:
        raise ValueError(f"row {int(a)} is bad")
    return a * 2.0


def hang_init():
    time.sleep(120)


def bad_init():
    raise RuntimeError("model file missing")


def with_artifact(a, b):
    _note(a)
    time.sleep(b)
    with open("row.txt", "w") as fh:
        fh.write(f"row {int(a)}")
    return a * 2.0
