"""Typed feature columns to the network's float matrix: coercion, imputation, scaling, one-hot.

    pre = Preprocessor.fit(kinds, stats)          # statistics gathered on the train split only
    x = pre.transform(frame)                      # raw columns by name -> float32 [n, pre.width]

Column kinds:
    numeric      a number; missing -> the train mean; then standardized with the train mean and std
    boolean      true/false, 1/0, yes/no; missing -> the train share of true; kept as 0..1
    categorical  any value, compared as text; one column per train category (the most frequent
                 `max_categories`); a missing value or one never seen in training -> all zeros
    image        image bytes, or base64 text (`raylane.images`); decoded, resized to the column's
                 size, scaled to [0, 1] and standardized per channel with the train mean and std;
                 height * width * channels values, in that order (HWC, flattened)

The same coercion decides what a bad value is when the data is read (`coerce`) and what a client
may send to the endpoint, so training and serving can never disagree on a row. The preprocessor is
plain JSON (`to_dict`/`from_dict`) and travels inside the logged model.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

Kind = Literal["numeric", "categorical", "boolean", "image"]
KINDS: tuple[str, ...] = ("numeric", "categorical", "boolean", "image")
PIXELS_PREFIX = "__pixels:"
"""Typed rows of an image column `c` (the data stage's) hold its raw bytes under `c` and the decoded
uint8 pixels, HWC, as bytes under PIXELS_PREFIX + c."""
_IMAGE_FIELDS = ("image_size", "channels", "channel_mean", "channel_std")
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


def coerce(values: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray]:
    """Returns (typed values, bad mask): float64 for numeric and boolean (NaN where missing), text
    (None where missing) for categorical. A present value that is not of the kind is bad."""
    present = values.notna().to_numpy()
    if kind == "numeric":
        if pd.api.types.is_bool_dtype(values.dtype):
            typed = values.astype("float64")
        else:
            typed = pd.to_numeric(values, errors="coerce").astype("float64")
        bad = present & ~np.isfinite(typed.to_numpy(dtype=np.float64, na_value=np.nan))
        return typed.where(~bad), bad
    if kind == "boolean":
        text = values.map(lambda v: None if _missing(v) else str(v).strip().lower())
        typed = text.map(lambda v: 1.0 if v in _TRUE else 0.0 if v in _FALSE else np.nan).astype("float64")
        bad = present & typed.isna().to_numpy()
        return typed, bad
    if kind == "categorical":
        typed = pd.Series([None if _missing(v) else _text(v) for v in values], index=values.index,
                          dtype=object)
        return typed, np.zeros(len(values), dtype=bool)
    if kind == "image":
        raise ValueError("an image column is decoded (Column.pixels), not coerced")
    raise ValueError(f"unknown column kind {kind!r}; one of {', '.join(KINDS)}")


def class_values(labels: pd.Series) -> np.ndarray:
    """`class_value` of every label, None where missing: int64 when every label is a whole number
    (no Python object per row), else objects. Each distinct value is converted once."""
    codes, uniques = pd.factorize(labels, use_na_sentinel=True)
    values = [class_value(v) for v in uniques]
    if not (codes < 0).any() and all(type(v) is int and -2**63 <= v < 2**63 for v in values):
        return np.asarray(values, dtype=np.int64)[codes] if values else np.zeros(0, dtype=np.int64)
    table = np.empty(len(values) + 1, dtype=object)
    table[:-1] = values
    table[-1] = None  # code -1: missing
    return table[codes]


def text_or_none(value: Any) -> str | None:
    return None if _missing(value) else _text(value)


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str | bool) and bool(pd.isna(value)))


def _text(value: Any) -> str:
    """A category's text: 3, 3.0, '3' and '3.0' are the same category, whatever the file format (a
    file with missing values stores whole numbers as floats). Leading zeros are kept: '007'."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    if _WHOLE_FLOAT.fullmatch(text):
        return text.split(".")[0]
    return text


_WHOLE_FLOAT = re.compile(r"-?[1-9]\d*\.0+|-?0\.0+")


def class_value(value: Any) -> Any:
    """A class label, the same whatever the file: whole numbers (1, 1.0, '1', '1.0') are ints, other
    numbers floats, anything else text. A CSV file's parser may type a label column differently
    from the next file's (ints, floats where a value is missing, text where one is a word)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not np.isfinite(number):
        return text
    return int(number) if number.is_integer() and "e" not in text.lower() else number


def describe_bad(value: Any, kind: str) -> str:
    return f"{value!r} is not {'a number' if kind == 'numeric' else 'true/false'}"


def kind_of(arrow_type: Any) -> str:
    """The default kind of a column from its Arrow type: numbers numeric, bools boolean, else categorical."""
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "numeric"
    return "categorical"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    fill: float = 0.0
    """numeric, boolean: the value a missing one takes (train mean, train share of true)."""
    mean: float = 0.0
    std: float = 1.0
    categories: list[str] = field(default_factory=list)
    """categorical: the train categories, one output column each, most frequent first."""
    image_size: list[int] = field(default_factory=list)
    """image: [height, width] every image is resized to."""
    channels: int = 0
    """image: 1 (gray) or 3 (RGB)."""
    channel_mean: list[float] = field(default_factory=list)
    """image: the train mean of each channel's values scaled to [0, 1]."""
    channel_std: list[float] = field(default_factory=list)
    """image: the train standard deviation of each channel's values scaled to [0, 1]."""

    @property
    def width(self) -> int:
        if self.kind == "image":
            return self.image_size[0] * self.image_size[1] * self.channels
        return len(self.categories) if self.kind == "categorical" else 1

    def pixels(self, values: pd.Series, max_pixels: int | None = None) -> np.ndarray:
        """image: decodes raw values (bytes or base64 text) to uint8 [n, height, width, channels];
        ValueError naming the column, the row (position in `values`) and the problem. `max_pixels`:
        the most an image may declare (default `raylane.images.MAX_PIXELS`)."""
        from raylane.images import MAX_PIXELS, decode_image  # Pillow: a requirement of image models only

        size, limit = (self.image_size[0], self.image_size[1]), max_pixels or MAX_PIXELS
        out = np.empty((len(values), *size, self.channels), dtype=np.uint8)
        for row, value in enumerate(values):
            try:
                if _missing(value):
                    raise ValueError("the image is missing")
                out[row] = decode_image(value, size, self.channels, limit)
            except ValueError as err:  # ImageTooLarge stays itself: the endpoint answers 413
                raise type(err)(f"column {self.name!r}, row {row}: {err}") from err
        return out

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """image: uint8 pixels [n, ..., channels] -> float32 [n, height * width * channels]."""
        std = np.asarray(self.channel_std, dtype=np.float32)
        scale, shift = 1.0 / (255.0 * std), np.asarray(self.channel_mean, dtype=np.float32) / std
        values = pixels.reshape(len(pixels), -1, self.channels).astype(np.float32) * scale - shift
        return values.reshape(len(pixels), -1)


@dataclass(frozen=True)
class Preprocessor:
    columns: list[Column]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def kinds(self) -> dict[str, str]:
        return {c.name: c.kind for c in self.columns}

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def numeric_only(self) -> bool:
        return all(c.kind == "numeric" for c in self.columns)

    @property
    def is_image(self) -> bool:
        """Whether the model takes one image (its only column is of kind image)."""
        return len(self.columns) == 1 and self.columns[0].kind == "image"

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(height, width, channels) of the image the model takes; None unless `is_image`."""
        if not self.is_image:
            return None
        column = self.columns[0]
        return column.image_size[0], column.image_size[1], column.channels

    def output_names(self) -> list[str]:
        """A name per encoded value; an image column's are not listed one by one: its name once."""
        names = []
        for c in self.columns:
            names += [f"{c.name}={v}" for v in c.categories] if c.kind == "categorical" else [c.name]
        return names

    def transform(self, frame: pd.DataFrame, max_pixels: int | None = None) -> np.ndarray:
        """Returns the float32 network input for raw columns by name; ValueError naming the first
        column with a value of the wrong kind (the row is its position in `frame`). `max_pixels`:
        the most an image may declare (`Column.pixels`)."""
        parts = []
        for c in self.columns:
            if c.kind == "image":
                parts.append(c.normalize(c.pixels(frame[c.name], max_pixels)))
                continue
            typed, bad = coerce(frame[c.name], c.kind)
            if bad.any():
                row = int(bad.argmax())
                problem = describe_bad(frame[c.name].iloc[row], c.kind)
                raise ValueError(f"column {c.name!r}, row {row}: {problem}")
            parts.append(self._encode(c, typed))
        if not parts:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def transform_typed(self, frame: pd.DataFrame) -> np.ndarray:
        """`transform` for rows already coerced (`coerce`: float64 with NaN for numeric and
        boolean columns, text or None for categorical; decoded pixels under PIXELS_PREFIX for an
        image), as the data stage holds them: the numbers are imputed and scaled as one matrix."""
        if not self.columns:
            return np.zeros((len(frame), 0), dtype=np.float32)
        numbers = [c for c in self.columns if c.kind in ("numeric", "boolean")]
        out = np.empty((len(frame), self.width), dtype=np.float32)
        if numbers:
            x = frame[[c.name for c in numbers]].to_numpy(dtype=np.float64, na_value=np.nan)
            fill = np.array([c.fill for c in numbers])
            scale = np.array([c.std if c.kind == "numeric" else 1.0 for c in numbers])
            shift = np.array([c.mean if c.kind == "numeric" else 0.0 for c in numbers])
            x = (np.where(np.isnan(x), fill, x) - shift) / scale
        at, k = 0, 0
        for c in self.columns:
            if c.kind == "categorical":
                out[:, at:at + c.width] = self._encode(c, frame[c.name])
            elif c.kind == "image":
                out[:, at:at + c.width] = c.normalize(_pixel_rows(frame[PIXELS_PREFIX + c.name], c.width))
            else:
                out[:, at] = x[:, k]
                k += 1
            at += c.width
        return out

    def transform_numeric(self, rows: np.ndarray) -> np.ndarray:
        """The fast path of an all-numeric preprocessor: a float matrix in column order (NaN missing)."""
        rows = np.asarray(rows, dtype=np.float64)
        fill = np.array([c.fill for c in self.columns])
        mean = np.array([c.mean for c in self.columns])
        std = np.array([c.std for c in self.columns])
        return ((np.where(np.isnan(rows), fill, rows) - mean) / std).astype(np.float32)

    @staticmethod
    def _encode(column: Column, typed: pd.Series) -> np.ndarray:
        if column.kind == "categorical":
            index = {v: i for i, v in enumerate(column.categories)}
            codes = typed.map(lambda v: index.get(v, -1)).to_numpy(dtype=np.int64)
            out = np.zeros((len(typed), len(column.categories)), dtype=np.float32)
            hit = codes >= 0
            out[np.flatnonzero(hit), codes[hit]] = 1.0
            return out
        values = typed.to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.where(np.isnan(values), column.fill, values)
        if column.kind == "numeric":
            values = (values - column.mean) / column.std
        return values[:, None]

    @classmethod
    def fit(cls, kinds: dict[str, str], stats: dict[str, dict[str, Any]], max_categories: int,
            image_shape: tuple[int, int, int] | None = None) -> Preprocessor:
        """Builds the preprocessor from train statistics per column: numeric and boolean
        {n, sum, sumsq}, categorical {counts: {value: n}}, image {n, sum, sumsq} per channel of
        the values scaled to [0, 1]; an image column takes `image_shape` (height, width, channels)."""
        columns = []
        for name, kind in kinds.items():
            s = stats.get(name, {})
            if kind == "image":
                columns.append(_fit_image(name, s, image_shape))
                continue
            if kind == "categorical":
                counts = s.get("counts", {})
                top = sorted(counts, key=lambda v: (-counts[v], v))[:max_categories]
                columns.append(Column(name, kind, categories=top))
                continue
            n = max(int(s.get("n", 0)), 0)
            mean = float(s.get("sum", 0.0)) / n if n else 0.0
            if kind == "boolean":
                columns.append(Column(name, kind, fill=mean))
                continue
            var = float(s.get("sumsq", 0.0)) / n - mean * mean if n else 0.0
            std = float(np.sqrt(max(var, 0.0)))
            columns.append(Column(name, kind, fill=mean, mean=mean, std=std if std > 1e-8 else 1.0))
        return cls(columns)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; a column that is not an image has the fields it had before image columns."""
        return {"columns": [{k: v for k, v in asdict(c).items()
                             if c.kind == "image" or k not in _IMAGE_FIELDS} for c in self.columns]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls([Column(**c) for c in data["columns"]])


def _fit_image(name: str, stats: dict[str, Any], shape: tuple[int, int, int] | None) -> Column:
    if shape is None:
        raise ValueError(f"column {name!r} is an image: Preprocessor.fit needs its image_shape")
    height, width, channels = shape
    n = max(int(stats.get("n", 0)), 0)
    mean = np.asarray(stats.get("sum", [0.0] * channels), dtype=np.float64) / max(n, 1)
    var = np.asarray(stats.get("sumsq", [0.0] * channels), dtype=np.float64) / max(n, 1) - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel: centred only
    return Column(name, "image", image_size=[height, width], channels=channels,
                  channel_mean=[float(v) for v in mean], channel_std=[float(v) for v in std])


def _pixel_rows(values: pd.Series, width: int) -> np.ndarray:
    """Decoded pixels held as bytes, one row each, as uint8 [n, width]."""
    if values.isna().any():
        raise ValueError(f"column {values.name!r}: an image that was not decoded reached encoding")
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), width)


def column_stats(frame: pd.DataFrame, kinds: dict[str, str],
                 image_shape: tuple[int, int, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per-column statistics of typed rows (see `Preprocessor.fit`); summed across blocks by
    `merge_stats`. An image column's come from its decoded pixels (`image_shape`: its size)."""
    stats: dict[str, dict[str, Any]] = {}
    for name, kind in kinds.items():
        if kind == "image":
            if image_shape is None:
                raise ValueError(f"column {name!r} is an image: column_stats needs its image_shape")
            height, width, channels = image_shape
            pixels = frame[PIXELS_PREFIX + name].dropna()
            values = _pixel_rows(pixels, height * width * channels).reshape(-1, channels) / 255.0
            stats[name] = {"n": int(len(values)), "sum": values.sum(axis=0).tolist(),
                           "sumsq": (values * values).sum(axis=0).tolist()}
            continue
        column = frame[name]
        if kind == "categorical":
            counts = pd.Series(column.to_numpy(dtype=object)).value_counts(dropna=True)
            stats[name] = {"counts": {str(k): int(v) for k, v in counts.items()}}
        else:
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            values = values[~np.isnan(values)]
            stats[name] = {"n": int(values.size), "sum": float(values.sum()),
                           "sumsq": float((values * values).sum())}
    return stats


def merge_stats(parts: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, s in part.items():
            into = merged.setdefault(name, {})
            if "counts" in s:
                counts = into.setdefault("counts", {})
                for value, n in s["counts"].items():
                    counts[value] = counts.get(value, 0) + n
            else:
                for key in ("n", "sum", "sumsq"):
                    if key not in into:
                        into[key] = s[key]
                    elif isinstance(s[key], list):  # an image column: one sum per channel
                        into[key] = [a + b for a, b in zip(into[key], s[key], strict=True)]
                    else:
                        into[key] += s[key]
    return merged
