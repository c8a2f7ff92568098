"""The SDK's fluent builders: ``client.service(name)....deploy()``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import InvalidServiceError

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["OperationalizationDefinition", "Publisher", "RealtimeDefinition",
           "ServiceDefinition"]


class Publisher(Protocol):
    """What a builder's ``deploy()``/``redeploy()`` hand their options to (the client)."""

    def deploy_service(self, name: str, **opts: Any) -> Service: ...

    def redeploy_service(self, name: str, force: bool = False, **opts: Any) -> Service: ...

    def deploy_realtime(self, name: str, **opts: Any) -> Service: ...

    def redeploy_realtime(self, name: str, force: bool = False, **opts: Any) -> Service: ...


class OperationalizationDefinition:
    """Base builder: each setter stores one value and returns the builder."""

    _keys: tuple[str, ...] = ("version", "alias", "description")

    def __init__(self, name: str, op: Publisher) -> None:
        self.name = name
        self.op = op
        self._defs: dict[str, Any] = {k: None for k in self._keys}

    def version(self, version: str) -> OperationalizationDefinition:
        """The version to publish; left blank, a unique one is generated."""
        self._defs["version"] = version
        return self

    def alias(self, alias: str) -> OperationalizationDefinition:
        """The consume method's name (default: the function's name, else ``consume``)."""
        self._defs["alias"] = alias
        return self

    def description(self, description: str) -> OperationalizationDefinition:
        """Free text shown in ``list_services`` and the consume docstring."""
        self._defs["description"] = description
        return self

    def __str__(self) -> str:
        body = "\n".join(f"   {k}: {v!r}" for k, v in self._defs.items())
        return f"<{type(self).__name__}> {self.name}\n{body}"


class ServiceDefinition(OperationalizationDefinition):
    """Builder of a standard (code) service, as in the SDK."""

    _keys = ("version", "alias", "description", "code_str", "init_str", "code_fn", "init_fn",
             "objects", "models", "inputs", "outputs", "artifacts", "vectorized")

    def code_fn(self, code: Callable[..., Any], init: Callable[..., Any] | None = None
                ) -> ServiceDefinition:
        """The scoring function and an optional ``init`` run once per worker."""
        self._defs["code_fn"], self._defs["init_fn"] = code, init
        return self

    def code_str(self, code: str, init: str | None = None) -> ServiceDefinition:
        """Source run per call (inputs are variables, outputs read back); wins over code_fn."""
        self._defs["code_str"], self._defs["init_str"] = code, init
        return self

    def _merge(self, key: str, values: dict[str, Any]) -> ServiceDefinition:
        self._defs[key] = {**(self._defs[key] or {}), **values}
        return self

    def objects(self, **objects: Any) -> ServiceDefinition:
        """Named objects, globals of the code at run time (repeated calls merge)."""
        return self._merge("objects", objects)

    def models(self, **models: Any) -> ServiceDefinition:
        """Named models, globals of the code at run time (repeated calls merge)."""
        return self._merge("models", models)

    def inputs(self, **inputs: Any) -> ServiceDefinition:
        """Input name → type, as a Python type or its name: ``.inputs(hp=float)``."""
        return self._merge("inputs", inputs)

    def outputs(self, **outputs: Any) -> ServiceDefinition:
        """Output name → type; the first output gets the function's return value."""
        return self._merge("outputs", outputs)

    def artifacts(self, artifacts: Iterable[str] | None) -> ServiceDefinition:
        """File names the code writes in its working directory, returned per call."""
        if artifacts is None:
            return self
        if isinstance(artifacts, str):
            raise InvalidServiceError("artifacts() takes a list of file names: use "
                                      f".artifacts([{artifacts!r}]) or .artifact({artifacts!r})")
        self._defs["artifacts"] = [*(self._defs["artifacts"] or []), *artifacts]
        return self

    def artifact(self, artifact: str) -> ServiceDefinition:
        """Shorthand for ``artifacts([artifact])``."""
        return self.artifacts([artifact])

    def vectorized(self, enabled: bool = True) -> ServiceDefinition:
        """Beyond the SDK: call the code once per chunk with columns (pandas Series)."""
        self._defs["vectorized"] = bool(enabled)
        return self

    def deploy(self) -> Service:
        """Publish a new name/version (``ServiceExistsError`` if it is taken)."""
        return self.op.deploy_service(self.name, **self._options())

    def redeploy(self, force: bool = False) -> Service:
        """Replace a version (default: the latest); IO left unset keeps the old IO."""
        return self.op.redeploy_service(self.name, force=force, **self._options())

    def _options(self) -> dict[str, Any]:
        return {k: v for k, v in self._defs.items() if v is not None}


class RealtimeDefinition(OperationalizationDefinition):
    """Builder of a realtime service: one fitted model with ``.predict(DataFrame)``."""

    _keys = ("version", "alias", "description", "serialized_model")

    def serialized_model(self, model: Any) -> RealtimeDefinition:
        """The one fitted model; it needs ``.predict(DataFrame)``."""
        if self._defs["serialized_model"] is not None:
            raise InvalidServiceError("The realtime service should have one and only one model.")
        self._defs["serialized_model"] = model
        return self

    def deploy(self) -> Service:
        """Publish the realtime service (input ``inputData``, output ``outputData``)."""
        return self.op.deploy_realtime(self.name, **self._options())

    def redeploy(self, force: bool = False) -> Service:
        """Replace a realtime version (the version is required, as in the SDK)."""
        return self.op.redeploy_realtime(self.name, force=force, **self._options())

    def _options(self) -> dict[str, Any]:
        return {k: v for k, v in self._defs.items() if v is not None}
