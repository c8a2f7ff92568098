"""The engines compared, behind one small interface.

``open()`` starts whatever the engine keeps between calls (a pool, a cluster);
``run(df)`` turns the DataFrame into the engine's tasks and the results back
into a DataFrame; ``close()`` stops it. A cold measurement times
``open() + run()`` in a fresh process; a warm one times ``run()`` after an
untimed warm-up ``run()`` in the same process.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import tempfile
from typing import Any

import pandas as pd
from _workloads import VECTOR_CHUNK, Workload


class Unavailable(Exception):
    """The engine cannot run this workload here (printed as "n/a" with the reason)."""


class Engine:
    """One way of running a workload over a DataFrame."""

    label = "?"

    def __init__(self, wl: Workload, method: str, workers: int) -> None:
        self.wl = wl
        self.method = method
        self.workers = workers

    def setup(self) -> None:
        """Untimed preparation (deploying a service, say)."""

    def open(self) -> None:
        """Start what the engine keeps between calls (timed in cold runs)."""

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what ``open`` started."""

    # helpers for the alternatives ----------------------------------------------------

    def _items(self, df: pd.DataFrame) -> tuple[Any, list[Any]]:
        """The function to map and its items: row tuples, or chunk frames (vector)."""
        if self.wl.vectorized:
            return self.wl.chunk_fn, [df.iloc[i:i + VECTOR_CHUNK]
                                      for i in range(0, len(df), VECTOR_CHUNK)]
        return self.wl.row_fn, list(zip(*(df[c].tolist() for c in self.wl.inputs), strict=True))

    def _frame(self, results: list[Any]) -> pd.DataFrame:
        if self.wl.vectorized:
            return pd.concat(results, ignore_index=True)
        return self.wl.results_frame(results)

    def _chunksize(self, n: int) -> int:
        return max(1, math.ceil(n / (4 * self.workers)))


class Loop(Engine):
    """A plain loop in this process (per chunk for the vector workload)."""

    label = "loop"

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        fn, items = self._items(df)
        if self.wl.vectorized:
            return self._frame([fn(chunk) for chunk in items])
        return self._frame([fn(*row) for row in items])


class PoolMap(Engine):
    """``multiprocessing.Pool.starmap`` (Pool.map over argument tuples, same chunking)."""

    label = "Pool.map"
    pool: Any = None

    def open(self) -> None:
        self.pool = mp.get_context(self.method).Pool(self.workers)

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        fn, items = self._items(df)
        size = self._chunksize(len(items))
        if self.wl.vectorized:
            return self._frame(self.pool.map(fn, items, size))
        return self._frame(self.pool.starmap(fn, items, size))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Futures(Engine):
    """``concurrent.futures.ProcessPoolExecutor.map`` with Pool.map's chunk size."""

    label = "ProcessPoolExecutor"
    ex: Any = None

    def open(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(self.method))

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        fn, items = self._items(df)
        size = self._chunksize(len(items))
        if self.wl.vectorized:
            return self._frame(list(self.ex.map(fn, items, chunksize=size)))
        return self._frame(list(self.ex.map(fn, *zip(*items, strict=True), chunksize=size)))

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class Joblib(Engine):
    """``joblib.Parallel`` with its default auto-batching.

    "fork" uses joblib's multiprocessing backend (a fork Pool); "spawn" uses its
    default loky backend (fresh interpreters, reusable executor).
    """

    label = "joblib"
    par: Any = None

    def open(self) -> None:
        from joblib import Parallel

        backend = "multiprocessing" if self.method == "fork" else "loky"
        if backend == "multiprocessing" and mp.get_start_method() != "fork":
            raise Unavailable("joblib's multiprocessing backend uses the default start method")
        self.par = Parallel(n_jobs=self.workers, backend=backend)
        self.par.__enter__()

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        from joblib import delayed

        fn, items = self._items(df)
        if self.wl.vectorized:
            return self._frame(self.par(delayed(fn)(chunk) for chunk in items))
        return self._frame(self.par(delayed(fn)(*row) for row in items))

    def close(self) -> None:
        self.par.__exit__(None, None, None)


class DaskBag(Engine):
    """``dask.bag`` on the processes scheduler (default partitioning, ~100 partitions)."""

    label = "dask.bag"
    pool: Any = None

    def open(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        # What dask's processes scheduler builds itself, made explicit so the start
        # method is known and a warm run can reuse it.
        self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(self.method))

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        import dask.bag as db

        fn, items = self._items(df)
        bag = db.from_sequence(items)
        bag = bag.map(fn) if self.wl.vectorized else bag.starmap(fn)
        results = bag.compute(scheduler="processes", pool=self.pool, num_workers=self.workers)
        return self._frame(list(results))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Localbatch(Engine):
    """``svc.batch(df, parallel_count, start_method).start().wait().to_frame()``.

    Every row's result is committed to the job store and read back: durable results
    are part of every localbatch figure.
    """

    label = "localbatch"
    svc: Any = None
    client: Any = None
    engine_arg: Any = None

    def setup(self) -> None:
        from localbatch import DeployClient, ServiceDefinition

        if self.wl.vectorized and not hasattr(ServiceDefinition, "vectorized"):
            raise Unavailable("ServiceDefinition has no vectorized()")
        self._tmp = tempfile.TemporaryDirectory(prefix="lb-bench-")
        self.client = DeployClient(self._tmp.name)
        self.svc = self._deploy()
        if self.wl.vectorized:
            self._probe()

    def _deploy(self) -> Any:
        wl = self.wl
        builder = self.client.service(f"bench-{wl.name}").version("1.0")
        if wl.name in ("ols_row", "vector"):
            import _ols

            fn = _ols.ols_row if wl.name == "ols_row" else _ols.ols_vector
            builder = builder.code_fn(fn).models(cars_model=_ols.cars_model)
        else:
            builder = builder.code_fn(wl.row_fn)
        builder = builder.inputs(**{name: float for name in wl.inputs})
        builder = builder.outputs(answer=pd.DataFrame) if wl.frame_output else \
            builder.outputs(y=float)
        if wl.vectorized:
            builder = builder.vectorized()
        try:
            return builder.deploy()
        except Exception as exc:
            if wl.vectorized:
                raise Unavailable(f"deploy with vectorized() failed: {type(exc).__name__}: "
                                  f"{exc}") from exc
            raise

    def _probe(self) -> None:
        """Vectorised mode may exist in the builder but not in the worker: check it."""
        from _workloads import check

        probe = self.wl.frame(100)
        try:
            check(self.wl, probe, self._batch(probe))
        except Exception as exc:
            raise Unavailable(f"vectorized batch does not work: {str(exc)[:160]}") from exc

    def _batch(self, df: pd.DataFrame) -> pd.DataFrame:
        options: dict[str, Any] = {"start_method": self.method}
        if self.engine_arg is not None:
            options = {"engine": self.engine_arg}
        batch = self.svc.batch(df, parallel_count=self.workers, **options)
        return batch.start().wait().to_frame()

    def run(self, df: pd.DataFrame) -> pd.DataFrame:
        return self._batch(df)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()  # stops this process's idle warm workers


class LocalbatchDask(Localbatch):
    """localbatch's Dask engine on a LocalCluster (``engine=client``)."""

    label = "localbatch[dask]"
    cluster: Any = None

    def setup(self) -> None:
        import importlib.util

        if importlib.util.find_spec("localbatch._engines.dask") is None:
            raise Unavailable("localbatch._engines.dask does not exist yet")
        super().setup()

    def open(self) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                    processes=True, dashboard_address=None)
        self.engine_arg = Client(self.cluster)

    def close(self) -> None:
        if self.engine_arg is not None:
            self.engine_arg.close()
        if self.cluster is not None:
            self.cluster.close()
        super().close()


ENGINES: dict[str, type[Engine]] = {
    "loop": Loop, "localbatch": Localbatch, "localbatch-dask": LocalbatchDask,
    "pool": PoolMap, "futures": Futures, "joblib": Joblib, "dask": DaskBag,
}


def make(kind: str, wl: Workload, method: str, workers: int | None = None) -> Engine:
    return ENGINES[kind](wl, method, workers or wl.workers)


def label(kind: str, method: str) -> str:
    """How the tables name an engine and its start method."""
    name = ENGINES[kind].label
    if kind == "joblib":
        name = "joblib (multiprocessing)" if method == "fork" else "joblib (loky)"
    if kind == "loop":
        return name
    if kind == "localbatch-dask":
        return f"{name} LocalCluster"
    return f"{name} [{method}]"
