"""Shared machinery of bench/throughput.py and bench/compare.py.

The orchestrating process imports nothing heavy: every measurement runs in a
child process started from this file (``python _harness.py MODE SPEC``), so
warm pools, imported modules and caches never leak between measurements:

- ``cold``: one engine, one run, in a fresh process: ``open()`` (worker start-up)
  and ``run()`` are timed together;
- ``warm``: every engine of a (workload, rows) group in one process: each is
  opened and warmed up untimed, then they are timed alternately, round by round;
- ``small``, ``memory``, ``framepoll``: the latency, memory and read-side checks;
- ``first_batch``: the SDK sample flow in a fresh process (imports, fit, deploy,
  a 32-row batch timed ``start()`` → ``wait()``), or its Pool / loop equivalent;
- ``suite``: a test suite's pattern in one process (per iteration a fresh store,
  deploy and a 32-row batch), or the same iterations with a fresh ``Pool(10)``.

Each child prints one JSON line last; the orchestrator turns them into tables.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Process parallelism is what is measured: one BLAS thread per process, set before
# numpy is imported here and inherited by every child and worker.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

HERE = Path(__file__).resolve().parent
LB_METHODS = ("spawn", "forkserver")
SHORT_RUN_S = 1.0  # runs shorter than this get 5 rounds instead of 3
CHILD_TIMEOUT_S = float(os.environ.get("LOCALBATCH_BENCH_TIMEOUT", "1200"))
Spec = dict[str, Any]


# -- children ----------------------------------------------------------------------------


def _emit(obj: Any) -> None:
    sys.stdout.write("\n" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _prepare(spec: Spec) -> tuple[Any, Any]:
    import _workloads

    wl = _workloads.get(spec["workload"])
    return wl, wl.frame(spec["rows"])


def child_cold(spec: Spec) -> Any:
    """open() + run() of one engine in this fresh process."""
    import _engines
    import _workloads

    wl, df = _prepare(spec)
    eng = _engines.make(spec["kind"], wl, spec["method"], spec.get("workers"))
    try:
        eng.setup()
    except _engines.Unavailable as exc:
        return {"na": str(exc)}
    t0 = time.perf_counter()
    eng.open()
    out = eng.run(df)
    seconds = time.perf_counter() - t0
    eng.close()
    try:
        _workloads.check(wl, df, out)
    except AssertionError as exc:
        if wl.vectorized and spec["kind"].startswith("localbatch"):
            return {"na": f"vectorized batch does not work: {str(exc)[:160]}"}
        raise
    return {"seconds": seconds}


def child_warm(spec: Spec) -> Any:
    """Every engine of a group in this process: warm up untimed, then alternate."""
    import _engines
    import _workloads

    wl, df = _prepare(spec)
    # Enough items that every worker of every pool gets one (and imports the
    # workload's module) before the clock starts: 4 per worker at least.
    workers = spec.get("workers") or wl.workers
    if wl.vectorized:
        warm_n = max(wl.warmup_rows, 4 * workers * _workloads.VECTOR_CHUNK)
    else:
        warm_n = min(wl.warmup_rows, max(len(df), 4 * workers))
    warm_df = wl.frame(warm_n, seed=1)
    engines: list[tuple[str, Any]] = []
    result: dict[str, Any] = {}
    # Fork pools first: they must fork before localbatch (or anything) starts threads.
    order = sorted(spec["engines"], key=lambda e: e[1] != "fork")
    for kind, method in order:
        key = f"{kind}:{method}"
        eng = _engines.make(kind, wl, method, spec.get("workers"))
        try:
            eng.setup()
            if kind.startswith("localbatch") and wl.vectorized:
                eng._probe()
            eng.open()
            _workloads.check(wl, warm_df, eng.run(warm_df))
        except _engines.Unavailable as exc:
            result[key] = {"na": str(exc)}
            continue
        engines.append((key, eng))
        result[key] = {"seconds": []}
    rounds = spec.get("rounds")
    r = 0
    while engines and r < (rounds or 3):
        for key, eng in engines:
            t0 = time.perf_counter()
            out = eng.run(df)
            result[key]["seconds"].append(time.perf_counter() - t0)
            _workloads.check(wl, df, out)
            del out
        if r == 0 and rounds is None:
            rounds = 5 if max(result[k]["seconds"][0] for k, _ in engines) < SHORT_RUN_S else 3
        r += 1
    for _, eng in engines:
        eng.close()
    return result


def _median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000.0


def child_small(spec: Spec) -> Any:
    """Many small batches and consume latency, beside same-run references."""
    import multiprocessing as mp

    import _rowfns
    import pandas as pd

    from localbatch import DeployClient

    n_batches, method = spec["batches"], spec["method"]
    out: dict[str, Any] = {"method": method}
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        client = DeployClient(tmp, start_method=method)
        svc = (client.service("bench-small").version("1.0").code_fn(_rowfns.trivial)
               .inputs(a=float, b=float).outputs(y=float).deploy())
        df = pd.DataFrame({"a": [float(i) for i in range(10)], "b": [1.0] * 10})
        waits, frames = [], []
        for i in range(n_batches + 1):
            t0 = time.perf_counter()
            batch = svc.batch(df, parallel_count=2).start()
            resp = batch.wait()
            t1 = time.perf_counter()
            frame = resp.to_frame()
            t2 = time.perf_counter()
            assert len(frame) == 10 and frame["error"].isna().all()
            if i == 0:
                out["first_batch_ms"] = (t2 - t0) * 1000.0
            else:
                waits.append(t1 - t0)
                frames.append(t2 - t0)
        out["batch_wait_ms"] = _median_ms(waits)
        out["batch_to_frame_ms"] = _median_ms(frames)
        op = getattr(svc, svc.capabilities()["operation_id"])
        calls = []
        for _ in range(spec["calls"] + 1):
            t0 = time.perf_counter()
            res = op(1.0, 2.0)
            calls.append(time.perf_counter() - t0)
            assert res.outputs["y"] == 4.0, res
        out["consume_first_ms"] = calls[0] * 1000.0
        out["consume_ms"] = _median_ms(calls[1:])
        client.close()
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        rows = list(zip(df["a"].tolist(), df["b"].tolist(), strict=True))
        pool.starmap(_rowfns.trivial, rows)
        times = []
        for _ in range(spec["calls"]):
            t0 = time.perf_counter()
            pd.DataFrame({"y": pool.starmap(_rowfns.trivial, rows, 2)})
            times.append(time.perf_counter() - t0)
    out["pool_10_rows_ms"] = _median_ms(times)
    out["pipe_roundtrip_ms"] = _pipe_roundtrip(ctx, _rowfns.trivial, spec["calls"] * 10)
    return out


def _echo(conn: Any) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def _pipe_roundtrip(ctx: Any, fn: Callable[..., Any], n: int) -> float:
    """An in-process call plus one round trip over a pipe to a live process (ms)."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,), daemon=True)
    proc.start()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        parent.send(fn(1.0, 2.0))
        parent.recv()
        times.append(time.perf_counter() - t0)
    parent.send(None)
    proc.join(5)
    return _median_ms(times[10:])


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child_memory(spec: Spec) -> Any:
    """Peak RSS growth of this process: a CSV batch, or pandas.read_csv of the file."""
    import resource

    import _rowfns
    import pandas as pd

    from localbatch import DeployClient

    path = spec["csv"]
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        client = DeployClient(tmp, start_method=spec.get("method", "spawn"))
        svc = (client.service("bench-csv").version("1.0").code_fn(_rowfns.trivial)
               .inputs(a=float, b=float).outputs(y=float).deploy())
        before = _rss_kb()
        t0 = time.perf_counter()
        if spec["which"] == "pandas":
            rows = len(pd.read_csv(path))
            failed, started = 0, 0.0
        else:
            batch = svc.batch(path, parallel_count=2).start()
            started = time.perf_counter() - t0
            resp = batch.wait()
            rows, failed = resp.completed_item_count, resp.failed_item_count
            if resp.state != "Complete":
                raise RuntimeError(f"CSV batch ended {resp.state}: {resp.error}")
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        client.close()
    return {"rss_before_mb": before / 1024, "peak_growth_mb": (peak - before) / 1024,
            "seconds": seconds, "start_s": started, "rows": rows, "failed": failed}


def child_framepoll(spec: Spec) -> Any:
    """results() cost while a big batch runs and after; to_frame() of all its rows."""
    import _rowfns
    import numpy as np
    import pandas as pd

    from localbatch import DeployClient

    n = spec["rows"]
    df = pd.DataFrame({"a": np.arange(n, dtype=float), "b": np.ones(n)})
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        client = DeployClient(tmp, start_method=spec.get("method", "spawn"))
        svc = (client.service("bench-poll").version("1.0").code_fn(_rowfns.trivial)
               .inputs(a=float, b=float).outputs(y=float).deploy())
        t_batch = time.perf_counter()
        batch = svc.batch(df, parallel_count=2)
        t1 = time.perf_counter()
        batch.start()
        t2 = time.perf_counter()
        running, counts = [], []
        while True:
            t0 = time.perf_counter()
            resp = batch.results()
            count = resp.completed_item_count
            running.append(time.perf_counter() - t0)
            counts.append(count)
            if resp.state in ("Complete", "Failed", "Canceled"):
                break
            time.sleep(0.05)
        t3 = time.perf_counter()
        if resp.state != "Complete":
            raise RuntimeError(f"batch ended {resp.state}: {resp.error}")
        if any(b < a for a, b in zip(counts, counts[1:], strict=False)):
            raise AssertionError("completed_item_count went down while polling")
        after = []
        for _ in range(50):
            t0 = time.perf_counter()
            count = batch.results().completed_item_count
            after.append(time.perf_counter() - t0)
        frames = []
        for _ in range(3):
            t0 = time.perf_counter()
            frame = batch.results().to_frame()
            frames.append(time.perf_counter() - t0)
        assert len(frame) == n
        client.close()
    return {"rows": n, "batch_s": t1 - t_batch, "start_s": t2 - t1, "run_s": t3 - t2,
            "polls_running": len(running),
            "poll_running_median_ms": _median_ms(running),
            "poll_running_max_ms": max(running) * 1000.0,
            "poll_after_median_ms": _median_ms(after),
            "to_frame_median_s": statistics.median(frames)}


def _sample_service(client: Any, name: str) -> Any:
    """The SDK sample's service: per-row predict of the mtcars OLS model, with an init."""
    import _ols
    import pandas as pd

    return (client.service(name).version("1.0").code_fn(_ols.manual_transmission, _ols.init)
            .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame)
            .models(cars_model=_ols.cars_model).deploy())


def _pool_rows(method: str, workers: int, rows: list[tuple[float, float]]) -> Any:
    """A fresh ``Pool(workers)``: map the sample's predict over the rows, close it."""
    import multiprocessing as mp

    import _ols
    import pandas as pd

    with mp.get_context(method).Pool(workers) as pool:
        out = pool.starmap(_ols.ols_row, rows, max(1, -(-len(rows) // (4 * workers))))
    return pd.concat(out, ignore_index=True)


def child_first_batch(spec: Spec) -> Any:
    """The SDK sample flow in this fresh process; ``start()`` → ``wait()`` timed."""
    import _ols  # imports pandas and statsmodels and fits the model, as the sample does

    df = _ols.mtcars[["hp", "wt"]].astype(float)
    rows = list(zip(df["hp"].tolist(), df["wt"].tolist(), strict=True))
    if spec["engine"] == "loop":
        t0 = time.perf_counter()
        import pandas as pd

        pd.concat([_ols.ols_row(*r) for r in rows], ignore_index=True)
        return {"seconds": time.perf_counter() - t0}
    if spec["engine"] == "pool":
        t0 = time.perf_counter()
        _pool_rows(spec["method"], 10, rows)
        return {"seconds": time.perf_counter() - t0}
    from localbatch import DeployClient

    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        client = DeployClient(tmp, start_method=spec["method"])
        svc = _sample_service(client, "TxService")
        if spec["engine"] == "floor":
            client.close()
            return {"seconds": _template_floor(str(svc._record.path))}
        t0 = time.perf_counter()
        batch = svc.batch(df, parallel_count=spec["pc"]).start()
        resp = batch.wait()
        seconds = time.perf_counter() - t0
        if resp.state != "Complete" or resp.failed_item_count:
            raise RuntimeError(f"batch ended {resp.state}: {resp.error}")
        client.close()
    return {"seconds": seconds}


def _template_floor(revision: str) -> float:
    """What the warm template must do before it can fork the first worker, timed alone:
    a fresh interpreter that imports the worker modules and preloads the service (reads
    and verifies its blobs, unpickles code and model, importing pandas and statsmodels)."""
    from localbatch._workers.launch import worker_env

    code = ("import sys; import localbatch._workers.zygote; "
            "from localbatch._workers.loading import preload; preload({'path': sys.argv[1]}); "
            "print('loaded', flush=True)")
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-c", code, revision], env=worker_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # timed to here: the template then forks, not exits
        seconds = time.perf_counter() - t0
    if line.strip() != b"loaded":
        raise RuntimeError(f"the floor's interpreter failed (exit {proc.returncode})")
    return seconds


def live_workers() -> tuple[int, int]:
    """(worker processes, templates) among this process's descendants."""
    import psutil

    workers = templates = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "--zygote" in line and p.ppid() == os.getpid():
            templates += 1
        elif "localbatch" in line:
            workers += 1  # spawned workers, and the template's forks (its command line)
    return workers, templates


def child_suite(spec: Spec) -> Any:
    """A test suite's pattern: per iteration a fresh store, deploy, a 32-row batch."""
    import _ols

    df = _ols.mtcars[["hp", "wt"]].astype(float)
    rows = list(zip(df["hp"].tolist(), df["wt"].tolist(), strict=True))
    times = []
    if spec["engine"] == "pool":
        for _ in range(spec["iterations"]):
            t0 = time.perf_counter()
            _pool_rows("fork", 10, rows)
            times.append(time.perf_counter() - t0)
        return {"seconds": times}
    from localbatch import DeployClient

    dirs = []
    for i in range(spec["iterations"]):
        tmp = tempfile.TemporaryDirectory(prefix="lb-bench-suite-")
        dirs.append(tmp)
        t0 = time.perf_counter()
        client = DeployClient(tmp.name, start_method=spec["method"])
        svc = _sample_service(client, f"TxService{i}")
        resp = svc.batch(df, parallel_count=10).start().wait()
        times.append(time.perf_counter() - t0)
        if resp.state != "Complete" or resp.failed_item_count:
            raise RuntimeError(f"batch ended {resp.state}: {resp.error}")
    time.sleep(0.5)  # batches hand their workers back a moment after Complete
    workers, templates = live_workers()
    for tmp in dirs:
        tmp.cleanup()
    return {"seconds": times, "live_workers": workers, "templates": templates}


CHILDREN: dict[str, Callable[[Spec], Any]] = {
    "cold": child_cold, "warm": child_warm, "small": child_small,
    "memory": child_memory, "framepoll": child_framepoll,
    "first_batch": child_first_batch, "suite": child_suite,
}


# -- orchestrator --------------------------------------------------------------------


def spawn_child(mode: str, spec: Spec, timeout: float = CHILD_TIMEOUT_S) -> Any:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON answer."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="lb-bench-home-") as home:
        env["LOCALBATCH_HOME"] = home
        try:
            proc = subprocess.run([sys.executable, str(HERE / "_harness.py"), mode,
                                   json.dumps(spec)], capture_output=True, text=True,
                                  env=env, timeout=timeout, cwd=HERE)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


Engines = list[tuple[str, str]]


def run_cold(workload: str, rows: int, engines: Engines, rounds: int | None,
             workers: int | None = None, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Each (engine, round) in a fresh process, engines alternating within each round."""
    result: dict[str, Any] = {f"{k}:{m}": {"seconds": []} for k, m in engines}
    r = 0
    while r < (rounds or 3):
        for kind, method in engines:
            key = f"{kind}:{method}"
            if "seconds" not in result[key]:
                continue
            spec = {"workload": workload, "rows": rows, "kind": kind, "method": method,
                    "workers": workers}
            answer = spawn_child("cold", spec)
            if "seconds" in answer:
                result[key]["seconds"].append(answer["seconds"])
            else:
                result[key] = answer
            log(f"  cold {workload} {rows:,} {key}: {_brief(answer)}")
        if r == 0 and rounds is None:
            firsts = [v["seconds"][0] for v in result.values() if v.get("seconds")]
            rounds = 5 if firsts and max(firsts) < SHORT_RUN_S else 3
        r += 1
    return result


def run_warm(workload: str, rows: int, engines: Engines, rounds: int | None,
             workers: int | None = None, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    spec = {"workload": workload, "rows": rows, "engines": engines, "rounds": rounds,
            "workers": workers}
    answer = spawn_child("warm", spec)
    if "error" in answer:
        answer = {f"{k}:{m}": answer for k, m in engines}
    for key, value in answer.items():
        log(f"  warm {workload} {rows:,} {key}: {_brief(value)}")
    return answer


def _brief(answer: dict[str, Any]) -> str:
    secs = answer.get("seconds")
    if isinstance(secs, float):
        return f"{secs:.3f}s"
    if secs:
        return " ".join(f"{s:.3f}s" for s in secs)
    return answer.get("na") or answer.get("error") or "?"


# -- tables ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rate(rows: int, entry: dict[str, Any]) -> float | None:
    secs = entry.get("seconds")
    return rows / median(secs) if secs else None


def table(title: str, groups: list[tuple[str, int, Engines, dict[str, Any]]],
          refs: Sequence[str] = ("localbatch:spawn", "localbatch:forkserver")) -> str:
    """A markdown table: rows/s per engine and the ratio of each localbatch to it."""
    import _engines

    ref_names = [_engines.label(*r.split(":")) for r in refs]
    head = ["work", "rows", "engine", "median s", "runs", "rows/s",
            *[f"{n} ÷ this" for n in ref_names]]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for workload, rows, engines, result in groups:
        ref_rates = [rate(rows, result.get(r, {})) for r in refs]
        for kind, method in engines:
            entry = result.get(f"{kind}:{method}", {})
            rps = rate(rows, entry)
            if rps is None:
                why = entry.get("na") or entry.get("error") or "not run"
                cells = ["—", "0", f"n/a ({why})", *["—"] * len(refs)]
            else:
                cells = [f"{median(entry['seconds']):.3f}", str(len(entry["seconds"])),
                         f"{rps:,.0f}",
                         *[f"{r / rps:.2f}×" if r else "—" for r in ref_rates]]
            lines.append("| " + " | ".join([workload, f"{rows:,}",
                                            _engines.label(kind, method), *cells]) + " |")
    return "\n".join(lines)


def machine() -> str:
    """Cores, CPU model, Python and package versions, load: printed with every table."""
    from importlib import metadata

    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for pkg in ("localbatch", "numpy", "pandas", "statsmodels", "joblib", "dask",
                "distributed", "cloudpickle"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} -")
    versions[0] += _git_revision()
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {cores} cores ({usable} usable), {model}, {platform.system()} "
            f"{platform.release()}, {platform.python_implementation()} "
            f"{platform.python_version()}\npackages: {', '.join(versions)}\n"
            f"load average now: {load}")


def _git_revision() -> str:
    """The checkout measured: localbatch changes fast, so every table names its commit."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=HERE.parent, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "localbatch"],
                               capture_output=True, text=True, cwd=HERE.parent,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {rev}{' + uncommitted changes' if dirty else ''})" if rev else ""


def ratio_line(result: dict[str, Any], rows: int, num: str, den: str) -> str:
    import _engines

    a, b = rate(rows, result.get(num, {})), rate(rows, result.get(den, {}))
    name = f"{_engines.label(*num.split(':'))} / {_engines.label(*den.split(':'))}"
    return f"{name}: {a / b:.2f}×" if a and b else f"{name}: n/a"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    _emit(CHILDREN[sys.argv[1]](json.loads(sys.argv[2])))
