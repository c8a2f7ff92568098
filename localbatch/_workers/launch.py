"""Starting a localbatch interpreter: its command line and its environment.

Both kinds of process localbatch starts, a worker (:mod:`.child`) and the fork
server (:mod:`.zygote`), are fresh interpreters that never import the caller's
``__main__`` (so a guard-less script works), each in a session of its own (so
a kill of its process group takes down whatever a row started too).
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["launch"]


def launch(module: str, fd: int, args: list[str]) -> subprocess.Popen[bytes]:
    """Run ``module.main([--fd FD, *args])`` in a fresh interpreter that inherits ``fd``.

    ``-c`` with an import rather than ``-m``: the module then runs under its own
    name, not as a second copy named ``__main__``.
    """
    command = [sys.executable, "-c", f"import sys; from {module} import main; "
               "main(sys.argv[1:])", "--fd", str(fd), *args]
    return subprocess.Popen(command, pass_fds=[fd], env=_worker_env(), start_new_session=True,
                            stdin=subprocess.DEVNULL)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers import what the caller can import (modules next to its script, say).
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env
