"""Image bytes to pixels (`raylane.images`) and the image column of the preprocessor: what is
accepted, what is refused and how it is said, a decompression bomb refused from its header, and
normalization with train statistics that survives the JSON round trip."""

from __future__ import annotations

import base64
import resource
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from raylane.images import MAX_PIXELS, ImageTooLarge, decode_image
from raylane.preprocess import PIXELS_PREFIX, Column, Preprocessor, column_stats, merge_stats

from tests.image_files import declaring, encode


def gray(height: int = 8, width: int = 8, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8))


def rgb(height: int = 8, width: int = 8, seed: int = 0) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values)


def test_png_bytes_decode_to_the_same_pixels() -> None:
    image = gray()
    pixels = decode_image(encode(image), (8, 8), 1)
    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 1)
    assert (pixels[:, :, 0] == np.asarray(image)).all()


def test_base64_text_and_a_data_url_are_the_same_image() -> None:
    data = encode(rgb())
    text = base64.b64encode(data).decode()
    expected = decode_image(data, (8, 8), 3)
    assert (decode_image(text, (8, 8), 3) == expected).all()
    assert (decode_image(f"data:image/png;base64,{text}", (8, 8), 3) == expected).all()
    assert (decode_image(base64.urlsafe_b64encode(data).decode().rstrip("="), (8, 8), 3) == expected).all()
    assert (decode_image(text[:40] + "\n" + text[40:], (8, 8), 3) == expected).all()  # MIME line breaks


def test_images_are_resized_to_height_by_width() -> None:
    pixels = decode_image(encode(rgb(10, 20)), (4, 6), 3)
    assert pixels.shape == (4, 6, 3)
    jpeg = decode_image(encode(rgb(400, 300), "JPEG"), (32, 24), 3)
    assert jpeg.shape == (32, 24, 3)


def test_a_grayscale_image_for_a_color_model_is_repeated_in_each_channel() -> None:
    pixels = decode_image(encode(gray()), (8, 8), 3)
    assert pixels.shape == (8, 8, 3) and (pixels == pixels[:, :, :1]).all()


@pytest.mark.parametrize("mode, bands, channels", [("RGBA", 4, 1), ("RGBA", 4, 3), ("RGB", 3, 1)])
def test_more_channels_than_the_model_takes_are_refused_naming_them(mode, bands, channels) -> None:
    image = Image.new(mode, (4, 4), (200, 10, 10, 255)[:bands])  # red: not gray
    expected = rf"^image has {bands} channels \({mode}\); the model takes {channels}"
    with pytest.raises(ValueError, match=expected):
        decode_image(encode(image), (4, 4), channels)


def test_alpha_is_never_dropped_even_when_the_model_takes_more_channels() -> None:
    with pytest.raises(ValueError, match=r"image has 2 channels \(LA\); the model takes 3 without alpha"):
        decode_image(encode(Image.new("LA", (4, 4))), (4, 4), 3)


def test_palette_images_are_as_gray_or_colored_as_their_palette() -> None:
    gray_palette = gray().convert("P")  # 256 gray entries
    assert decode_image(encode(gray_palette), (8, 8), 1).shape == (8, 8, 1)
    colored = rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    expected = np.asarray(colored.convert("RGB"))
    assert (decode_image(encode(colored), (8, 8), 3) == expected).all()
    with pytest.raises(ValueError, match=r"image has 3 channels \(RGB palette\); the model takes 1"):
        decode_image(encode(colored), (8, 8), 1)
    with pytest.raises(ValueError, match=r"image has 4 channels \(RGBA palette\); the model takes 3"):
        decode_image(encode(colored, transparency=0), (8, 8), 3)


def test_a_color_image_whose_pixels_are_gray_is_gray() -> None:
    image = gray().convert("RGB")
    assert (decode_image(encode(image), (8, 8), 1)[:, :, 0] == np.asarray(gray())).all()
    assert decode_image(encode(image, "WEBP", lossless=True), (8, 8), 1).shape == (8, 8, 1)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits() -> None:
    values = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    pixels = decode_image(encode(Image.fromarray(values)), (2, 2), 1)
    assert pixels[:, :, 0].tolist() == [[0, 255], [100, 200]]


@pytest.mark.parametrize("data, problem", [
    (b"hello, not an image", "not an image"),
    (b"", "not an image: no bytes"),
    ("%%% not base64 %%%", "not an image: the text is not base64"),
    ("data:image/png,rawtext", "not an image: a data URL must be base64"),
    (12, "not an image: expected bytes or base64 text, got int"),
])
def test_what_is_not_an_image_says_so(data, problem) -> None:
    with pytest.raises(ValueError, match=f"^{problem}"):
        decode_image(data, (8, 8), 1)


def test_a_truncated_image_is_not_an_image() -> None:
    data = encode(gray(64, 64))
    with pytest.raises(ValueError, match=r"^not an image: truncated or corrupt PNG data"):
        decode_image(data[: len(data) // 2], (8, 8), 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_truncated_palette_image_is_not_an_image(channels) -> None:
    """A palette image is read (for its palette) before anything else: cut short, PIL's OSError
    there is a ValueError naming the problem too, not an error the endpoint answers with a 500."""
    data = encode(rgb(64, 64).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    with pytest.raises(ValueError, match=r"^not an image: truncated or corrupt PNG data") as raised:
        decode_image(data[: len(data) // 2], (8, 8), channels)
    assert not isinstance(raised.value, ImageTooLarge)


def test_a_format_outside_the_accepted_ones_is_named() -> None:
    with pytest.raises(ValueError, match=r"^unsupported image format 'GIF'; accepted: PNG, JPEG, BMP, WEBP$"):
        decode_image(encode(gray(), "GIF"), (8, 8), 1)
    for fmt in ("JPEG", "BMP", "WEBP"):
        assert decode_image(encode(gray(), fmt), (8, 8), 1).shape == (8, 8, 1)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width, height", [(30_000, 30_000), (8_000, 6_000)])
def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(width, height) -> None:
    """30000x30000 is above PIL's own guard (twice the limit), 8000x6000 only above raylane's:
    both are refused before a pixel is decoded (900 MB and 48 MB if they were)."""
    bomb = declaring(width, height)
    assert len(bomb) < 100 and width * height > MAX_PIXELS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"^image declares .* megapixels\); the limit is 40 megapixels$"):
        decode_image(bomb, (32, 32), 1)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 20 * 1024  # KiB: nothing allocated
    assert issubclass(ImageTooLarge, ValueError)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_lower_limit_refuses_a_real_image_from_its_header_and_never_raises_the_default() -> None:
    image = encode(Image.new("RGB", (3_000, 2_000), (10, 200, 30)))  # 6 megapixels, a few KB
    assert decode_image(image, (8, 8), 3).shape == (8, 8, 3)
    with pytest.raises(ImageTooLarge, match=r"^image declares 3000x2000 pixels \(6.0 megapixels\); the "
                                            r"limit is 4 megapixels$"):
        decode_image(image, (8, 8), 3, max_pixels=4_000_000)
    with pytest.raises(ImageTooLarge, match=r"the limit is 40 megapixels$"):  # capped at MAX_PIXELS
        decode_image(declaring(8_000, 6_000), (8, 8), 1, max_pixels=10 * MAX_PIXELS)
    column = Column("image", "image", image_size=[8, 8], channels=3, channel_mean=[0.0] * 3,
                    channel_std=[1.0] * 3)
    with pytest.raises(ImageTooLarge, match=r"^column 'image', row 0: image declares 3000x2000"):
        Preprocessor([column]).transform(pd.DataFrame({"image": [image]}), max_pixels=4_000_000)


def test_sixteen_bit_gray_rounds_to_the_nearest_eight_bit_value() -> None:
    values = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    pixels = decode_image(encode(Image.fromarray(values)), (256, 256), 1)[:, :, 0]
    assert (pixels == np.round(values / 257.0).astype(np.uint8)).all()


# --- the image column of the preprocessor ----------------------------------------------------------
SHAPE = (4, 4, 3)
KINDS = {"image": "image"}


def pixel_frame(images: list[Image.Image]) -> pd.DataFrame:
    """Typed rows as the data stage holds them: raw bytes, and the decoded pixels as bytes."""
    raw = [encode(i) for i in images]
    pixels = [decode_image(r, SHAPE[:2], SHAPE[2]).tobytes() for r in raw]
    return pd.DataFrame({"image": pd.Series(raw, dtype=object),
                         PIXELS_PREFIX + "image": pd.Series(pixels, dtype=object)})


def fitted_images() -> tuple[Preprocessor, list[Image.Image]]:
    images = [rgb(4, 4, seed) for seed in range(6)]
    frame = pixel_frame(images)
    halves = [column_stats(frame.iloc[:2], KINDS, SHAPE), column_stats(frame.iloc[2:], KINDS, SHAPE)]
    return Preprocessor.fit(KINDS, merge_stats(halves), max_categories=10, image_shape=SHAPE), images


def test_image_statistics_are_per_channel_over_the_train_pixels() -> None:
    pre, images = fitted_images()
    values = np.stack([np.asarray(i) for i in images]).reshape(-1, 3) / 255.0
    column = pre.columns[0]
    assert column.kind == "image" and column.image_size == [4, 4] and column.channels == 3
    assert np.allclose(column.channel_mean, values.mean(axis=0))
    assert np.allclose(column.channel_std, values.std(axis=0))
    assert pre.is_image and pre.image_shape == SHAPE and pre.width == 48


def test_an_image_column_encodes_hwc_normalized_from_bytes_or_base64() -> None:
    pre, images = fitted_images()
    column = pre.columns[0]
    raw = [encode(i) for i in images]
    frame = pd.DataFrame({"image": [raw[0], base64.b64encode(raw[1]).decode()]})
    x = pre.transform(frame)
    assert x.dtype == np.float32 and x.shape == (2, 48)
    expected = (np.asarray(images[1]) / 255.0 - column.channel_mean) / column.channel_std
    assert np.allclose(x[1], expected.reshape(-1), atol=1e-5)  # height, width, then channel
    assert np.allclose(pre.transform_typed(pixel_frame(images[:2])), x, atol=1e-6)


def test_a_bad_image_names_column_row_and_problem() -> None:
    pre, images = fitted_images()
    good = encode(images[0])
    cases = [(b"junk", "not an image"), (None, "the image is missing"),
             (encode(Image.new("RGBA", (4, 4))), r"image has 4 channels \(RGBA\); the model takes 3")]
    for value, problem in cases:
        frame = pd.DataFrame({"image": pd.Series([good, good, good, value], dtype=object)})
        with pytest.raises(ValueError, match=rf"^column 'image', row 3: {problem}"):
            pre.transform(frame)
    frame = pd.DataFrame({"image": pd.Series([good, declaring(30_000, 30_000)], dtype=object)})
    with pytest.raises(ImageTooLarge, match=r"^column 'image', row 1: image declares"):
        pre.transform(frame)


def test_the_image_column_survives_the_json_round_trip_and_tabular_json_is_unchanged() -> None:
    import json

    pre, images = fitted_images()
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre and again.image_shape == SHAPE
    frame = pd.DataFrame({"image": [encode(images[0])]})
    assert np.array_equal(again.transform(frame), pre.transform(frame))
    tabular = Preprocessor([Column("x", "numeric", mean=1.0, std=2.0)])
    assert tabular.to_dict() == {"columns": [{"name": "x", "kind": "numeric", "fill": 0.0, "mean": 1.0,
                                              "std": 2.0, "categories": []}]}  # as logged before images
    assert not tabular.is_image and tabular.image_shape is None


def test_image_preprocess_json_is_version_2_and_tabular_stays_1(tmp_path, monkeypatch) -> None:
    """An image column adds fields a raylane from before images cannot read: such a raylane (one
    that reads up to version 1) refuses the file with "upgrade raylane", and still loads tabular models."""
    import json

    from raylane.errors import ModelFormatError
    from raylane.model import pyfunc

    image, _ = fitted_images()
    tabular = Preprocessor([Column("x", "numeric", fill=0.0, mean=0.0, std=1.0)])
    paths = {}
    for name, pre in (("image", image), ("tabular", tabular)):
        paths[name] = pyfunc.write_preprocess(str(tmp_path / f"{name}.json"), pre, [0, 1], "torch")
        assert Preprocessor.from_dict(pyfunc.read_preprocess(paths[name])["preprocessor"]) == pre
    assert json.loads((tmp_path / "image.json").read_text())["format_version"] == 2
    assert json.loads((tmp_path / "tabular.json").read_text())["format_version"] == 1
    monkeypatch.setattr(pyfunc, "FORMAT_VERSION", 1)  # a raylane from before image columns
    assert pyfunc.read_preprocess(paths["tabular"])["classes"] == [0, 1]
    with pytest.raises(ModelFormatError, match=r"has format version 2; this raylane reads up to 1: upgrade"):
        pyfunc.read_preprocess(paths["image"])


# --- which tables are image data --------------------------------------------------------------------
def test_a_table_is_tabular_unless_data_image_column_names_its_image_column() -> None:
    import pyarrow as pa
    from raylane.config import DataConfig
    from raylane.data.sources import resolve_columns
    from raylane.errors import DataError

    schema = pa.schema([("image", pa.string()), ("age", pa.float64()), ("target", pa.int64())])
    kinds, _ = resolve_columns(DataConfig(source="t.csv"), ["t.csv"], [schema])
    assert kinds == {"image": "categorical", "age": "numeric"}  # a column that happens to be named so
    kinds, _ = resolve_columns(DataConfig(source="t.csv", image_column="image"), ["t.csv"], [schema])
    assert kinds == {"image": "image"}
    refused = [({"image_column": "photo"}, r"data.image_column: column 'photo' not found in t.csv"),
               ({"image_column": "age"}, r"data.image_column: column 'age' in t.csv holds double"),
               ({"image_column": "image", "column_types": {"image": "categorical"}},
                r"data.image_column: column 'image' is also data.column_types"),
               ({"image_column": "image", "feature_columns": ["image", "age"]},
                r"data.feature_columns: an image model's one feature is the image column 'image'")]
    for settings, message in refused:
        with pytest.raises(DataError, match=message):
            resolve_columns(DataConfig(source="t.csv", **settings), ["t.csv"], [schema])
