"""``Service`` (the dynamic consume object) and ``ServiceResponse``."""

from __future__ import annotations

import base64
import binascii
import json
import re
from pprint import pformat
from typing import TYPE_CHECKING, Any

from ._errors import ScoringError, ServiceLoadError
from ._schema import EncodingType, cast_value

if TYPE_CHECKING:
    from ._batch import Batch
    from ._client import MLServer
    from ._store.registry import ServiceRecord

__all__ = ["Service", "ServiceResponse", "class_name_for", "swagger_document"]

_HOST = "http://localhost:12800"


def class_name_for(name: str) -> str:
    """The SDK's class name (``to_camel_case(name, prefix='Service') + 'Service'``).

    Non-alphanumerics split the name, each piece is title-cased, and a name that
    starts with a digit gets the prefix ``Service``: 'TxService' → TxserviceService,
    '12345' → Service12345Service.
    """
    token = "Service" + name if name[:1].isdigit() else name
    camel = "".join(p.title() for p in re.split(r"[^0-9A-Za-z]+", token))
    if camel[:1].isdigit():
        # '!1a' would give '1AService', which is no identifier (the SDK made it anyway).
        camel = "Service" + camel
    return camel + "Service"


def _docstring(record: ServiceRecord) -> str:
    """The SDK's consume docstring, less its HttpException line (no HTTP here)."""
    inputs = "\n    ".join(f":param {EncodingType.to_python(e)} {n}: The required service input."
                          for n, e in record.inputs)
    outputs = "\n        ".join(f"Output: {EncodingType.to_python(e)} {n}"
                               for n, e in record.outputs)
    text = (
        f"Consume the {record.name} service.\n\n"
        f"    {record.manifest.get('description') or ''}\n\n"
        f"    {inputs}\n"
        "    :returns ServiceResponse: The `<ServiceResponse>` object contains the set of\n"
        "        expected output values and artifacts. The possible outputs include:\n\n"
        f"        {outputs}\n\n"
        "    :Raises:\n"
        "        ValueError: If argument input types do not match the expected service\n"
        "            input types.\n"
    )
    return re.sub(r"\n{3,}", "\n\n", re.sub(r" +\n", "\n", text))


def _make_consume(record: ServiceRecord) -> Any:
    """A real function whose signature is the service's inputs (any number of them)."""
    names = [n for n, _ in record.inputs]
    op = record.operation_id
    # The SDK calls the instance `self`; an input may be called that too.
    this = "self"
    while this in names:
        this = "_" + this
    params = ", ".join([this, *names])
    args = ", ".join(f"{n!r}: {n}" for n in names)
    src = f"def {op}({params}):\n    return {this}._consume({{{args}}})\n"
    ns: dict[str, Any] = {}
    exec(compile(src, f"<localbatch consume {record.name}>", "exec"), ns)
    fn = ns[op]
    fn.__doc__ = _docstring(record)
    return fn


class Service:
    """A published service. ``svc.<operation>(...)`` consumes it, ``svc.batch`` batches it."""

    def __new__(cls, record: ServiceRecord, client: MLServer) -> Service:
        if cls is not Service:
            return super().__new__(cls)
        op = record.operation_id
        attrs = {op: _make_consume(record), "__module__": __name__}
        sub = type(class_name_for(record.name), (Service,), attrs)
        return super().__new__(sub)

    def __init__(self, record: ServiceRecord, client: MLServer) -> None:
        self._record = record
        self._client = client
        self._service = dict(record.meta())
        self._service["_fn"] = {"name": record.operation_id,
                                "args": ",".join(["self", *(n for n, _ in record.inputs)])}
        self._api = f"/api/{record.name}/{record.version}"

    def __str__(self) -> str:
        return f"<{type(self).__name__}> \n" + pformat(
            {"_service": self._service, "_api": self._api}, indent=4, width=1)

    __repr__ = __str__

    @property
    def name(self) -> str:
        """The service's name."""
        return self._record.name

    @property
    def version(self) -> str:
        """The service's version."""
        return self._record.version

    @property
    def api(self) -> str:
        """The service's endpoint, ``/api/{name}/{version}``."""
        return self._api

    # consume --------------------------------------------------------------------

    def _cast_inputs(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: cast_value(enc, values[name], name) for name, enc in self._record.inputs}

    def _consume(self, values: dict[str, Any]) -> ServiceResponse:
        from ._engines.consume import consume
        from ._engines.registry import get_engine
        from ._format.chunk import per_row

        payload = consume(self._record, self._cast_inputs(values),
                          start_method=self._client.start_method,
                          engine=get_engine(self._client.engine))
        error = per_row(payload, "errors")[0]
        if error is not None and error[0] == "ServiceLoadError":
            # The store, not the user's code, is at fault: say so loudly, not as data.
            message = error[1].removeprefix("init failed: ")
            raise ServiceLoadError(f"{self.name} {self.version}: {message}")
        return ServiceResponse.from_payload(self._api, payload, self._record)

    # documents -------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """The SDK's description of the service: exactly its keys (no ``alias``)."""
        meta = self._service
        inputs = [dict(d) for d in meta["inputParameterDefinitions"]]
        outputs = [dict(d) for d in meta["outputParameterDefinitions"]]
        op = self._record.operation_id
        return {
            "api": self._api,
            "name": meta["name"],
            "version": meta["version"],
            "description": meta["description"],
            "published_by": meta["versionPublishedBy"],
            "runtime": meta["runtimeType"],
            "creation_time": meta["creationTime"],
            "snapshot_id": meta["snapshotId"],
            "inputs": inputs,
            "outputs": outputs,
            "inputs_encoded": [{"name": d["name"], "type": EncodingType.to_python(d["type"])}
                               for d in inputs],
            "outputs_encoded": [{"name": d["name"], "type": EncodingType.to_python(d["type"])}
                                for d in outputs],
            "artifacts": list(meta["outputFileNames"]),
            "operation_id": op,
            "swagger": f"{_HOST}{self._api}/swagger.json",
            "public-functions": {
                op: f"{op}({meta['_fn']['args']})",
                "capabilities": "capabilities()",
                "swagger": "swagger(json=True)",
                "get_batch": "get_batch(execution_id)",
                # The SDK's key and text; localbatch has the method under that name too.
                "list_batch_execution": "list_batch_execution()",
                "batch": "batch(records, parallel_count=10)",
            },
        }

    def swagger(self, json: bool = True) -> str:
        """The service's Swagger 2.0 document, generated locally (JSON text).

        ``json`` is accepted because ``capabilities()`` advertises ``swagger(json=True)``.
        """
        return swagger_document(self._record, self._api)

    # batch ------------------------------------------------------------------------

    def batch(self, records: Any, parallel_count: int = 10, **options: Any) -> Batch:
        """A ``Batch`` of records (DataFrame, dict of lists, list of dicts, CSV/TSV path).

        Nothing runs until ``start()``. Options beyond the SDK: ``max_attempts`` (3),
        ``row_timeout`` (None), ``init_timeout`` (300 s), ``error_threshold`` (None),
        ``engine`` ('local', 'inline' or a dask Client), ``start_method``,
        ``console_limit`` and ``artifact_limit`` (bytes per row).
        """
        from ._batch import Batch

        if "parallelCount" in options:
            parallel_count = options.pop("parallelCount")
        return Batch(self, records, parallel_count, **options)

    def get_batch(self, execution_id: str) -> Batch:
        """The ``Batch`` of an execution of this service version, by id."""
        from ._batch import Batch

        batch = Batch(self, execution_id=execution_id)
        header = self._client._executions.read_header(execution_id)
        if (header["service"], header["version"]) != (self.name, self.version):
            from ._errors import ExecutionNotFoundError

            raise ExecutionNotFoundError(
                f"execution {execution_id} belongs to {header['service']} "
                f"{header['version']}, not {self.name} {self.version}")
        return batch

    def list_batch_executions(self) -> list[str]:
        """Execution ids of this service version, oldest first."""
        return [h["execution_id"] for h in self._client.list_executions(self.name, self.version)]

    get_batch_executions = list_batch_executions
    list_batch_execution = list_batch_executions


def _schema_of(defs: list[dict[str, str]]) -> dict[str, Any]:
    types = {"numeric": ("number", None), "integer": ("integer", None),
             "logical": ("boolean", None), "character": ("string", None),
             "vector": ("array", {"type": "number"}), "matrix": ("array",
                                                            {"type": "array", "items": {}}),
             "data.frame": ("object", None)}
    props = {}
    for d in defs:
        kind, items = types[d["type"]]
        prop: dict[str, Any] = {"type": kind, "description": d["type"]}
        if items is not None:
            prop["items"] = items
        props[d["name"]] = prop
    return {"type": "object", "properties": props}


def swagger_document(record: ServiceRecord, api: str) -> str:
    """The Swagger 2.0 document of a service, as JSON text (consume and batch paths)."""
    meta = record.meta()
    op = record.operation_id
    batch = f"{api}/batch"
    ref = {"$ref": "#/definitions/Error"}
    doc = {
        "swagger": "2.0",
        "info": {"description": meta["description"], "title": meta["name"],
                 "version": meta["version"]},
        "host": "localhost:12800", "schemes": ["http"], "basePath": "/",
        "consumes": ["application/json"], "produces": ["application/json"],
        "paths": {
            api: {"post": {"operationId": op, "tags": [meta["name"]],
                           "parameters": [{"name": "WebServiceParameters", "in": "body",
                                           "required": True,
                                           "schema": {"$ref": "#/definitions/InputParameters"}}],
                           "responses": {"200": {"description": "OK",
                                                 "schema": {"$ref":
                                                            "#/definitions/WebServiceResult"}},
                                         "400": {"description": "Bad request", "schema": ref}}}},
            batch: {
                "post": {"operationId": "StartBatchExecution",
                         "parameters": [{"name": "parallelCount", "in": "query",
                                         "type": "integer"},
                                        {"name": "BatchWebServiceRequest", "in": "body",
                                         "schema": {"type": "array", "items": {
                                             "$ref": "#/definitions/InputParameters"}}}],
                         "responses": {"200": {"description": "OK", "schema": {
                             "$ref": "#/definitions/StartBatchExecutionResponse"}}}},
                "get": {"operationId": "GetBatchExecutions", "responses": {"200": {
                    "description": "OK", "schema": {"type": "array",
                                                    "items": {"type": "string"}}}}}},
            f"{batch}/{{executionId}}": {
                "get": {"operationId": "GetBatchExecutionStatus",
                        "parameters": [{"name": "executionId", "in": "path", "required": True,
                                        "type": "string"},
                                       {"name": "showPartialResults", "in": "query",
                                        "type": "boolean"}],
                        "responses": {"200": {"description": "OK", "schema": {
                            "$ref": "#/definitions/BatchWebServiceResult"}},
                            "404": {"description": "Execution not found", "schema": ref}}},
                "delete": {"operationId": "CancelAndDeleteBatchExecution",
                           "parameters": [{"name": "executionId", "in": "path",
                                           "required": True, "type": "string"}],
                           "responses": {"200": {"description": "OK"}}}},
            f"{batch}/{{executionId}}/{{index}}/files": {
                "get": {"operationId": "GetBatchExecutionFiles",
                        "responses": {"200": {"description": "OK", "schema": {
                            "type": "array", "items": {"type": "string"}}}}}},
            f"{batch}/{{executionId}}/{{index}}/files/{{fileName}}": {
                "get": {"operationId": "GetBatchExecutionFile",
                        "produces": ["application/octet-stream"],
                        "responses": {"200": {"description": "OK",
                                              "schema": {"type": "file"}}}}},
        },
        "definitions": {
            "InputParameters": _schema_of(meta["inputParameterDefinitions"]),
            "OutputParameters": _schema_of(meta["outputParameterDefinitions"]),
            "Error": {"type": "object", "properties": {"errorMessage": {"type": "string"}}},
            "WebServiceResult": {"type": "object", "properties": {
                "success": {"type": "boolean"}, "errorMessage": {"type": "string"},
                "consoleOutput": {"type": "string"},
                "changedFiles": {"type": "array", "items": {"type": "string"}},
                "outputFiles": {"type": "object"},
                "outputParameters": {"$ref": "#/definitions/OutputParameters"}}},
            "StartBatchExecutionResponse": {"type": "object", "properties": {
                "batchExecutionId": {"type": "string"}}},
            "BatchWebServiceResult": {"type": "object", "properties": {
                "state": {"type": "string", "enum": ["Pending", "InProgress", "Complete",
                                                     "Failed", "Canceled"]},
                "totalItemCount": {"type": "integer"},
                "completedItemCount": {"type": "integer"},
                "batchExecutionResults": {"type": "array", "items": {
                    "$ref": "#/definitions/WebServiceResult"}}}},
        },
    }
    return json.dumps(doc, indent=2)


# -- responses ------------------------------------------------------------------------


def _raw(value: Any) -> Any:
    """The JSON-like raw form of an output value, as the SDK's wire carried it."""
    if value is None:
        return None
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return {str(c): value[c].tolist() for c in value.columns}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class ServiceResponse:
    """One call's (or one batch row's) result, with the SDK's attributes."""

    def __init__(self, api: str, response: dict[str, Any], output_schema: list[dict[str, str]]
                 ) -> None:
        self._api = api
        self._error = response.get("errorMessage") or ""
        self._console = response.get("consoleOutput") or ""
        self._raw = response.get("outputParameters") or {}
        self._artifacts = dict(response.get("outputFiles") or {})
        self._schema = output_schema
        self._outputs = response.get("_outputs")
        self.traceback: str = response.get("traceback") or ""
        self.error_type: str | None = response.get("errorType")
        self.attempts: int = int(response.get("attempts") or 1)
        #: Earlier errors of a row re-run by ``retry_failed`` (oldest first).
        self.history: list[dict[str, Any]] = list(response.get("history") or [])

    @classmethod
    def from_payload(cls, api: str, payload: dict[str, Any], record: ServiceRecord
                     ) -> ServiceResponse:
        """A response from a worker's row payload (the first row of it)."""
        from ._format.chunk import per_row
        from ._format.columns import decode_one

        error = per_row(payload, "errors")[0]
        outputs = {}
        if payload.get("outputs") is not None and error is None:
            outputs = {n: EncodingType.cast_to_python(e, decode_one(payload["outputs"][n], 0))
                       for n, e in record.outputs}
        files = payload["artifacts"].get(payload["index"][0], {}) or {}
        return cls(api, {
            "errorMessage": "" if error is None else (f"{error[0]}: {error[1]}" if error[1]
                                                      else error[0]),
            "errorType": None if error is None else error[0],
            "traceback": None if error is None else error[2],
            "consoleOutput": per_row(payload, "console")[0] or "",
            "outputParameters": {k: _raw(v) for k, v in outputs.items()},
            "_outputs": outputs,
            "outputFiles": {name: (base64.b64encode(files[name]).decode("ascii")
                                   if name in files else None) for name in record.artifacts},
        }, [{"name": n, "type": e.value} for n, e in record.outputs])

    @property
    def api(self) -> str:
        """The service's endpoint, ``/api/{name}/{version}``."""
        return self._api

    @property
    def error(self) -> str:
        """``'Type: message'`` of what the code raised, ``''`` on success."""
        return self._error

    @property
    def console_output(self) -> str:
        """What the call printed to stdout and stderr."""
        return self._console

    @property
    def raw_outputs(self) -> dict[str, Any]:
        """The outputs in their JSON-like wire form, as the SDK's ``outputParameters``."""
        return self._raw

    @property
    def outputs(self) -> dict[str, Any]:
        """One entry per declared output, cast to its Python type (None if missing)."""
        if self._outputs is None:
            self._outputs = {d["name"]: EncodingType.cast_to_python(d["type"],
                                                                    self._raw.get(d["name"]))
                             for d in self._schema}
        return {d["name"]: self._outputs.get(d["name"]) for d in self._schema}

    def output(self, output_name: str) -> Any:
        """``outputs.get(output_name)``."""
        return self.outputs.get(output_name)

    @property
    def artifacts(self) -> dict[str, str | None]:
        """``{declared file name: base64 text, or None if the call did not write it}``."""
        return self._artifacts

    def artifact(self, artifact_name: str, decode: bool = True, encoding: str | None = None
                 ) -> Any:
        """A file artifact as bytes (``decode=False``: its base64 text; ``encoding``: str)."""
        value = self._artifacts.get(artifact_name)
        if value is None or not decode:
            return value
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"Artifact b64decode error: {exc}") from None
        return data.decode(encoding) if encoding else data

    def raise_for_error(self) -> ServiceResponse:
        """Beyond the SDK: raise the call's error as a ``ScoringError``, else return self."""
        if self._error:
            raise ScoringError(self._error, self.traceback)
        return self

    def __str__(self) -> str:
        return (f"<ServiceResponse> \n   api: {self._api} \n   error: {self._error}\n"
                f"   console_output: {self._console}\n   outputs: {self.outputs}\n"
                f"   raw_outputs: {self._raw}\n   artifacts: {self._artifacts}")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from ._views import response_html

        return response_html(self)
