"""The one rooted exception tree of localbatch.

Builtins are mixed in wherever a user of the SDK would already catch them, so
``except ValueError`` and ``except LookupError`` keep working::

    LocalBatchError(Exception)
    ├── ConfigurationError(ValueError)          bad store path, engine, client form
    ├── RegistryError
    │   ├── ServiceNotFoundError(LookupError, ValueError)   the SDK raised ValueError
    │   ├── ServiceExistsError(ValueError)
    │   ├── InvalidServiceError(ValueError)      bad name/version/types/fn signature
    │   └── ServiceLoadError                     blob hash mismatch, version skew
    ├── SchemaError(ValueError)                  records vs declared inputs, casting
    │   └── InputFileError                       a CSV/TSV line that cannot be read
    ├── BatchError
    │   ├── BatchNotStartedError(ValueError)     the SDK raised ValueError here
    │   ├── ExecutionNotFoundError(LookupError)
    │   ├── RowNotRecordedError(LookupError)
    │   ├── ArtifactNotFoundError(LookupError)
    │   ├── ResumeError(RuntimeError)            not resumable / owned elsewhere
    │   └── BatchTimeoutError(TimeoutError)      wait(timeout=...) ran out
    ├── ScoringError(RuntimeError)               raise_for_error(): a call's own error
    └── StoreError(OSError)                      store I/O failed or is corrupt
        └── StoreCorruptedError
    LocalBatchWarning(UserWarning)

Row failures raised by user code are data (``ServiceResponse.error``), not
exceptions: the caller only sees them when it asks.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactNotFoundError",
    "BatchError",
    "BatchNotStartedError",
    "BatchTimeoutError",
    "ConfigurationError",
    "ExecutionNotFoundError",
    "InputFileError",
    "InvalidServiceError",
    "LocalBatchError",
    "LocalBatchWarning",
    "RegistryError",
    "ResumeError",
    "RowNotRecordedError",
    "SchemaError",
    "ScoringError",
    "ServiceExistsError",
    "ServiceLoadError",
    "ServiceNotFoundError",
    "StoreCorruptedError",
    "StoreError",
]


class LocalBatchError(Exception):
    """Root of every error localbatch raises on purpose."""


class LocalBatchWarning(UserWarning):
    """Something was accepted but probably not what was meant."""


class ConfigurationError(LocalBatchError, ValueError):
    """A client, store or engine was configured with values that cannot work."""


class RegistryError(LocalBatchError):
    """A service could not be published, found or loaded."""


class ServiceNotFoundError(RegistryError, LookupError, ValueError):
    """No service with that name (and version) is published.

    A ``ValueError`` too, because the SDK's ``get_service`` raised ``ValueError("No
    service found ...")``: code written for the SDK keeps catching it.
    """


class ServiceExistsError(RegistryError, ValueError):
    """That name and version are already published; use redeploy to replace it."""


class InvalidServiceError(RegistryError, ValueError):
    """The service definition breaks a deploy-time rule."""


class ServiceLoadError(RegistryError):
    """A published service cannot be loaded (corrupt blob, version skew)."""


class SchemaError(LocalBatchError, ValueError):
    """Records do not match the service's declared inputs."""


class InputFileError(SchemaError):
    """A line of a CSV/TSV input file cannot be read with the declared types."""


class BatchError(LocalBatchError):
    """A batch operation cannot be carried out."""


class BatchNotStartedError(BatchError, ValueError):
    """The batch has no execution id yet: call ``start()`` first."""


class ExecutionNotFoundError(BatchError, LookupError):
    """No execution with that id exists in this store."""


class RowNotRecordedError(BatchError, LookupError):
    """The row has no recorded result yet (or the index is out of range)."""


class ArtifactNotFoundError(BatchError, LookupError):
    """The row has no artifact of that name."""


class ResumeError(BatchError, RuntimeError):
    """The execution cannot be resumed (finished, owned elsewhere, or needs force)."""


class BatchTimeoutError(BatchError, TimeoutError):
    """``wait(timeout=...)`` ran out before the batch ended."""


class ScoringError(LocalBatchError, RuntimeError):
    """Raised on request (``raise_for_error()``) for an error the user's code raised."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        text = message + (f"\n\nRemote traceback:\n{remote_traceback}" if remote_traceback
                          else "")
        super().__init__(text)
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self.args[0]).split("\n\nRemote traceback:")[0],
                            self.remote_traceback)


class StoreError(LocalBatchError, OSError):
    """Reading or writing the store failed."""


class StoreCorruptedError(StoreError):
    """A store file exists but cannot be parsed."""


def _public_names() -> None:
    """Tracebacks and reprs name the public class (``localbatch.ServiceNotFoundError``),
    which is where users import it from, not this private module. Pickles still load:
    ``localbatch`` imports every one of them eagerly."""
    for name in __all__:
        globals()[name].__module__ = "localbatch"


_public_names()
