"""The benchmark's workloads: input frames, the function each engine runs, checks.

Every engine takes the same DataFrame and returns a DataFrame with one row per
input row (``y`` for scalar outputs, ``answer.am_Pred`` for the sample's
one-row-DataFrame output), so building arguments and collecting results are
counted for everyone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _rowfns
import numpy as np
import pandas as pd

#: Rows per call of the alternatives' per-chunk map in the vectorised workload
#: (localbatch sizes its own chunks; ``compare.py --vector-chunk`` sets this).
VECTOR_CHUNK = int(os.environ.get("LOCALBATCH_BENCH_VECTOR_CHUNK", "10000"))


@dataclass(frozen=True)
class Workload:
    """One kind of work: inputs, outputs and the per-row (or per-chunk) function."""

    name: str
    inputs: tuple[str, ...]
    output: str  # the DataFrame column every engine must return
    row_fn: Callable[..., Any] | None = None  # fn(*row) -> scalar or one-row DataFrame
    chunk_fn: Callable[[pd.DataFrame], pd.DataFrame] | None = None  # vector: frame -> frame
    workers: int = 2
    frame_output: bool = False  # row_fn returns a one-row DataFrame
    warmup_rows: int = 20_000
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def vectorized(self) -> bool:
        return self.chunk_fn is not None

    def frame(self, n: int, seed: int = 0) -> pd.DataFrame:
        """The input table of ``n`` rows (deterministic)."""
        if self.name in ("ols_row", "vector"):
            from _ols import mtcars

            reps = -(-n // len(mtcars))
            base = mtcars[["hp", "wt"]].astype(float)
            return pd.concat([base] * reps, ignore_index=True).iloc[:n].reset_index(drop=True)
        rng = np.random.default_rng(seed)
        return pd.DataFrame({"a": rng.random(n), "b": rng.random(n)})

    def expected(self, df: pd.DataFrame) -> np.ndarray:
        """What ``output`` must hold, computed in-process (outside any timing)."""
        if self.name == "trivial":
            return df["a"].to_numpy() * 2.0 + df["b"].to_numpy()
        if self.name == "sleep_io":
            return df["a"].to_numpy()
        from _ols import cars_model

        return cars_model.predict(df[["hp", "wt"]]).to_numpy()

    def results_frame(self, results: list[Any]) -> pd.DataFrame:
        """The alternatives' per-row return values as one DataFrame (counted in their time)."""
        if not self.frame_output:
            return pd.DataFrame({self.output: results})
        first = results[0]
        values = np.concatenate([r.to_numpy() for r in results])
        return pd.DataFrame(values, columns=[f"answer.{c}" for c in first.columns])


def _ols_row() -> Callable[..., Any]:
    from _ols import ols_row

    return ols_row


def _ols_chunk() -> Callable[[pd.DataFrame], pd.DataFrame]:
    from _ols import ols_chunk

    return ols_chunk


def get(name: str) -> Workload:
    """The workload called ``name`` (the statsmodels ones import ``_ols`` lazily)."""
    if name == "trivial":
        return Workload("trivial", ("a", "b"), "y", row_fn=_rowfns.trivial)
    if name == "sleep_io":
        return Workload("sleep_io", ("a", "b"), "y", row_fn=_rowfns.sleep_io, workers=10,
                        warmup_rows=400)
    if name == "ols_row":
        return Workload("ols_row", ("hp", "wt"), "answer.am_Pred", row_fn=_ols_row(),
                        frame_output=True, warmup_rows=200)
    if name == "vector":
        return Workload("vector", ("hp", "wt"), "y", chunk_fn=_ols_chunk())
    raise ValueError(f"unknown workload {name!r}")


WORKLOADS = ("trivial", "ols_row", "sleep_io", "vector")


def check(wl: Workload, df: pd.DataFrame, out: pd.DataFrame) -> None:
    """Raise unless ``out`` holds the right value for every input row, in input order."""
    if len(out) != len(df):
        raise AssertionError(f"{wl.name}: {len(out)} result rows for {len(df)} input rows")
    if "error" in out.columns and out["error"].notna().any():
        bad = out["error"].dropna()
        raise AssertionError(f"{wl.name}: {len(bad)} rows failed, first: {bad.iloc[0]}")
    got = out[wl.output].to_numpy(dtype=float)
    if not np.allclose(got, wl.expected(df), rtol=1e-9, atol=1e-12):
        raise AssertionError(f"{wl.name}: wrong values in column {wl.output!r}")
