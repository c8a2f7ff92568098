"""Module-level service functions that worker processes load (pickled by value)."""

from __future__ import annotations

import os
import time


def add(a, b):
    return a * 2.0 + b


def shout(a, b):
    print(f"row a={a}")
    return a + b


def write_artifact(a, b):
    with open("out.txt", "w") as fh:
        fh.write(f"{a},{b}")
    return a + b


def fail_on_three(a, b):
    if a == 3:
        raise ValueError(f"bad row {a}")
    return a + b


def slow(a, b):
    time.sleep(b)
    return a


def exit_on(a, b):
    if a == b:
        raise SystemExit(3)
    return a


def kill_on(a, b):
    if a == b:
        os.kill(os.getpid(), 9)
    return a


def pid_of(a, b):
    return float(os.getpid())
