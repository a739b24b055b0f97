"""What every protocol does around the model call: a typed model's raw columns (or an image
model's images) encoded into the network's input, a NaN, an Infinity or an integer beyond a 64-bit
float refused in the same words on each, and the network's answer checked before any protocol
shapes it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from raylane.images import ImageTooLarge
from raylane.serving.errors import InvalidInput, PayloadTooLarge, json_path, shown
from raylane.serving.model import LoadedModel

FLOAT_DIGITS = 309
"""Digits of the smallest integer beyond a 64-bit float (about 1.8e308)."""
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * FLOAT_DIGITS
"""A run of FLOAT_DIGITS digits, found in linear time (a regex like rb"\\d{309}" backtracks over
every shorter run: 0.4 s on 1 MB of 308-digit numbers, holding the GIL)."""


def has_long_integer(body: bytes) -> bool:
    """Whether `body` holds a run of digits no 64-bit float can hold as an integer."""
    return _LONG_RUN in body.translate(_DIGITS_TO_ZERO)


def encode_rows(model: LoadedModel, frame: pd.DataFrame, field: str) -> np.ndarray:
    """The network input for raw columns by name; InvalidInput naming the column and row of a bad
    value, PayloadTooLarge for an image declaring more pixels than `raylane.images.MAX_PIXELS`
    (refused from its header: a decompression bomb never reaches memory)."""
    try:
        return model.encode(frame)
    except ImageTooLarge as err:
        raise PayloadTooLarge(f"{field}: {err}") from None
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidInput(f"{field}: {err}") from None


def not_finite(where: str, value: Any) -> InvalidInput:
    """The refusal of a NaN or Infinity sent at `where`: on every protocol only null (an empty CSV
    field) is a missing value."""
    return InvalidInput(f"{where}: expected a finite number, got {shown(value)}")


def check_computable(probabilities: np.ndarray) -> None:
    """InvalidInput when the network overflowed on some rows: no answer beats a wrong one."""
    bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if bad.size:
        raise InvalidInput(f"rows {bad[:5].tolist()}: values out of the range the model can compute "
                           "with (the network overflowed); send raw feature values")


class OutOfRange(str):
    """A JSON integer beyond a 64-bit float, kept as the digits the client wrote."""


def _integer(text: str) -> int | OutOfRange:
    if len(text.lstrip("-")) < FLOAT_DIGITS:
        return int(text)
    try:  # past 4,300 digits Python will not even convert it (ValueError)
        value = int(text)
        float(value)
    except (OverflowError, ValueError):
        return OutOfRange(text)
    return value


def loads_marking_out_of_range(body: bytes | str, **hooks: Any) -> Any:
    """The JSON body with each integer beyond a 64-bit float as an `OutOfRange` (json.loads would
    give an int no float can hold, or fail past 4,300 digits); ValueError or RecursionError as
    json.loads raises them."""
    return json.loads(body, parse_int=_integer, **hooks)


def walk(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value in a JSON document with its path, depth first in document order (no recursion:
    a deeply nested body cannot exhaust the stack)."""
    stack = [(path, value)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))


def out_of_range(where: str, digits: str) -> InvalidInput:
    """The refusal of an integer no 64-bit float holds, sent at `where`."""
    return InvalidInput(f"{where}: expected a finite number, got {digits[:12]}... (an integer of "
                        f"{len(digits.lstrip('-'))} digits, beyond the range of a 64-bit float)")


def refuse_out_of_range(body: bytes, where: Callable[[tuple[Any, ...]], str] = json_path) -> None:
    """InvalidInput naming the first integer of a JSON body that no 64-bit float holds (by
    `where(path)`, e.g. 'instances[0][3]', 'inputs[0].data[5]'). Costs one regex scan unless the
    body has a run of 309 digits; a body that is not JSON is left to the protocol's parser."""
    if not has_long_integer(body):
        return
    try:
        request = loads_marking_out_of_range(body)
    except (ValueError, RecursionError):
        return
    for path, value in walk(request):
        if type(value) is OutOfRange:
            raise out_of_range(where(path), value)
