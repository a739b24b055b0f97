"""Request parsing and response building for the three inference protocols, free of Ray and HTTP.

    KServe V1      POST /v1/models/{name}:predict          {"instances": [[...], ...]}
    Open Inference POST /v2/models/{name}[/versions/{v}]/infer   {"inputs": [{name, shape, datatype, data}]}
    MLflow scoring POST /invocations                        {"dataframe_split" | "dataframe_records" |
                                                             "instances" | "inputs": ...} or text/csv

Each parser returns the rows as a float matrix in the model's column order (an all-numeric model),
or as a DataFrame of the raw columns by name (a model with categorical or boolean columns, whose
preprocessor types, imputes and encodes them), or raises BadInput with the HTTP status and a
message that names the offending field.
"""

# No `from __future__ import annotations`: FastAPI reads these models' field types at runtime.
import json
import math
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raylane.serving.model import LoadedModel

Number = Annotated[float, Field(allow_inf_nan=False, strict=False)]
Value = int | Number | bool | str | None  # a raw value: categorical and boolean columns take text
BINARY_HEADER = "Inference-Header-Content-Length"
V2_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
            "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
            "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
OUTPUTS = ("predictions", "probabilities")


class BadInput(Exception):
    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


# --- KServe V1 ------------------------------------------------------------------------------------
class V1PredictRequest(BaseModel):
    """KServe V1 predict request: rows of raw feature values, in the model's column order."""

    model_config = ConfigDict(extra="forbid")

    instances: list[list[Value] | dict[str, Value]] = Field(min_length=1)
    """Rows: lists of values in feature order, or objects mapping feature name to value. Numbers for
    numeric columns; text for categorical ones; true/false for boolean ones; null for missing
    values where the model was trained with imputation (categorical and boolean models)."""
    return_probabilities: bool = False
    """Return class probabilities instead of class labels."""


class V1PredictResponse(BaseModel):
    predictions: list[Any]
    """One class label per row (or one list of class probabilities per row)."""


def rows_to_matrix(instances: list[Any], columns: list[str], field: str = "instances") -> np.ndarray:
    """Returns the rows as a float matrix in column order; BadInput naming the first bad row."""
    width = len(columns)
    matrix = np.empty((len(instances), width), dtype=np.float64)
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            missing = [c for c in columns if c not in row]
            extra = [c for c in row if c not in columns]
            if missing or extra:
                problem = f"missing {missing[:3]}" if missing else f"unknown {extra[:3]}"
                raise BadInput(400, f"{field}[{i}]: {problem}; expected the {width} feature names "
                                    f"{columns[0]}..{columns[-1]}")
            row = [row[c] for c in columns]
        if len(row) != width:
            raise BadInput(400, f"{field}[{i}] has {len(row)} values; the model expects {width} "
                                f"numbers ({columns[0]}..{columns[-1]})")
        for j, value in enumerate(row):
            matrix[i, j] = _number(value, f"{field}[{i}][{j}] ({columns[j]})")
    return matrix


def _number(value: Any, where: str) -> float:
    """A finite number (or numeric text, as a lax JSON schema takes it); null is a missing value,
    which the model imputes with the train mean."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadInput(422, f"{where}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(422, f"{where}: {value!r} is not a finite number")
    return float(value)


def rows_to_frame(instances: list[Any], columns: list[str], field: str = "instances") -> pd.DataFrame:
    """Returns the rows as raw columns by name (a typed model); BadInput naming the first bad row."""
    width, rows = len(columns), []
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            unknown = [c for c in row if c not in columns]
            if unknown:
                raise BadInput(400, f"{field}[{i}]: unknown {unknown[:3]}; the features are "
                                    f"{', '.join(columns)}")
            row = [row.get(c) for c in columns]  # an absent feature is a missing value
        if len(row) != width:
            raise BadInput(400, f"{field}[{i}] has {len(row)} values; the model expects {width} "
                                f"({', '.join(columns)})")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns, dtype=object)


def encode_rows(model: LoadedModel, frame: pd.DataFrame, field: str) -> np.ndarray:
    """The network input for raw columns by name; BadInput naming the column and row of a bad value."""
    try:
        return model.encode(frame)
    except (ValueError, TypeError) as err:
        raise BadInput(400, f"{field}: {err}") from None


def check_computable(probabilities: np.ndarray) -> None:
    """BadInput when the network overflowed on some rows: no answer beats a wrong one."""
    bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if bad.size:
        raise BadInput(400, f"rows {bad[:5].tolist()}: values out of the range the model can compute "
                            "with (the network overflowed); send raw feature values")


# --- Open Inference Protocol (V2) -------------------------------------------------------------------
class V2Tensor(BaseModel):
    """A tensor: `data` is row-major, flat or nested; absent when sent as binary (`binary_data_size`)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str
    """'predictions' (class labels) or 'probabilities' (rows x classes)."""
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """Open Inference Protocol request: one input of shape [n, features], or one per feature."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


def parse_v2(body: bytes, json_length: str | None) -> tuple[V2InferRequest, bytes]:
    """Splits a V2 body (JSON, or JSON plus binary tensors) and validates the JSON part."""
    binary = b""
    if json_length is not None:
        try:
            length = int(json_length)
        except ValueError:
            raise BadInput(400, f"{BINARY_HEADER} must be an integer, got {json_length!r}") from None
        if not 0 <= length <= len(body):
            raise BadInput(400, f"{BINARY_HEADER} {length} does not fit a body of {len(body)} bytes")
        body, binary = body[:length], body[length:]
    try:
        return V2InferRequest.model_validate_json(body), binary
    except ValidationError as err:
        raise BadInput(400, describe_validation(err)) from None


def v2_matrix(request: V2InferRequest, binary: bytes, model: LoadedModel) -> np.ndarray | pd.DataFrame:
    """Returns the request's rows in column order (a DataFrame by column name for a typed model);
    BadInput naming the bad input otherwise."""
    columns, width = model.feature_columns, len(model.feature_columns)
    for i, out in enumerate(request.outputs or []):
        if out.name not in outputs_of(model):
            raise BadInput(400, f"outputs[{i}]: unknown output {out.name!r}; this model has "
                                f"{list(outputs_of(model))}")
    if not model.numeric_only:
        return _v2_frame(request, binary, model)
    tensors, offset = [], 0
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name!r})"
        dtype = V2_NUMPY.get(tensor.datatype)
        if dtype is None:
            raise BadInput(400, f"{where}: datatype {tensor.datatype!r} is not supported; the model takes "
                                f"numbers: one of {', '.join(V2_NUMPY)}")
        if not tensor.shape or any(d < 0 for d in tensor.shape):
            raise BadInput(400, f"{where}: shape {tensor.shape} must be non-empty with sizes >= 0")
        count = math.prod(tensor.shape)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            itemsize = np.dtype(dtype).itemsize
            if not isinstance(size, int) or size != count * itemsize or offset + size > len(binary):
                raise BadInput(400, f"{where}: binary_data_size {size!r} does not match shape "
                                    f"{tensor.shape} of {tensor.datatype} ({count * itemsize} bytes) or "
                                    "the bytes after the JSON header")
            values = np.frombuffer(binary, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                   offset=offset).astype(np.float64)
            offset += size
        else:
            values = _json_values(tensor, where, count)
        tensors.append((where, tensor, values))
    if offset != len(binary):
        raise BadInput(400, f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    if len(tensors) == 1:
        where, tensor, values = tensors[0]
        shape = tensor.shape
        if len(shape) == 2 and shape[1] == width:
            matrix = values.reshape(shape[0], width)
        elif shape == [width]:
            matrix = values.reshape(1, width)
        else:
            raise BadInput(400, f"{where}: shape {shape}; the model takes one input of shape [n, {width}] "
                                f"({columns[0]}..{columns[-1]}), or one input per feature, named after "
                                "it, of shape [n]")
    else:
        matrix = _columns_matrix(tensors, columns)
    if matrix.shape[0] == 0:
        raise BadInput(400, "inputs: no rows to predict (the batch dimension is 0)")
    if np.isinf(matrix).any() or (binary and np.isnan(matrix).any()):
        raise BadInput(400, "inputs: values must be finite numbers (no NaN or Infinity)")
    return matrix


def _has_null(data: Any) -> bool:
    return any(_has_null(v) if isinstance(v, list) else v is None for v in data)


def _json_values(tensor: V2Tensor, where: str, count: int) -> np.ndarray:
    if tensor.data is None:
        raise BadInput(400, f"{where}: no data (send 'data', or binary data with 'binary_data_size')")
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise BadInput(400, f"{where}: data is ragged; send it flat (row-major) or as equal rows") from None
    if values.dtype.kind == "O" and values.ndim >= 1:  # nulls: missing values, imputed by the model
        flat = values.reshape(-1)
        if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in flat):
            values = np.array([np.nan if v is None else v for v in flat], dtype=np.float64)
    if values.dtype.kind not in "iuf" and not (values.dtype.kind == "b" and tensor.datatype == "BOOL"):
        raise BadInput(400, f"{where}: data must be numbers (or null) for datatype {tensor.datatype}")
    if values.dtype.kind == "f" and np.isinf(values).any() or (
            values.dtype.kind == "f" and np.isnan(values).any() and not _has_null(tensor.data)):
        raise BadInput(400, f"{where}: values must be finite numbers (null for a missing value)")
    if values.size != count:
        raise BadInput(400, f"{where}: {values.size} values do not fill shape {tensor.shape} "
                            f"({count} values)")
    try:
        return values.reshape(-1).astype(np.float64)
    except OverflowError:
        raise BadInput(400, f"{where}: a value is out of range") from None


def _v2_frame(request: V2InferRequest, binary: bytes, model: LoadedModel) -> pd.DataFrame:
    """A typed model takes one input per feature, named after it, of shape [n] (or [n, 1]):
    BYTES for a categorical column, BOOL (or numbers) for a boolean one, numbers for a numeric one;
    a null in `data` is a missing value."""
    columns, kinds = model.feature_columns, model.kinds
    if binary:
        raise BadInput(400, "inputs: this model has categorical or boolean features; send its inputs "
                            "as JSON `data`, one input per feature")
    by_name: dict[str, Any] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name!r})"
        if tensor.name not in kinds:
            raise BadInput(400, f"{where}: unknown input; this model takes one input per feature, named "
                                f"{', '.join(f'{c} ({kinds[c]})' for c in columns)}")
        if tensor.name in by_name:
            raise BadInput(400, f"{where}: the input is repeated")
        if tensor.datatype != "BYTES" and tensor.datatype not in V2_NUMPY:
            raise BadInput(400, f"{where}: datatype {tensor.datatype!r} is not supported; one of BYTES, "
                                f"{', '.join(V2_NUMPY)}")
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
            raise BadInput(400, f"{where}: shape {tensor.shape}; each feature input has shape [n] or [n, 1]")
        if tensor.data is None:
            raise BadInput(400, f"{where}: no data")
        values = _flat(tensor.data)
        if len(values) != tensor.shape[0]:
            raise BadInput(400, f"{where}: {len(values)} values do not fill shape {tensor.shape}")
        by_name[tensor.name] = values
    missing = [c for c in columns if c not in by_name]
    if missing:
        raise BadInput(400, f"inputs: missing inputs {missing[:3]}; this model takes one input per "
                            f"feature: {', '.join(f'{c} ({kinds[c]})' for c in columns)}")
    if len({len(v) for v in by_name.values()}) != 1:
        raise BadInput(400, "inputs: every feature input needs the same number of rows")
    frame = pd.DataFrame({c: pd.Series(by_name[c], dtype=object) for c in columns})
    if frame.empty:
        raise BadInput(400, "inputs: no rows to predict (the batch dimension is 0)")
    return frame


def _flat(data: list[Any]) -> list[Any]:
    return [v for item in data for v in (item if isinstance(item, list) else [item])]


def _columns_matrix(tensors: list[Any], columns: list[str]) -> np.ndarray:
    by_name = {tensor.name: (where, tensor, values) for where, tensor, values in tensors}
    missing = [c for c in columns if c not in by_name]
    unknown = [n for n in by_name if n not in columns]
    if missing or unknown or len(by_name) != len(tensors):
        problem = (f"unknown inputs {unknown[:3]}" if unknown else f"missing inputs {missing[:3]}"
                   if missing else "an input name is repeated")
        raise BadInput(400, f"inputs: {problem}; send one input of shape [n, {len(columns)}], or one "
                            f"input per feature named {columns[0]}..{columns[-1]}")
    rows = {values.size for _, _, values in tensors}
    shapes_ok = all(len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1) for _, t, _ in tensors)
    if len(rows) != 1 or not shapes_ok:
        raise BadInput(400, "inputs: per-feature inputs must all have shape [n] (or [n, 1]) with the same n")
    return np.column_stack([by_name[c][2] for c in columns])


def outputs_of(model: LoadedModel) -> tuple[str, ...]:
    """The V2 outputs a model has: a regression model has no probabilities."""
    return OUTPUTS[:1] if model.regression else OUTPUTS


def v2_response(request: V2InferRequest, model: LoadedModel, probabilities: np.ndarray
                ) -> tuple[bytes, dict[str, str]]:
    """Returns (body, headers): JSON, or JSON plus binary tensors where the client asked for them."""
    wanted = request.outputs or [V2RequestedOutput(name=name) for name in outputs_of(model)]
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    outputs, chunks = [], []
    for out in wanted:
        if out.name == "predictions":
            values = model.labels(probabilities)
            datatype, shape = model.label_datatype, [len(values)]
        else:
            values, datatype, shape = probabilities.astype(np.float32), "FP32", list(probabilities.shape)
        as_binary = (out.parameters or {}).get("binary_data", binary_default) and datatype != "BYTES"
        tensor: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": shape}
        if as_binary:
            raw = np.ascontiguousarray(values, dtype=np.dtype(V2_NUMPY[datatype]).newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = np.asarray(values).reshape(-1).tolist()
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"content-type": "application/octet-stream",
                                     BINARY_HEADER: str(len(head))}


# --- MLflow scoring protocol ----------------------------------------------------------------------
class InvocationsRequest(BaseModel):
    """MLflow scoring request (`mlflow models serve`): exactly one of the four keys, plus `params`."""

    dataframe_split: dict[str, Any] | None = None
    """{"columns": [...], "data": [[...], ...]} (pandas orient='split')."""
    dataframe_records: list[dict[str, Any]] | None = None
    """[{"column": value, ...}, ...] (pandas orient='records')."""
    instances: list[Any] | None = None
    """TF-serving rows: objects by column name, or lists in column order."""
    inputs: Any = None
    """TF-serving columnar or row input."""
    params: dict[str, Any] | None = None
    """{"return_probabilities": true} for class probabilities instead of labels."""


def mlflow_error(status: int, message: str, error_code: str = "BAD_REQUEST") -> BadInput:
    """An /invocations error in the body shape `mlflow models serve` uses, plus raylane's `error`."""
    return BadInput(status, message, {"error_code": error_code, "message": message})


def parse_invocations(body: bytes, content_type: str | None, model: LoadedModel
                      ) -> tuple[np.ndarray | pd.DataFrame, dict[str, Any]]:
    """Parses an /invocations body the way `mlflow models serve` does; returns (rows, params).
    Rows may be empty (MLflow answers an empty frame with empty predictions)."""
    from io import StringIO

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server as scoring

    mime, _, parameters = (content_type or "").partition(";")
    mime = mime.strip().lower()
    charset = dict(p.strip().partition("=")[::2] for p in parameters.split(";") if p.strip()).get(
        "charset", "utf-8").lower()
    if charset != "utf-8":
        raise mlflow_error(415, "The scoring server only supports UTF-8")
    if mime not in (scoring.CONTENT_TYPE_JSON, scoring.CONTENT_TYPE_CSV):
        raise mlflow_error(415, "This predictor only supports the following content types: Types: "
                                f"['{scoring.CONTENT_TYPE_CSV}', '{scoring.CONTENT_TYPE_JSON}']. "
                                f"Got '{content_type or ''}'.")
    if mime == scoring.CONTENT_TYPE_JSON and model.numeric_only:
        fast = _numeric_invocation(body, model.feature_columns)
        if fast is not None:
            return fast
    schema = model.pyfunc.metadata.get_input_schema() if model.pyfunc is not None else None
    if not model.numeric_only:
        schema = None  # its preprocessor types the columns (and imputes), as for V1 and V2
    try:
        if mime == scoring.CONTENT_TYPE_JSON:
            parsed = scoring._parse_json_data(body, model.pyfunc.metadata, schema)
            data, params = parsed.data, parsed.params or {}
        else:
            data, params = scoring.parse_csv_input(StringIO(body.decode("utf-8")), schema), {}
        if not isinstance(params, dict):
            raise mlflow_error(400, "params must be an object, e.g. {\"return_probabilities\": true}")
        matrix = _invocation_matrix(data, model, schema)
    except BadInput as err:
        raise mlflow_error(err.status, err.message) from None
    except MlflowException as err:  # parsing and the signature check: always the client's input
        status = err.get_http_status_code()
        raise mlflow_error(status if 400 <= status < 500 else 400, err.message, err.error_code) from None
    except UnicodeDecodeError as err:
        raise mlflow_error(400, f"Ensure that input is a valid UTF-8 encoded string. Error: '{err!r}'"
                           ) from None
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as err:
        # What MLflow answers for input its model cannot take (it wraps any non-MLflow error).
        raise mlflow_error(400, "Encountered an unexpected error while evaluating the model. Verify "
                                "that the serialized input Dataframe is compatible with the model: "
                                f"{err}") from None
    return matrix, _known_params(params)


def _known_params(params: dict[str, Any]) -> dict[str, Any]:
    """Keeps `return_probabilities`; MLflow ignores parameters its model does not declare, so do we."""
    value = params.get("return_probabilities", False)
    if not isinstance(value, bool):
        raise mlflow_error(400, f"params.return_probabilities must be true or false, got {value!r}")
    return {"return_probabilities": value}


def _numeric_invocation(body: bytes, columns: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The common case without pandas: finite numbers for exactly the model's columns, in one of the
    four formats. Returns None for anything else, which then takes MLflow's own parsing and schema
    checks (and gets MLflow's error messages). For these inputs both paths give the same matrix:
    every column of the signature is a double, and MLflow converts numbers to it the same way."""
    try:
        return _numeric_rows(json.loads(body), columns)
    except Exception:  # anything unusual is MLflow's parser's to judge and explain
        return None


def _numeric_rows(request: Any, columns: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    if not isinstance(request, dict):
        return None
    params = request.get("params", {})
    keys = set(request) - {"params"}
    if len(keys) != 1 or not isinstance(params, dict) or \
            not isinstance(params.get("return_probabilities", False), bool):
        return None
    key = keys.pop()
    payload, width = request[key], len(columns)
    rows: Any = None
    split_keys = {"columns", "data", "index"}
    if key == "dataframe_split" and isinstance(payload, dict) and set(payload) <= split_keys:
        names, data = payload.get("columns"), payload.get("data")
        if isinstance(names, list) and all(isinstance(n, str) for n in names) and \
                sorted(names) == sorted(columns) and isinstance(data, list):
            order = [names.index(c) for c in columns]
            rows = [[row[i] for i in order] if isinstance(row, list) and len(row) == width else None
                    for row in data]
    elif key in ("dataframe_records", "instances") and isinstance(payload, list):
        if all(isinstance(r, dict) and len(r) == width for r in payload):
            rows = [[r[c] for c in columns] for r in payload]
        elif key == "instances" and all(isinstance(r, list) and len(r) == width for r in payload):
            rows = payload
    if not rows or any(r is None for r in rows):
        return None
    if not all(type(v) in (int, float) for row in rows for v in row):
        return None  # strings, booleans, nulls: MLflow's schema check decides and explains
    matrix = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(matrix).all():
        return None
    return matrix, _known_params(params)


def _invocation_matrix(data: Any, model: LoadedModel, schema: Any) -> np.ndarray | pd.DataFrame:
    """Applies the model signature like pyfunc.predict does, then orders the columns (a typed
    model: returns its raw columns by name)."""
    from mlflow.models.utils import _enforce_schema

    columns = model.feature_columns
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == len(columns):
        data = pd.DataFrame(data, columns=columns)  # positional rows, like the V1 `instances`
    elif isinstance(data, dict) and all(isinstance(v, list | np.ndarray) for v in data.values()):
        data = pd.DataFrame(data)
    if schema is not None:
        data = _enforce_schema(data, schema)
    if not model.numeric_only:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise BadInput(400, f"missing columns {missing[:3]}; the features are {', '.join(columns)}")
        return frame[columns]
    try:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        matrix = frame[columns].to_numpy(dtype=np.float64)
    except (KeyError, ValueError, TypeError) as err:
        raise BadInput(400, f"expected the {len(columns)} feature columns {columns[0]}..{columns[-1]} "
                            f"as numbers: {err}") from None
    if np.isinf(matrix).any():  # NaN is a missing value (null in JSON, empty in CSV): imputed
        raise BadInput(400, "values must be finite numbers (no Infinity)")
    return matrix


def invocations_response(model: LoadedModel, probabilities: np.ndarray, params: dict[str, Any]) -> bytes:
    """Returns what `mlflow models serve` returns for this model: {"predictions": [...]}."""
    values = probabilities if params.get("return_probabilities") and not model.regression else \
        model.labels(probabilities)
    return json.dumps({"predictions": np.asarray(values).tolist()}, separators=(",", ":")).encode()


def describe_validation(err: ValidationError) -> str:
    """One line naming the first invalid field, e.g. 'inputs.0.shape: Input should be a valid list'."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"{where}: {first['msg']}"
