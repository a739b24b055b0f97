"""Ray Data stage: read sharded files by a typed schema, set bad rows aside, split, encode.

    data = prepare(cfg.data, cfg.storage_path)
    data.train, data.val, data.test    # Ray Datasets: {"features", "label"} (test: also "raw:<col>")

Each file is read by one Ray task (`_ReadFile`), which types every feature column by its kind
(numeric, categorical, boolean; `raylane.preprocess`) and marks a row bad, with its file, line and
column, when a value is not of its kind, its label is missing or it has the wrong number of fields.
Schema drift between files (a column missing, extra, or of another type) is found from the files'
own schemas before any row is read. The split is a hash of each row's raw values (or its id) and
`data.seed`, so it is deterministic whatever the file or block order, and duplicate rows never leak
between splits. Imputation, scaling and one-hot statistics are fitted on train only and travel with
the model (`Preprocessor`), so the endpoint takes the raw columns by name.

What is materialized, and why (`data.streaming`):
- in memory (the default when the rows' estimated size is at most 40% of the object store):
  the typed rows once, so the split statistics and the three splits are computed without reading
  the files again, then the three encoded splits, which the Train workers read every epoch without
  competing with Ray Data for CPU slots.
- streaming (larger data): nothing is held whole. A first streaming pass over the files computes
  the split sizes, bad rows and train statistics; a second encodes every row and writes the three
  splits as Parquet under the run's storage (`split=train|val|test`); the datasets read them
  lazily, so each epoch streams from storage, unless a worker reads its whole shard into its own
  memory once (`train.ingest`: when it fits there).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylane import progress, storage
from raylane.config import SKLEARN_SOURCES, DataConfig
from raylane.errors import DataError, StorageError
from raylane.preprocess import (
    Preprocessor,
    class_values,
    coerce,
    column_stats,
    describe_bad,
    kind_of,
    merge_stats,
    text_or_none,
)

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
_READY_MARKER = "_RAYLANE_COMPLETE"
RAW_PREFIX = "raw:"  # the test split keeps each raw feature column under this prefix
_LABEL, _SPLIT, _HASH, _ERROR = "__label", "__split", "__hash", "__error"
_ROW = "__row"  # the row's place in the data: file index << 40 | row in the file (streamed blocks' names)
BAD_SAMPLE_SIZE = 20


@dataclass(frozen=True)
class PreparedData:
    """The three splits plus everything the model needs to take raw rows."""

    train: Any  # ray.data.Dataset
    val: Any
    test: Any
    feature_columns: list[str]
    """The raw input columns, by name, in model order."""
    label_column: str
    classes: list[Any]
    preprocessor: Preprocessor
    source: str
    files: list[str]
    digest: str
    num_rows: dict[str, int] = field(default_factory=dict)
    bad_rows: int = 0
    """Rows set aside by data.on_bad_rows=drop."""
    bad_sample: list[str] = field(default_factory=list)
    """The first bad rows, each 'file line N: column ...: what is wrong'."""
    drift: list[str] = field(default_factory=list)
    """Schema differences between files, one line each."""
    task: str = "classification"
    target: dict[str, float] = field(default_factory=dict)
    """Regression: the train label's mean and std (the network learns the standardized value)."""
    location: str | None = None
    """Streaming: where the encoded splits were written (Parquet); the datasets read from there."""

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.classes)

    @property
    def input_dim(self) -> int:
        """Width of the network input (one-hot categories count one column each)."""
        return self.preprocessor.width

    def schema_json(self) -> str:
        return json.dumps({"features": self.preprocessor.kinds, "label": self.label_column,
                           "task": self.task, "classes": self.classes, "target": self.target,
                           "encoded": self.preprocessor.output_names()})


def prepare(cfg: DataConfig, storage_path: str, directory: str | None = None) -> PreparedData:
    """Returns the split and encoded datasets described by `cfg`: materialized in the object store,
    or with `data.streaming`, written as Parquet under `directory` (default: under the storage
    path) and read from there lazily."""
    import ray.data

    _configure_ray_data()
    source, fmt = _resolve_source(cfg, storage_path)
    files = _list_files(source, fmt)
    if fmt == "auto":
        fmt = "csv" if all(f.lower().endswith((".csv", ".csv.gz")) for f in files) else "parquet"
    # Read through the source's own filesystem, so URI options (s3 endpoint_override=...) apply.
    fs, _ = _filesystem(source)
    schemas = [_file_schema(fs, f, fmt, cfg) for f in files]
    kinds, drift = _resolve_columns(cfg, files, schemas)
    for note in drift:
        progress.say(f"  schema drift: {note}")
    streaming = _streaming(cfg, fs, files, fmt)
    context = ray.data.DataContext.get_current()
    block_bytes = context.target_max_block_size
    if streaming:  # smaller blocks: what a task holds at once, as the rows pass through it
        context.target_max_block_size = _STREAMING_BLOCK_BYTES
    try:
        return _prepare(cfg, storage_path, directory, source, fmt, files, kinds, drift, streaming)
    finally:
        context.target_max_block_size = block_bytes  # datasets made meanwhile keep their own


def _prepare(cfg: DataConfig, storage_path: str, directory: str | None, source: str, fmt: str,
             files: list[str], kinds: dict[str, str], drift: list[str], streaming: bool) -> PreparedData:
    import ray.data

    fs, _ = _filesystem(source)
    reader = _ReadFile(fs, fmt, kinds, cfg.label_column, cfg.id_column, cfg.task)
    split_fn = _SplitRows(list(kinds), cfg.id_column, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    items = ray.data.from_items([{"index": i, "path": f} for i, f in enumerate(files)],
                                override_num_blocks=min(len(files), 256))
    rows = items.map_batches(reader, batch_size=1, batch_format="pandas") \
        .map_batches(split_fn, batch_format="pandas")
    try:
        if not streaming:
            rows = rows.materialize()
        else:
            progress.say(f"  pass 1 of 2 over {len(files)} files: split sizes, bad rows, train statistics")
        summary = _summarize(rows, kinds, cfg.task)
    except Exception as err:  # a DataError raised in a Ray task arrives wrapped: unwrap it
        raise _data_error_in(err, files) from err
    bad = summary["bad_rows"]
    if bad and cfg.on_bad_rows == "fail":
        raise DataError(f"data.on_bad_rows=fail: {bad} bad row{'s' if bad > 1 else ''} in "
                        f"{cfg.source!r}; first: {summary['bad_sample'][0]}. Fix the data, or set "
                        "data.on_bad_rows: drop to skip such rows (they are counted and logged)")
    if bad:
        progress.say(f"  dropped {bad} bad rows (data.on_bad_rows=drop), e.g. {summary['bad_sample'][0]}")
    classes, target = summary["classes"], summary["target"]
    if cfg.task == "classification" and len(classes) < 2:
        raise DataError(f"data.label_column {cfg.label_column!r}: needs at least 2 classes, got {classes}")
    if min(summary["num_rows"].values()) == 0:
        raise DataError(f"data.source {cfg.source!r}: too few rows to split ({summary['num_rows']})")
    preprocessor = Preprocessor.fit(kinds, summary["stats"], cfg.max_categories)
    location = None
    if streaming:
        location = directory or storage.join(storage_path, "prepared", summary["digest"])
        try:
            splits = _write_splits(rows, location, preprocessor, classes, cfg.task, summary["num_rows"])
        except Exception as err:  # the files are read again: one may have changed since
            raise _data_error_in(err, files) from err
    else:
        splits = {
            name: rows.map_batches(_FinishSplit(code, preprocessor, classes, cfg.task,
                                                keep_raw=name == "test"), batch_format="pandas").materialize()
            for name, code in _SPLIT_CODE.items()
        }
    return PreparedData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        feature_columns=list(kinds), label_column=cfg.label_column, classes=classes,
        preprocessor=preprocessor, source=source, files=files, digest=summary["digest"],
        num_rows=summary["num_rows"], bad_rows=bad, bad_sample=summary["bad_sample"], drift=drift,
        task=cfg.task, target=target, location=location,
    )


# The rows' size in the object store against their size in the files: typed float64 values and
# Python objects from compressed float32 Parquet, or from CSV text.
_MEMORY_PER_FILE_BYTE = {"parquet": 3.0, "csv": 1.5}
_GZIP_RATIO = 6.0  # text compresses about this much
_STREAMING_SHARE = 0.4  # of the object store, above which data.streaming=auto streams
_STREAMING_BLOCK_BYTES = 32 << 20  # Ray Data's default is 128 MiB


def _streaming(cfg: DataConfig, fs: pafs.FileSystem, files: list[str], fmt: str) -> bool:
    """Whether to stream (see DataConfig.streaming); prints the choice and why."""
    import ray

    if cfg.streaming != "auto":
        progress.say(f"  data.streaming={str(cfg.streaming).lower()}")
        return bool(cfg.streaming)
    infos = fs.get_file_info([f.split("://", 1)[-1] for f in files])
    estimate = sum(max(info.size or 0, 0) * (_GZIP_RATIO if info.path.endswith(".gz") else 1.0)
                   for info in infos) * _MEMORY_PER_FILE_BYTE[fmt]
    store = ray.cluster_resources().get("object_store_memory", 0)
    streaming = bool(store) and estimate > _STREAMING_SHARE * store
    progress.say(f"  data.streaming=auto: {'streaming' if streaming else 'in memory'} (rows about "
                 f"{estimate / 2**20:,.0f} MiB in memory, object store {store / 2**20:,.0f} MiB)")
    return streaming


def _write_splits(rows: Any, directory: str, preprocessor: Preprocessor, classes: list[Any],
                  task: str, expected: dict[str, int]) -> dict[str, Any]:
    """Encodes every good row in one streaming pass and writes the three splits as Parquet under
    `directory` (`split=train`, ...); returns datasets that read them lazily. DataError unless the
    files hold the rows the first pass counted (a source file changed in between)."""
    fs, root = storage.split(directory)
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)  # a partial write by an interrupted attempt
    progress.say(f"  pass 2 of 2: encoding every row, writing the splits to {directory}")
    encoder = _FinishSplit(None, preprocessor, classes, task, keep_raw=True)
    rows.map_batches(encoder, batch_format="pandas") \
        .map_batches(_WriteSplits(fs, root), batch_format="pyarrow", batch_size=None).materialize()
    staging = posixpath.join(root, _WriteSplits.STAGING)
    if fs.get_file_info(staging).type != pafs.FileType.NotFound:
        fs.delete_dir(staging)  # what a task killed mid-write left aside
    written = {name: _rows_in(fs, posixpath.join(root, f"split={name}")) for name in SPLITS}
    if written != expected:
        raise DataError(f"the splits written to {directory!r} hold {written} rows where the first pass "
                        f"counted {expected}: did a source file change while it was read?")
    progress.say(f"  wrote {sum(written.values()):,} rows")
    return {name: _read_split(directory, name, streaming=True) for name in SPLITS}


def _rows_in(fs: pafs.FileSystem, directory: str) -> int:
    """Rows of the Parquet files in `directory`, from their footers."""
    if fs.get_file_info(directory).type == pafs.FileType.NotFound:
        return 0
    total = 0
    for info in fs.get_file_info(pafs.FileSelector(directory)):
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            with fs.open_input_file(info.path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
    return total


class _WriteSplits:
    """Writes each block's rows to `<root>/split=<name>/` as it comes, one Parquet file per split
    (Ray Data's own write holds all of a task's blocks before writing: memory would grow with the
    input files). Only the test split keeps the raw columns.

    A file is named after the block's first and last rows, and written aside then moved into
    place: a task Ray runs again (its worker died) rewrites the same files, so no row is written
    twice and no half-written file is read."""

    STAGING = "_staging"

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs, self.root = fs, root

    def __call__(self, table: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        if not table.num_rows:
            return pa.table({"rows": pa.array([], type=pa.int64())})
        bounds = pc.min_max(table[_ROW])
        name = f"{bounds['min'].as_py():016x}-{bounds['max'].as_py():016x}"
        staging = posixpath.join(self.root, self.STAGING)
        self.fs.create_dir(staging, recursive=True)
        for split in SPLITS:
            part = table.filter(pc.equal(table["split"], split))
            if not part.num_rows:
                continue
            keep = [c for c in part.column_names if c not in ("split", _ROW)
                    and (split == "test" or not c.startswith(RAW_PREFIX))]
            directory = posixpath.join(self.root, f"split={split}")
            self.fs.create_dir(directory, recursive=True)
            aside = posixpath.join(staging, f"{split}-{name}-{uuid.uuid4().hex}.parquet")
            pq.write_table(part.select(keep), aside, filesystem=self.fs)
            self.fs.move(aside, posixpath.join(directory, f"{name}.parquet"))
        return pa.table({"rows": [table.num_rows]})


def _read_split(directory: str, name: str, streaming: bool, partitioned: bool = True) -> Any:
    import ray.data

    fs, root = storage.split(directory)
    path = posixpath.join(root, f"split={name}" if partitioned else name)
    columns = None if name == "test" else ["features", "label"]
    dataset = ray.data.read_parquet(path, filesystem=fs, columns=columns)
    return dataset if streaming else dataset.materialize()


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
    prepared = prepare(cfg, storage_path, directory)
    save_prepared(prepared, directory)
    return prepared, False


def save_prepared(data: PreparedData, directory: str) -> None:
    """Writes the three splits (Parquet) and their metadata under `directory`, the marker last.
    Streamed data already written there keeps its splits."""
    fs, root = storage.split(directory)
    written_here = data.location is not None and data.location == directory
    if data.location and not written_here and data.location.startswith(directory.rstrip("/") + "/"):
        raise DataError(f"save_prepared: {directory!r} holds the streamed splits it would copy "
                        f"({data.location!r}); save them elsewhere")
    if not written_here:
        if fs.get_file_info(root).type != pafs.FileType.NotFound:
            fs.delete_dir(root)  # a partial write by an interrupted attempt
        for name in SPLITS:
            getattr(data, name).write_parquet(posixpath.join(root, name), filesystem=fs)
    meta = {
        "feature_columns": data.feature_columns, "label_column": data.label_column,
        "classes": data.classes, "preprocessor": data.preprocessor.to_dict(),
        "source": data.source, "files": data.files, "digest": data.digest, "num_rows": data.num_rows,
        "bad_rows": data.bad_rows, "bad_sample": data.bad_sample, "drift": data.drift,
        "task": data.task, "target": data.target,
        "streaming": data.location is not None, "partitioned": written_here,
    }
    storage.write_text(storage.join(directory, "prepared.json"), json.dumps(meta))
    storage.write_text(storage.join(directory, _READY_MARKER), "complete\n")


def load_prepared(directory: str) -> PreparedData | None:
    """Returns the splits saved by `save_prepared` (materialized, unless they were streamed); None
    unless they are complete."""
    if storage.read_text(storage.join(directory, _READY_MARKER)) is None:
        return None
    meta = json.loads(storage.read_text(storage.join(directory, "prepared.json")))
    if "preprocessor" not in meta:  # written before typed columns: prepare again
        return None
    _configure_ray_data()
    streaming = meta.get("streaming", False)
    splits = {name: _read_split(directory, name, streaming, meta.get("partitioned", False))
              for name in SPLITS}
    return PreparedData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        feature_columns=meta["feature_columns"], label_column=meta["label_column"],
        classes=meta["classes"], preprocessor=Preprocessor.from_dict(meta["preprocessor"]),
        source=meta["source"], files=meta["files"], digest=meta["digest"], num_rows=meta["num_rows"],
        bad_rows=meta["bad_rows"], bad_sample=meta["bad_sample"], drift=meta["drift"],
        task=meta.get("task", "classification"), target=meta.get("target", {}),
        location=directory if streaming else None,
    )


def to_numpy(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns (features, label) arrays of a small prepared split, for evaluation on the driver."""
    batch = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    return np.stack(batch["features"]).astype(np.float32), np.asarray(batch["label"])


def raw_rows(test: Any, limit: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Returns (raw feature columns by name, class indices) of the test split: what a client sends."""
    return _raw(test.take_batch(batch_size=limit or test.count(), batch_format="pyarrow"))


def iter_raw_rows(test: Any, batch_size: int = 65_536) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """`raw_rows` in batches, for a test split too large to hold at once."""
    for batch in test.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        yield _raw(batch)


def _raw(batch: pa.Table) -> tuple[pd.DataFrame, np.ndarray]:
    frame = batch.select([c for c in batch.column_names if c.startswith(RAW_PREFIX)]).to_pandas()
    return frame.rename(columns=lambda c: c[len(RAW_PREFIX):]), batch.column("label").to_numpy()


# -- sources ---------------------------------------------------------------------------------


def from_dataframe(frame: Any, storage_path: str, name: str = "dataframe", num_shards: int = 4) -> str:
    """Writes an in-memory pandas or Dask DataFrame as Parquet shards under the storage path and
    returns the source to put in `data.source`, so the rows take the same typed, checked path as
    files (and a resumed run finds them). A Dask DataFrame is handed over partition by partition
    (`ray.data.from_dask`), never collected on the driver.

        cfg = load_config("my.yaml", [f"data.source={data.from_dataframe(df, storage)}"])
    """
    import ray.data

    _configure_ray_data()
    if isinstance(frame, pd.DataFrame):
        dataset = ray.data.from_pandas(frame.reset_index(drop=True)).repartition(num_shards)
    elif type(frame).__module__.startswith("dask"):
        dataset = ray.data.from_dask(frame)
    else:
        raise DataError(f"from_dataframe: expected a pandas or Dask DataFrame, got {type(frame).__name__}")
    source = storage.join(storage_path, "datasets", name)
    fs, root = storage.split(source)
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)
    dataset.write_parquet(root, filesystem=fs)
    return source


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


def _file_schema(fs: pafs.FileSystem, path: str, fmt: str, cfg: DataConfig) -> pa.Schema:
    """Returns one file's column names and types, read from its footer (Parquet) or its first rows (CSV)."""
    local = path.split("://", 1)[-1]
    try:
        if fmt == "parquet":
            return pq.read_schema(local, filesystem=fs)
        import pyarrow.csv as pacsv

        with _open(fs, local) as f:
            options = pacsv.ReadOptions(block_size=1 << 20)
            parse = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
            return pacsv.open_csv(f, read_options=options, parse_options=parse).schema
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"data.source {cfg.source!r}: cannot read {path!r}: {err}") from err


def _open(fs: pafs.FileSystem, path: str) -> Any:
    """An input stream of a CSV file, gunzipped when it is a .gz."""
    return fs.open_input_stream(path, compression="detect" if path.endswith(".gz") else None)


def _resolve_columns(cfg: DataConfig, files: list[str], schemas: list[pa.Schema]
                     ) -> tuple[dict[str, str], list[str]]:
    """Returns the feature columns with their kinds, and the schema drift between files. A column
    the model needs that a file lacks is an error naming the file; extra columns and type changes
    are drift: reported, and the values still checked row by row."""
    first, where = schemas[0], files[0]
    if cfg.label_column not in first.names:
        raise DataError(f"data.label_column: column {cfg.label_column!r} not found in {where}; "
                        f"columns are {', '.join(first.names)}")
    if cfg.id_column is not None and cfg.id_column not in first.names:
        raise DataError(f"data.id_column: column {cfg.id_column!r} not found in {where}")
    special = {cfg.label_column, cfg.id_column}
    names = list(cfg.feature_columns or [c for c in first.names if c not in special])
    for name in [*names, *cfg.column_types]:
        if name not in first.names:
            field_name = "feature_columns" if name in names else "column_types"
            raise DataError(f"data.{field_name}: column {name!r} not found in {where}; "
                            f"columns are {', '.join(first.names)}")
    if not names:
        raise DataError(f"data.feature_columns: {where} has no columns besides the label")
    def file_type(name: str) -> Any:  # the first file where the column holds any value decides
        types = [s.field(name).type for s in schemas if name in s.names]
        return next((t for t in types if not pa.types.is_null(t)), types[0])

    kinds = {n: cfg.column_types.get(n) or kind_of(file_type(n)) for n in names}
    needed = [cfg.label_column, *([cfg.id_column] if cfg.id_column else []), *names]
    drift = []
    for path, schema in zip(files[1:], schemas[1:], strict=True):
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise DataError(f"data.source: schema drift: {path} has no column {missing[0]!r} "
                            f"(found in {where}); every file needs {', '.join(needed)}")
        extra = [c for c in schema.names if c not in first.names]
        if extra:
            drift.append(f"{path}: extra column{'s' if len(extra) > 1 else ''} {', '.join(extra)} "
                         f"(not in {where}; ignored)")
        for name in names:
            was, now = first.field(name).type, schema.field(name).type
            if kind_of(was) != kind_of(now) and not pa.types.is_null(now):
                drift.append(f"{path}: column {name!r} is {now} here, {was} in {where} "
                             f"(read as {kinds[name]}; values that are not are bad rows)")
    return kinds, drift


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


# -- row transforms (callable classes so Ray ships them to the tasks) -------------------------


# Values of one chunk of a Parquet file, as typed float64 about 32 MiB.
_CHUNK_VALUES = 1 << 22


class _ReadFile:
    """Reads one file into typed rows: each feature coerced to its kind, the label kept, and
    `__error` set on a bad row ('file line N: column ...: what is wrong')."""

    def __init__(self, fs: pafs.FileSystem, fmt: str, kinds: dict[str, str], label: str,
                 id_column: str | None, task: str) -> None:
        self.fs, self.fmt, self.kinds, self.label, self.id_column = fs, fmt, kinds, label, id_column
        self.task = task

    def __call__(self, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for index, path in zip(batch["index"], batch["path"], strict=True):
            yield from self._read(int(index), str(path))

    def _read(self, index: int, path: str) -> Iterator[pd.DataFrame]:
        """The file's typed rows: a Parquet file in chunks of about `_CHUNK_VALUES` values, so that
        a task's memory does not grow with the file; a CSV file whole (its line numbers need it)."""
        local = path.split("://", 1)[-1]
        columns = [self.label, *([self.id_column] if self.id_column else []), *self.kinds]
        if self.fmt == "parquet":
            first = 1
            with self.fs.open_input_file(local) as f:
                rows = max(1024, _CHUNK_VALUES // len(columns))
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
            typed, bad = coerce(frame[name], kind)
            for i in np.flatnonzero(bad & pd.isna(errors)):
                problem = describe_bad(frame[name].iloc[i], kind)
                errors[i] = f"{path} {where} {lines[i]}: column {name!r}: {problem}"
            out[name] = typed.to_numpy(dtype=object if kind == "categorical" else np.float64,
                                       na_value=None if kind == "categorical" else np.nan)
        label = frame[self.label]
        if self.task == "regression":
            value, bad = coerce(label, "numeric")
            for i in np.flatnonzero(bad & pd.isna(errors)):
                problem = describe_bad(label.iloc[i], "numeric")
                errors[i] = f"{path} {where} {lines[i]}: column {self.label!r}: {problem}"
            label = value
        for i in np.flatnonzero(label.isna().to_numpy() & pd.isna(errors)):
            errors[i] = f"{path} {where} {lines[i]}: column {self.label!r}: the label is missing"
        if self.task == "regression":
            out[_LABEL] = label.to_numpy(dtype=object, na_value=None)
        else:
            out[_LABEL] = class_values(label)
        if self.id_column:  # as text, the same whatever the file's type for it: 12, 12.0, '12'
            out[self.id_column] = np.array([text_or_none(v) for v in frame[self.id_column]], dtype=object)
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
        out[_ROW] = first_row + np.arange(len(out[_ERROR]), dtype=np.int64)
        return pd.DataFrame(out)

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
        with _open(self.fs, local) as f:
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


class _SplitRows:
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
    def __init__(self, kinds: dict[str, str], task: str) -> None:
        self.kinds, self.task = kinds, task

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
            "stats": column_stats(frame[split == 0], self.kinds),
            "labels": [] if self.task == "regression" else
            sorted({_plain(v) for v in pd.unique(labels)}, key=lambda v: (str(type(v)), v)),
            "target": column_stats(pd.DataFrame({"y": frame[_LABEL][split == 0].astype("float64")}),
                                   {"y": "numeric"})["y"] if self.task == "regression" else {},
            "hash": int(mixed.sum(dtype=np.uint64)),
        }
        return pd.DataFrame({"summary": [json.dumps(summary)]})


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _summarize(rows: Any, kinds: dict[str, str], task: str) -> dict[str, Any]:
    """Returns split sizes, bad rows, train statistics, class labels (or the train label's mean and
    std for regression) and a content digest, in one pass."""
    parts = [json.loads(s) for s in rows.map_batches(_BlockSummary(kinds, task), batch_format="pandas")
             .to_pandas()["summary"]]
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


class _FinishSplit:
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
        features = self.preprocessor.transform_typed(rows)  # _ReadFile coerced every value
        out = {"features": ArrowTensorArray.from_numpy(features),
               "label": pa.array(rows[_LABEL].astype("float64").to_numpy(), type=pa.float64())
               if self.task == "regression" else pa.array(self._class_indices(rows[_LABEL]), type=pa.int64())}
        if self.keep_raw:  # as a client sends them: numbers, text, true/false; null where missing
            codes = rows[_SPLIT].to_numpy()
            not_test = codes != _SPLIT_CODE["test"]  # streaming writes raw values for test rows only
            for column in self.preprocessor.columns:
                values = rows[column.name]
                if column.kind == "categorical":
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
            out[_ROW] = pa.array(rows[_ROW].to_numpy(dtype=np.int64), type=pa.int64())
            names = np.asarray(SPLITS, dtype=object)[rows[_SPLIT].to_numpy()]
            out["split"] = pa.array(names, type=pa.string())
        return pa.table(out)
