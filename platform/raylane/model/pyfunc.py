"""The MLflow pyfunc model raylane logs: raw feature columns in, class labels (or probabilities) out.

The preprocessing fitted on train (imputation, scaling, one-hot; `raylane.preprocess`) travels
inside the model (`preprocess.json`), next to the trained weights (`checkpoint/`) and the drift
reference the endpoint compares live traffic with (`drift_reference.json`), so
`mlflow.pyfunc.load_model(...).predict(raw_frame)` and the Serve endpoint both take the same raw
columns, by name, that the data came with.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from raylane.drift import REFERENCE_FILE
from raylane.model.checkpoint import check_format, load_keras_model, load_torch_model
from raylane.model.network import prefer_code_from
from raylane.preprocess import Column, Preprocessor

log = logging.getLogger(__name__)

PREPROCESS_FILE = "preprocess.json"
FORMAT_VERSION = 2
"""The newest version of preprocess.json this raylane reads (and writes for an image model).
2: a preprocessor with an image column (kind `image`, with `image_size`, `channels`,
`channel_mean`, `channel_std`), which a raylane that reads only 1 must refuse ("upgrade raylane").
1: it carries `format_version`, `preprocessor`, `classes`, `framework`, `task` and `target`; a
tabular model is still written as 1, so an older raylane loads it. Without a version (0), fields
may be missing: a model logged before typed columns has `feature_columns`, `mean` and `std`
instead of `preprocessor`."""
TABULAR_FORMAT_VERSION = 1
"""The version a model without an image column is written as."""


class RaylaneClassifier(mlflow.pyfunc.PythonModel):
    """A trained network plus its preprocessing; framework-specific only in `_load_network`."""

    def load_context(self, context: Any) -> None:
        meta = read_preprocess(context.artifacts["preprocess"])
        self.preprocessor = _preprocessor(meta)
        self.feature_columns: list[str] = self.preprocessor.names
        self.classes: list[Any] = meta["classes"]
        self.framework: str = meta["framework"]
        self.task: str = meta["task"]
        self.drift_reference = read_drift_reference(context.artifacts["preprocess"])
        target = meta["target"]
        self._target = (float(target.get("mean", 0.0)), float(target.get("std", 1.0)))
        checkpoint = context.artifacts["checkpoint"]  # <model>/artifacts/checkpoint; code in <model>/code
        prefer_code_from(os.path.join(os.path.dirname(os.path.dirname(checkpoint)), "code"))
        self._load_network(checkpoint)

    def _load_network(self, directory: str) -> None:
        """`_probabilities`: network input -> class probabilities, or for regression the predicted
        values as one column, in the label's own units."""
        regression = self.task == "regression"
        network = (_load_tensorflow(directory, regression) if self.framework == "tensorflow"
                   else _load_torch(directory, regression))
        if regression:
            mean, std = self._target
            self._probabilities = lambda x: (network(x)[:, :1].astype(np.float64) * std + mean)
        else:
            self._probabilities = network

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Returns class probabilities (rows x classes) for raw rows of an all-numeric model, in
        column order (NaN for a missing value)."""
        return self._probabilities(self.preprocessor.transform_numeric(features))

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Returns class probabilities for raw columns by name; ValueError naming a bad value."""
        return self._probabilities(self.preprocessor.transform(frame))

    def forward(self, encoded: np.ndarray) -> np.ndarray:
        """Returns class probabilities for network input (what the preprocessor makes of raw rows)."""
        return self._probabilities(encoded)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        probabilities = self.predict_frame(_feature_frame(model_input, self.feature_columns))
        if self.task == "regression":
            return probabilities[:, 0]
        if (params or {}).get("return_probabilities"):
            return probabilities
        return np.asarray(self.classes)[probabilities.argmax(axis=1)]


def read_preprocess(path: str) -> dict[str, Any]:
    """Returns preprocess.json's fields, those a version-0 file lacks filled as they then were."""
    with open(path) as f:
        meta = json.load(f)
    version = int(meta.get("format_version", 0))
    check_format(version, FORMAT_VERSION, path)
    if version == 0:  # the fields added over time, at the values every model then had
        meta = {"framework": "torch", "task": "classification", "target": {}, **meta}
    return meta


def read_drift_reference(preprocess_path: str) -> dict[str, Any] | None:
    """Returns the drift reference logged next to preprocess.json (raylane.drift), None for a model
    logged before drift references (or one whose file cannot be read: serving goes on without it)."""
    path = os.path.join(os.path.dirname(preprocess_path), REFERENCE_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _preprocessor(meta: dict[str, Any]) -> Preprocessor:
    if "preprocessor" in meta:
        return Preprocessor.from_dict(meta["preprocessor"])
    # Models logged before typed columns: numeric columns, standardized, nothing missing.
    return Preprocessor([Column(name, "numeric", fill=mean, mean=mean, std=std) for name, mean, std
                         in zip(meta["feature_columns"], meta["mean"], meta["std"], strict=True)])


def _load_torch(directory: str, raw: bool = False) -> Any:
    import torch

    torch.set_num_threads(1)  # requests are small; threads only contend with the server
    network, spec, _ = load_torch_model(directory)
    device = torch.device(torch_device(_ray_gpu_ids(), torch.cuda.is_available))
    network = network.to(device)

    def probabilities(scaled: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            batch = torch.from_numpy(np.ascontiguousarray(spec.inputs.batch(scaled, "torch"))).to(device)
            outputs = network(batch)
            return (outputs if raw else torch.softmax(outputs, dim=1)).cpu().numpy()

    return probabilities


def torch_device(ray_gpu_ids: list[Any] | None, cuda_available: Callable[[], bool]) -> str:
    """Where a loaded torch model runs: "cuda" where CUDA is there and the process may use it,
    else "cpu" (CUDA is not asked, so not initialised, where it may not be used). A Ray worker
    (`ray_gpu_ids` not None) may use it only when Ray gave it a GPU (a
    Serve replica with `serve.replica_gpus`, a `raylane predict --gpus-per-actor` actor): Ray
    2.60 no longer hides the GPUs from workers given none, so without this every CPU replica and
    actor on a GPU machine put its model on the GPU uninvited, each with a CUDA context of its own.
    Any other process (a user's loop, `mlflow models serve`, a notebook's driver) uses the GPU
    when there is one. "cuda" is the first GPU the process sees: Ray sets CUDA_VISIBLE_DEVICES to
    the ones it gave (unless RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES is set)."""
    if ray_gpu_ids == []:
        return "cpu"
    return "cuda" if cuda_available() else "cpu"


def _ray_gpu_ids() -> list[Any] | None:
    """The GPUs Ray gave this process when it is a Ray worker (task, actor, replica); None in
    any other process."""
    from raylane._compat.ray import is_ray_worker

    if not is_ray_worker():
        return None
    import ray

    return list(ray.get_gpu_ids())


def _load_tensorflow(directory: str, raw: bool = False) -> Any:
    import tensorflow as tf

    if _ray_gpu_ids() == []:  # a Ray worker given no GPU: as for torch, and TensorFlow would
        # also reserve nearly all of each GPU's memory in every such process
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError as err:  # TensorFlow had already started its devices in this process
            log.warning("TensorFlow already uses the GPUs in this process: %s", err)
    network, spec, _ = load_keras_model(directory)
    forward = tf.function(lambda x: network(x, training=False) if raw else
                          tf.nn.softmax(network(x, training=False), axis=1), reduce_retracing=True)

    def probabilities(scaled: np.ndarray) -> np.ndarray:
        return forward(tf.convert_to_tensor(spec.inputs.batch(scaled, "tensorflow"))).numpy()

    return probabilities


def _feature_frame(frame: Any, columns: list[str]) -> pd.DataFrame:
    """Returns the raw features by name, or by position when the input has no column names."""
    if isinstance(frame, pd.DataFrame) and set(columns).issubset(frame.columns):
        return frame[columns]
    values = frame.to_numpy() if isinstance(frame, pd.DataFrame) else np.asarray(frame, dtype=object)
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise ValueError(f"expected {len(columns)} feature columns ({columns[0]}..{columns[-1]}), "
                         f"got shape {values.shape}")
    return pd.DataFrame(values, columns=columns)


def write_preprocess(path: str, preprocessor: Preprocessor, classes: list[Any], framework: str,
                     task: str = "classification", target: dict[str, float] | None = None) -> str:
    """Writes the preprocessing artifact and returns its path: format version 2 for a model with
    an image column, else 1 (what raylanes before image columns read)."""
    has_image = any(c.kind == "image" for c in preprocessor.columns)
    version = FORMAT_VERSION if has_image else TABULAR_FORMAT_VERSION
    with open(path, "w") as f:
        json.dump({"format_version": version, "preprocessor": preprocessor.to_dict(),
                   "classes": classes, "framework": framework, "task": task, "target": target or {}}, f)
    return path


def package_dir() -> str:
    """Returns the raylane package directory, shipped as the model's code so it loads anywhere."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
