"""Ray Data stage on real Ray: sharded sources, a deterministic split, scaling fitted on train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from raylane import data
from raylane.config import DataConfig
from raylane.errors import DataError


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
    _, y1 = data.to_numpy(prepared.test)
    _, y2 = data.to_numpy(again.test)
    assert sorted(y1) == sorted(y2)
    other = data.prepare(DataConfig(source="sklearn:digits", seed=1), str(tmp_path))
    assert other.num_rows != prepared.num_rows or sorted(data.to_numpy(other.test)[1]) != sorted(y1)


def test_scaling_is_fitted_on_train_only(digits) -> None:
    prepared, _ = digits
    x_train, _ = data.to_numpy(prepared.train)
    x_test, _ = data.to_numpy(prepared.test)
    varying = np.asarray(prepared.scaler.std) != 1.0
    assert np.allclose(x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(x_train.std(axis=0)[varying], 1, atol=1e-3)
    assert not np.allclose(x_test.mean(axis=0)[varying], 0, atol=1e-3)


def test_test_split_keeps_raw_values_for_evaluation(digits) -> None:
    prepared, _ = digits
    batch = prepared.test.take_batch(5, batch_format="numpy")
    raw = np.stack(batch["raw"])
    assert raw.max() > 1 and np.allclose(prepared.scaler.apply(raw), np.stack(batch["features"]), atol=1e-5)


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


def test_non_numeric_feature_names_the_column(ray_local, tmp_path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1.0, 2.0], "colour": ["red", "blue"], "y": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'colour' in .*d.csv is not numeric"):
        data.prepare(DataConfig(source=str(path), label_column="y"), str(tmp_path))


def test_unknown_sklearn_source_lists_the_accepted_ones(ray_local, tmp_path) -> None:
    with pytest.raises(DataError, match="'sklearn:iris' is not one of sklearn:digits, sklearn:wine"):
        data.prepare(DataConfig(source="sklearn:iris"), str(tmp_path))


def test_missing_values_are_a_data_error_naming_the_column(ray_local, tmp_path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1.0, None, 3.0, 4.0], "y": [0, 1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'x' has 1 missing values"):
        data.prepare(DataConfig(source=str(path), label_column="y"), str(tmp_path))
