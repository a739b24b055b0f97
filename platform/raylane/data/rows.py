"""Rows, from a file to an encoded split: each file read into typed rows with bad rows marked
(`ReadFile`), each row given its split by a hash (`SplitRows`), one pass of split sizes, bad rows,
train statistics and a digest (`summarize`), and the encoding of a split (`FinishSplit`). The
classes are callables so that Ray ships them to its tasks.

An image is a column of kind image like any other: its typed rows hold the raw bytes under the
column's name (what the split hashes and the test split keeps) and the decoded pixels under
`PIXELS_PREFIX` + name (what the statistics and the encoding read), decoded once, in the task that
reads the file. An image folder source is read as rows of (image, class) by the same `ReadFile`."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylane.data.sources import filesystem, open_input
from raylane.images import decode_image
from raylane.preprocess import (
    PIXELS_PREFIX,
    Preprocessor,
    class_values,
    coerce,
    column_stats,
    describe_bad,
    merge_stats,
    text_or_none,
)

SPLITS = ("train", "val", "test")
SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
RAW_PREFIX = "raw:"  # the test split keeps each raw feature column under this prefix
_LABEL, _SPLIT, _HASH, _ERROR = "__label", "__split", "__hash", "__error"
ERROR = _ERROR  # a typed row's problem ('file line N: column ...: what is wrong'); None when good
ROW = "__row"  # the row's place in the data: file index << 40 | row in the file (streamed blocks' names)
BAD_SAMPLE_SIZE = 20

# Values of one chunk of a Parquet file, as typed float64 about 32 MiB.
_CHUNK_VALUES = 1 << 22
IMAGES_PER_CHUNK = 64  # rows of a table with images, or image files, a task holds at once


class ReadFile:
    """Reads one file into typed rows: each feature coerced to its kind, the label kept, and
    `__error` set on a bad row ('file line N: column ...: what is wrong'). Format 'images': a
    batch of image files, each a row of its class (`label` of the batch) ('file: what is wrong').
    `label` None: rows without a label, as batch scoring reads them (`raylane.predict`)."""

    def __init__(self, fs: pafs.FileSystem, fmt: str, kinds: dict[str, str], label: str | None,
                 id_column: str | None, task: str, image_shape: tuple[int, int, int] | None = None) -> None:
        self.fs, self.fmt, self.kinds, self.label, self.id_column = fs, fmt, kinds, label, id_column
        self.task, self.image_shape = task, image_shape

    def __call__(self, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        if self.fmt == "images":
            yield self._read_images(batch)
            return
        for index, path in zip(batch["index"], batch["path"], strict=True):
            yield from self._read(int(index), str(path))

    def _read_images(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Typed rows of image files: one per file, its class the label."""
        (name,) = self.kinds
        files = [str(p) for p in batch["path"]]
        raw, pixels, problems = self._images(pd.Series(files, dtype=object), directory="")
        errors = np.array(problems, dtype=object)
        labels = self._labels(pd.Series(list(batch["label"]), dtype=object), errors,
                              lambda i: f"{files[i]}: class folder")
        rows = batch["index"].to_numpy(dtype=np.int64) << 40
        return pd.DataFrame({name: raw, PIXELS_PREFIX + name: pixels, _LABEL: labels, _ERROR: errors,
                             ROW: rows})

    def _images(self, values: pd.Series, directory: str) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Returns (raw bytes, decoded pixels as bytes, problem) per value: image bytes, or a path
        (relative to `directory`) of an image file read here. A problem names the path it read."""
        size, channels = self.image_shape[:2], self.image_shape[2]
        raw = np.full(len(values), None, dtype=object)
        pixels = np.full(len(values), None, dtype=object)
        problems: list[str | None] = [None] * len(values)
        for i, value in enumerate(values):
            shown = ""
            try:
                if not isinstance(value, bytes | str) and pd.isna(value):
                    raise ValueError("the image is missing")
                if isinstance(value, str):
                    shown = f"{value}: "
                    value = self._file_bytes(value, directory)
                pixels[i] = decode_image(value, size, channels).tobytes()
                raw[i] = bytes(value)
            except ValueError as err:
                problems[i] = f"{shown}{err}"
        return raw, pixels, problems

    def _file_bytes(self, location: str, directory: str) -> bytes:
        """The bytes of an image file: a path in the source's filesystem (relative to the table's
        directory), or a URI of its own. ValueError when it cannot be read."""
        fs, path = self.fs, posixpath.join(directory, location)
        if "://" in location:  # the source's own filesystem keeps its options (endpoint_override=...)
            scheme, rest = location.split("://", 1)
            if scheme == self.fs.type_name or (scheme, self.fs.type_name) == ("file", "local"):
                path = rest.split("?", 1)[0]
            else:
                fs, path = filesystem(location)
        try:
            with fs.open_input_file(path) as f:
                return f.read()
        except FileNotFoundError:
            raise ValueError("file not found") from None
        except OSError as err:
            raise ValueError(f"cannot read it: {err}") from None

    def _read(self, index: int, path: str) -> Iterator[pd.DataFrame]:
        """The file's typed rows: a Parquet file in chunks of about `_CHUNK_VALUES` values, so that
        a task's memory does not grow with the file; a CSV file whole (its line numbers need it)."""
        local = path.split("://", 1)[-1]
        columns = [*([self.label] if self.label else []), *([self.id_column] if self.id_column else []),
                   *self.kinds]
        if self.fmt == "parquet":
            first = 1
            with self.fs.open_input_file(local) as f:
                rows = IMAGES_PER_CHUNK if self.image_shape else max(1024, _CHUNK_VALUES // len(columns))
                for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=columns):
                    frame = batch.to_pandas()
                    lines = np.arange(first, first + len(frame))
                    yield self._typed(frame, path, "row", lines, [], (index << 40) + first - 1)
                    first += len(frame)
        else:
            frame, lines, broken = self._read_csv(local, columns)
            yield self._typed(frame, path, "line", lines, broken, index << 40)

    def _typed(self, frame: pd.DataFrame, path: str, where: str, lines: np.ndarray,
               broken: list[tuple[int | None, str]], first_row: int) -> pd.DataFrame:
        errors = np.full(len(frame), None, dtype=object)
        out: dict[str, np.ndarray] = {}
        for name, kind in self.kinds.items():
            if kind == "image":
                directory = posixpath.dirname(path.split("://", 1)[-1].split("?", 1)[0])
                out[name], out[PIXELS_PREFIX + name], problems = self._images(frame[name], directory)
                for i, problem in enumerate(problems):
                    if problem is not None and errors[i] is None:
                        errors[i] = f"{path} {where} {lines[i]}: column {name!r}: {problem}"
                continue
            typed, bad = coerce(frame[name], kind)
            for i in np.flatnonzero(bad & pd.isna(errors)):
                problem = describe_bad(frame[name].iloc[i], kind)
                errors[i] = f"{path} {where} {lines[i]}: column {name!r}: {problem}"
            out[name] = typed.to_numpy(dtype=object if kind == "categorical" else np.float64,
                                       na_value=None if kind == "categorical" else np.nan)
        if self.label is not None:
            out[_LABEL] = self._labels(frame[self.label], errors,
                                       lambda i: f"{path} {where} {lines[i]}: column {self.label!r}")
        if self.id_column:  # as text, the same whatever the file's type for it: 12, 12.0, '12'
            ids = frame[self.id_column]
            out[self.id_column] = (ids.astype(str).to_numpy(dtype=object)  # no None, one call
                                   if pd.api.types.is_integer_dtype(ids.dtype) else
                                   np.array([text_or_none(v) for v in ids], dtype=object))
        out[_ERROR] = errors
        if broken:  # rows the CSV parser could not split into the header's fields: all missing
            for name, values in out.items():
                if values.dtype.kind in "iub":  # whole-number labels: None needs objects
                    values = values.astype(object)
                fill = np.full(len(broken), np.nan if values.dtype == np.float64 else None,
                               dtype=values.dtype)
                out[name] = np.concatenate([values, fill])
            out[_ERROR][-len(broken):] = [f"{path} line {n if n is not None else '?'}: {text}"
                                          for n, text in broken]
        out[ROW] = first_row + np.arange(len(out[_ERROR]), dtype=np.int64)
        return pd.DataFrame(out)

    def _labels(self, label: pd.Series, errors: np.ndarray, place: Callable[[int], str]) -> np.ndarray:
        """The label values (classes, or numbers for regression); a missing or non-numeric one sets
        the row's error, if it has none yet, as 'place: what is wrong'."""
        if self.task == "regression":
            value, bad = coerce(label, "numeric")
            for i in np.flatnonzero(bad & pd.isna(errors)):
                errors[i] = f"{place(i)}: {describe_bad(label.iloc[i], 'numeric')}"
            label = value
        for i in np.flatnonzero(label.isna().to_numpy() & pd.isna(errors)):
            errors[i] = f"{place(i)}: the label is missing"
        if self.task == "regression":
            return label.to_numpy(dtype=object, na_value=None)
        return class_values(label)

    def _read_csv(self, local: str, columns: list[str]) -> tuple[pd.DataFrame, np.ndarray, list]:
        import pyarrow.csv as pacsv

        broken: list[tuple[int | None, str]] = []

        def on_invalid(row: Any) -> str:
            broken.append((row.number, f"has {row.actual_columns} fields, the header has "
                                       f"{row.expected_columns}"))
            return "skip"

        # Every column as text: each is coerced by its kind, so '3', '3.0' and 'abc' are judged
        # alike in every file, whatever type the parser would infer for one file's values.
        types = {name: pa.string() for name in columns}
        convert = pacsv.ConvertOptions(include_columns=columns, column_types=types,
                                       strings_can_be_null=True)
        parse = pacsv.ParseOptions(invalid_row_handler=on_invalid)
        with open_input(self.fs, local) as f:
            table = pacsv.read_csv(f, read_options=pacsv.ReadOptions(use_threads=False),
                                   parse_options=parse, convert_options=convert)
        frame = table.to_pandas()
        # Line numbers of the parsed rows: the header is line 1, and skipped lines are not rows.
        skipped = sorted(n for n, _ in broken if n is not None)
        lines, line, k = np.empty(len(frame), dtype=np.int64), 2, 0
        for i in range(len(frame)):
            while k < len(skipped) and skipped[k] == line:
                line, k = line + 1, k + 1
            lines[i], line = line, line + 1
        return frame, lines, broken


class SplitRows:
    """Adds `__split` (0 train, 1 val, 2 test, -1 bad) and `__hash` to typed rows: a stable hash of
    the row's feature values (or its id) decides the split."""

    def __init__(self, features: list[str], id_column: str | None, val: float, test: float,
                 seed: int) -> None:
        self.features, self.id_column, self.val, self.test = features, id_column, val, test
        self.salt = np.uint64(int(hashlib.sha256(str(seed).encode()).hexdigest()[:16], 16))

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        keys = frame[[self.id_column]] if self.id_column else frame[self.features]
        hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)
        # pandas ignores hash_key for numbers: mix the seed in with a second hash instead.
        unit = (pd.util.hash_array(hashes ^ self.salt) % 1_000_003) / 1_000_003
        split = np.where(unit < self.test, 2, np.where(unit < self.test + self.val, 1, 0))
        split[frame[_ERROR].notna().to_numpy()] = -1
        return frame.assign(**{_SPLIT: split.astype(np.int8), _HASH: hashes})


class _BlockSummary:
    def __init__(self, kinds: dict[str, str], task: str, image_shape: tuple[int, int, int] | None) -> None:
        self.kinds, self.task, self.image_shape = kinds, task, image_shape

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        split = frame[_SPLIT].to_numpy()
        good = split >= 0
        labels = frame[_LABEL][good]
        label_hash = pd.util.hash_array(labels.astype(str).to_numpy(dtype=object))
        mixed = frame[_HASH].to_numpy(dtype=np.uint64)[good] * np.uint64(31) + label_hash
        summary = {
            "counts": np.bincount(split[good], minlength=len(SPLITS)).tolist(),
            "bad": int((~good).sum()),
            "bad_sample": frame[_ERROR][~good].head(BAD_SAMPLE_SIZE).tolist(),
            "stats": column_stats(frame[split == 0], self.kinds, self.image_shape),
            "labels": [] if self.task == "regression" else
            sorted({_plain(v) for v in pd.unique(labels)}, key=lambda v: (str(type(v)), v)),
            "target": column_stats(pd.DataFrame({"y": frame[_LABEL][split == 0].astype("float64")}),
                                   {"y": "numeric"})["y"] if self.task == "regression" else {},
            "hash": int(mixed.sum(dtype=np.uint64)),
        }
        return pd.DataFrame({"summary": [json.dumps(summary)]})


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def summarize(rows: Any, kinds: dict[str, str], task: str,
              image_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Returns split sizes, bad rows, train statistics, class labels (or the train label's mean and
    std for regression) and a content digest, in one pass. `image_shape`: an image column's size."""
    summaries = rows.map_batches(_BlockSummary(kinds, task, image_shape), batch_format="pandas")
    parts = [json.loads(s) for s in summaries.to_pandas()["summary"]]
    target = {}
    if task == "regression":
        y = merge_stats([{"y": p["target"]} for p in parts if p["target"]]).get("y", {})
        n = max(int(y.get("n", 0)), 1)
        mean = float(y.get("sum", 0.0)) / n
        std = float(np.sqrt(max(float(y.get("sumsq", 0.0)) / n - mean * mean, 0.0)))
        target = {"mean": mean, "std": std if std > 1e-12 else 1.0}
    counts = np.sum([p["counts"] for p in parts], axis=0) if parts else np.zeros(len(SPLITS), int)
    classes = sorted({v for p in parts for v in p["labels"]}, key=lambda v: (str(type(v)), v))
    total = sum(p["hash"] for p in parts) % 2**64
    return {
        "num_rows": {name: int(c) for name, c in zip(SPLITS, counts, strict=True)},
        "bad_rows": sum(p["bad"] for p in parts),
        "bad_sample": [e for p in parts for e in p["bad_sample"]][:BAD_SAMPLE_SIZE],
        "stats": merge_stats([p["stats"] for p in parts]),
        "classes": classes,
        "target": target,
        "digest": hashlib.sha256(f"{total}:{int(counts.sum())}".encode()).hexdigest()[:16],
    }


class FinishSplit:
    """Keeps one split's rows (`code`), or every good row with a `split` column naming its split
    (`code` None), encodes features and maps labels to class indices.

    The test split also keeps the raw columns: the logged model is evaluated on what a client sends.
    """

    def __init__(self, code: int | None, preprocessor: Preprocessor, classes: list[Any], task: str,
                 keep_raw: bool) -> None:
        self.code, self.preprocessor, self.task, self.keep_raw = code, preprocessor, task, keep_raw
        self.index = {c: i for i, c in enumerate(classes)}

    def _class_indices(self, labels: pd.Series) -> np.ndarray:
        codes, uniques = pd.factorize(labels)  # each distinct label looked up once
        if (codes < 0).any():
            raise ValueError("a missing label reached encoding: such rows are bad rows")
        lookup = np.array([self.index[_plain(v)] for v in uniques], dtype=np.int64)
        return lookup[codes] if len(lookup) else np.zeros(0, dtype=np.int64)

    def __call__(self, frame: pd.DataFrame) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray

        split = frame[_SPLIT].to_numpy()
        rows = frame[split >= 0] if self.code is None else frame[split == self.code]
        features = self.preprocessor.transform_typed(rows)  # ReadFile coerced every value
        out = {"features": ArrowTensorArray.from_numpy(features),
               "label": pa.array(rows[_LABEL].astype("float64").to_numpy(), type=pa.float64())
               if self.task == "regression" else pa.array(self._class_indices(rows[_LABEL]), type=pa.int64())}
        if self.keep_raw:  # as a client sends them: numbers, text, true/false; null where missing
            codes = rows[_SPLIT].to_numpy()
            not_test = codes != SPLIT_CODE["test"]  # streaming writes raw values for test rows only
            for column in self.preprocessor.columns:
                values = rows[column.name]
                if column.kind == "image":  # the image's bytes, as the file held them
                    data = values.to_numpy(dtype=object).copy()
                    data[not_test] = None
                    raw = pa.array(data, type=pa.binary(), from_pandas=True)
                elif column.kind == "categorical":
                    text = values.to_numpy(dtype=object).copy()
                    text[not_test] = None
                    raw = pa.array(text, type=pa.string(), from_pandas=True)
                else:  # typed float64 with NaN where missing; booleans as 1.0 / 0.0
                    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
                    missing = np.isnan(numbers) | not_test
                    raw = (pa.array(numbers != 0, mask=missing, type=pa.bool_()) if column.kind == "boolean"
                           else pa.array(numbers, mask=missing, type=pa.float64()))
                out[RAW_PREFIX + column.name] = raw
        if self.code is None:
            out[ROW] = pa.array(rows[ROW].to_numpy(dtype=np.int64), type=pa.int64())
            names = np.asarray(SPLITS, dtype=object)[rows[_SPLIT].to_numpy()]
            out["split"] = pa.array(names, type=pa.string())
        return pa.table(out)
