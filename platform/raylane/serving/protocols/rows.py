"""What every protocol does around the model call: a typed model's raw columns (or an image
model's images) encoded into the network's input, a NaN or Infinity refused in the same words on
each, and the network's answer checked before any protocol shapes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raylane.images import ImageTooLarge
from raylane.serving.errors import InvalidInput, PayloadTooLarge, shown
from raylane.serving.model import LoadedModel


def encode_rows(model: LoadedModel, frame: pd.DataFrame, field: str) -> np.ndarray:
    """The network input for raw columns by name; InvalidInput naming the column and row of a bad
    value, PayloadTooLarge for an image declaring more pixels than `raylane.images.MAX_PIXELS`
    (refused from its header: a decompression bomb never reaches memory)."""
    try:
        return model.encode(frame)
    except ImageTooLarge as err:
        raise PayloadTooLarge(f"{field}: {err}") from None
    except (ValueError, TypeError) as err:
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
