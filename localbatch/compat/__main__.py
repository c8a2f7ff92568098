"""Run a script written for ML Server's SDK, unchanged, on a local store.

usage: python -m localbatch.compat [--store PATH] [--engine NAME] SCRIPT.py [ARGS...]
       python -m localbatch.compat [--store PATH] [--engine NAME] -m MODULE [ARGS...]

The script runs as ``__main__`` (no ``if __name__ == "__main__"`` guard needed)
with the ``azureml`` drop-in installed: ``DeployClient(HOST, use=MLServer,
auth=...)`` opens the store PATH, else $LOCALBATCH_HOME, else the per-user
default. ``--engine inline`` runs every batch's rows in this process, e.g.
under a debugger. Batches the script leaves running are waited for at exit.
"""

from __future__ import annotations

import os
import runpy
import sys

from .._errors import ConfigurationError
from . import install_azureml

_OPTIONS = ("--store", "--engine")


def _usage(message: str | None = None) -> int:
    if message:
        print(f"python -m localbatch.compat: {message}", file=sys.stderr)
    print((__doc__ or "").strip(), file=sys.stderr)
    return 2


def _parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading options; everything from the script (or ``-m MODULE``) on is the script's."""
    opts: dict[str, str] = {}
    while args:
        name, eq, value = args[0].partition("=")
        if name not in _OPTIONS:
            break
        if not eq:
            if len(args) < 2:
                raise ValueError(f"{name} needs a value")
            value, args = args[1], args[1:]
        opts[name[2:]] = value
        args = args[1:]
    return opts, args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (the script's own ``sys.exit`` propagates)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print((__doc__ or "").strip())
        return 0
    try:
        opts, args = _parse(args)
    except ValueError as exc:
        return _usage(str(exc))
    if not args or (args[0] == "-m" and len(args) < 2):
        return _usage("nothing to run")
    if "store" in opts:
        # Through the environment, so processes the script starts see the same store.
        os.environ["LOCALBATCH_HOME"] = os.path.abspath(os.path.expanduser(opts["store"]))
    try:
        install_azureml(engine=opts.get("engine"))
    except ConfigurationError as exc:
        return _usage(str(exc))
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    script = args[0]
    if not os.path.isfile(script):
        return _usage(f"no such script: {script}")
    sys.argv = args
    # As `python SCRIPT.py` does: the script's folder first, so its sibling modules import.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
