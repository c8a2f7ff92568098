"""localbatch against multiprocessing.Pool.map and joblib on a trivial function.

    python bench/throughput.py            # 100,000 and 1,000,000 rows
    python bench/throughput.py --quick    # 20,000 rows, one run each (CI smoke)

``fn(a, b) -> a * 2.0 + b`` with ``parallel_count=2``. Every engine takes the
same DataFrame and returns a DataFrame; localbatch's figure includes committing
every row's result to the job store and reading them back
(``svc.batch(df).start().wait().to_frame()``). Pool.map uses
``chunksize = ceil(n / (4 × workers))`` and the same start method as the
localbatch run it is compared with. Cold: a fresh process per measurement,
worker start-up counted. Warm: all engines in one process, each after an
untimed warm-up, timed alternately. Median of 3 runs (5 for runs under 1 s).
"""

from __future__ import annotations

import argparse
import time

import _harness  # first: pins BLAS threads before anything imports numpy

ENGINES = [("localbatch", "spawn"), ("localbatch", "forkserver"), ("pool", "spawn"),
           ("pool", "forkserver"), ("joblib", "spawn")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    parser.add_argument("--rows", type=int, nargs="*", help="row counts (overrides defaults)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs per engine (default: 3, or 5 for short runs)")
    args = parser.parse_args(argv)
    sizes = args.rows or ([20_000] if args.quick else [100_000, 1_000_000])
    if args.quick and args.rounds is None:
        args.rounds = 1  # a smoke run: does every engine work
    t0 = time.perf_counter()
    print(_harness.machine())
    print(f"settings: trivial fn a * 2.0 + b, parallel_count=2, rows {sizes}, rounds "
          f"{args.rounds or '3 (5 if < 1 s)'}, BLAS threads 1\n")
    cold, warm = [], []
    for rows in sizes:
        print(f"trivial, {rows:,} rows:")
        cold.append(("trivial", rows, ENGINES,
                     _harness.run_cold("trivial", rows, ENGINES, args.rounds)))
        warm.append(("trivial", rows, ENGINES,
                     _harness.run_warm("trivial", rows, ENGINES, args.rounds)))
    print()
    print(_harness.table("Cold (fresh process per run, worker start-up counted)", cold))
    print()
    print(_harness.table("Warm (same process, after an untimed warm-up)", warm))
    print()
    for kind, groups in (("cold", cold), ("warm", warm)):
        for _, rows, _, result in groups:
            for method in ("spawn", "forkserver"):
                lb = f"localbatch:{method}"
                print(f"{kind} {rows:,}: "
                      f"{_harness.ratio_line(result, rows, lb, f'pool:{method}')}; "
                      f"{_harness.ratio_line(result, rows, lb, 'joblib:spawn')}")
    print(f"\n{_harness.machine().splitlines()[-1]}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
