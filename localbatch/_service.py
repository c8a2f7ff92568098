"""``Service``: the dynamic consume object, its capabilities and its Swagger document."""

from __future__ import annotations

import json
import re
from pprint import pformat
from typing import TYPE_CHECKING, Any

from ._batch import Batch
from ._errors import ExecutionNotFoundError, ServiceLoadError
from ._format.chunk import per_row
from ._responses import ServiceResponse
from ._schema import EncodingType, cast_value

if TYPE_CHECKING:
    from ._engines.executions import Executions
    from ._store.registry import ServiceRecord

from ._store.states import ExecutionState

__all__ = ["Service", "class_name_for", "swagger_document"]

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

    def __new__(cls, record: ServiceRecord, executions: Executions) -> Service:
        if cls is not Service:
            return super().__new__(cls)
        op = record.operation_id
        attrs = {op: _make_consume(record), "__module__": __name__}
        sub = type(class_name_for(record.name), (Service,), attrs)
        return super().__new__(sub)

    def __init__(self, record: ServiceRecord, executions: Executions) -> None:
        self._record = record
        self._executions = executions
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
        payload = self._executions.consume(self._record, self._cast_inputs(values))
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
        """A ``Batch`` of records: a DataFrame, a dict of lists, a list of dicts, the path
        of a CSV/TSV or Parquet file, a folder of Parquet files, a ``pyarrow.Table`` or
        ``pyarrow.RecordBatchReader`` (files and Arrow input are streamed).

        Nothing runs until ``start()``. Options beyond the SDK: ``keep`` (input columns
        carried into ``to_frame()`` and every output beside the outputs, e.g.
        ``keep=["car"]``), ``max_attempts`` (3), ``row_timeout`` (None),
        ``init_timeout`` (300 s), ``error_threshold`` (None), ``engine`` ('local',
        'inline' or a dask Client), ``start_method``, ``console_limit`` and
        ``artifact_limit`` (bytes per row).
        """
        if "parallelCount" in options:
            parallel_count = options.pop("parallelCount")
        return Batch(self, records, parallel_count, **options)

    def get_batch(self, execution_id: str) -> Batch:
        """The ``Batch`` of an execution of this service version, by id."""
        batch = Batch(self, execution_id=execution_id)
        header = self._executions.store.read_header(execution_id)
        if (header["service"], header["version"]) != (self.name, self.version):
            raise ExecutionNotFoundError(
                f"execution {execution_id} belongs to {header['service']} "
                f"{header['version']}, not {self.name} {self.version}")
        return batch

    def list_batch_executions(self) -> list[str]:
        """Execution ids of this service version, oldest first."""
        return [h["execution_id"] for h in self._executions.listing(self.name, self.version)]

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
                "state": {"type": "string", "enum": [s.value for s in ExecutionState]},
                "totalItemCount": {"type": "integer"},
                "completedItemCount": {"type": "integer"},
                "batchExecutionResults": {"type": "array", "items": {
                    "$ref": "#/definitions/WebServiceResult"}}}},
        },
    }
    return json.dumps(doc, indent=2)

