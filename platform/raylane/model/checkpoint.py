"""A checkpoint directory's files, written by the training loops and read by the logged model.

    state.pt | state.npz   weights, optimizer state and epoch (PyTorch | TensorFlow)
    spec.json              the network's spec and the files' format version
    history.json           every epoch's metrics up to this checkpoint

Nothing here imports Ray or the training code, so a logged model loads wherever its pinned
requirements (framework, mlflow, numpy, pandas) are installed, e.g. under `mlflow models serve`
with a fresh virtualenv.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from raylane.errors import ModelFormatError
from raylane.model.network import ModelSpec
from raylane.task import ALL_EPOCH_METRICS, EPOCH

TORCH_STATE_FILE = "state.pt"
TF_STATE_FILE = "state.npz"
SPEC_FILE = "spec.json"
HISTORY_FILE = "history.json"
FORMAT_VERSION = 2
"""Version of the checkpoint layout. 2: spec.json names the model builder, its params and the
input and output specs. 1: spec.json carries `format_version` and the built-in MLP's fields;
checkpoints written before it (no version) have the same files. Both read as the built-in MLP."""
FORMAT_KEY = "format_version"


def check_format(found: int, supported: int, what: str) -> None:
    """Raises ModelFormatError when `found` is newer than this raylane reads."""
    if found > supported:
        raise ModelFormatError(f"{what} has format version {found}; this raylane reads up to "
                               f"{supported}: upgrade raylane to load it")


def write_spec(directory: str, spec: ModelSpec) -> None:
    with open(os.path.join(directory, SPEC_FILE), "w") as f:
        json.dump({**spec.to_dict(), FORMAT_KEY: FORMAT_VERSION}, f)


def read_spec(directory: str) -> ModelSpec:
    path = os.path.join(directory, SPEC_FILE)
    with open(path) as f:
        fields = json.load(f)
    check_format(int(fields.pop(FORMAT_KEY, 0)), FORMAT_VERSION, path)
    legacy_framework = "tensorflow" if os.path.exists(os.path.join(directory, TF_STATE_FILE)) else "torch"
    return ModelSpec.from_dict(fields, legacy_framework)


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
    """The part of an epoch's report that the checkpoint's history keeps."""
    return {k: metrics[k] for k in (EPOCH, *ALL_EPOCH_METRICS) if k in metrics}


def save_torch_state(directory: str, model: Any, optimizer: Any, epoch: int, spec: ModelSpec) -> None:
    """Writes a torch model's and optimizer's state, the epoch, and the spec into `directory`."""
    write_torch_state(directory, model.state_dict(), optimizer.state_dict(), epoch, spec)


def write_torch_state(directory: str, model_state: dict[str, Any], optimizer_state: dict[str, Any],
                      epoch: int, spec: ModelSpec) -> None:
    """Writes state dicts already taken (a plain network's, e.g. gathered from FSDP shards), the
    epoch and the spec into `directory`."""
    import torch

    state = {"model": model_state, "optimizer": optimizer_state, "epoch": epoch}
    torch.save(state, os.path.join(directory, TORCH_STATE_FILE))
    write_spec(directory, spec)


def read_torch_state(directory: str) -> dict[str, Any]:
    """Returns state.pt's {"model", "optimizer", "epoch"}, its tensors on the CPU."""
    import torch

    return torch.load(os.path.join(directory, TORCH_STATE_FILE), map_location="cpu")


def restore_torch_state(directory: str, model: Any, optimizer: Any | None = None) -> int:
    """Loads a torch model's (and optimizer's) state from `directory`; returns the checkpoint's epoch."""
    state = read_torch_state(directory)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def load_torch_model(directory: str) -> tuple[Any, ModelSpec, int]:
    """Returns (torch model in eval mode, its spec, its epoch) from a checkpoint directory."""
    spec = read_spec(directory)
    model = spec.build()
    epoch = restore_torch_state(directory, model)
    return model.eval(), spec, epoch


def save_keras_state(directory: str, model: Any, optimizer: Any, epoch: int, spec: ModelSpec) -> None:
    """Writes a Keras model's weights, the optimizer's variables, the epoch and the spec."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    np.savez(os.path.join(directory, TF_STATE_FILE), epoch=np.array(epoch), **arrays)
    write_spec(directory, spec)


def restore_keras_state(directory: str, model: Any, optimizer: Any | None = None) -> int:
    """Loads weights (and optimizer variables) from `directory`; returns the checkpoint's epoch."""
    with np.load(os.path.join(directory, TF_STATE_FILE)) as state:
        model.set_weights([state[f"w{i}"] for i in range(len(model.get_weights()))])
        for i, variable in enumerate(optimizer.variables if optimizer is not None else ()):
            variable.assign(state[f"o{i}"])
        return int(state["epoch"])


def load_keras_model(directory: str) -> tuple[Any, ModelSpec, int]:
    """Returns (Keras model, its spec, its epoch) from a checkpoint directory."""
    spec = read_spec(directory)
    model = spec.build()
    return model, spec, restore_keras_state(directory, model)
