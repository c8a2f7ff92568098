"""The SDK sample's model: ``am ~ hp + wt`` fitted on mtcars with statsmodels.

Fitted at import, as the sample script does, so every process that unpickles one
of these functions by reference (Pool, executor, joblib and dask workers) pays the
same statsmodels import and fit as a localbatch worker unpickling the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import statsmodels.formula.api as smf

MTCARS = Path(__file__).resolve().parents[1] / "examples" / "data" / "mtcars.csv"
mtcars = pd.read_csv(os.environ.get("LOCALBATCH_BENCH_MTCARS", MTCARS))
cars_model = smf.ols("am ~ hp + wt", data=mtcars).fit()


def ols_row(hp: float, wt: float) -> pd.DataFrame:
    """The sample's per-row predict: a one-row DataFrame in, a one-row DataFrame out."""
    newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
    return pd.DataFrame({"am_Pred": cars_model.predict(newdata)})


def ols_vector(hp: pd.Series, wt: pd.Series) -> pd.Series:
    """The same predict over whole columns (localbatch's vectorised mode)."""
    pred = cars_model.predict(pd.DataFrame({"hp": hp, "wt": wt}))
    return pd.Series(pred.to_numpy(), index=hp.index if hasattr(hp, "index") else None)


def ols_chunk(frame: pd.DataFrame) -> pd.DataFrame:
    """The same predict, one call per chunk of rows (what the alternatives map)."""
    return pd.DataFrame({"y": cars_model.predict(frame[["hp", "wt"]]).to_numpy()})


def init() -> None:
    """The sample's init: load what the service needs."""
    import pandas as pd  # noqa: F401


def manual_transmission(hp: float, wt: float) -> pd.DataFrame:
    """The SDK sample's service function (``manualTransmission``), model as a global."""
    import pandas as pd

    newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
    return pd.DataFrame({"am_Pred": cars_model.predict(newdata)})  # noqa: F821 - a model
