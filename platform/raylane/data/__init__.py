"""Ray Data stage: read sharded files by a typed schema, set bad rows aside, split, encode.

    data = prepare(cfg.data, cfg.storage_path)
    data.train, data.val, data.test    # Ray Datasets: {"features", "label"} (test: also "raw:<col>")

Each file is read by one Ray task (`rows.ReadFile`), which types every feature column by its kind
(numeric, categorical, boolean, image; `raylane.preprocess`) and marks a row bad, with its file, line
and column, when a value is not of its kind, its label is missing or it has the wrong number of
fields. Images (a folder root/<class>/*.png, or a table column of image bytes or paths) are
decoded, checked and resized in those tasks (`raylane.images`); an image that is not one, or has
more channels than `data.image_channels`, is a bad row naming its file.
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

This module runs the stage (`prepare`, `prepare_once`), gives the test split's raw rows for
evaluation (`raw_rows`) and turns a DataFrame into a source (`from_dataframe`). Underneath:
`sources` (files, schemas, drift), `rows` (read, split, encode), `store` (`PreparedData`, the
splits on storage, save and load).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from raylane import progress, storage
from raylane.config import DataConfig
from raylane.data.rows import (
    BAD_SAMPLE_SIZE,
    IMAGES_PER_CHUNK,
    RAW_PREFIX,
    SPLIT_CODE,
    SPLITS,
    FinishSplit,
    ReadFile,
    SplitRows,
    summarize,
)
from raylane.data.sources import (
    configure_ray_data,
    file_schema,
    filesystem,
    folder_image_column,
    list_files,
    list_images,
    resolve_columns,
    resolve_source,
)
from raylane.data.store import PreparedData, load_prepared, save_prepared, write_splits
from raylane.errors import DataError
from raylane.preprocess import Preprocessor

__all__ = [
    "BAD_SAMPLE_SIZE", "RAW_PREFIX", "SPLITS", "PreparedData", "from_dataframe", "iter_raw_rows",
    "load_prepared", "prepare", "prepare_once", "raw_rows", "save_prepared",
]


def prepare(cfg: DataConfig, storage_path: str, directory: str | None = None) -> PreparedData:
    """Returns the split and encoded datasets described by `cfg`: materialized in the object store,
    or with `data.streaming`, written as Parquet under `directory` (default: under the storage
    path) and read from there lazily."""
    import ray.data

    configure_ray_data()
    source, fmt = resolve_source(cfg, storage_path)
    # Read through the source's own filesystem, so URI options (s3 endpoint_override=...) apply.
    fs, _ = filesystem(source)
    folder = list_images(source, fmt)
    if folder is not None:
        _check_image_folder_config(cfg)
        fmt, files, kinds, drift = "images", folder.files, {folder_image_column(cfg): "image"}, []
        progress.say(f"  {len(files):,} images in {len(set(folder.classes))} class folders under {source}")
        in_memory = folder.total_bytes + len(files) * (int(np.prod(cfg.image_shape)) + _ROW_OVERHEAD)
    else:
        files = list_files(source, fmt)
        if fmt == "auto":
            fmt = "csv" if all(f.lower().endswith((".csv", ".csv.gz")) for f in files) else "parquet"
        schemas = [file_schema(fs, f, fmt, cfg) for f in files]
        kinds, drift = resolve_columns(cfg, files, schemas)
        in_memory = _table_bytes_in_memory(fs, files, fmt)
    for note in drift:
        progress.say(f"  schema drift: {note}")
    streaming = _streaming(cfg, in_memory)
    context = ray.data.DataContext.get_current()
    block_bytes = context.target_max_block_size
    if streaming:  # smaller blocks: what a task holds at once, as the rows pass through it
        context.target_max_block_size = _STREAMING_BLOCK_BYTES
    try:
        file_classes = folder.classes if folder is not None else None
        return _prepare(cfg, storage_path, directory, source, fmt, files, kinds, drift, streaming,
                        file_classes)
    finally:
        context.target_max_block_size = block_bytes  # datasets made meanwhile keep their own
        # The stage's intermediate datasets sit in reference cycles, and their blocks stay in the
        # object store until Python's collector runs: 845 MB per million rows of 64 features held
        # after the stage, 330 MB once collected (benchmarks/scale.py). Free them before training.
        gc.collect()


def _check_image_folder_config(cfg: DataConfig) -> None:
    if cfg.id_column is not None:
        raise DataError(f"data.id_column: {cfg.source!r} is a folder of images, which has no columns (the "
                        "split hashes each image's bytes); unset data.id_column")
    if cfg.feature_columns not in (None, [folder_image_column(cfg)]):
        raise DataError(f"data.feature_columns: {cfg.source!r} is a folder of images, whose one feature is "
                        f"the image (column {folder_image_column(cfg)!r}); unset data.feature_columns")


def _prepare(cfg: DataConfig, storage_path: str, directory: str | None, source: str, fmt: str,
             files: list[str], kinds: dict[str, str], drift: list[str], streaming: bool,
             file_classes: list[str] | None) -> PreparedData:
    """`prepare` once the files and columns are known; `file_classes`: the class of each file of
    an image folder."""
    import ray.data

    fs, _ = filesystem(source)
    image_shape = cfg.image_shape if "image" in kinds.values() else None
    reader = ReadFile(fs, fmt, kinds, cfg.label_column, cfg.id_column, cfg.task, image_shape)
    split_fn = SplitRows(list(kinds), cfg.id_column, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    listed = [{"index": i, "path": f} for i, f in enumerate(files)]
    for item, label in zip(listed, file_classes or [], strict=False):
        item["label"] = label
    items = ray.data.from_items(listed, override_num_blocks=min(len(files), 256))
    # An image folder: a batch of image files per call; a table: one file per call (read in chunks).
    per_call = IMAGES_PER_CHUNK if fmt == "images" else 1
    rows = items.map_batches(reader, batch_size=per_call, batch_format="pandas") \
        .map_batches(split_fn, batch_format="pandas")
    try:
        if not streaming:
            rows = rows.materialize()
        else:
            progress.say(f"  pass 1 of 2 over {len(files)} files: split sizes, bad rows, train statistics")
        summary = summarize(rows, kinds, cfg.task, image_shape)
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
    preprocessor = Preprocessor.fit(kinds, summary["stats"], cfg.max_categories, image_shape)
    location = None
    if streaming:
        location = directory or storage.join(storage_path, "prepared", summary["digest"])
        try:
            splits = write_splits(rows, location, preprocessor, classes, cfg.task, summary["num_rows"])
        except Exception as err:  # the files are read again: one may have changed since
            raise _data_error_in(err, files) from err
    else:
        splits = {
            name: rows.map_batches(FinishSplit(code, preprocessor, classes, cfg.task,
                                                keep_raw=name == "test"), batch_format="pandas").materialize()
            for name, code in SPLIT_CODE.items()
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
_ROW_OVERHEAD = 200  # bytes of an image row besides its file's bytes and its pixels: objects, label


def _table_bytes_in_memory(fs: pafs.FileSystem, files: list[str], fmt: str) -> float:
    """The typed rows' estimated size in memory, from the files' sizes."""
    infos = fs.get_file_info([f.split("://", 1)[-1] for f in files])
    return sum(max(info.size or 0, 0) * (_GZIP_RATIO if info.path.endswith(".gz") else 1.0)
               for info in infos) * _MEMORY_PER_FILE_BYTE[fmt]


def _streaming(cfg: DataConfig, estimate: float) -> bool:
    """Whether to stream (see DataConfig.streaming) rows of `estimate` bytes in memory; prints the
    choice and why."""
    import ray

    if cfg.streaming != "auto":
        progress.say(f"  data.streaming={str(cfg.streaming).lower()}")
        return bool(cfg.streaming)
    store = ray.cluster_resources().get("object_store_memory", 0)
    streaming = bool(store) and estimate > _STREAMING_SHARE * store
    progress.say(f"  data.streaming=auto: {'streaming' if streaming else 'in memory'} (rows about "
                 f"{estimate / 2**20:,.0f} MiB in memory, object store {store / 2**20:,.0f} MiB)")
    return streaming


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


def prepare_once(cfg: DataConfig, storage_path: str, directory: str) -> tuple[PreparedData, bool]:
    """Returns the prepared data and whether it was loaded: the splits saved under `directory` by an
    earlier attempt of the same run when they are complete, else prepared now and saved there."""
    loaded = load_prepared(directory)
    if loaded is not None:
        return loaded, True
    prepared = prepare(cfg, storage_path, directory)
    save_prepared(prepared, directory)
    return prepared, False


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


def from_dataframe(frame: Any, storage_path: str, name: str = "dataframe", num_shards: int = 4) -> str:
    """Writes an in-memory pandas or Dask DataFrame as Parquet shards under the storage path and
    returns the source to put in `data.source`, so the rows take the same typed, checked path as
    files (and a resumed run finds them). A Dask DataFrame is handed over partition by partition
    (`ray.data.from_dask`), never collected on the driver.

        cfg = load_config("my.yaml", [f"data.source={data.from_dataframe(df, storage)}"])
    """
    import ray.data

    configure_ray_data()
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
