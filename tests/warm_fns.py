"""Row functions and models for tests/test_warm_workers.py (pickled by value at deploy)."""

from __future__ import annotations

import os
import shutil
import threading
import time

INIT_PID = 0


def record_init() -> None:
    """An init that notes where it ran (a global and a file named by its pid)."""
    global INIT_PID
    INIT_PID = os.getpid()
    folder = os.environ.get("WARM_INIT_DIR")
    if folder:
        with open(os.path.join(folder, str(os.getpid())), "w"):
            pass


def init_pid(a: float, b: float) -> str:
    return f"{INIT_PID}:{os.getpid()}"


def read_state(a: float, b: float) -> str:
    import warm_state  # imported in the worker, at run time

    return warm_state.VALUE


class LoadedWhere:
    """A model that remembers the process that unpickled it."""

    pid = 0

    def __getstate__(self) -> dict[str, int]:
        return {}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.pid = os.getpid()


class StartsThread(LoadedWhere):
    """A model whose unpickling starts a thread (a library with a pool, say)."""

    def __setstate__(self, state: dict[str, int]) -> None:
        super().__setstate__(state)
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()


def where_loaded(a: float, b: float) -> str:
    """'<pid that unpickled the model>:<this pid>:<parent pid>'."""
    return f"{where.pid}:{os.getpid()}:{os.getppid()}"  # noqa: F821 - a model


def where_and_tag(a: float, b: float) -> str:
    """'<pid that unpickled the model>:<this pid>:<parent pid>:<the service's tag>'."""
    return f"{where.pid}:{os.getpid()}:{os.getppid()}:{tag}"  # noqa: F821 - models


def busy(a: float, b: float) -> float:
    """A CPU-bound row: ~b seconds of pure Python."""
    end = time.process_time() + b
    while time.process_time() < end:
        pass
    return a


def nap(a: float, b: float) -> float:
    time.sleep(b)
    return a


def retire_after_row_zero(a: float, b: float) -> float:
    """Row 0 makes its worker exit cleanly right after it sends this chunk's results:
    what a worker that cannot undo a row's changes does (it retires)."""
    if a == 0:
        import localbatch._workers.child as child

        real = child.send

        def send(conn, msg):  # noqa: ANN001, ANN202 - the worker's own signature
            real(conn, msg)
            if msg[0] == "result":
                shutil.rmtree(os.environ.get("LOCALBATCH_SCRATCH", ""), ignore_errors=True)
                os._exit(0)

        child.send = send
    return a


class StuckInTemplate(LoadedWhere):
    """A model whose unpickling hangs in the template (a child of the process that
    pickled it), and only there."""

    def __getstate__(self) -> dict[str, int]:
        return {"owner": os.getpid()}

    def __setstate__(self, state: dict[str, int]) -> None:
        super().__setstate__(state)
        if os.getppid() == state["owner"]:
            time.sleep(60)
