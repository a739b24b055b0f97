"""Benchmark data written once: Parquet files of float32 feature columns `f0..` and an int64 `label`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

# (generator, rows) -> (features float32 [rows, cols] with NaN where missing, labels int64 [rows])
Block = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def write_once(directory: Path, rows: int, cols: int, files: int, block: Block) -> None:
    """Writes `files` Parquet files of `rows` in all under `directory`, unless the same shape is
    already there (a marker file names it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = directory / f"_{rows}x{cols}x{files}"
    if marker.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(0)
    per_file = -(-rows // files)
    for i in range(files):
        x, label = block(rng, min(per_file, rows - i * per_file))
        table = {f"f{j}": pa.array(x[:, j], from_pandas=True) for j in range(cols)}
        table["label"] = pa.array(label.astype(np.int64))
        pq.write_table(pa.table(table), directory / f"part-{i:03d}.parquet")
    marker.touch()
    print(f"[bench] wrote {rows:,} rows x {cols} columns in {files} files to {directory}", flush=True)
