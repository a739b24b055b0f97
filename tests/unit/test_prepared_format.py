"""Saved prepared data carries a format version: the current one loads, a file from before versions
loads as the layout it was written in (a resumed run keeps its splits), and an unknown version is an
error naming the file. The splits themselves are not read (no Ray): only what prepared.json says."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from raylane.data import PreparedData, load_prepared, save_prepared, store
from raylane.data.sources import READY_MARKER
from raylane.errors import DataError
from raylane.preprocess import Column, Preprocessor


@pytest.fixture
def reads(monkeypatch) -> list[tuple]:
    """Records each split load_prepared would read, instead of reading it with Ray Data."""
    calls: list[tuple] = []

    def read_split(directory: str, name: str, streaming: bool, partitioned: bool = True) -> str:
        calls.append((name, streaming, partitioned))
        return f"dataset:{name}"

    monkeypatch.setattr(store, "configure_ray_data", lambda: None)
    monkeypatch.setattr(store, "_read_split", read_split)
    return calls


def streamed(directory: str) -> PreparedData:
    """Prepared data whose splits were streamed to `directory`, so saving it writes metadata only."""
    return PreparedData(
        train=None, val=None, test=None, feature_columns=["x"], label_column="y", classes=[],
        preprocessor=Preprocessor([Column("x", "numeric", mean=2.0, std=3.0)]), source="s.parquet",
        files=["s.parquet"], digest="abc", num_rows={"train": 7, "val": 2, "test": 1},
        task="regression", target={"mean": 1.0, "std": 2.0}, location=directory,
    )


def write_meta(directory, meta: dict) -> None:
    (directory / "prepared.json").write_text(json.dumps(meta))
    (directory / READY_MARKER).write_text("complete\n")


def test_saved_metadata_carries_the_format_version_and_loads_back(tmp_path, reads) -> None:
    saved = streamed(str(tmp_path))
    save_prepared(saved, str(tmp_path))
    assert json.loads((tmp_path / "prepared.json").read_text())["format_version"] == store.FORMAT_VERSION

    loaded = load_prepared(str(tmp_path))
    assert reads == [("train", True, True), ("val", True, True), ("test", True, True)]
    assert loaded == replace(saved, train="dataset:train", val="dataset:val", test="dataset:test")


def test_image_data_saves_its_image_column_and_version_1_still_loads(tmp_path, reads) -> None:
    image = Column("image", "image", image_size=[28, 24], channels=1, channel_mean=[0.3], channel_std=[0.2])
    saved = replace(streamed(str(tmp_path)), feature_columns=["image"], preprocessor=Preprocessor([image]),
                    task="classification", target={}, classes=[0, 1])
    save_prepared(saved, str(tmp_path))
    loaded = load_prepared(str(tmp_path))
    assert loaded.image_shape == (28, 24, 1) and loaded.input_dim == 28 * 24
    assert loaded.preprocessor == saved.preprocessor and saved.image_shape == (28, 24, 1)

    meta = json.loads((tmp_path / "prepared.json").read_text())
    tabular = Preprocessor([Column("x", "numeric")]).to_dict()
    write_meta(tmp_path, {**meta, "format_version": 1, "preprocessor": tabular})  # as written before images
    loaded = load_prepared(str(tmp_path))
    assert loaded.image_shape is None and loaded.preprocessor.names == ["x"]


def test_metadata_without_a_version_loads_as_the_layout_before_versions(tmp_path, reads) -> None:
    preprocessor = Preprocessor([Column("x", "numeric")]).to_dict()
    write_meta(tmp_path, {  # as written before streaming and regression: no such fields
        "feature_columns": ["x"], "label_column": "y", "classes": [0, 1], "preprocessor": preprocessor,
        "source": "s.parquet", "files": ["s.parquet"], "digest": "abc",
        "num_rows": {"train": 7, "val": 2, "test": 1}, "bad_rows": 0, "bad_sample": [], "drift": [],
    })
    loaded = load_prepared(str(tmp_path))
    assert reads == [("train", False, False), ("val", False, False), ("test", False, False)]
    assert (loaded.task, loaded.target, loaded.location) == ("classification", {}, None)
    assert loaded.classes == [0, 1] and loaded.preprocessor.names == ["x"]


def test_metadata_from_before_typed_columns_is_prepared_again(tmp_path, reads) -> None:
    write_meta(tmp_path, {"feature_columns": ["x"], "label_column": "y"})  # no "preprocessor"
    assert load_prepared(str(tmp_path)) is None
    assert reads == []


def test_an_unknown_format_version_names_the_file_and_the_versions(tmp_path, reads) -> None:
    write_meta(tmp_path, {"format_version": 99, "feature_columns": ["x"]})
    with pytest.raises(DataError) as err:
        load_prepared(str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "prepared.json") in message
    assert "format_version 99" in message and f"format_version {store.FORMAT_VERSION}" in message
    assert reads == []
