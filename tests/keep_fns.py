"""Row functions for the key-column tests (module-level: workers load them by value)."""

from __future__ import annotations

import pandas as pd


def two_rows(a, b):
    """A DataFrame output of two rows: to_frame() gets one row per (input, position)."""
    return pd.DataFrame({"v": [a, b]})
