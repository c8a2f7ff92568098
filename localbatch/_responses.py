"""``ServiceResponse``: one call's (or one batch row's) result, with the SDK's attributes.

Built from a worker's chunk result (``consume``) or from a row's record in the
store (``BatchResponse.execution``); it never reaches back to the client.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from ._errors import ScoringError
from ._format.chunk import per_row
from ._format.columns import decode_one
from ._schema import EncodingType, frame_wire
from ._views import response_html

if TYPE_CHECKING:
    from ._store.registry import ServiceRecord
    from ._store.results import RowRecord

__all__ = ["ServiceResponse"]


def _raw(value: Any) -> Any:
    """The JSON-like raw form of an output value, as the SDK's wire carried it."""
    if value is None:
        return None
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return frame_wire(value)
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
        """A response from a worker's chunk result (its first row): ``consume``."""
        error = per_row(payload, "errors")[0]
        outputs = {}
        if payload.get("outputs") is not None and error is None:
            outputs = {n: EncodingType.cast_to_python(e, decode_one(payload["outputs"][n], 0))
                       for n, e in record.outputs}
        files = payload["artifacts"].get(payload["index"][0], {}) or {}
        message = "" if error is None else (f"{error[0]}: {error[1]}" if error[1] else error[0])
        return cls._from_parts(api, record, {
            "errorMessage": message,
            "errorType": None if error is None else error[0],
            "traceback": None if error is None else error[2],
            "consoleOutput": per_row(payload, "console")[0] or "",
        }, outputs, files)

    @classmethod
    def from_row(cls, api: str, record: ServiceRecord, row: RowRecord, files: dict[str, bytes]
                 ) -> ServiceResponse:
        """A response from a batch row's record and its artifacts' bytes."""
        outputs = {} if row.error_type else {
            n: EncodingType.cast_to_python(e, row.outputs[n]) for n, e in record.outputs}
        return cls._from_parts(api, record, {
            "errorMessage": row.error, "errorType": row.error_type,
            "traceback": row.traceback, "consoleOutput": row.console,
            "attempts": row.attempts, "history": row.history,
        }, outputs, files)

    @classmethod
    def _from_parts(cls, api: str, record: ServiceRecord, response: dict[str, Any],
                    outputs: dict[str, Any], files: dict[str, bytes]) -> ServiceResponse:
        """The SDK's wire dict, built once for both kinds of result."""
        response.update({
            "outputParameters": {k: _raw(v) for k, v in outputs.items()},
            "_outputs": outputs,
            "outputFiles": {name: (base64.b64encode(files[name]).decode("ascii")
                                   if name in files else None) for name in record.artifacts},
        })
        return cls(api, response, [{"name": n, "type": e.value} for n, e in record.outputs])

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
        return response_html(self)
