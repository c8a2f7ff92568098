"""localbatch: server-less batch scoring with the ML Server Python SDK's API.

    from localbatch import DeployClient
    client = DeployClient()                       # the default local store
    svc = client.service("TxService").version("1.0").code_fn(fn, init) \\
        .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame).deploy()
    batch = svc.batch(frame, parallel_count=10).start()
    batch.wait().to_frame()

Public names are resolved on first use, so worker processes (which import
``localbatch._workers.child``) and the pytest plugin do not pay for the whole facade.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._errors import (
    ArtifactNotFoundError,
    BatchError,
    BatchNotStartedError,
    BatchTimeoutError,
    ConfigurationError,
    ExecutionNotFoundError,
    InputFileError,
    InvalidServiceError,
    LocalBatchError,
    LocalBatchWarning,
    RegistryError,
    ResumeError,
    RowNotRecordedError,
    SchemaError,
    ScoringError,
    ServiceExistsError,
    ServiceLoadError,
    ServiceNotFoundError,
    StoreCorruptedError,
    StoreError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._batch import Batch, BatchResponse
    from ._client import DeployClient, MLServer, Operationalization
    from ._definition import RealtimeDefinition, ServiceDefinition
    from ._responses import ServiceResponse
    from ._schema import EncodingType
    from ._service import Service

_LAZY = {
    "Batch": "._batch",
    "BatchResponse": "._batch",
    "DeployClient": "._client",
    "EncodingType": "._schema",
    "MLServer": "._client",
    "Operationalization": "._client",
    "RealtimeDefinition": "._definition",
    "Service": "._service",
    "ServiceDefinition": "._definition",
    "ServiceResponse": "._responses",
}

__all__ = [
    "ArtifactNotFoundError",
    "Batch",
    "BatchError",
    "BatchNotStartedError",
    "BatchResponse",
    "BatchTimeoutError",
    "ConfigurationError",
    "DeployClient",
    "EncodingType",
    "ExecutionNotFoundError",
    "InputFileError",
    "InvalidServiceError",
    "LocalBatchError",
    "LocalBatchWarning",
    "MLServer",
    "Operationalization",
    "RealtimeDefinition",
    "RegistryError",
    "ResumeError",
    "RowNotRecordedError",
    "SchemaError",
    "ScoringError",
    "Service",
    "ServiceDefinition",
    "ServiceExistsError",
    "ServiceLoadError",
    "ServiceNotFoundError",
    "ServiceResponse",
    "StoreCorruptedError",
    "StoreError",
    "__version__",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'localbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
