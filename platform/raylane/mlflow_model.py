"""The MLflow pyfunc model raylane logs: raw feature columns in, class labels (or probabilities) out.

The scaling fitted on train travels inside the model (`preprocess.json`), next to the trained
weights (`checkpoint/`), so `mlflow.pyfunc.load_model(...).predict(raw_frame)` and the Serve
endpoint both take the same raw values the data came with.
"""

from __future__ import annotations

import json
import os
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

PREPROCESS_FILE = "preprocess.json"


class RaylaneClassifier(mlflow.pyfunc.PythonModel):
    """A trained network plus its preprocessing; framework-specific only in `_load_network`."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["preprocess"]) as f:
            meta = json.load(f)
        self.feature_columns: list[str] = meta["feature_columns"]
        self.classes: list[Any] = meta["classes"]
        self.mean = np.asarray(meta["mean"], dtype=np.float64)
        self.std = np.asarray(meta["std"], dtype=np.float64)
        self.framework: str = meta.get("framework", "torch")
        self._load_network(context.artifacts["checkpoint"])

    def _load_network(self, directory: str) -> None:
        self._probabilities = (_load_tensorflow(directory) if self.framework == "tensorflow"
                               else _load_torch(directory))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Returns class probabilities (rows x classes) for raw feature rows in column order."""
        scaled = ((np.asarray(features, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        return self._probabilities(scaled)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        features = _feature_matrix(model_input, self.feature_columns)
        probabilities = self.predict_proba(features)
        if (params or {}).get("return_probabilities"):
            return probabilities
        return np.asarray(self.classes)[probabilities.argmax(axis=1)]


def _load_torch(directory: str) -> Any:
    import torch

    from raylane.train.weights import load_torch_model

    torch.set_num_threads(1)  # requests are small; threads only contend with the server
    network, _, _ = load_torch_model(directory)

    def probabilities(scaled: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(network(torch.from_numpy(scaled)), dim=1).numpy()

    return probabilities


def _load_tensorflow(directory: str) -> Any:
    import tensorflow as tf

    from raylane.train.weights import load_keras_model

    network, _, _ = load_keras_model(directory)
    forward = tf.function(lambda x: tf.nn.softmax(network(x, training=False), axis=1),
                          reduce_retracing=True)

    def probabilities(scaled: np.ndarray) -> np.ndarray:
        return forward(tf.convert_to_tensor(scaled)).numpy()

    return probabilities


def _feature_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Returns the features in model order, by column name, or by position when names are absent."""
    if isinstance(frame, pd.DataFrame) and set(columns).issubset(frame.columns):
        return frame[columns].to_numpy(dtype=np.float64)
    values = np.asarray(frame, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise ValueError(f"expected {len(columns)} feature columns ({columns[0]}..{columns[-1]}), "
                         f"got shape {values.shape}")
    return values


def write_preprocess(path: str, feature_columns: list[str], classes: list[Any], mean: list[float],
                     std: list[float], framework: str) -> str:
    """Writes the preprocessing artifact and returns its path."""
    with open(path, "w") as f:
        json.dump({"feature_columns": feature_columns, "classes": classes, "mean": mean, "std": std,
                   "framework": framework}, f)
    return path


def package_dir() -> str:
    """Returns the raylane package directory, shipped as the model's code so it loads anywhere."""
    return os.path.dirname(os.path.abspath(__file__))
