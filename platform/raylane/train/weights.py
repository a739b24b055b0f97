"""Checkpoint files and the networks they rebuild, without importing Ray.

The training loops write these files; the MLflow model reads them. Keeping this module free of
Ray means a logged model loads wherever its pinned requirements (framework, mlflow, numpy,
pandas) are installed, e.g. under `mlflow models serve` with a fresh virtualenv.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from raylane.train.model import ModelSpec, build_mlp

TORCH_STATE_FILE = "state.pt"
TF_STATE_FILE = "state.npz"
SPEC_FILE = "spec.json"
HISTORY_FILE = "history.json"
HISTORY_METRICS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_mae")


def write_spec(directory: str, spec: ModelSpec) -> None:
    with open(os.path.join(directory, SPEC_FILE), "w") as f:
        json.dump(spec.to_dict(), f)


def write_history(directory: str, history: list[dict[str, float]]) -> None:
    """Writes the metrics of every epoch up to this checkpoint, so a run resumed from it can still
    record epochs whose reports died with the driver before reaching MLflow."""
    with open(os.path.join(directory, HISTORY_FILE), "w") as f:
        json.dump(history, f)


def read_history(directory: str) -> list[dict[str, float]]:
    path = os.path.join(directory, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def history_entry(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in HISTORY_METRICS if k in metrics}


def read_spec(directory: str) -> ModelSpec:
    with open(os.path.join(directory, SPEC_FILE)) as f:
        return ModelSpec(**json.load(f))


def load_torch_model(directory: str) -> tuple[Any, ModelSpec, int]:
    """Returns (torch model in eval mode, its spec, its epoch) from a checkpoint directory."""
    import torch

    spec = read_spec(directory)
    state = torch.load(os.path.join(directory, TORCH_STATE_FILE), map_location="cpu")
    model = build_mlp(spec)
    model.load_state_dict(state["model"])
    return model.eval(), spec, state["epoch"]


def build_keras_mlp(spec: ModelSpec) -> Any:
    """Returns a Keras 3 MLP with the same architecture as the torch one; outputs logits."""
    import keras

    layers: list[Any] = [keras.Input(shape=(spec.input_dim,))]
    for _ in range(spec.num_layers):
        layers.append(keras.layers.Dense(spec.hidden_size, activation="relu"))
        if spec.dropout > 0:
            layers.append(keras.layers.Dropout(spec.dropout))
    layers.append(keras.layers.Dense(spec.num_classes))
    return keras.Sequential(layers)


def load_keras_model(directory: str) -> tuple[Any, ModelSpec, int]:
    """Returns (Keras model, its spec, its epoch) from a checkpoint directory."""
    spec = read_spec(directory)
    model = build_keras_mlp(spec)
    with np.load(os.path.join(directory, TF_STATE_FILE)) as state:
        model.set_weights([state[f"w{i}"] for i in range(len(model.get_weights()))])
        return model, spec, int(state["epoch"])
