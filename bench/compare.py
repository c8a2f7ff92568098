"""localbatch against the alternatives a user would pick, on the same work, in one run.

    python bench/compare.py                 # the full tables (2 cores: about an hour)
    python bench/compare.py --quick         # small sizes, one run each (CI smoke)
    python bench/compare.py --only trivial small --engine dask

Engines: localbatch (spawn and forkserver workers), a plain loop, and for the
fork and spawn start methods ``multiprocessing.Pool.map``
(``chunksize = ceil(n / (4 × workers))``), ``ProcessPoolExecutor.map`` (same
chunk size), ``joblib.Parallel`` (multiprocessing backend for fork, loky for
spawn) and ``dask.bag`` (processes scheduler). Each takes the same DataFrame and
returns a DataFrame; localbatch's figures include committing every row's result
to the job store and reading them back (``.start().wait().to_frame()``).

Cold: a fresh process per measurement (worker start-up counted), engines
alternating round by round. Warm: one process per workload and size holding
every engine, each warmed up untimed, then timed alternately. Median of 3
runs, 5 for runs under a second (and for ``vector``, always 5).

Workloads: ``first_batch`` (the SDK sample flow in a fresh process: imports,
fit, deploy, a 32-row per-row predict batch with ``parallel_count`` 10 and 2,
``start()`` → ``wait()`` timed, beside a fresh ``Pool(10)`` fork and spawn and a
plain loop), ``suite`` (a test suite's pattern in one process: per iteration a
fresh store, deploy and that batch with ``parallel_count=10``, against the same
iteration with a fresh ``Pool(10)`` fork; live workers after the last),
``trivial`` (a * 2.0 + b), ``ols_row`` (the SDK sample's per-row
statsmodels predict on a one-row DataFrame), ``sleep_io`` (10 ms sleep per row,
``parallel_count=10`` and 10 workers for everyone), ``vector`` (the same predict
once per chunk of 10,000 rows; localbatch's ``.vectorized()`` services). Then:
many small batches and ``consume`` latency, memory of a CSV batch against
``pandas.read_csv``, ``to_frame()`` and ``results()`` polling on a big batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness  # first: pins BLAS threads before anything imports numpy

LB = [("localbatch", "spawn"), ("localbatch", "forkserver")]
ALTS = [(kind, method) for method in ("fork", "spawn")
        for kind in ("pool", "futures", "joblib", "dask")]
SECTIONS = ("trivial", "ols_row", "sleep_io", "vector", "first_batch", "suite", "small",
            "memory", "framepoll", "scale")

FULL = {"trivial": [100_000, 1_000_000], "ols_row": [10_000], "sleep_io": [2_000],
        "vector": [1_000_000], "memory": 5_000_000, "framepoll": 1_000_000, "batches": 30,
        "calls": 100, "scale": 2_000, "suite": 20}
QUICK = {"trivial": [20_000], "ols_row": [100], "sleep_io": [200], "vector": [50_000],
         "memory": 200_000, "framepoll": 50_000, "batches": 10, "calls": 30, "scale": 100,
         "suite": 5}
#: The SDK sample flow's contenders: (engine, start method, parallel_count).
FIRST_BATCH = [("localbatch", "forkserver", 10), ("localbatch", "forkserver", 2),
               ("localbatch", "spawn", 10), ("localbatch", "spawn", 2),
               ("pool", "fork", 10), ("pool", "spawn", 10), ("loop", "-", 1),
               ("floor", "spawn", 1)]  # spawn: deploy() warms no template meanwhile


class Report:
    """Prints as it goes and keeps the text for --out."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def __call__(self, text: str = "", keep: bool = True) -> None:
        print(text, flush=True)
        if keep:
            self.parts.append(text)

    def log(self, text: str) -> None:
        self(text, keep=False)


def engines_for(workload: str, dask_engine: bool, alts: list[str] | None = None
                ) -> list[tuple[str, str]]:
    # sleep_io has no loop: 20 s a run for a known 100 rows/s.
    loop = [] if workload == "sleep_io" else [("loop", "-")]
    extra = [("localbatch-dask", "spawn")] if dask_engine and workload in (
        "trivial", "ols_row") else []
    chosen = [(kind, method) for kind, method in ALTS if alts is None or kind in alts]
    return [*LB, *extra, *loop, *chosen]


def run_groups(args: argparse.Namespace, sizes: dict[str, Any], out: Report
               ) -> dict[str, list[tuple[str, int, list[tuple[str, str]], dict[str, Any]]]]:
    tables: dict[str, list[Any]] = {"cold": [], "warm": []}
    for workload in ("trivial", "ols_row", "sleep_io", "vector"):
        if workload not in args.only:
            continue
        engines = engines_for(workload, args.engine == "dask", args.alts)
        rounds = args.rounds or (5 if workload == "vector" else None)
        for rows in sizes[workload]:
            out.log(f"{workload}, {rows:,} rows:")
            tables["cold"].append((workload, rows, engines,
                                   _harness.run_cold(workload, rows, engines, rounds,
                                                     log=out.log)))
            tables["warm"].append((workload, rows, engines,
                                   _harness.run_warm(workload, rows, engines, rounds,
                                                     log=out.log)))
    return tables


def _get(groups: list[Any], workload: str, rows: int | None = None) -> tuple[int, dict]:
    for w, n, _, result in groups:
        if w == workload and (rows is None or n == rows):
            return n, result
    return 0, {}


def targets(tables: dict[str, list[Any]], sizes: dict[str, Any], out: Report) -> None:
    """The issue's targets, each with its measured number (ratios from this run only)."""
    def line(what: str, value: float | None, goal: float, unit: str = "×",
             higher: bool = True) -> None:
        if value is None:
            out(f"- {what}: n/a")
            return
        ok = value >= goal if higher else value <= goal
        sign = "≥" if higher else "≤"
        out(f"- {what}: {value:,.2f}{unit} (target {sign} {goal:g}{unit}) "
            f"{'met' if ok else 'MISSED'}")

    def ratio(result: dict, rows: int, a: str, b: str) -> float | None:
        ra, rb = _harness.rate(rows, result.get(a, {})), _harness.rate(rows, result.get(b, {}))
        return ra / rb if ra and rb else None

    out("### Targets (2-core figures; ratios from this run)")
    out()
    big = max(sizes["trivial"])
    for kind in ("cold", "warm"):
        rows, res = _get(tables[kind], "trivial", big)
        if rows:
            for lb in ("localbatch:spawn", "localbatch:forkserver"):
                for alt in ("pool:spawn", "pool:fork"):
                    line(f"trivial {rows:,} {kind}: {lb} ÷ {alt}", ratio(res, rows, lb, alt),
                         1.4 if kind == "warm" else 1.0)
                line(f"trivial {rows:,} {kind}: {lb} ÷ joblib:spawn (loky)",
                     ratio(res, rows, lb, "joblib:spawn"), 3.0)
    for kind in ("cold", "warm"):
        rows, res = _get(tables[kind], "ols_row")
        if rows:
            for lb in ("localbatch:spawn", "localbatch:forkserver"):
                for alt in ("pool:spawn", "pool:fork"):
                    line(f"ols_row {rows:,} {kind}: {lb} ÷ {alt}", ratio(res, rows, lb, alt),
                         1.0)
    rows, res = _get(tables["warm"], "sleep_io")
    if rows:
        for lb in ("localbatch:spawn", "localbatch:forkserver"):
            line(f"sleep_io {rows:,} warm {lb}", _harness.rate(rows, res.get(lb, {})), 800,
                 " rows/s")
    rows, res = _get(tables["cold"], "sleep_io")
    if rows:
        for lb in ("localbatch:spawn", "localbatch:forkserver"):
            rps = _harness.rate(rows, res.get(lb, {}))
            out(f"- sleep_io {rows:,} cold {lb}: "
                f"{f'{rps:,.0f} rows/s' if rps else 'n/a'} (reported, no target)")
    rows, res = _get(tables["warm"], "vector")
    if rows:
        for lb in ("localbatch:spawn", "localbatch:forkserver"):
            line(f"vector {rows:,} warm: {lb} ÷ in-process loop per chunk",
                 ratio(res, rows, lb, "loop:-"), 1.2)


def first_batch_section(rounds: int | None, out: Report) -> dict[str, float]:
    """The SDK sample flow, each contender in a fresh process, alternating per round."""
    out("### First batch: the SDK sample flow, 32 mtcars rows, per-row statsmodels predict "
        "(fresh process each; median s)")
    out()
    secs: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for _ in range(rounds or 3):
        for engine, method, pc in FIRST_BATCH:
            key = f"{engine}:{method}:{pc}"
            t0 = time.perf_counter()
            res = _harness.spawn_child("first_batch", {"engine": engine, "method": method,
                                                       "pc": pc})
            wall = time.perf_counter() - t0
            if "seconds" not in res:
                errors[key] = res.get("error", "?")
                continue
            secs.setdefault(key, []).append(res["seconds"])
            walls.setdefault(key, []).append(wall)
            out.log(f"  first_batch {key}: {res['seconds']:.3f}s (process {wall:.2f}s)")
    med = {k: _harness.median(v) for k, v in secs.items()}
    loop = med.get("loop:-:1")
    out("| contender | start() → wait() s (or the map) | whole process s | ÷ loop |")
    out("|---|---:|---:|---:|")
    for engine, method, pc in FIRST_BATCH:
        key = f"{engine}:{method}:{pc}"
        if key not in med:
            out(f"| {key} | error: {errors.get(key, '?')} | | |")
            continue
        name = {"localbatch": f"localbatch [{method}], parallel_count={pc}",
                "pool": f"multiprocessing.Pool(10) [{method}]",
                "loop": "plain loop, in-process",
                "floor": "floor: a fresh interpreter loading the service, as the template "
                         "does (no rows)"}[engine]
        ratio = f"{med[key] / loop:.1f}×" if loop else "—"
        out(f"| {name} | {med[key]:.3f} | {_harness.median(walls[key]):.2f} | {ratio} |")
    out()
    return med


def suite_section(sizes: dict[str, Any], out: Report) -> dict[str, Any]:
    """A test suite's pattern in one process, against a fresh Pool(10) fork per iteration."""
    n = sizes["suite"]
    out(f"### Test-suite pattern: {n} iterations in one process, each a fresh store, deploy "
        "and a 32-row batch (parallel_count=10)")
    out()
    results = {}
    for engine, method in (("localbatch", "forkserver"), ("localbatch", "spawn"),
                           ("pool", "fork")):
        res = _harness.spawn_child("suite", {"engine": engine, "method": method,
                                             "iterations": n})
        results[f"{engine}:{method}"] = res
        out.log(f"  suite {engine}:{method}: {res.get('error') or 'ok'}")
    pool = results["pool:fork"]
    ref = _harness.median(pool["seconds"][1:]) if "seconds" in pool else None
    out("| contender | first iteration s | median after s | ÷ Pool(10) fork | live workers "
        "after |")
    out("|---|---:|---:|---:|---:|")
    for key, res in results.items():
        if "seconds" not in res:
            out(f"| {key} | error: {res.get('error')} | | | |")
            continue
        med = _harness.median(res["seconds"][1:])
        live = res.get("live_workers", "—")
        ratio = f"{med / ref:.2f}×" if ref else "—"
        name = (f"localbatch [{key.split(':')[1]}]" if key.startswith("localbatch")
                else "fresh multiprocessing.Pool(10) [fork]")
        out(f"| {name} | {res['seconds'][0]:.3f} | {med:.3f} | {ratio} | {live} |")
    out()
    return results


def warm_targets(first: dict[str, float], suite: dict[str, Any], out: Report) -> None:
    """Issue 15's targets for the first batch and the suite pattern."""
    def line(what: str, value: float | None, goal: float, unit: str = "") -> None:
        if value is None:
            out(f"- {what}: n/a")
            return
        out(f"- {what}: {value:.2f}{unit} (target ≤ {goal:g}{unit}) "
            f"{'met' if value <= goal else 'MISSED'}")

    out("### Targets: first batch and suite (2-core figures; ratios from this run)")
    out()
    if first:
        pc10, pc2 = first.get("localbatch:forkserver:10"), first.get("localbatch:forkserver:2")
        line("first batch, parallel_count=10, start() → wait()", pc10, 1.5, " s")
        line("first batch, parallel_count=10 ÷ parallel_count=2",
             pc10 / pc2 if pc10 and pc2 else None, 1.1, "×")
        floor = first.get("floor:spawn:1")
        if pc10 and floor:
            out(f"- the template's floor on this host (a fresh interpreter loading the "
                f"service): {floor:.2f} s; first batch − floor: {pc10 - floor:+.2f} s "
                "(the template starts at deploy(), just before start())")
    lb, pool = suite.get("localbatch:forkserver", {}), suite.get("pool:fork", {})
    if "seconds" in lb and "seconds" in pool:
        line("suite median per iteration ÷ fresh Pool(10) fork",
             _harness.median(lb["seconds"][1:]) / _harness.median(pool["seconds"][1:]), 1.2,
             "×")
        line(f"live worker processes after {len(lb['seconds'])} iterations",
             lb.get("live_workers"), 2 * (os.cpu_count() or 1))
    out()


def small_section(sizes: dict[str, Any], out: Report) -> None:
    out("### Many small batches and consume (warm pools; medians after the first)")
    out()
    out("| start method | first 10-row batch ms | 10-row batch → wait() ms (≤ 50) | "
        "→ to_frame() ms | first consume ms | consume ms (≤ 5) | ref: 10-row Pool.map on a "
        "live pool ms | ref: call + pipe round trip ms |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in _harness.LB_METHODS:
        res = _harness.spawn_child("small", {"method": method, "batches": sizes["batches"],
                                             "calls": sizes["calls"]})
        if "error" in res:
            out(f"| {method} | error: {res['error']} |")
            continue
        out(f"| {method} | {res['first_batch_ms']:.1f} | {res['batch_wait_ms']:.1f} | "
            f"{res['batch_to_frame_ms']:.1f} | {res['consume_first_ms']:.1f} | "
            f"{res['consume_ms']:.2f} | {res['pool_10_rows_ms']:.2f} | "
            f"{res['pipe_roundtrip_ms']:.3f} |")
    out()


def _write_csv(path: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    step = 500_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        pd.DataFrame({"a": rng.random(n), "b": rng.random(n)}).to_csv(
            path, mode="a" if start else "w", header=not start, index=False)


def memory_section(sizes: dict[str, Any], out: Report) -> None:
    rows = sizes["memory"]
    out(f"### Memory: svc.batch('rows.csv') over {rows:,} rows vs pandas.read_csv "
        "(peak RSS growth of the starting process, each in a fresh process)")
    out()
    with tempfile.TemporaryDirectory(prefix="lb-bench-csv-") as tmp:
        path = Path(tmp) / "rows.csv"
        t0 = time.perf_counter()
        _write_csv(path, rows)
        out.log(f"  wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
                f"{time.perf_counter() - t0:.1f} s")
        out("| reader | peak RSS growth MB | start() returned after s | seconds | rows/s | rows "
            "| failed |")
        out("|---|---:|---:|---:|---:|---:|---:|")
        for which in ("localbatch", "pandas"):
            res = _harness.spawn_child("memory", {"csv": str(path), "which": which})
            if "error" in res:
                out(f"| {which} | error: {res['error']} |")
                continue
            name = ("svc.batch(csv).start().wait() (target < 300 MB)" if which == "localbatch"
                    else "pandas.read_csv")
            start = f"{res['start_s']:.2f}" if which == "localbatch" else "—"
            out(f"| {name} | {res['peak_growth_mb']:.0f} | {start} | {res['seconds']:.1f} | "
                f"{res['rows'] / res['seconds']:,.0f} | {res['rows']:,} | {res['failed']} |")
    out()


def framepoll_section(sizes: dict[str, Any], out: Report) -> None:
    rows = sizes["framepoll"]
    out(f"### Reading a {rows:,}-row batch (trivial, spawn)")
    out()
    res = _harness.spawn_child("framepoll", {"rows": rows})
    if "error" in res:
        out(f"error: {res['error']}")
        return
    out(f"- phases: svc.batch(df) {res['batch_s']:.3f} s, start() {res['start_s']:.3f} s "
        f"(returns once the inputs are spooled), scoring until Complete {res['run_s']:.3f} s "
        "(polled every 50 ms)")
    out(f"- to_frame() of all {rows:,} rows: median {res['to_frame_median_s']:.3f} s "
        "(target < 3 s)")
    out(f"- results() + completed_item_count while running: median "
        f"{res['poll_running_median_ms']:.2f} ms, max {res['poll_running_max_ms']:.2f} ms over "
        f"{res['polls_running']} polls; after it finished: median "
        f"{res['poll_after_median_ms']:.2f} ms (target ≤ 10 ms)")
    out()


def _vector_chunk() -> int:
    return int(os.environ.get("LOCALBATCH_BENCH_VECTOR_CHUNK", "10000"))


def _lb_vector_cap() -> str:
    """localbatch's chunk cap for vectorised services, for the reader (not an API)."""
    try:
        from localbatch._engines.supervisor import Supervisor

        cap = Supervisor.max_vector_chunk
    except (ImportError, AttributeError):  # an older localbatch, for a before/after run
        cap = None
    return f"adaptive, at most {cap:,} rows" if cap else "adaptive"


def scale_section(sizes: dict[str, Any], rounds: int | None, out: Report) -> None:
    """ols_row on every core against one worker and against Pool(cores), in one run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = sizes["scale"]
    n = max(1, cores or 1)
    out(f"### Scale: ols_row, {rows:,} rows, warm, on {n} cores")
    out()
    one = _harness.run_warm("ols_row", rows, [("localbatch", "spawn")], rounds, workers=1,
                            log=out.log)
    many = _harness.run_warm("ols_row", rows, [("localbatch", "spawn"), ("pool", "spawn"),
                                               ("pool", "fork")], rounds, workers=n,
                             log=out.log)
    lb1 = _harness.rate(rows, one.get("localbatch:spawn", {}))
    lbn = _harness.rate(rows, many.get("localbatch:spawn", {}))
    out("| engine | workers | rows/s |")
    out("|---|---:|---:|")
    out(f"| localbatch [spawn] | 1 | {lb1 or 0:,.0f} |")
    for key, label in (("localbatch:spawn", "localbatch [spawn]"), ("pool:spawn",
                       "Pool.map [spawn]"), ("pool:fork", "Pool.map [fork]")):
        out(f"| {label} | {n} | {_harness.rate(rows, many.get(key, {})) or 0:,.0f} |")
    out()
    for alt in ("pool:spawn", "pool:fork"):
        rate = _harness.rate(rows, many.get(alt, {}))
        if lbn and rate:
            goal = "target ≥ 0.9× on 16 cores" + ("" if n >= 16 else f"; {n} cores here")
            out(f"- parallel_count={n} ÷ Pool({n}) [{alt.split(':')[1]}]: {lbn / rate:.2f}× "
                f"({goal})")
    if lb1 and lbn:
        goal = "target ≥ 12× at 16" if n >= 16 else f"at most {n}× on {n} cores; target ≥ 12× " \
            "at 16 needs a 16-core machine"
        out(f"- parallel_count={n} ÷ parallel_count=1: {lbn / lb1:.2f}× ({goal})")
    out()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    parser.add_argument("--only", nargs="*", default=list(SECTIONS), choices=SECTIONS,
                        help="sections to run (default: all)")
    parser.add_argument("--engine", choices=("dask",), default=None,
                        help="add localbatch's Dask engine (LocalCluster, 2 workers) for "
                             "trivial and ols_row")
    parser.add_argument("--alts", nargs="*", default=None,
                        choices=sorted({kind for kind, _ in ALTS}),
                        help="the alternatives to run (default: all)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs per engine (default: 3, or 5 for short runs)")
    parser.add_argument("--memory-rows", type=int, default=None, help="rows of the CSV")
    parser.add_argument("--trivial-rows", type=int, nargs="*", default=None)
    parser.add_argument("--ols-rows", type=int, nargs="*", default=None)
    parser.add_argument("--vector-chunk", type=int, default=None,
                        help="rows per call for the alternatives in `vector` (default 10000)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.quick and args.rounds is None:
        args.rounds = 1  # a smoke run: does every engine and section work
    if args.memory_rows:
        sizes["memory"] = args.memory_rows
    if args.trivial_rows:
        sizes["trivial"] = args.trivial_rows
    if args.ols_rows:
        sizes["ols_row"] = args.ols_rows
    if args.vector_chunk:
        os.environ["LOCALBATCH_BENCH_VECTOR_CHUNK"] = str(args.vector_chunk)
    out = Report()
    t0 = time.perf_counter()
    out(f"## localbatch vs alternatives ({'quick' if args.quick else 'full'} run)")
    out()
    out("```")
    out(_harness.machine())
    out(f"command: python bench/compare.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    out(f"settings: parallel_count / workers 2 (sleep_io 10); sizes {sizes}; rounds "
        f"{args.rounds or '3, 5 if a run < 1 s, vector 5'}; BLAS threads "
        f"{os.environ['OPENBLAS_NUM_THREADS']}; Pool/futures chunksize ceil(n / (4 x workers))")
    out(f"vector: the alternatives call the predict per {_vector_chunk():,} rows; localbatch "
        f"sizes its own chunks ({_lb_vector_cap()})")
    out("```")
    out()
    tables = run_groups(args, sizes, out)
    if tables["cold"]:
        out(_harness.table("Cold: fresh process per run, worker start-up counted (rows/s)",
                           tables["cold"]))
        out()
        out(_harness.table("Warm: one process, after an untimed warm-up (rows/s)",
                           tables["warm"]))
        out()
        targets(tables, sizes, out)
        out()
    first = first_batch_section(args.rounds, out) if "first_batch" in args.only else {}
    suite = suite_section(sizes, out) if "suite" in args.only else {}
    if first or suite:
        warm_targets(first, suite, out)
    if "small" in args.only:
        small_section(sizes, out)
    if "memory" in args.only:
        memory_section(sizes, out)
    if "framepoll" in args.only:
        framepoll_section(sizes, out)
    if "scale" in args.only:
        scale_section(sizes, args.rounds, out)
    out(f"{_harness.machine().splitlines()[-1]}; total {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text("\n".join(out.parts) + "\n")


if __name__ == "__main__":
    main()
