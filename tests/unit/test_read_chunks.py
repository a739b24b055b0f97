"""A Parquet file is typed chunk by chunk: rows keep their numbers across chunks (pure logic, no Ray)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from raylane.data import rows as data_rows


def test_chunks_cover_every_row_and_name_a_bad_row_by_its_row_in_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data_rows, "_CHUNK_VALUES", 1)  # the floor: 1024 rows a chunk
    x = [str(i) for i in range(3000)]
    x[2499] = "abc"  # row 2500 of the file, in its third chunk
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"x": x, "label": [i % 3 for i in range(3000)]}), path)

    reader = data_rows.ReadFile(pafs.LocalFileSystem(), "parquet", {"x": "numeric"}, "label", None,
                                "classification")
    chunks = list(reader(pd.DataFrame({"index": [0], "path": [str(path)]})))
    assert [len(c) for c in chunks] == [1024, 1024, 952]
    rows = pd.concat(chunks, ignore_index=True)
    assert rows["x"].iloc[2998] == 2998.0 and rows[data_rows._LABEL].tolist()[:4] == [0, 1, 2, 0]
    errors = rows[data_rows._ERROR].dropna().tolist()
    assert errors == [f"{path} row 2500: column 'x': 'abc' is not a number"]
