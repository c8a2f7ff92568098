"""Helpers of the fault suite: owner processes to kill, record checks from the parts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def gone(pid: int) -> bool:
    """Exited (a zombie counts: it runs nothing), also when it is reaped while we look."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def deploy(client, name, fn, *, init=None, artifacts=None):
    definition = (client.service(name).version("1").code_fn(fn, init)
                  .inputs(a=float, b=float).outputs(y=float))
    if artifacts:
        definition = definition.artifacts(artifacts)
    return definition.deploy()


def record_counts(store: Path, execution_id: str, total: int) -> np.ndarray:
    """How many published parts record each row (read from the files, not the API)."""
    from localbatch._format.part import Part

    counts = np.zeros(total, np.int64)
    results = store / "executions" / execution_id / "results"
    for path in sorted(results.glob("part-*.lbp")):
        index = Part(path.read_bytes()).column("index").buffers["values"]
        np.add.at(counts, index, 1)
    return counts


def runs_per_row(log: Path, total: int) -> np.ndarray:
    counts = np.zeros(total, np.int64)
    for p in log.iterdir():
        head = p.name.split("-")[0]
        if head.isdigit():
            counts[int(head)] += 1
    return counts


OWNER = """
import os, sys, time
sys.path.insert(0, {tests!r})
import pandas as pd
from localbatch import DeployClient
client = DeployClient({store!r})
svc = client.get_service({name!r})
frame = pd.DataFrame({{"a": [float(i) for i in range({rows})], "b": {b!r}}})
batch = svc.batch(frame, parallel_count=2, **{options!r}).start()
print(batch.execution_id, flush=True)
time.sleep(600)
"""


def start_owner(store: Path, name: str, rows: int, b: float, env: dict[str, str] | None = None,
                **options: object) -> tuple[subprocess.Popen[str], str]:
    """A separate process that starts a batch and then idles (to be killed)."""
    code = textwrap.dedent(OWNER).format(tests=str(HERE.parent), store=str(store), name=name,
                                         rows=rows, b=b, options=options)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"owner failed to start (exit {proc.poll()})"
    return proc, line


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the owner process only (its workers must notice by themselves)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False
