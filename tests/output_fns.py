"""Row functions for the Parquet, key-column and CLI tests (module-level: workers load
them by value)."""

from __future__ import annotations

import time

import pandas as pd


def two_rows(a, b):
    """A DataFrame output of two rows: to_frame() gets one row per (input, position)."""
    return pd.DataFrame({"v": [a, b]})


def slow_fail_on_three(a, b):
    """Takes ``b`` seconds; row a == 3 fails (a first run that takes measurable time)."""
    time.sleep(b)
    if a == 3:
        raise ValueError(f"bad row {a}")
    return a
