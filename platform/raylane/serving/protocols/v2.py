"""Open Inference Protocol (KServe V2, Triton): tensors in JSON or as binary data after a JSON
header, parsed into the model's rows, and the response tensors built the same two ways.

    POST /v2/models/{name}[/versions/{v}]/infer   {"inputs": [{name, shape, datatype, data}]}
"""

# No `from __future__ import annotations`: FastAPI reads these models' field types at runtime.
import json
import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from raylane.serving.errors import InvalidInput, describe_validation
from raylane.serving.model import LoadedModel
from raylane.serving.protocols.images import v2_images
from raylane.serving.protocols.rows import not_finite, refuse_out_of_range

BINARY_HEADER = "Inference-Header-Content-Length"
V2_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
            "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
            "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
OUTPUTS = ("predictions", "probabilities")


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
            raise InvalidInput(f"{BINARY_HEADER} must be an integer, got {json_length!r}") from None
        if not 0 <= length <= len(body):
            raise InvalidInput(f"{BINARY_HEADER} {length} does not fit a body of {len(body)} bytes")
        body, binary = body[:length], body[length:]
    refuse_out_of_range(body)  # 'inputs[0].data[5]', not the JSON parser's 'number out of range'
    try:
        return V2InferRequest.model_validate_json(body), binary
    except ValidationError as err:
        raise InvalidInput(describe_validation(err.errors())) from None


def v2_matrix(request: V2InferRequest, binary: bytes, model: LoadedModel) -> np.ndarray | pd.DataFrame:
    """Returns the request's rows in column order (a DataFrame by column name for a typed model,
    or of images for an image model); InvalidInput naming the bad input otherwise."""
    columns, width = model.feature_columns, len(model.feature_columns)
    for i, out in enumerate(request.outputs or []):
        if out.name not in outputs_of(model):
            raise InvalidInput(f"outputs[{i}]: unknown output {out.name!r}; this model has "
                               f"{list(outputs_of(model))}")
    if model.is_image:
        return v2_images(request, binary, model)
    if len(request.inputs) > width:  # refused before any data is converted
        raise InvalidInput(f"inputs: {len(request.inputs)} inputs; the model takes {width} features: one "
                           "input per feature, or one input of all of them")
    if not model.numeric_only:
        return _v2_frame(request, binary, model)
    shape = request.inputs[0].shape
    if len(request.inputs) == 1 and not (shape == [width] or (len(shape) == 2 and shape[1] == width)):
        raise InvalidInput(f"inputs[0] ({request.inputs[0].name!r}): shape {shape}; the model takes one "
                           f"input of shape [n, {width}] ({columns[0]}..{columns[-1]}), or one input per "
                           "feature, named after it, of shape [n]")
    tensors, offset = [], 0
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name!r})"
        dtype = V2_NUMPY.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(f"{where}: datatype {tensor.datatype!r} is not supported; the model takes "
                               f"numbers: one of {', '.join(V2_NUMPY)}")
        if not tensor.shape or any(d < 0 for d in tensor.shape):
            raise InvalidInput(f"{where}: shape {tensor.shape} must be non-empty with sizes >= 0")
        count = math.prod(tensor.shape)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            itemsize = np.dtype(dtype).itemsize
            if not isinstance(size, int) or size != count * itemsize or offset + size > len(binary):
                raise InvalidInput(f"{where}: binary_data_size {size!r} does not match shape "
                                   f"{tensor.shape} of {tensor.datatype} ({count * itemsize} bytes) or "
                                   "the bytes after the JSON header")
            values = np.frombuffer(binary, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                   offset=offset).astype(np.float64)
            _refuse_not_finite(values, tensor.shape, where)
            offset += size
        else:
            values = _json_values(tensor, where, count)
        tensors.append((where, tensor, values))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    if len(tensors) == 1:
        where, tensor, values = tensors[0]
        shape = tensor.shape
        if len(shape) == 2 and shape[1] == width:
            matrix = values.reshape(shape[0], width)
        elif shape == [width]:
            matrix = values.reshape(1, width)
        else:
            raise InvalidInput(f"{where}: shape {shape}; the model takes one input of shape [n, {width}] "
                               f"({columns[0]}..{columns[-1]}), or one input per feature, named after "
                               "it, of shape [n]")
    else:
        matrix = _columns_matrix(tensors, columns)
    if matrix.shape[0] == 0:
        raise InvalidInput("inputs: no rows to predict (the batch dimension is 0)")
    return matrix


def _refuse_not_finite(values: np.ndarray, shape: list[int], where: str,
                       nulls: np.ndarray | None = None) -> None:
    """InvalidInput naming the row and column of a tensor's first NaN or Infinity (`values` flat,
    row-major); a null in JSON `data` (`nulls`) is a missing value, not one of them."""
    bad = ~np.isfinite(values) if nulls is None else ~np.isfinite(values) & ~nulls
    if not bad.any():
        return
    k = int(bad.argmax())
    if len(shape) == 2 and shape[1]:
        raise not_finite(f"{where}, row {k // shape[1]}, column {k % shape[1]}", values[k])
    raise not_finite(f"{where}, data[{k}]", values[k])  # [n] of one feature, or [features] of one row


def _json_values(tensor: V2Tensor, where: str, count: int) -> np.ndarray:
    if tensor.data is None:
        raise InvalidInput(f"{where}: no data (send 'data', or binary data with 'binary_data_size')")
    try:
        values = np.asarray(tensor.data)
    except ValueError:
        raise InvalidInput(f"{where}: data is ragged; send it flat (row-major) or as equal rows") from None
    nulls = None
    if values.dtype.kind == "O" and values.ndim >= 1:  # nulls: missing values, imputed by the model
        flat = values.reshape(-1)
        if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in flat):
            nulls = np.array([v is None for v in flat])
            try:
                values = np.array([np.nan if v is None else v for v in flat], dtype=np.float64)
            except OverflowError:  # an integer beyond any float
                raise InvalidInput(f"{where}: a value is out of range") from None
    if values.dtype.kind not in "iuf" and not (values.dtype.kind == "b" and tensor.datatype == "BOOL"):
        raise InvalidInput(f"{where}: data must be numbers (or null) for datatype {tensor.datatype}")
    if values.size != count:
        raise InvalidInput(f"{where}: {values.size} values do not fill shape {tensor.shape} "
                           f"({count} values)")
    if values.dtype.kind == "f":
        _refuse_not_finite(values.reshape(-1), tensor.shape, where, nulls)
    try:
        return values.reshape(-1).astype(np.float64)
    except OverflowError:
        raise InvalidInput(f"{where}: a value is out of range") from None


def _v2_frame(request: V2InferRequest, binary: bytes, model: LoadedModel) -> pd.DataFrame:
    """A typed model takes one input per feature, named after it, of shape [n] (or [n, 1]):
    BYTES for a categorical column, BOOL (or numbers) for a boolean one, numbers for a numeric one;
    a null in `data` is a missing value."""
    columns, kinds = model.feature_columns, model.kinds
    if binary:
        raise InvalidInput("inputs: this model has categorical or boolean features; send its inputs "
                           "as JSON `data`, one input per feature")
    by_name: dict[str, Any] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name!r})"
        if tensor.name not in kinds:
            raise InvalidInput(f"{where}: unknown input; this model takes one input per feature, named "
                               f"{', '.join(f'{c} ({kinds[c]})' for c in columns)}")
        if tensor.name in by_name:
            raise InvalidInput(f"{where}: the input is repeated")
        if tensor.datatype != "BYTES" and tensor.datatype not in V2_NUMPY:
            raise InvalidInput(f"{where}: datatype {tensor.datatype!r} is not supported; one of BYTES, "
                               f"{', '.join(V2_NUMPY)}")
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
            raise InvalidInput(f"{where}: shape {tensor.shape}; each feature input has shape [n] or [n, 1]")
        if tensor.data is None:
            raise InvalidInput(f"{where}: no data")
        values = _flat(tensor.data)
        if len(values) != tensor.shape[0]:
            raise InvalidInput(f"{where}: {len(values)} values do not fill shape {tensor.shape}")
        bad = next((r for r, v in enumerate(values) if isinstance(v, float) and not math.isfinite(v)), None)
        if bad is not None:  # only null is a missing value
            raise not_finite(f"{where}, data[{bad}]", values[bad])
        by_name[tensor.name] = values
    missing = [c for c in columns if c not in by_name]
    if missing:
        raise InvalidInput(f"inputs: missing inputs {missing[:3]}; this model takes one input per "
                           f"feature: {', '.join(f'{c} ({kinds[c]})' for c in columns)}")
    if len({len(v) for v in by_name.values()}) != 1:
        raise InvalidInput("inputs: every feature input needs the same number of rows")
    frame = pd.DataFrame({c: pd.Series(by_name[c], dtype=object) for c in columns})
    if frame.empty:
        raise InvalidInput("inputs: no rows to predict (the batch dimension is 0)")
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
        raise InvalidInput(f"inputs: {problem}; send one input of shape [n, {len(columns)}], or one "
                           f"input per feature named {columns[0]}..{columns[-1]}")
    rows = {values.size for _, _, values in tensors}
    shapes_ok = all(len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1) for _, t, _ in tensors)
    if len(rows) != 1 or not shapes_ok:
        raise InvalidInput("inputs: per-feature inputs must all have shape [n] (or [n, 1]) with the same n")
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
