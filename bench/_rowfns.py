"""Per-row service functions of the benchmark, in a module with no heavy imports.

Pool / executor workers started by ``spawn`` import this module to unpickle the
function; keeping it free of pandas gives the alternatives their best cold start,
so any advantage measured for localbatch is not an artefact of the harness.
"""

from __future__ import annotations

import time


def trivial(a: float, b: float) -> float:
    """Pure engine overhead: the function costs ~50 ns."""
    return a * 2.0 + b


def sleep_io(a: float, b: float) -> float:
    """A slow downstream call: the row waits 10 ms and uses no CPU."""
    time.sleep(0.01)
    return a
