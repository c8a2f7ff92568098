"""Rows that fail, and what to do about them: ``failed()`` and ``retry_failed()``.

Deploys ``WeightClass`` 1.0, which raises for cars heavier than 5,000 lb, and 1.1,
which does not; scores mtcars on 1.0, shows the failed rows with their errors, then
re-runs only those rows on 1.1. A row that raises is data, not an exception: the
batch still ends ``Complete``. Runs on the default store, as often as you like.
"""

from pathlib import Path

import pandas as pd

from localbatch import DeployClient

mtcars = pd.read_csv(Path(__file__).parent / "data" / "mtcars.csv")


def weight_class(wt):
    if wt > 5.0:
        raise ValueError(f"wt {wt} is over the 5.0 limit of this model")
    return "heavy" if wt > 3.5 else "light"


def weight_class_fixed(wt):
    return "very heavy" if wt > 5.0 else "heavy" if wt > 3.5 else "light"


client = DeployClient()
print(f"store: {client.store_path}")
for version, fn in (("1.0", weight_class), ("1.1", weight_class_fixed)):
    if client.list_services("WeightClass", version=version):
        client.delete_service("WeightClass", version=version)
    (client.service("WeightClass").version(version).code_fn(fn)
     .inputs(wt=float).outputs(label=str).deploy())  # 1.1 last: WeightClass means 1.1

batch = client.get_service("WeightClass", version="1.0").batch(mtcars[["wt"]]).start()
result = batch.wait()
print(f"{result.state}: {result.completed_item_count} rows, {result.failed_item_count} failed")
print(result.failed()[["row", "wt", "error_type", "error_message"]].to_string(index=False))

retried = batch.retry_failed(version="1.1").wait()
print(f"after retry_failed(version='1.1'): {retried.failed_item_count} failed")
print(retried.to_frame().loc[[14, 15, 16]])
