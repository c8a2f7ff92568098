"""localbatch: server-less batch scoring with the ML Server Python SDK's API.

    from localbatch import DeployClient
    client = DeployClient()                       # the default local store
    svc = client.service("TxService").version("1.0").code_fn(fn, init) \\
        .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame).deploy()
    batch = svc.batch(frame, parallel_count=10).start()
    batch.wait().to_frame()
"""

from ._batch import Batch, BatchResponse
from ._client import DeployClient, MLServer, Operationalization
from ._definition import RealtimeDefinition, ServiceDefinition
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
from ._schema import EncodingType
from ._service import Service, ServiceResponse
from ._version import __version__

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
