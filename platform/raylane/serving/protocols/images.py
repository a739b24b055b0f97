"""What an image model takes on each protocol: one image per row, as base64 text or raw bytes.

    KServe V1      {"instances": [{"b64": "<base64>"}, {"image": {"b64": ...}}, {"image": "<base64>"},
                   "<base64>", ...]}   (KServe's convention for binary data, by position or by name)
    Open Inference one BYTES input of shape [n] (or [n, 1]): base64 text in JSON `data`, or each
                   image's bytes through the binary extension (a 4-byte little-endian length, then
                   the bytes, per element)
    MLflow scoring a base64 column in any of the JSON formats or CSV (invocations.py, as
                   `mlflow models serve` takes it)
    raw body       one image, Content-Type image/png or image/jpeg (V1 predict, V2 infer,
                   /invocations), answered in that protocol's shape for one instance

The rows come back as a one-column DataFrame of bytes or text: the model's own preprocessor then
decodes, checks and resizes them (`raylane.images`), and its errors name the row and the problem.
"""

# No `from __future__ import annotations`: v2.py's pydantic models are used at runtime here.
import struct
from typing import Any

import pandas as pd

from raylane.serving.errors import InvalidInput
from raylane.serving.model import LoadedModel

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg")
"""The raw request bodies documented; any image/* body is tried (the decoder names what it finds)."""


def raw_image(content_type: str | None, body: bytes) -> bytes | None:
    """Returns the body when it is one image (an image/* content type), else None."""
    mime = (content_type or "").partition(";")[0].strip().lower()
    return body if mime.startswith("image/") else None


def image_frame(model: LoadedModel, images: list[Any]) -> pd.DataFrame:
    """The rows the model's preprocessor takes: its one image column, one image (bytes or base64
    text) per row."""
    if not images:
        raise InvalidInput("no images to predict")
    return pd.DataFrame({model.feature_columns[0]: pd.Series(images, dtype=object)})


def takes_images(model: LoadedModel, protocol: str) -> str:
    """What to send instead, said in the protocol's own terms."""
    height, width, channels = model.image_shape or (0, 0, 0)
    what = f"this model takes images ({height}x{width}, {channels} channel{'s' * (channels != 1)}): "
    how = {
        "v1": 'send each instance as {"b64": "<base64 PNG or JPEG>"}',
        "v2": ("send one input of datatype BYTES and shape [n] (or [n, 1]), each element base64 text "
               "in JSON data or an image's bytes through the binary data extension"),
        "invocations": f"send a column {model.feature_columns[0]!r} of base64 text",
    }[protocol]
    return what + how + ", or one image as the body with Content-Type image/png or image/jpeg"


def v1_images(instances: list[Any], model: LoadedModel) -> pd.DataFrame:
    """KServe V1 instances of an image model as its rows; InvalidInput naming the first one that
    holds no image."""
    column = model.feature_columns[0]
    return image_frame(model, [_v1_image(row, column, f"instances[{i}]", model)
                               for i, row in enumerate(instances)])


def _v1_image(row: Any, column: str, where: str, model: LoadedModel) -> str:
    value = row
    if isinstance(row, list) and len(row) == 1:  # a row of the one column, by position
        value = row[0]
    elif isinstance(row, dict) and set(row) == {column}:  # by the column's name
        value = row[column]
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if isinstance(value, str):
        return value
    raise InvalidInput(f"{where}: {_described(row)} is not an image; {takes_images(model, 'v1')}")


def _described(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:3]}"
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:60]


def v2_images(request: Any, binary: bytes, model: LoadedModel) -> pd.DataFrame:
    """The one BYTES input of an Open Inference request (a `V2InferRequest`) as the model's rows:
    base64 text in JSON `data` (or {"b64": ...} elements), or raw images through the binary data
    extension. InvalidInput naming the input and what is wrong."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"inputs: {len(request.inputs)} inputs; {takes_images(model, 'v2')}")
    tensor = request.inputs[0]
    where = f"inputs[0] ({tensor.name!r})"
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"{where}: datatype {tensor.datatype!r}; {takes_images(model, 'v2')}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
        raise InvalidInput(f"{where}: shape {shape}; one image per row takes shape [n] or [n, 1]")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        images: list[Any] = bytes_elements(binary, size, where)
    else:
        if binary:
            raise InvalidInput(f"{len(binary)} bytes of binary data are not claimed by any input")
        if tensor.data is None:
            raise InvalidInput(f"{where}: no data (send base64 text in 'data', or the images' bytes "
                               "with 'binary_data_size')")
        images = [_v2_text(v, f"{where}: data[{i}]", model) for i, v in enumerate(_flat(tensor.data))]
    if len(images) != shape[0]:
        raise InvalidInput(f"{where}: {len(images)} images do not fill shape {shape}")
    if not images:
        raise InvalidInput("inputs: no rows to predict (the batch dimension is 0)")
    return image_frame(model, images)


def _flat(data: list[Any]) -> list[Any]:
    return [v for item in data for v in (item if isinstance(item, list) else [item])]


def _v2_text(value: Any, where: str, model: LoadedModel) -> str:
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if isinstance(value, str):
        return value
    raise InvalidInput(f"{where}: {_described(value)} is not an image; {takes_images(model, 'v2')}")


def bytes_elements(binary: bytes, size: Any, where: str) -> list[bytes]:
    """The elements of a BYTES tensor sent as binary data: each a 4-byte little-endian length and
    that many bytes, filling exactly `size` bytes (the whole binary part: an image model has one input)."""
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise InvalidInput(f"{where}: binary_data_size {size!r} does not match the {len(binary)} bytes "
                           "after the JSON header")
    elements, at = [], 0
    while at < size:
        if at + 4 > size:
            raise InvalidInput(f"{where}: binary BYTES element {len(elements)} is cut short: each element "
                               "is a 4-byte little-endian length, then that many bytes")
        (length,) = struct.unpack_from("<I", binary, at)
        at += 4
        if at + length > size:
            raise InvalidInput(f"{where}: binary BYTES element {len(elements)} declares {length} bytes; "
                               f"only {size - at} remain")
        elements.append(binary[at:at + length])
        at += length
    return elements
