"""Ray Data stage on real Ray: sharded sources, a deterministic split, preprocessing fitted on train,
typed columns, bad rows under both policies and schema drift between files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from raylane import data
from raylane.config import DataConfig
from raylane.errors import DataError

from tests.s3_server import s3_bucket
from tests.typed_data import BAD_LINES, FEATURES, customers, write_csv


def to_numpy(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Returns (features, label) arrays of a small prepared split."""
    batch = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    return np.stack(batch["features"]).astype(np.float32), np.asarray(batch["label"])


@pytest.fixture(scope="module")
def digits(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    return data.prepare(DataConfig(source="sklearn:digits"), str(storage)), storage


def test_sklearn_source_is_written_as_parquet_shards(digits) -> None:
    prepared, storage = digits
    assert len(prepared.files) == 4
    assert all(f.endswith(".parquet") and Path(f).is_file() for f in prepared.files)
    assert str(storage) in prepared.source


def test_split_covers_every_row_once_with_the_configured_fractions(digits) -> None:
    prepared, _ = digits
    rows = prepared.num_rows
    assert sum(rows.values()) == 1797
    assert 0.10 < rows["val"] / 1797 < 0.20 and 0.10 < rows["test"] / 1797 < 0.20
    assert prepared.train.count() == rows["train"]
    assert prepared.classes == list(range(10))


def test_split_is_deterministic_for_a_seed(digits, tmp_path) -> None:
    prepared, _ = digits
    again = data.prepare(DataConfig(source="sklearn:digits"), str(tmp_path))
    assert again.digest == prepared.digest and again.num_rows == prepared.num_rows
    _, y1 = to_numpy(prepared.test)
    _, y2 = to_numpy(again.test)
    assert sorted(y1) == sorted(y2)
    other = data.prepare(DataConfig(source="sklearn:digits", seed=1), str(tmp_path))
    assert other.num_rows != prepared.num_rows or sorted(to_numpy(other.test)[1]) != sorted(y1)


def test_scaling_is_fitted_on_train_only(digits) -> None:
    prepared, _ = digits
    x_train, _ = to_numpy(prepared.train)
    x_test, _ = to_numpy(prepared.test)
    varying = np.array([c.std != 1.0 for c in prepared.preprocessor.columns])
    assert np.allclose(x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(x_train.std(axis=0)[varying], 1, atol=1e-3)
    assert not np.allclose(x_test.mean(axis=0)[varying], 0, atol=1e-3)


def test_test_split_keeps_raw_values_for_evaluation(digits) -> None:
    prepared, _ = digits
    raw, _ = data.raw_rows(prepared.test, 5)
    batch = prepared.test.take_batch(5, batch_format="numpy")
    assert list(raw.columns) == prepared.feature_columns and raw.to_numpy().max() > 1
    assert np.allclose(prepared.preprocessor.transform(raw), np.stack(batch["features"]), atol=1e-5)


def test_csv_directory_with_string_labels(ray_local, tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
        frame["kind"] = np.where(frame["a"] > 0, "pos", "neg")
        frame.to_csv(tmp_path / f"part{i}.csv", index=False)
    prepared = data.prepare(DataConfig(source=str(tmp_path), label_column="kind"), str(tmp_path / "s"))
    assert prepared.classes == ["neg", "pos"] and prepared.feature_columns == ["a", "b", "c"]
    assert sum(prepared.num_rows.values()) == 120


def test_missing_file_is_a_data_error_naming_it(ray_local, tmp_path) -> None:
    with pytest.raises(DataError, match=r"file or directory '.*nowhere.parquet' not found"):
        data.prepare(DataConfig(source=str(tmp_path / "nowhere.parquet")), str(tmp_path))
    with pytest.raises(DataError, match=r"no data files match"):
        data.prepare(DataConfig(source=str(tmp_path / "*.parquet")), str(tmp_path))


def test_missing_label_column_names_file_and_columns(ray_local, tmp_path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        data.prepare(DataConfig(source=str(path), label_column="label"), str(tmp_path))
    assert "column 'label' not found in" in str(err.value) and "d.csv" in str(err.value)
    assert "columns are x, y" in str(err.value)


def test_unknown_sklearn_source_lists_the_accepted_ones(ray_local, tmp_path) -> None:
    with pytest.raises(DataError, match="'sklearn:iris' is not one of sklearn:digits, sklearn:wine"):
        data.prepare(DataConfig(source="sklearn:iris"), str(tmp_path))


def test_missing_numeric_values_are_imputed_with_the_train_mean(ray_local, tmp_path) -> None:
    path = tmp_path / "d.csv"
    x = np.arange(200, dtype=float)
    x[::4] = np.nan
    pd.DataFrame({"x": x, "y": np.arange(200) % 2}).to_csv(path, index=False)
    prepared = data.prepare(DataConfig(source=str(path), label_column="y"), str(tmp_path / "s"))
    column = prepared.preprocessor.columns[0]
    assert column.kind == "numeric" and 80 < column.fill < 120 and column.fill == column.mean
    assert np.isfinite(to_numpy(prepared.train)[0]).all()
    assert sum(prepared.num_rows.values()) == 200 and prepared.bad_rows == 0


# --- typed columns and dirty data ------------------------------------------------------------------
def typed_config(source, **extra) -> DataConfig:
    return DataConfig(source=str(source), label_column="label", id_column="id", **extra)


def test_column_kinds_come_from_the_file_types_and_the_config(ray_local, tmp_path) -> None:
    frame = customers(300)
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    frame.iloc[:150].to_parquet(pq_dir / "a.parquet")
    frame.iloc[150:].to_parquet(pq_dir / "b.parquet")
    prepared = data.prepare(typed_config(pq_dir), str(tmp_path / "s"))
    assert prepared.preprocessor.kinds == FEATURES and prepared.feature_columns == list(FEATURES)
    city = prepared.preprocessor.columns[1]
    assert sorted(city.categories) == ["lyon", "nice", "paris"]
    assert prepared.input_dim == 6  # age, 3 cities, member, income
    overridden = data.prepare(typed_config(pq_dir, column_types={"member": "categorical"}),
                              str(tmp_path / "t"))
    assert overridden.preprocessor.kinds["member"] == "categorical"
    assert sum(overridden.num_rows.values()) == 300


def test_bad_rows_fail_before_training_naming_file_line_and_column(ray_local, tmp_path) -> None:
    write_csv(tmp_path / "csv", customers(), bad=True)
    with pytest.raises(DataError) as err:
        data.prepare(typed_config(tmp_path / "csv"), str(tmp_path / "s"))
    message = str(err.value)
    assert "data.on_bad_rows=fail: 4 bad rows" in message
    assert "part-1.csv line 302: column 'age': 'abc' is not a number" in message
    assert "data.on_bad_rows: drop" in message


def test_bad_rows_dropped_are_counted_exactly_with_a_sample(ray_local, tmp_path) -> None:
    write_csv(tmp_path / "csv", customers(), bad=True)
    prepared = data.prepare(typed_config(tmp_path / "csv", on_bad_rows="drop"), str(tmp_path / "s"))
    assert prepared.bad_rows == len(BAD_LINES) and sum(prepared.num_rows.values()) == 600
    for line, (_, problem) in zip(range(302, 306), BAD_LINES, strict=True):
        expected = f"part-1.csv line {line}: {problem}"
        assert any(expected in s for s in prepared.bad_sample), prepared.bad_sample
    x, _ = to_numpy(prepared.train)
    assert x.shape[1] == 6 and np.isfinite(x).all()  # missing ages and cities encoded, not dropped


def test_schema_drift_is_reported_by_file(ray_local, tmp_path) -> None:
    frame = customers(200)
    (tmp_path / "missing").mkdir()
    frame.iloc[:100].to_parquet(tmp_path / "missing" / "a.parquet")
    frame.iloc[100:].drop(columns=["city"]).to_parquet(tmp_path / "missing" / "b.parquet")
    drift = r"schema drift: .*b.parquet has no column 'city' \(found in .*a.parquet\)"
    with pytest.raises(DataError, match=drift):
        data.prepare(typed_config(tmp_path / "missing"), str(tmp_path / "s"))
    (tmp_path / "drift").mkdir()
    frame.iloc[:100].to_parquet(tmp_path / "drift" / "a.parquet")
    changed = frame.iloc[100:].assign(extra=1, income=lambda f: f["income"].astype(str))
    changed.to_parquet(tmp_path / "drift" / "b.parquet")
    prepared = data.prepare(typed_config(tmp_path / "drift"), str(tmp_path / "t"))
    assert any("b.parquet: extra column extra" in d for d in prepared.drift), prepared.drift
    assert any("b.parquet: column 'income' is" in d and "read as numeric" in d for d in prepared.drift)
    assert prepared.bad_rows == 0 and sum(prepared.num_rows.values()) == 200  # '49.5' is a number


def test_pandas_and_dask_frames_are_sources_with_the_same_rows(ray_local, tmp_path) -> None:
    import dask.dataframe as dd

    frame = customers(400)
    from_pandas = data.prepare(typed_config(data.from_dataframe(frame, str(tmp_path), "pandas")),
                               str(tmp_path))
    source = data.from_dataframe(dd.from_pandas(frame, npartitions=3), str(tmp_path), "dask")
    from_dask = data.prepare(typed_config(source), str(tmp_path))
    assert sum(from_pandas.num_rows.values()) == 400 and from_pandas.preprocessor.kinds == FEATURES
    assert from_dask.digest == from_pandas.digest and from_dask.num_rows == from_pandas.num_rows
    with pytest.raises(DataError, match="expected a pandas or Dask DataFrame, got list"):
        data.from_dataframe([1, 2], str(tmp_path))


def test_s3_csv_glob_and_parquet_sources_on_an_s3_server(ray_local, tmp_path) -> None:
    import pyarrow.parquet as pq
    from pyarrow import Table

    with s3_bucket("data") as bucket:
        fs, options = bucket["fs"], bucket["options"]
        for path in write_csv(tmp_path / "csv", customers(300), bad=True):
            fs.create_dir("data/csv")
            with fs.open_output_stream(f"data/csv/{path.name}") as out:
                out.write(path.read_bytes())
        fs.create_dir("data/pq")
        pq.write_table(Table.from_pandas(customers(300)), "data/pq/part-0.parquet", filesystem=fs)
        csv = data.prepare(typed_config(f"s3://data/csv/*.csv?{options}", on_bad_rows="drop"),
                           str(tmp_path / "s"))
        assert len(csv.files) == 2 and csv.bad_rows == len(BAD_LINES)
        assert sum(csv.num_rows.values()) == 300
        assert any("part-1.csv line 152: column 'age'" in s for s in csv.bad_sample), csv.bad_sample
        parquet = data.prepare(typed_config(f"s3://data/pq?{options}"), str(tmp_path / "t"))
        assert parquet.preprocessor.kinds == FEATURES and sum(parquet.num_rows.values()) == 300
        assert parquet.digest == csv.digest  # the same rows, whatever the format


def test_labels_typed_differently_by_each_csv_file_are_the_same_classes(ray_local, tmp_path) -> None:
    rng = np.random.default_rng(3)
    for name, labels in (("a", [0, 1] * 30), ("b", ["1.0", "0"] * 29 + ["", "1"])):
        frame = pd.DataFrame({"x": rng.normal(size=60), "y": labels})
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    prepared = data.prepare(DataConfig(source=str(tmp_path / "*.csv"), label_column="y", on_bad_rows="drop"),
                            str(tmp_path / "s"))
    assert prepared.classes == [0, 1] and prepared.bad_rows == 1


def _sorted_split(dataset) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_numpy(dataset)
    order = np.lexsort(x.T[::-1])
    return x[order], y[order]


def test_streaming_writes_the_same_splits_as_parquet_and_reads_them_lazily(ray_local, tmp_path) -> None:
    """data.streaming=true: nothing held whole; the encoded splits are Parquet under the run's
    storage, read back lazily, with the same rows, features and labels as the in-memory path, and
    raw values for the test split only. A second attempt of the run loads them instead."""
    frame = customers(400)
    frame.iloc[:200].to_parquet(tmp_path / "a.parquet")
    frame.iloc[200:].to_parquet(tmp_path / "b.parquet")
    source = tmp_path / "*.parquet"
    in_memory = data.prepare(typed_config(source), str(tmp_path / "m"))
    directory = str(tmp_path / "run" / "data")
    streamed, loaded = data.prepare_once(typed_config(source, streaming=True), str(tmp_path / "s"), directory)
    assert not loaded and streamed.location == directory
    assert streamed.num_rows == in_memory.num_rows and streamed.digest == in_memory.digest
    for name in data.SPLITS:
        assert (Path(directory) / f"split={name}").is_dir()
        dataset = getattr(streamed, name)
        assert "materialized" not in type(dataset).__name__.lower()  # a lazy read of the Parquet
        assert dataset.count() == in_memory.num_rows[name]
        x1, y1 = _sorted_split(getattr(in_memory, name))
        x2, y2 = _sorted_split(dataset)
        assert np.allclose(x1, x2, atol=1e-6) and (y1 == y2).all()
    assert set(streamed.train.columns()) == {"features", "label"}
    raw, _ = data.raw_rows(streamed.test)
    expected, _ = data.raw_rows(in_memory.test)
    assert list(raw.columns) == streamed.feature_columns
    assert len(raw) == len(expected) and raw["city"].notna().sum() == expected["city"].notna().sum()

    again, loaded = data.prepare_once(typed_config(source, streaming=True), str(tmp_path / "s"), directory)
    assert loaded and again.location == directory and again.num_rows == streamed.num_rows
    assert again.train.count() == streamed.num_rows["train"]
