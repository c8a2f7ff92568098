"""Randomised fault run: random SIGKILLs of worker processes during 2,000-row batches.

    python tests/faults/chaos.py --seeds 30 --rows 2000

For every seed, a killer thread SIGKILLs a random worker of this process at
random intervals while a batch runs, and now and then (``--template-kills``) the
warm template the workers fork from. Afterwards every row must have exactly one
record (checked from the part files), every successful output must equal the
fault-free oracle, and any failed row must be one whose worker was killed
``max_attempts`` times. Prints one line per seed and the totals.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faults.helpers import record_counts  # noqa: E402
from localbatch import DeployClient  # noqa: E402


def det(a, b):
    import time

    time.sleep(0.002)
    return a * 3.0 + b


def _killer(stop: threading.Event, rng: random.Random, kills: list[int], mean: float,
            template_share: float, template_kills: list[int]) -> None:
    me = psutil.Process()
    while not stop.wait(rng.expovariate(1 / mean)):
        # Workers and their keepers (forked ones carry the template's command line),
        # or the template itself (this process's child) now and then.
        procs = [p for p in me.children(recursive=True)
                 if "localbatch._workers" in " ".join(_cmd(p))]
        templates = [p for p in procs
                     if "--zygote" in " ".join(_cmd(p)) and _parent(p) == me.pid]
        workers = [p for p in procs if p not in templates]
        if templates and rng.random() < template_share:
            with contextlib.suppress(ProcessLookupError):
                os.kill(templates[0].pid, signal.SIGKILL)
                template_kills.append(templates[0].pid)
        elif workers:
            victim = rng.choice(workers)
            try:
                os.kill(victim.pid, signal.SIGKILL)
                kills.append(victim.pid)
            except ProcessLookupError:
                pass


def _parent(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def run_seed(svc, store: Path, seed: int, rows: int, mean: float, template_share: float
             ) -> dict[str, int]:
    rng = random.Random(seed)
    frame = pd.DataFrame({"a": np.arange(rows, dtype=float), "b": float(seed)})
    stop, kills, template_kills = threading.Event(), [], []
    killer = threading.Thread(target=_killer, daemon=True,
                              args=(stop, rng, kills, mean, template_share, template_kills))
    batch = svc.batch(frame, parallel_count=2).start()
    killer.start()
    resp = batch.wait(timeout=600)
    stop.set()
    killer.join()
    if resp.state != "Complete":
        print(f"seed {seed}: {resp.state}: {resp.error}", flush=True)
    out = resp.to_frame()
    counts = record_counts(store, batch.execution_id, rows)
    ok = out["error"].isna()
    expected = (frame["a"] * 3.0 + seed).to_numpy()
    mismatches = int((out.loc[ok, "y"].to_numpy() != expected[out.index[ok]]).sum())
    failed = out.index[~ok].tolist()
    bad_failures = [i for i in failed if resp.execution(i).attempts < 3]
    retried = sum(resp.execution(i).attempts > 1 for i in out.index) if kills else 0
    return {"state_ok": int(resp.state == "Complete"), "kills": len(kills),
            "template_kills": len(template_kills),
            "retried_rows": int(retried), "failed_rows": len(failed),
            "bad_failures": len(bad_failures), "mismatches": mismatches,
            "duplicates": int((counts > 1).sum()), "missing": int((counts == 0).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--mean-interval", type=float, default=0.3,
                        help="mean seconds between kills")
    parser.add_argument("--template-kills", type=float, default=0.1,
                        help="share of the kills aimed at the warm template")
    args = parser.parse_args()
    totals: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        client = DeployClient(str(store))
        svc = (client.service("det").version("1").code_fn(det).inputs(a=float, b=float)
               .outputs(y=float).deploy())
        t0 = time.monotonic()
        for seed in range(args.seeds):
            result = run_seed(svc, store, seed, args.rows, args.mean_interval,
                              args.template_kills)
            print(f"seed {seed:3d}: " + " ".join(f"{k}={v}" for k, v in result.items()),
                  flush=True)
            for k, v in result.items():
                totals[k] = totals.get(k, 0) + v
        client.close()
    print(f"\n{args.seeds} seeds x {args.rows} rows in {time.monotonic() - t0:.0f}s: "
          + " ".join(f"{k}={v}" for k, v in totals.items()))
    broken = totals["mismatches"] + totals["duplicates"] + totals["missing"] + \
        totals["bad_failures"] + (args.seeds - totals["state_ok"])
    print("PASS" if broken == 0 else "FAIL")
    return 0 if broken == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
