"""Prepared data at rest: `PreparedData` (what the data stage hands to training, tracking and
serving), the encoded splits written as Parquet while they stream (`write_splits`), and a finished
run's splits saved with their metadata, a format version and a ready marker (`save_prepared`), so
that a resumed run loads them (`load_prepared`) instead of preparing again."""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylane import progress, storage
from raylane.data.rows import RAW_PREFIX, ROW, SPLITS, FinishSplit
from raylane.data.sources import READY_MARKER, configure_ray_data
from raylane.errors import DataError
from raylane.preprocess import Preprocessor

FORMAT_VERSION = 2
"""The layout of `prepared.json` that save_prepared writes (2: the preprocessor may hold an image
column, which a raylane reading version 1 cannot take); versions 1 and 2 are read alike, and a file
without one is the layout before format versions, read with `_LEGACY_DEFAULTS` for the fields it
may lack."""
_READS_VERSIONS = (1, 2)


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
        """Width of the network input (one-hot categories count one column each; an image
        height * width * channels)."""
        return self.preprocessor.width

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(height, width, channels) of the images the model takes; None for tabular data. The
        "features" of a split are then each image's values flattened in that order (HWC)."""
        return self.preprocessor.image_shape

    def schema_json(self) -> str:
        image = {"image_shape": list(self.image_shape)} if self.image_shape else {}
        return json.dumps({"features": self.preprocessor.kinds, "label": self.label_column,
                           "task": self.task, "classes": self.classes, "target": self.target,
                           "encoded": self.preprocessor.output_names(), **image})


def write_splits(rows: Any, directory: str, preprocessor: Preprocessor, classes: list[Any],
                  task: str, expected: dict[str, int]) -> dict[str, Any]:
    """Encodes every good row in one streaming pass and writes the three splits as Parquet under
    `directory` (`split=train`, ...); returns datasets that read them lazily. DataError unless the
    files hold the rows the first pass counted (a source file changed in between)."""
    fs, root = storage.split(directory)
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)  # a partial write by an interrupted attempt
    progress.say(f"  pass 2 of 2: encoding every row, writing the splits to {directory}")
    encoder = FinishSplit(None, preprocessor, classes, task, keep_raw=True)
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
        bounds = pc.min_max(table[ROW])
        name = f"{bounds['min'].as_py():016x}-{bounds['max'].as_py():016x}"
        staging = posixpath.join(self.root, self.STAGING)
        self.fs.create_dir(staging, recursive=True)
        for split in SPLITS:
            part = table.filter(pc.equal(table["split"], split))
            if not part.num_rows:
                continue
            keep = [c for c in part.column_names if c not in ("split", ROW)
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
        "format_version": FORMAT_VERSION,
        "feature_columns": data.feature_columns, "label_column": data.label_column,
        "classes": data.classes, "preprocessor": data.preprocessor.to_dict(),
        "source": data.source, "files": data.files, "digest": data.digest, "num_rows": data.num_rows,
        "bad_rows": data.bad_rows, "bad_sample": data.bad_sample, "drift": data.drift,
        "task": data.task, "target": data.target,
        "streaming": data.location is not None, "partitioned": written_here,
    }
    storage.write_text(storage.join(directory, "prepared.json"), json.dumps(meta))
    storage.write_text(storage.join(directory, READY_MARKER), "complete\n")


def load_prepared(directory: str) -> PreparedData | None:
    """Returns the splits saved by `save_prepared` (materialized, unless they were streamed); None
    unless they are complete. DataError when they were saved in a format this raylane cannot read."""
    if storage.read_text(storage.join(directory, READY_MARKER)) is None:
        return None
    meta = _read_meta(storage.join(directory, "prepared.json"))
    if meta is None:
        return None
    configure_ray_data()
    streaming = meta["streaming"]
    splits = {name: _read_split(directory, name, streaming, meta["partitioned"]) for name in SPLITS}
    return PreparedData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        feature_columns=meta["feature_columns"], label_column=meta["label_column"],
        classes=meta["classes"], preprocessor=Preprocessor.from_dict(meta["preprocessor"]),
        source=meta["source"], files=meta["files"], digest=meta["digest"], num_rows=meta["num_rows"],
        bad_rows=meta["bad_rows"], bad_sample=meta["bad_sample"], drift=meta["drift"],
        task=meta["task"], target=meta["target"],
        location=directory if streaming else None,
    )


# What a prepared.json written before format versions means by a field it lacks: written before
# streaming (in-memory splits, one directory each) and before regression.
_LEGACY_DEFAULTS = {"streaming": False, "partitioned": False, "task": "classification", "target": {}}


def _read_meta(path: str) -> dict[str, Any] | None:
    """Returns the metadata of saved splits in the current format; None when it was written before
    typed columns (prepare again). DataError for a format version this raylane does not know."""
    meta = json.loads(storage.read_text(path))
    version = meta.get("format_version")
    if version is None:  # written before format versions
        if "preprocessor" not in meta:  # written before typed columns: prepare again
            return None
        return {**_LEGACY_DEFAULTS, **meta, "format_version": FORMAT_VERSION}
    if type(version) is not int or version not in _READS_VERSIONS:
        raise DataError(f"{path}: prepared data has format_version {version!r}; this raylane reads "
                        f"format_version {FORMAT_VERSION} or earlier (or none, the layout before versions). "
                        "Delete the directory it is in to prepare the data again, or use the raylane "
                        "that wrote it")
    return meta
