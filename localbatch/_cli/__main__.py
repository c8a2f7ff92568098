"""``python -m localbatch._cli``."""

from . import main

main()
