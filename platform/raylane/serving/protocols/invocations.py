"""MLflow's scoring protocol (`mlflow models serve`): the same four JSON formats and CSV, parsed
and checked against the model signature by MLflow's own code, with MLflow's error messages and
error codes, and the same `{"predictions": [...]}` answer.

    POST /invocations   {"dataframe_split" | "dataframe_records" | "instances" | "inputs": ...,
                         "params": {...}}  or text/csv

An image model's column holds base64 text, checked by its signature (a string column) as
`mlflow models serve` checks it; beyond MLflow, one image may be the body (image/png, image/jpeg).
"""

# No `from __future__ import annotations`: FastAPI reads these models' field types at runtime.
import csv
import json
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from raylane._compat.mlflow import enforce_schema, parse_json_input
from raylane.serving.errors import InvalidInput, UnsupportedMediaType, json_path
from raylane.serving.model import LoadedModel
from raylane.serving.protocols.images import image_frame, raw_image, takes_images
from raylane.serving.protocols.rows import (
    OutOfRange,
    has_long_integer,
    loads_marking_out_of_range,
    not_finite,
    out_of_range,
    walk,
)


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


def parse_invocations(body: bytes, content_type: str | None, model: LoadedModel
                      ) -> tuple[np.ndarray | pd.DataFrame, dict[str, Any]]:
    """Parses an /invocations body the way `mlflow models serve` does; returns (rows, params).
    Rows may be empty (MLflow answers an empty frame with empty predictions)."""
    from io import StringIO

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server as scoring

    image = raw_image(content_type, body) if model.is_image else None
    if image is not None:
        return image_frame(model, [image]), {"return_probabilities": False}
    mime, _, parameters = (content_type or "").partition(";")
    mime = mime.strip().lower()
    charset = dict(p.strip().partition("=")[::2] for p in parameters.split(";") if p.strip()).get(
        "charset", "utf-8").lower()
    if charset != "utf-8":
        raise UnsupportedMediaType("The scoring server only supports UTF-8")
    if mime not in (scoring.CONTENT_TYPE_JSON, scoring.CONTENT_TYPE_CSV):
        images = ", 'image/png', 'image/jpeg'" if model.is_image else ""
        raise UnsupportedMediaType("This predictor only supports the following content types: Types: "
                                   f"['{scoring.CONTENT_TYPE_CSV}', '{scoring.CONTENT_TYPE_JSON}'{images}]. "
                                   f"Got '{content_type or ''}'.")
    if mime == scoring.CONTENT_TYPE_CSV:
        _refuse_csv_width(body, model.feature_columns)
    else:
        _refuse_not_finite(body, model.feature_columns)
        request = _json_of_width(body, model.feature_columns)
        fast = _numeric_invocation(request, model.feature_columns) if model.numeric_only else None
        if fast is not None:
            return fast
    schema = model.pyfunc.metadata.get_input_schema() if model.pyfunc is not None else None
    if not model.numeric_only and not model.is_image:
        schema = None  # its preprocessor types the columns (and imputes), as for V1 and V2
    try:
        if mime == scoring.CONTENT_TYPE_JSON:
            data, params = parse_json_input(body, model.pyfunc.metadata, schema)
            params = params or {}
        else:
            data, params = scoring.parse_csv_input(StringIO(body.decode("utf-8")), schema), {}
        if not isinstance(params, dict):
            raise InvalidInput("params must be an object, e.g. {\"return_probabilities\": true}")
        matrix = _invocation_matrix(data, model, schema)
    except MlflowException as err:
        # Parsing and the signature check: always the client's input. They raise only codes MLflow
        # answers with 400 (INVALID_PARAMETER_VALUE, BAD_REQUEST), or INTERNAL_ERROR for input they
        # cannot take, which is the client's too.
        hint = f" ({takes_images(model, 'invocations')})" if model.is_image else ""
        raise InvalidInput(err.message + hint, error_code=err.error_code) from None
    except UnicodeDecodeError as err:
        raise InvalidInput(f"Ensure that input is a valid UTF-8 encoded string. Error: '{err!r}'") from None
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as err:
        # What MLflow answers for input its model cannot take (it wraps any non-MLflow error).
        raise InvalidInput("Encountered an unexpected error while evaluating the model. Verify "
                           "that the serialized input Dataframe is compatible with the model: "
                           f"{err}") from None
    return matrix, _known_params(params)


def _known_params(params: dict[str, Any]) -> dict[str, Any]:
    """Keeps `return_probabilities`; MLflow ignores parameters its model does not declare, so do we."""
    value = params.get("return_probabilities", False)
    if not isinstance(value, bool):
        raise InvalidInput(f"params.return_probabilities must be true or false, got {value!r}")
    return {"return_probabilities": value}


class _Literal(str):
    """A NaN, Infinity or -Infinity literal as `json.loads` met it (not a string that says so)."""


def _refuse_not_finite(body: bytes, columns: list[str]) -> None:
    """InvalidInput naming the row and column of the first NaN or Infinity literal in a JSON body,
    or of an integer beyond a 64-bit float. MLflow's parser would take NaN for a missing value; as
    on V1 and V2, only null is one."""
    if b"NaN" not in body and b"Infinity" not in body and not has_long_integer(body):
        return
    try:
        request = loads_marking_out_of_range(body, parse_constant=_Literal)
    except (ValueError, RecursionError):
        return  # not JSON: MLflow's parser explains
    if not isinstance(request, dict):
        return
    for key, part in request.items():
        if key == "params":
            continue
        for path, value in walk(part, (key,)):
            if type(value) is _Literal:
                raise not_finite(_where(path, request, columns), float(value))
            if type(value) is OutOfRange:
                raise out_of_range(_where(path, request, columns), value)


def _where(path: tuple[Any, ...], request: dict[str, Any], columns: list[str]) -> str:
    """The JSON path of a value, with its column's name where the path has only its position:
    'dataframe_split.data[0][3] (pixel_0_3)', 'instances[0][3] (pixel_0_3)'."""
    where, position = json_path(path), path[-1]
    if len(path) < 3 or not isinstance(path[-2], int) or not isinstance(position, int):
        return where  # by name ('dataframe_records[0].age', 'inputs.age[0]'), or a row of one value
    split = request.get("dataframe_split")
    names = split.get("columns") if path[0] == "dataframe_split" and isinstance(split, dict) else columns
    if isinstance(names, list) and 0 <= position < len(names):
        return f"{where} ({names[position]})"
    return where


def _refuse_csv_width(body: bytes, columns: list[str]) -> None:
    """InvalidInput when the CSV header does not have the model's number of columns, read from the
    first line alone: pandas takes seconds over a header of 100k columns (and minutes when their
    names repeat), on a body well under the size limit."""
    first = body.partition(b"\n")[0].decode("utf-8", errors="replace").rstrip("\r")
    try:
        got = len(next(csv.reader([first]), []))
    except csv.Error as err:  # a field over csv's size limit, a bare carriage return
        raise InvalidInput(f"the CSV header cannot be read: {err}") from None
    if got > len(columns):  # fewer: MLflow's schema check names the missing ones
        raise InvalidInput(f"the CSV header has {got} columns; the model takes {len(columns)} "
                           f"({_names(columns)})")


def _json_of_width(body: bytes, columns: list[str]) -> Any:
    """The JSON request (None when it is not JSON: MLflow's parser explains), refused with
    InvalidInput where a row or the column list has not the model's number of columns: MLflow's
    pandas parsing of a body of 100k columns takes seconds."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(request, dict):
        return request
    width = len(columns)
    split, records = request.get("dataframe_split"), request.get("dataframe_records")
    rows: list[tuple[str, Any]] = []
    if isinstance(split, dict):
        rows = [("dataframe_split.columns", split.get("columns"))]
        data = split.get("data") if isinstance(split.get("data"), list) else []
        rows += [(f"dataframe_split.data[{i}]", r) for i, r in enumerate(data)]
    if isinstance(records, list):
        rows += [(f"dataframe_records[{i}]", r) for i, r in enumerate(records)]
    for key in ("instances", "inputs"):
        value = request.get(key)
        rows += [(f"{key}[{i}]", r) for i, r in enumerate(value)] if isinstance(value, list) else \
            [(key, value)] if isinstance(value, dict) else []
    for where, row in rows:
        # Positional rows must match; rows by name may leave out columns (missing values, as MLflow
        # reads them), but no body names more columns than the model has.
        if isinstance(row, list) and len(row) != width or isinstance(row, dict) and len(row) > width:
            raise InvalidInput(f"{where}: {len(row)} columns; the model takes {width} ({_names(columns)})")
    return request


def _names(columns: list[str]) -> str:
    return ", ".join(columns) if len(columns) <= 8 else f"{columns[0]}..{columns[-1]}"


def _numeric_invocation(request: Any, columns: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The common case without pandas: finite numbers for exactly the model's columns, in one of the
    four formats. Returns None for anything else, which then takes MLflow's own parsing and schema
    checks (and gets MLflow's error messages). For these inputs both paths give the same matrix:
    every column of the signature is a double, and MLflow converts numbers to it the same way."""
    try:
        return _numeric_rows(request, columns)
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
    elif key in ("dataframe_records", "instances", "inputs") and isinstance(payload, list):
        if key != "inputs" and all(isinstance(r, dict) and set(r) == set(columns) for r in payload):
            rows = [[r[c] for c in columns] for r in payload]
        elif key != "dataframe_records" and all(isinstance(r, list) and len(r) == width for r in payload):
            rows = payload  # positional rows, as MLflow reads a tensor of the signature's width
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
    columns = model.feature_columns
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == len(columns):
        data = pd.DataFrame(data, columns=columns)  # positional rows, like the V1 `instances`
    elif isinstance(data, dict) and all(isinstance(v, list | np.ndarray) for v in data.values()):
        data = pd.DataFrame(data)
    if schema is not None:
        data = enforce_schema(data, schema)
    if not model.numeric_only:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InvalidInput(f"missing columns {missing[:3]}; the features are {', '.join(columns)}")
        return frame[columns]
    try:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        matrix = frame[columns].to_numpy(dtype=np.float64)
    except (KeyError, ValueError, TypeError) as err:
        raise InvalidInput(f"expected the {len(columns)} feature columns {columns[0]}..{columns[-1]} "
                           f"as numbers: {err}") from None
    if np.isinf(matrix).any():  # NaN is a missing value (null in JSON, empty in CSV): imputed
        row, column = np.argwhere(np.isinf(matrix))[0]
        raise not_finite(f"row {row}, column {columns[column]}", matrix[row, column])
    return matrix


def invocations_response(model: LoadedModel, probabilities: np.ndarray, params: dict[str, Any]) -> bytes:
    """Returns what `mlflow models serve` returns for this model: {"predictions": [...]}."""
    values = probabilities if params.get("return_probabilities") and not model.regression else \
        model.labels(probabilities)
    return json.dumps({"predictions": np.asarray(values).tolist()}, separators=(",", ":")).encode()
