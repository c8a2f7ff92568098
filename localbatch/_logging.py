"""Library logging: ``logging.getLogger("localbatch")`` plus one file per execution.

No handler is added to the root logger. Each execution's events (worker start
and exit, init time, retries, kills, cancel) also go to ``execution.log`` in its
folder through concurrent-log-handler, with size-based rotation, so any process
can append to it safely. Logging never affects scoring: a failing handler is
dropped after one warning.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

__all__ = ["LOGGER", "execution_logger", "close_execution_logger"]

LOGGER = logging.getLogger("localbatch")
LOGGER.addHandler(logging.NullHandler())

_FORMAT = "%(asctime)s %(levelname)s pid=%(process)d %(message)s"


class _QuietHandler(logging.Handler):
    """Wraps the file handler so a full disk or a lock timeout never reaches scoring."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__()
        self.inner = inner
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            self.inner.emit(record)
        except Exception as exc:  # pragma: no cover - depends on the disk
            self.broken = True
            LOGGER.warning("execution log disabled: %s", exc)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.inner.close()
        super().close()


def execution_logger(folder: Path, execution_id: str) -> logging.Logger:
    from concurrent_log_handler import ConcurrentRotatingFileHandler

    log = logging.getLogger(f"localbatch.execution.{execution_id}")
    if not log.handlers:
        handler = ConcurrentRotatingFileHandler(
            str(folder / "execution.log"), maxBytes=5 << 20, backupCount=3,
            keep_file_open=False, chmod=0o600)  # private, like every store file
        handler.setFormatter(logging.Formatter(_FORMAT))
        log.addHandler(_QuietHandler(handler))
        log.setLevel(logging.INFO)
    return log


def close_execution_logger(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
