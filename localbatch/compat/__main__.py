"""``python -m localbatch.compat SCRIPT.py [args]``: run a script written for the SDK."""

from __future__ import annotations

import runpy
import sys

from . import install_azureml


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    install_azureml()
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
