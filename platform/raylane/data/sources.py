"""Where the rows come from: `data.source` resolved to files (sklearn toy datasets written as
Parquet shards, a path, directory or glob listed, or a folder of images per class), each file's
schema read from its footer or first rows, and the feature columns with their kinds resolved across
files, schema drift included."""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylane import storage
from raylane.config import SKLEARN_SOURCES, DataConfig
from raylane.errors import DataError, StorageError
from raylane.images import IMAGE_EXTENSIONS
from raylane.preprocess import kind_of

READY_MARKER = "_RAYLANE_COMPLETE"  # written last into a directory: what is there is complete
FOLDER_IMAGE_COLUMN = "image"
"""The column an image folder source's images are read as (unless data.image_column names another)."""


def configure_ray_data() -> None:
    import ray.data

    # Ray 2.60's V2 parquet reader spends ~9 s listing a handful of local files on this
    # class of machine (footer indexing); the V1 reader takes 0.4 s for the same read.
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    context.enable_progress_bars = False  # raylane prints one line per stage instead


def resolve_source(cfg: DataConfig, storage_path: str) -> tuple[str, str]:
    if cfg.source.startswith("sklearn:"):
        name = cfg.source.removeprefix("sklearn:")
        if name not in SKLEARN_SOURCES:
            accepted = ", ".join(f"sklearn:{n}" for n in SKLEARN_SOURCES)
            raise DataError(f"data.source: {cfg.source!r} is not one of {accepted}, or a file path")
        return _write_sklearn_shards(name, cfg, storage_path), "parquet"
    return cfg.source, cfg.format


def _write_sklearn_shards(name: str, cfg: DataConfig, storage_path: str) -> str:
    """Returns the directory of `num_shards` parquet files holding an sklearn toy dataset."""
    fs, root = filesystem(storage_path)
    directory = posixpath.join(root, "datasets", f"sklearn_{name}_{cfg.num_shards}")
    marker = posixpath.join(directory, READY_MARKER)
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


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), posixpath.abspath(path)


def list_files(source: str, fmt: str, field: str = "data.source") -> list[str]:
    """Returns the data files a path, directory or glob names; DataError, naming `field` (where
    the source was given), when there are none."""
    fs, path = filesystem(source)
    scheme = source.split("://")[0] + "://" if "://" in source else ""
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        infos = _safe_listing(fs, base, source, field=field)
        found = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{field}: file or directory {source!r} not found")
        if info.type == pafs.FileType.File:
            return [scheme + path]
        found = [
            i.path for i in _safe_listing(fs, path, source, field=field)
            if i.is_file and not posixpath.basename(i.path).startswith(("_", "."))
            and (fmt != "csv" or i.path.endswith((".csv", ".csv.gz")))
        ]
    if not found:
        kind = "data" if fmt == "auto" else fmt
        raise DataError(f"{field}: no {kind} files match {source!r}")
    return [scheme + p for p in sorted(found)]


@dataclass(frozen=True)
class ImageFolder:
    """The images of a folder source root/<class>/..., listed on the driver (read in Ray tasks)."""

    files: list[str]
    classes: list[str]
    """The class of each file: the name of the folder under the root that holds it."""
    total_bytes: int


def list_images(source: str, fmt: str) -> ImageFolder | None:
    """Returns the images of a folder source: data.format 'images', or 'auto' and a directory whose
    entries are all subdirectories holding image files (and no Parquet or CSV). None when 'auto'
    finds something else; DataError when 'images' names no such folder."""
    if fmt not in ("auto", "images"):
        return None
    fs, root = filesystem(source)
    scheme = source.split("://")[0] + "://" if "://" in source else ""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        if fmt == "images":
            raise DataError(f"data.source: {source!r} is not a directory; data.format 'images' reads a "
                            "folder of class folders, root/<class>/*.png|*.jpg")
        return None
    visible = [i for i in _safe_listing(fs, root, source, recursive=False) if not _hidden(i.path)]
    if fmt == "auto" and any(i.type != pafs.FileType.Directory for i in visible):
        return None
    files, classes, total = [], [], 0
    for info in _safe_listing(fs, root, source):
        relative = posixpath.relpath(info.path, root)
        if not info.is_file or any(_hidden(part) for part in relative.split("/")):
            continue
        if info.path.lower().endswith((".parquet", ".csv", ".csv.gz")) and fmt == "auto":
            return None  # data files in partition folders (year=2024/...): a table
        if not info.path.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if "/" not in relative:
            raise DataError(f"data.source: image {scheme + info.path!r} is not in a class folder; "
                            f"put it under {source}/<class>/")
        files.append(scheme + info.path)
        classes.append(relative.split("/", 1)[0])
        total += max(info.size or 0, 0)
    if not files:
        if fmt == "auto":
            return None
        raise DataError(f"data.source: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under "
                        f"{source!r}")
    order = sorted(range(len(files)), key=files.__getitem__)
    return ImageFolder([files[i] for i in order], [classes[i] for i in order], total)


def _hidden(path: str) -> bool:
    return posixpath.basename(path).startswith(("_", "."))


def _safe_listing(fs: pafs.FileSystem, base: str, source: str, recursive: bool = True,
                  field: str = "data.source") -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{field}: cannot list {source!r}: {err}") from err


def file_schema(fs: pafs.FileSystem, path: str, fmt: str, cfg: DataConfig) -> pa.Schema:
    """Returns one file's column names and types, read from its footer (Parquet) or its first rows (CSV)."""
    local = path.split("://", 1)[-1]
    try:
        if fmt == "parquet":
            return pq.read_schema(local, filesystem=fs)
        import pyarrow.csv as pacsv

        with open_input(fs, local) as f:
            options = pacsv.ReadOptions(block_size=1 << 20)
            parse = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
            return pacsv.open_csv(f, read_options=options, parse_options=parse).schema
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"data.source {cfg.source!r}: cannot read {path!r}: {err}") from err


def folder_image_column(cfg: DataConfig) -> str:
    """The column an image folder source's images are read as."""
    return cfg.image_column or FOLDER_IMAGE_COLUMN


def _image_column(cfg: DataConfig, schema: pa.Schema, where: str) -> str | None:
    """Returns data.image_column, checked against the table: image bytes or paths, the model's only
    feature. None when it is unset: a table is tabular unless asked, whatever its columns are named."""
    name = cfg.image_column
    if name is None:
        return None
    if name not in schema.names:
        raise DataError(f"data.image_column: column {name!r} not found in {where}; columns are "
                        f"{', '.join(schema.names)}")
    taken = {"label_column": name == cfg.label_column, "id_column": name == cfg.id_column,
             "column_types": name in cfg.column_types}
    also = next((field_name for field_name, same in taken.items() if same), None)
    if also is not None:
        raise DataError(f"data.image_column: column {name!r} is also data.{also}; the image column is "
                        "the model's only feature")
    if cfg.feature_columns not in (None, [name]):
        raise DataError(f"data.feature_columns: an image model's one feature is the image column {name!r} "
                        "(data.image_column); unset data.feature_columns")
    kind = schema.field(name).type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise DataError(f"data.image_column: column {name!r} in {where} holds {kind}; expected image "
                        "bytes (binary) or image file paths (text)")
    return name


def open_input(fs: pafs.FileSystem, path: str) -> Any:
    """An input stream of a CSV file, gunzipped when it is a .gz."""
    return fs.open_input_stream(path, compression="detect" if path.endswith(".gz") else None)


def resolve_columns(cfg: DataConfig, files: list[str], schemas: list[pa.Schema]
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
    image = _image_column(cfg, first, where)
    names = list(cfg.feature_columns or [c for c in first.names if c not in special])
    if image is not None:
        names = [image]
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

    kinds = {n: "image" if n == image else cfg.column_types.get(n) or kind_of(file_type(n)) for n in names}
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
