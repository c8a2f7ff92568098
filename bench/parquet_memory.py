"""Peak memory of scoring a Parquet file, against ``pandas.read_parquet`` of it.

    python bench/parquet_memory.py              # 5M rows (~2 min on 2 busy cores)
    python bench/parquet_memory.py --rows 500000

Writes an N-row Parquet file (two float columns and a text key, row groups of 1M
rows), then measures in fresh subprocesses, each after importing numpy, pandas,
pyarrow and localbatch (the baseline):

- ``read``: ``pandas.read_parquet(file)``, what a user would do to score a frame;
- ``score``: ``svc.batch(file, keep=["key"]).start().wait()`` on a vectorised
  service (2 workers), then ``to_parquet`` of the results.

Growth is the caller's peak RSS (``VmHWM``, reset after the imports) over its RSS
then; the workers are other processes (they hold one chunk each).

Prints both growths, the ratio, and whether the targets hold: growth < 300 MB and
at most half of ``read_parquet``'s (issue 16).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 300.0


def _peak_mb() -> float:
    """VmHWM: the process's peak RSS since the last reset (``_reset_peak``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start the peak over from now (Linux: "5" to clear_refs resets VmHWM), so what the
    imports touched and freed is not counted."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _current_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _imports() -> None:
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import localbatch  # noqa: F401
    from localbatch import _batch  # noqa: F401 - the facade's imports happen before the mark


def _predict(a, b):
    """The service: vectorised, a Series per input, one value per row."""
    return a * 2.0 + b


def child_read(path: str) -> dict[str, float]:
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_parquet(path)
    return {"rows": len(frame), "seconds": time.perf_counter() - start}


def _service(store: str) -> tuple[object, object]:
    import pandas as pd

    from localbatch import DeployClient

    client = DeployClient(store)
    svc = (client.service("bench").version("1.0").code_fn(_predict).inputs(a=float, b=float)
           .outputs(y=float).vectorized().deploy())
    # A first small batch: what the first batch of a process imports is not counted.
    svc.batch(pd.DataFrame({"a": [1.0], "b": [2.0]}), parallel_count=2).start().wait()
    return client, svc


def child_score(client: object, svc: object, path: str, store: str) -> dict[str, float]:
    start = time.perf_counter()
    resp = svc.batch(path, parallel_count=2, keep=["key"]).start().wait()
    scored = time.perf_counter() - start
    peak = _peak_mb()
    written = resp.to_parquet(Path(store) / "results.parquet")
    client.close()
    assert resp.state == "Complete" and written == resp.total_item_count, resp
    return {"rows": written, "seconds": scored, "score_peak_mb": peak,
            "write_seconds": time.perf_counter() - start - scored}


def child(kind: str, args: list[str]) -> None:
    _imports()
    ready = _service(args[1]) if kind == "score" else ()
    _reset_peak()
    base = _current_mb()
    out = child_read(*args) if kind == "read" else child_score(*ready, *args)
    out["growth_mb"] = _peak_mb() - base
    if "score_peak_mb" in out:
        out["score_growth_mb"] = out.pop("score_peak_mb") - base
    print(json.dumps(out))


def _make_file(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = np.arange(rows, dtype=np.float64)
    table = pa.table({"a": a, "b": a / 7.0,
                      "key": pa.array([f"id-{i:08d}" for i in range(rows)])})
    pq.write_table(table, path, row_group_size=1_000_000)


def _run(kind: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], cwd=ROOT,
                         capture_output=True, text=True, check=False,
                         env={"PYTHONPATH": str(ROOT), **_env()})
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.parquet"
        _make_file(path, args.rows)
        size = path.stat().st_size / 2**20
        read = _run("read", str(path))
        score = _run("score", str(path), str(Path(tmp) / "store"))
    ratio = score["growth_mb"] / read["growth_mb"]
    print(f"{args.rows:,} rows, {size:.0f} MB Parquet file")
    print(f"  pandas.read_parquet:  peak RSS growth {read['growth_mb']:7.1f} MB  "
          f"({read['seconds']:.1f}s)")
    print(f"  localbatch batch:     peak RSS growth {score['growth_mb']:7.1f} MB  "
          f"(scored in {score['seconds']:.1f}s, to_parquet {score['write_seconds']:.1f}s)")
    print(f"    of which scoring alone: {score['score_growth_mb']:7.1f} MB")
    print(f"  ratio localbatch / read_parquet: {ratio:.2f}")
    met = score["growth_mb"] < LIMIT_MB and ratio <= 0.5
    print(f"  target (< {LIMIT_MB:.0f} MB and <= 0.5): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
