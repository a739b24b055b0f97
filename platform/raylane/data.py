"""Ray Data stage: read sharded files, validate, split train/val/test, fit and apply scaling.

    data = prepare(cfg.data, cfg.storage_path)
    data.train, data.val, data.test    # materialized Ray Datasets: {"features", "label"}

The split is a hash of each row's raw values and `data.seed`, so it is deterministic whatever
the file or block order, and duplicate rows never leak between splits. Scaling statistics are
fitted on train only and travel with the model (`Standardizer`), so the endpoint takes raw values.
The demo datasets are small, so the three splits are materialized once before training: Ray Data
then never competes with the Train workers for CPU slots.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylane import storage
from raylane.config import SKLEARN_SOURCES, DataConfig
from raylane.errors import DataError, StorageError

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
_READY_MARKER = "_RAYLANE_COMPLETE"


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and standard deviation fitted on train; constant features keep scale 1."""

    mean: list[float]
    std: list[float]

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Returns the standardized float32 features for raw feature rows."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return ((np.asarray(features, dtype=np.float64) - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class PreparedData:
    """The three splits plus everything the model needs to take raw rows."""

    train: Any  # ray.data.Dataset
    val: Any
    test: Any
    feature_columns: list[str]
    label_column: str
    classes: list[Any]
    scaler: Standardizer
    source: str
    files: list[str]
    digest: str
    num_rows: dict[str, int] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return len(self.feature_columns)

    def schema_json(self) -> str:
        return json.dumps(
            {"features": self.feature_columns, "label": self.label_column, "classes": self.classes}
        )


def prepare(cfg: DataConfig, storage_path: str) -> PreparedData:
    """Returns the split, scaled and materialized datasets described by `cfg`."""
    import ray.data

    _configure_ray_data()
    source, fmt = _resolve_source(cfg, storage_path)
    files = _list_files(source, fmt)
    if fmt == "auto":
        fmt = "csv" if all(f.lower().endswith((".csv", ".csv.gz")) for f in files) else "parquet"
    # Read through the source's own filesystem, so URI options (s3 endpoint_override=...) apply.
    fs, _ = _filesystem(source)
    paths = [f.split("://", 1)[-1] for f in files]
    read = ray.data.read_parquet if fmt == "parquet" else ray.data.read_csv
    ds = read(paths, filesystem=fs)
    features = _validate_schema(ds, cfg, files)

    split_fn = _SplitRows(features, cfg.label_column, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    try:
        rows = ds.map_batches(split_fn, batch_format="pandas").materialize()
    except Exception as err:  # a DataError raised in a Ray task arrives wrapped: unwrap it
        raise _data_error_in(err, files) from err
    summary = _summarize(rows)
    classes = summary["classes"]
    if len(classes) < 2:
        raise DataError(f"data.label_column {cfg.label_column!r}: needs at least 2 classes, got {classes}")
    if min(summary["num_rows"].values()) == 0:
        raise DataError(f"data.source {cfg.source!r}: too few rows to split ({summary['num_rows']})")
    scaler = summary["scaler"]
    splits = {
        name: rows.map_batches(_FinishSplit(code, scaler, classes, keep_raw=name == "test"),
                               batch_format="numpy").materialize()
        for name, code in _SPLIT_CODE.items()
    }
    return PreparedData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        feature_columns=features, label_column=cfg.label_column, classes=classes,
        scaler=scaler, source=source, files=files, digest=summary["digest"],
        num_rows=summary["num_rows"],
    )


def _configure_ray_data() -> None:
    import ray.data

    # Ray 2.60's V2 parquet reader spends ~9 s listing a handful of local files on this
    # class of machine (footer indexing); the V1 reader takes 0.4 s for the same read.
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    context.enable_progress_bars = False  # raylane prints one line per stage instead


def prepare_once(cfg: DataConfig, storage_path: str, directory: str) -> tuple[PreparedData, bool]:
    """Returns the prepared data and whether it was loaded: the splits saved under `directory` by an
    earlier attempt of the same run when they are complete, else prepared now and saved there."""
    loaded = load_prepared(directory)
    if loaded is not None:
        return loaded, True
    prepared = prepare(cfg, storage_path)
    save_prepared(prepared, directory)
    return prepared, False


def save_prepared(data: PreparedData, directory: str) -> None:
    """Writes the three splits (Parquet) and their metadata under `directory`, the marker last."""
    fs, root = storage.split(directory)
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)  # a partial write by an interrupted attempt
    for name in SPLITS:
        getattr(data, name).write_parquet(posixpath.join(root, name), filesystem=fs)
    meta = {
        "feature_columns": data.feature_columns, "label_column": data.label_column,
        "classes": data.classes, "scaler": {"mean": data.scaler.mean, "std": data.scaler.std},
        "source": data.source, "files": data.files, "digest": data.digest, "num_rows": data.num_rows,
    }
    storage.write_text(storage.join(directory, "prepared.json"), json.dumps(meta))
    storage.write_text(storage.join(directory, _READY_MARKER), "complete\n")


def load_prepared(directory: str) -> PreparedData | None:
    """Returns the splits saved by `save_prepared`, materialized; None unless they are complete."""
    import ray.data

    if storage.read_text(storage.join(directory, _READY_MARKER)) is None:
        return None
    meta = json.loads(storage.read_text(storage.join(directory, "prepared.json")))
    _configure_ray_data()
    fs, root = storage.split(directory)
    splits = {name: ray.data.read_parquet(posixpath.join(root, name), filesystem=fs).materialize()
              for name in SPLITS}
    return PreparedData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        feature_columns=meta["feature_columns"], label_column=meta["label_column"],
        classes=meta["classes"], scaler=Standardizer(**meta["scaler"]), source=meta["source"],
        files=meta["files"], digest=meta["digest"], num_rows=meta["num_rows"],
    )


def to_numpy(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns (features, label) arrays of a small prepared split, for evaluation on the driver."""
    batch = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    return np.asarray(batch["features"], dtype=np.float32), np.asarray(batch["label"])


# -- sources ---------------------------------------------------------------------------------


def _resolve_source(cfg: DataConfig, storage_path: str) -> tuple[str, str]:
    if cfg.source.startswith("sklearn:"):
        name = cfg.source.removeprefix("sklearn:")
        if name not in SKLEARN_SOURCES:
            accepted = ", ".join(f"sklearn:{n}" for n in SKLEARN_SOURCES)
            raise DataError(f"data.source: {cfg.source!r} is not one of {accepted}, or a file path")
        return _write_sklearn_shards(name, cfg, storage_path), "parquet"
    return cfg.source, cfg.format


def _write_sklearn_shards(name: str, cfg: DataConfig, storage_path: str) -> str:
    """Returns the directory of `num_shards` parquet files holding an sklearn toy dataset."""
    fs, root = _filesystem(storage_path)
    directory = posixpath.join(root, "datasets", f"sklearn_{name}_{cfg.num_shards}")
    marker = posixpath.join(directory, _READY_MARKER)
    if fs.get_file_info(marker).type != pafs.FileType.File:
        frame = _load_sklearn(name, cfg.label_column)
        try:
            fs.create_dir(directory, recursive=True)
            for i, part in enumerate(np.array_split(np.arange(len(frame)), cfg.num_shards)):
                table = pa.Table.from_pandas(frame.iloc[part], preserve_index=False)
                pq.write_table(table, posixpath.join(directory, f"part-{i:05d}.parquet"),
                               filesystem=fs)
            with fs.open_output_stream(marker) as out:
                out.write(b"complete\n")
        except OSError as err:
            raise StorageError(f"storage_path {storage_path!r}: cannot write datasets: {err}") from err
    return storage.join(storage_path, "datasets", f"sklearn_{name}_{cfg.num_shards}")


def _load_sklearn(name: str, label_column: str) -> pd.DataFrame:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.rename(columns={"target": label_column})
    frame.columns = [str(c).replace(" ", "_").replace("/", "_") for c in frame.columns]
    return frame


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), posixpath.abspath(path)


def _list_files(source: str, fmt: str) -> list[str]:
    """Returns the data files a path, directory or glob names; DataError when there are none."""
    fs, path = _filesystem(source)
    scheme = source.split("://")[0] + "://" if "://" in source else ""
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        infos = _safe_listing(fs, base, source)
        found = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"data.source: file or directory {source!r} not found")
        if info.type == pafs.FileType.File:
            return [scheme + path]
        found = [
            i.path for i in _safe_listing(fs, path, source)
            if i.is_file and not posixpath.basename(i.path).startswith(("_", "."))
            and (fmt != "csv" or i.path.endswith((".csv", ".csv.gz")))
        ]
    if not found:
        kind = "data" if fmt == "auto" else fmt
        raise DataError(f"data.source: no {kind} files match {source!r}")
    return [scheme + p for p in sorted(found)]


def _safe_listing(fs: pafs.FileSystem, base: str, source: str) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"data.source: cannot list {source!r}: {err}") from err


def _validate_schema(ds: Any, cfg: DataConfig, files: list[str]) -> list[str]:
    """Returns the feature columns; DataError naming the file and column."""
    try:
        schema = ds.schema()
    except Exception as err:  # Ray wraps the reader's error; name the files instead
        raise DataError(f"data.source {cfg.source!r}: cannot read {files[0]!r}: {err}") from err
    types = dict(zip(schema.names, schema.types, strict=True))
    where = files[0] if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more)"
    if cfg.label_column not in types:
        raise DataError(
            f"data.label_column: column {cfg.label_column!r} not found in {where}; "
            f"columns are {', '.join(types)}"
        )
    features = list(cfg.feature_columns or [c for c in types if c != cfg.label_column])
    for column in features:
        if column not in types:
            raise DataError(f"data.feature_columns: column {column!r} not found in {where}")
        kind = types[column]
        if not _is_numeric(kind):
            raise DataError(
                f"data.feature_columns: column {column!r} in {where} is not numeric ({kind}); "
                "drop it from feature_columns or encode it as numbers"
            )
    if cfg.label_column in features:
        raise DataError(f"data.feature_columns: the label column {cfg.label_column!r} is listed")
    return features


def _data_error_in(err: BaseException, files: list[str]) -> DataError:
    """Returns the DataError inside a Ray task failure, or a DataError naming the files read."""
    where = f"data.source {files[0]!r}{' (and others)' if len(files) > 1 else ''}"
    seen: BaseException | None = err
    while seen is not None:  # Ray may chain the original, or only carry its text
        if isinstance(seen, DataError):
            return DataError(f"{where}: {str(seen).strip().splitlines()[-1]}")
        for line in str(seen).splitlines():
            if "DataError: " in line:
                return DataError(f"{where}: {line.split('DataError: ', 1)[1].strip()}")
        seen = seen.__cause__ or seen.__context__
    text = str(err).strip().splitlines()
    return DataError(f"cannot read {files[0]!r}: {text[-1] if text else type(err).__name__}")


def _is_numeric(kind: Any) -> bool:
    try:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    except TypeError:
        return False


# -- row transforms (callable classes so Ray ships them to the tasks) -------------------------


class _SplitRows:
    """Turns raw rows into {features, label, split, row_hash}: a stable hash decides the split."""

    def __init__(self, features: list[str], label: str, val: float, test: float, seed: int) -> None:
        self.features, self.label, self.val, self.test = features, label, val, test
        self.salt = np.uint64(int(hashlib.sha256(str(seed).encode()).hexdigest()[:16], 16))

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        for column in [self.label, *self.features]:
            missing = frame[column].isna()
            if missing.any():
                raise DataError(f"column {column!r} has {int(missing.sum())} missing values "
                                f"(first at row {int(missing.to_numpy().argmax())} of a block); "
                                "fill or drop them before training")
        values = frame[self.features].astype("float64")
        hashes = pd.util.hash_pandas_object(values, index=False).to_numpy(dtype=np.uint64)
        # pandas ignores hash_key for numbers: mix the seed in with a second hash instead.
        unit = (pd.util.hash_array(hashes ^ self.salt) % 1_000_003) / 1_000_003
        split = np.where(unit < self.test, 2, np.where(unit < self.test + self.val, 1, 0))
        return pd.DataFrame({
            "features": list(values.to_numpy(dtype=np.float64)),
            "label": frame[self.label].to_numpy(),
            "split": split.astype(np.int8),
            "row_hash": hashes,
        })


def _block_summary(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = np.stack(batch["features"]).astype(np.float64)
    train = x[batch["split"] == 0]
    label_hash = pd.util.hash_array(np.asarray(batch["label"], dtype=object).astype(str))
    mixed = batch["row_hash"].astype(np.uint64) * np.uint64(31) + label_hash
    return {
        "counts": np.bincount(batch["split"], minlength=len(SPLITS))[None],
        "sum": train.sum(0)[None],
        "sumsq": (train * train).sum(0)[None],
        "hash": np.array([int(mixed.sum(dtype=np.uint64))], dtype=np.uint64),
        "labels": np.array([json.dumps(sorted({_plain(v) for v in batch["label"]},
                                               key=lambda v: (str(type(v)), v)))]),
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _summarize(rows: Any) -> dict[str, Any]:
    """Returns split sizes, train scaling statistics, class labels and a content digest, in one pass."""
    parts = rows.map_batches(_block_summary, batch_format="numpy").take_all()
    counts = np.sum([p["counts"] for p in parts], axis=0)
    n = max(int(counts[0]), 1)
    mean = np.sum([p["sum"] for p in parts], axis=0) / n
    std = np.sqrt(np.maximum(np.sum([p["sumsq"] for p in parts], axis=0) / n - mean * mean, 0.0))
    std[std < 1e-8] = 1.0
    classes = sorted({v for p in parts for v in json.loads(str(p["labels"]))},
                     key=lambda v: (str(type(v)), v))
    total = sum(int(p["hash"]) for p in parts) % 2**64
    return {
        "num_rows": {name: int(c) for name, c in zip(SPLITS, counts, strict=True)},
        "scaler": Standardizer(mean=mean.tolist(), std=std.tolist()),
        "classes": classes,
        "digest": hashlib.sha256(f"{total}:{int(counts.sum())}".encode()).hexdigest()[:16],
    }


class _FinishSplit:
    """Keeps one split's rows, standardizes features and maps labels to class indices.

    The test split also keeps the raw values: the logged model is evaluated on what a client sends.
    """

    def __init__(self, code: int, scaler: Standardizer, classes: list[Any], keep_raw: bool) -> None:
        self.code, self.scaler, self.keep_raw = code, scaler, keep_raw
        self.index = {c: i for i, c in enumerate(classes)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = batch["split"] == self.code
        width = len(self.scaler.mean)
        features = np.stack(batch["features"][keep]) if keep.any() else np.zeros((0, width))
        labels = np.array([self.index[_plain(v)] for v in batch["label"][keep]], dtype=np.int64)
        out = {"features": self.scaler.apply(features), "label": labels}
        if self.keep_raw:
            out["raw"] = features.astype(np.float64)
        return out
