"""Test-only fault injection at named points of the commit protocol.

``LOCALBATCH_FAULT="<point>[:<nth>][:<action>]"`` makes the ``nth`` (default 1st)
pass through ``point`` in this process act: ``sigkill`` (default) kills the
process on the spot, ``enospc`` / ``eacces`` / ``eio`` raise that ``OSError``.
Unset (always, outside tests), :func:`hook` is one global lookup.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["POINTS", "hook"]

#: Every hook point, in commit order; tests enumerate it so no step goes untested.
POINTS = (
    "artifacts.before_write",
    "part.before_write",
    "part.after_write",
    "part.after_publish",
    "header.before_replace",
    "header.after_replace",
)

_ERRNO = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "eio": errno.EIO}


def _parse(text: str | None) -> tuple[str, int, str] | None:
    if not text:
        return None
    point, _, rest = text.partition(":")
    nth, _, action = rest.partition(":")
    if point not in POINTS:
        raise ValueError(f"LOCALBATCH_FAULT names unknown point {point!r}: one of {POINTS}")
    return point, int(nth or 1), action or "sigkill"


_SPEC = _parse(os.environ.get("LOCALBATCH_FAULT"))
_SEEN: dict[str, int] = {}


def hook(point: str) -> None:
    if _SPEC is None or _SPEC[0] != point:
        return
    _SEEN[point] = _SEEN.get(point, 0) + 1
    if _SEEN[point] != _SPEC[1]:
        return
    action = _SPEC[2]
    if action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = _ERRNO[action]
    raise OSError(code, os.strerror(code) + f" (injected at {point})")
