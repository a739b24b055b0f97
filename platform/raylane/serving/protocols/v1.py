"""KServe V1: the predict request and response, and its rows as the model takes them.

    POST /v1/models/{name}:predict   {"instances": [[...], ...], "return_probabilities": false}

An image model's instances are images (`V1ImagePredictRequest`, read by protocols/images.py).
"""

# No `from __future__ import annotations`: FastAPI reads these models' field types at runtime.
import math
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from raylane.serving.errors import InvalidInput, UnprocessableEntity

Number = Annotated[float, Field(allow_inf_nan=False, strict=False)]
Value = int | Number | bool | str | None  # a raw value: categorical and boolean columns take text


class V1PredictRequest(BaseModel):
    """KServe V1 predict request: rows of raw feature values, in the model's column order."""

    model_config = ConfigDict(extra="forbid")

    instances: list[list[Value] | dict[str, Value]] = Field(min_length=1)
    """Rows: lists of values in feature order, or objects mapping feature name to value. Numbers for
    numeric columns; text for categorical ones; true/false for boolean ones; null for missing
    values where the model was trained with imputation (categorical and boolean models)."""
    return_probabilities: bool = False
    """Also return each row's class probabilities, in `probabilities`."""


class V1ImagePredictRequest(BaseModel):
    """KServe V1 predict request of an image model: one image per instance."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Any] = Field(min_length=1)
    """Images as base64 text: {"b64": "..."} (KServe's convention for binary data), by the column's
    name ({"image": {"b64": "..."}} or {"image": "..."}), or the text itself."""
    return_probabilities: bool = False
    """Also return each row's class probabilities, in `probabilities`."""


class V1PredictResponse(BaseModel):
    predictions: list[Any]
    """One class label per row (for a regression model, one predicted value)."""
    probabilities: list[list[float]] | None = None
    """With `return_probabilities`: one list per row, in the order of the model's classes (the V2
    metadata's `parameters.classes`); left out of the JSON otherwise."""


def rows_to_matrix(instances: list[Any], columns: list[str], field: str = "instances") -> np.ndarray:
    """Returns the rows as a float matrix in column order; InvalidInput naming the first bad row."""
    width, known = len(columns), set(columns)
    matrix = np.empty((len(instances), width), dtype=np.float64)
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            missing = [c for c in columns if c not in row]
            extra = [c for c in row if c not in known]
            if missing or extra:
                problem = f"missing {missing[:3]}" if missing else f"unknown {extra[:3]}"
                raise InvalidInput(f"{field}[{i}]: {len(row)} names, {problem}; expected the {width} "
                                   f"feature names {columns[0]}..{columns[-1]}")
            row = [row[c] for c in columns]
        if len(row) != width:
            raise InvalidInput(f"{field}[{i}] has {len(row)} values; the model expects {width} "
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
            raise UnprocessableEntity(f"{where}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnprocessableEntity(f"{where}: {value!r} is not a finite number")
    return float(value)


def rows_to_frame(instances: list[Any], columns: list[str], field: str = "instances") -> pd.DataFrame:
    """Returns the rows as raw columns by name (a typed model); InvalidInput naming the first bad row."""
    width, rows, known = len(columns), [], set(columns)
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            unknown = [c for c in row if c not in known]
            if unknown:
                raise InvalidInput(f"{field}[{i}]: {len(row)} names, unknown {unknown[:3]}; the "
                                   f"{width} features are {', '.join(columns)}")
            row = [row.get(c) for c in columns]  # an absent feature is a missing value
        if len(row) != width:
            raise InvalidInput(f"{field}[{i}] has {len(row)} values; the model expects {width} "
                               f"({', '.join(columns)})")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns, dtype=object)
