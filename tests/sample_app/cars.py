"""Score cars against the ``TxService`` web service: the SDK sample notebook's flow.

Connect, quote one car (request-response), batch many, poll until the batch is
``Complete`` or ``Failed``, read each row's ``answer``, then fetch a row's
``answer.csv`` artifact and download it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azureml.common.http_client import HttpException
from azureml.deploy import DeployClient
from azureml.deploy.server import MLServer

HOST = "http://localhost:12800"
DONE = ("Complete", "Failed")


@dataclass
class Report:
    """What one scoring run found."""

    execution_id: str
    state: str
    total: int
    completed: int
    quote: float
    predictions: list[float | None]
    errors: dict[int, str]
    artifact_names: list[str]
    artifact: bytes
    downloaded: list[str]
    found_again: bool
    polls: int = 0
    consoles: list[str] = field(default_factory=list)


def connect(host: str = HOST, auth: Any = ("admin", "password")) -> Any:
    """A client of the ML Server at ``host``."""
    return DeployClient(host, use=MLServer, auth=auth)


def find_service(client: Any, name: str, version: str) -> Any | None:
    """The service, or None when the server answers 404."""
    try:
        return client.get_service(name, version=version)
    except HttpException as exc:
        if exc.status == 404:
            return None
        raise


def quote(service: Any, hp: float, wt: float) -> float:
    """One car's probability of a manual transmission (request-response)."""
    res = service.manualTransmission(hp, wt)
    if res.error:
        raise RuntimeError(res.error)
    return float(res.outputs["answer"]["am_Pred"].iloc[0])


def wait(batch: Any, poll: float = 1.0, timeout: float = 600.0) -> tuple[Any, int]:
    """Poll ``results()`` until the batch is Complete or Failed (the notebook's loop)."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        res = batch.results()
        polls += 1
        if res.state in DONE:
            return res, polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch.execution_id} still {res.state}")
        time.sleep(poll)


def read_rows(res: Any) -> tuple[list[float | None], dict[int, str], list[str]]:
    """Per-row predictions (None for a failed row), errors and console output."""
    predictions: list[float | None] = []
    errors: dict[int, str] = {}
    consoles = []
    for i in range(res.completed_item_count):
        row = res.execution(i)
        consoles.append(row.console_output)
        if row.error:
            errors[i] = row.error
            predictions.append(None)
        else:
            predictions.append(float(row.outputs["answer"]["am_Pred"].iloc[0]))
    return predictions, errors, consoles


def score_cars(records: Any, dest: str | Path, *, host: str = HOST,
               auth: Any = ("admin", "password"), name: str = "TxService",
               version: str = "1.0", parallel_count: int = 2, poll: float = 1.0,
               artifact_row: int = 1) -> Report:
    """The whole flow; ``records`` is a DataFrame with ``hp`` and ``wt``."""
    client = connect(host, auth)
    service = find_service(client, name, version)
    if service is None:
        raise LookupError(f"{name} {version} is not deployed")
    one = quote(service, 120, 2.8)
    batch = service.batch(records, parallel_count=parallel_count)
    batch = batch.start()
    res, polls = wait(batch, poll)
    predictions, errors, consoles = read_rows(res)
    names = batch.list_artifacts(artifact_row)
    data = batch.artifact(artifact_row, "answer.csv")
    paths = batch.download(artifact_row, "answer.csv", str(dest))
    again = service.get_batch(batch.execution_id)
    found = again.execution_id in service.list_batch_executions()
    return Report(execution_id=batch.execution_id, state=res.state,
                  total=res.total_item_count, completed=res.completed_item_count, quote=one,
                  predictions=predictions, errors=errors, artifact_names=names, artifact=data,
                  downloaded=paths, found_again=found, polls=polls, consoles=consoles)
