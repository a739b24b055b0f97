"""Images as a data source on real Ray: a folder per class (local and S3), a Parquet column of image
bytes and a CSV column of image paths take the tabular path as a column of kind image: the same
hash split, train-only statistics, bad rows named by file under both policies, streaming, and a
test split that keeps the bytes a client would send."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from raylane import data
from raylane.config import DataConfig
from raylane.errors import DataError

from pipelines.digits_images import write_digits
from tests.image_files import declaring, encode
from tests.s3_server import s3_bucket


def to_numpy(dataset) -> tuple[np.ndarray, np.ndarray]:
    batch = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    return np.stack(batch["features"]).astype(np.float32), np.asarray(batch["label"])


@pytest.fixture(scope="module")
def digits_png(tmp_path_factory) -> Path:
    """scikit-learn's digits as 16x16 PNG files, root/<digit>/<index>.png."""
    root = tmp_path_factory.mktemp("digits_png")
    write_digits(root, size=16)
    return root


@pytest.fixture(scope="module")
def digits(ray_local, digits_png, tmp_path_factory):
    cfg = DataConfig(source=str(digits_png), image_size=[12, 10], image_channels=1)
    return data.prepare(cfg, str(tmp_path_factory.mktemp("storage")))


def some_digits(root: Path, per_class: int = 6) -> list[tuple[Path, int]]:
    """(file, digit) of the first `per_class` PNG files of each digit under `root`."""
    return [(path, digit) for digit in range(10)
            for path in sorted((root / str(digit)).glob("*.png"))[:per_class]]


def test_a_folder_per_class_is_read_as_images_of_their_folders_class(digits) -> None:
    assert digits.feature_columns == ["image"] and digits.preprocessor.kinds == {"image": "image"}
    assert digits.classes == list(range(10)) and sum(digits.num_rows.values()) == 1797
    assert digits.image_shape == (12, 10, 1) and digits.input_dim == 120
    x, y = to_numpy(digits.train)
    assert x.shape == (digits.num_rows["train"], 120) and set(y) == set(range(10))
    assert 0.10 < digits.num_rows["test"] / 1797 < 0.20 and digits.bad_rows == 0


def test_image_statistics_come_from_the_train_split_only(digits) -> None:
    x_train, _ = to_numpy(digits.train)
    x_test, _ = to_numpy(digits.test)
    assert abs(x_train.mean()) < 1e-4 and abs(x_train.std() - 1) < 1e-3
    assert abs(x_test.mean()) > 1e-3  # normalized with the train split's mean, not its own


def test_the_test_split_keeps_the_image_bytes_a_client_sends(digits, digits_png) -> None:
    raw, labels = data.raw_rows(digits.test, 8)
    assert list(raw.columns) == ["image"] and all(v.startswith(b"\x89PNG") for v in raw["image"])
    batch = digits.test.take_batch(8, batch_format="numpy")
    assert np.allclose(digits.preprocessor.transform(raw), np.stack(batch["features"]), atol=1e-5)
    files = {p.read_bytes(): int(p.parent.name) for p in digits_png.glob("*/*.png")}
    assert [files[v] for v in raw["image"]] == [digits.classes[i] for i in labels]


def test_the_split_is_the_same_when_streamed_and_when_loaded_again(ray_local, digits, digits_png,
                                                                   tmp_path) -> None:
    cfg = DataConfig(source=str(digits_png), image_size=[12, 10], image_channels=1, streaming=True)
    directory = str(tmp_path / "run" / "data")
    streamed, loaded = data.prepare_once(cfg, str(tmp_path / "s"), directory)
    assert not loaded and streamed.digest == digits.digest and streamed.num_rows == digits.num_rows
    raw, _ = data.raw_rows(streamed.test)
    assert len(raw) == digits.num_rows["test"] and raw["image"].notna().all()
    again, loaded = data.prepare_once(cfg, str(tmp_path / "s"), directory)
    assert loaded and again.image_shape == (12, 10, 1) and again.preprocessor == streamed.preprocessor


def test_a_parquet_column_of_image_bytes_is_the_feature(ray_local, digits_png, tmp_path) -> None:
    rows = pd.DataFrame([{"image": path.read_bytes(), "digit": digit, "note": "x"}
                         for path, digit in some_digits(digits_png)])
    rows.iloc[::2].to_parquet(tmp_path / "a.parquet")
    rows.iloc[1::2].to_parquet(tmp_path / "b.parquet")
    cfg = DataConfig(source=str(tmp_path / "*.parquet"), label_column="digit", image_column="image",
                     image_size=8)
    prepared = data.prepare(cfg, str(tmp_path / "s"))
    assert prepared.feature_columns == ["image"] and prepared.image_shape == (8, 8, 3)  # gray repeated
    assert sum(prepared.num_rows.values()) == 60 and prepared.classes == list(range(10))
    x, _ = to_numpy(prepared.train)
    assert x.shape[1] == 8 * 8 * 3 and np.isfinite(x).all()


def test_a_csv_column_of_image_paths_reads_them_relative_to_the_table(ray_local, digits_png,
                                                                      tmp_path) -> None:
    table = tmp_path / "table"
    shutil.copytree(digits_png, table / "pictures")
    paths = [(f"pictures/{p.parent.name}/{p.name}", digit) for p, digit in some_digits(digits_png)]
    paths[0] = (str(table / paths[0][0]), paths[0][1])  # an absolute path
    paths.append(("pictures/3/nowhere.png", 3))
    pd.DataFrame(paths, columns=["image", "label"]).to_csv(table / "index.csv", index=False)
    settings = {"source": str(table / "index.csv"), "label_column": "label", "image_column": "image",
                "image_size": 16, "image_channels": 1}
    missing = r"index.csv line 62: column 'image': pictures/3/nowhere.png: file not found"
    with pytest.raises(DataError, match=missing):
        data.prepare(DataConfig(**settings), str(tmp_path / "s"))
    prepared = data.prepare(DataConfig(**settings, on_bad_rows="drop"), str(tmp_path / "s"))
    assert prepared.bad_rows == 1 and sum(prepared.num_rows.values()) == 60
    assert prepared.image_shape == (16, 16, 1)


@pytest.fixture
def dirty_folder(digits_png, tmp_path) -> Path:
    """A few digits plus a file that is not an image in 3/, an RGBA image in 5/ and a PNG declaring
    30000x30000 pixels in 7/."""
    root = tmp_path / "dirty"
    for path, digit in some_digits(digits_png, per_class=4):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / str(digit) / path.name)
    (root / "3" / "img_7.png").write_bytes(b"this is not a png")
    (root / "5" / "alpha.png").write_bytes(encode(Image.new("RGBA", (16, 16), (255, 0, 0, 128))))
    (root / "5" / "notes.txt").write_text("not an image file name: ignored")
    (root / "7" / "bomb.png").write_bytes(declaring(30_000, 30_000))
    return root


def test_a_file_that_is_not_an_image_has_alpha_or_is_a_bomb_fails_naming_it(ray_local, dirty_folder,
                                                                            tmp_path) -> None:
    cfg = DataConfig(source=str(dirty_folder), image_channels=1, image_size=16)
    with pytest.raises(DataError) as err:
        data.prepare(cfg, str(tmp_path / "s"))
    message = str(err.value)
    assert "data.on_bad_rows=fail: 3 bad rows" in message and "data.on_bad_rows: drop" in message
    assert f"{dirty_folder}/3/img_7.png: not an image" in message


def test_bad_images_are_dropped_and_counted_with_their_file(ray_local, dirty_folder, tmp_path) -> None:
    cfg = DataConfig(source=str(dirty_folder), image_channels=1, image_size=16, on_bad_rows="drop")
    prepared = data.prepare(cfg, str(tmp_path / "s"))
    assert prepared.bad_rows == 3 and sum(prepared.num_rows.values()) == 40
    assert f"{dirty_folder}/3/img_7.png: not an image" in prepared.bad_sample
    alpha = f"{dirty_folder}/5/alpha.png: image has 4 channels (RGBA); the model takes 1"
    assert alpha in prepared.bad_sample
    bomb = f"{dirty_folder}/7/bomb.png: image declares 900,000,000 pixels (900.0 megapixels); the limit is"
    assert any(s.startswith(bomb) for s in prepared.bad_sample), prepared.bad_sample


def test_an_image_folder_with_an_id_column_is_refused(ray_local, dirty_folder, tmp_path) -> None:
    with pytest.raises(DataError, match="data.id_column: .* is a folder of images"):
        data.prepare(DataConfig(source=str(dirty_folder), id_column="id"), str(tmp_path / "s"))
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "notes.txt").write_text("no image here")
    with pytest.raises(DataError, match="data.source: no images .* in class folders under"):
        data.prepare(DataConfig(source=str(tmp_path / "texts"), format="images"), str(tmp_path / "s"))


def test_an_image_folder_on_s3(ray_local, digits_png, tmp_path) -> None:
    with s3_bucket("images") as bucket:
        fs, options = bucket["fs"], bucket["options"]
        for path, digit in some_digits(digits_png, per_class=5):
            fs.create_dir(f"images/digits/{digit}")
            with fs.open_output_stream(f"images/digits/{digit}/{path.name}") as out:
                out.write(path.read_bytes())
        prepared = data.prepare(DataConfig(source=f"s3://images/digits?{options}", image_channels=1),
                                str(tmp_path / "s"))
        assert sum(prepared.num_rows.values()) == 50 and prepared.classes == list(range(10))
        assert prepared.image_shape == (32, 32, 1) and all(f.startswith("s3://") for f in prepared.files)
