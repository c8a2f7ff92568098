"""The SDK sample's flow (Explore_Batch_Consume) on mtcars, with statsmodels.

Runs as a plain script, with no ``if __name__ == "__main__"`` guard, on the
default store (``$LOCALBATCH_HOME`` or a per-user folder); run it as often as
you like: it replaces its own service.
"""

import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import statsmodels.formula.api as smf

from localbatch import DeployClient, MLServer

mtcars = pd.read_csv(Path(__file__).parent / "data" / "mtcars.csv")
cars_model = smf.ols("am ~ hp + wt", data=mtcars).fit()


def init():
    import pandas as pd  # noqa: F401 - the SDK's init loads what the service needs


def manualTransmission(hp, wt):
    import pandas as pd

    newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
    answer = pd.DataFrame({"am_Pred": cars_model.predict(newdata)})
    answer.to_csv("answer.csv")  # a file artifact of this row
    return answer


# The SDK form works unchanged: an http(s) host means the default local store.
client = DeployClient("http://localhost:12800", use=MLServer, auth=("admin", "password"))
print(f"store: {client.store_path}  ($LOCALBATCH_HOME, or DeployClient(path), picks another)")
if client.list_services("TxService", version="1.0"):
    client.delete_service("TxService", version="1.0")

svc = (
    client.service("TxService")
    .version("1.0")
    .code_fn(manualTransmission, init)
    .inputs(hp=float, wt=float)
    .outputs(answer=pd.DataFrame)
    .models(cars_model=cars_model)
    .description("My first python model")
    .artifacts(["answer.csv"])
    .deploy()
)
print(f"deployed {svc.name} {svc.version}: manualTransmission(hp, wt) -> answer, answer.csv")

res = svc.manualTransmission(120, 2.8)
print(f"one call: manualTransmission(120, 2.8) -> am_Pred {res.outputs['answer'].iloc[0, 0]:.4f}")

# parallel_count is a cap on concurrent rows, like the SDK's "number of threads".
batch = svc.batch(mtcars[["hp", "wt"]], parallel_count=2).start()
print(f"batch {batch.execution_id} started")
while True:
    r = batch.results()
    print(f"  {r.state}: {r.completed_item_count}/{r.total_item_count} rows")
    if r.state in ("Failed", "Complete"):
        break
    time.sleep(1)

print(r)
for i in range(3):
    am_pred = r.execution(i).outputs["answer"]["am_Pred"].iloc[0]
    print(f"row {i} ({mtcars['car'][i]}): am_Pred {am_pred:.4f}")
print("artifacts of row 1:", batch.list_artifacts(1))
print(batch.artifact(1, "answer.csv").decode())
with tempfile.TemporaryDirectory() as tmp:
    print("downloaded:", [os.path.basename(p) for p in batch.download(1, "answer.csv", tmp)])

again = svc.get_batch(batch.execution_id)
print("found again by id:", again.execution_id in svc.list_batch_executions(), again.state)
print(r.to_frame().head())
print(f"next: localbatch status; localbatch results {batch.execution_id[:12]} --out scores.csv")
