"""The baselines' model: raylane's registered network and standardisation as one plain torch module.

    LabelNet            float32 [n, 64] raw pixel values -> int64 [n] class labels
    log_tensor_model    logs it with `mlflow.pytorch.log_model` and a tensor signature, registered

`benchmarks/serve.py` serves what `log_tensor_model` logged with `mlflow models serve`, and
`benchmarks/bare_fastapi.py` loads the same logged model, so both baselines run raylane's weights
and compute the same labels. The class lives in this importable module (and travels in the logged
model's `code/`), so MLflow pickles it by reference, as a user's own model class would be.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class LabelNet(nn.Module):
    """Standardises raw rows with the train split's mean and std, runs the network, returns the
    class label of the largest logit (raylane's model answers argmax of the softmax: the same)."""

    def __init__(self, network: nn.Module, mean: torch.Tensor, std: torch.Tensor,
                 classes: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer("std", std.to(torch.float32))
        self.register_buffer("classes", classes.to(torch.int64))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        logits = self.network((rows - self.mean) / self.std)
        return self.classes[logits.argmax(dim=1)]


def from_raylane_model(model_uri: str) -> LabelNet:
    """Returns a LabelNet with the weights, preprocessing and classes of a raylane-logged model
    (an all-numeric torch classifier, such as the digits MLP); ValueError for any other."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.models import Model
    from raylane.model.checkpoint import load_torch_model

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    inner = mlflow.pyfunc.load_model(local).unwrap_python_model()  # raylane.model.pyfunc.RaylaneClassifier
    if inner.framework != "torch" or inner.task != "classification" or not inner.preprocessor.numeric_only:
        kinds = set(inner.preprocessor.kinds.values())
        raise ValueError(f"{model_uri}: the baselines take an all-numeric torch classifier, got "
                         f"{inner.framework} {inner.task} with {kinds} columns")
    if not all(isinstance(c, int) for c in inner.classes):
        raise ValueError(f"{model_uri}: the baselines answer integer labels, got classes {inner.classes[:3]}")
    artifacts = Model.load(local).flavors["python_function"]["artifacts"]
    network, _, _ = load_torch_model(os.path.join(local, artifacts["checkpoint"]["path"]))
    columns = inner.preprocessor.columns
    return LabelNet(network, torch.tensor([c.mean for c in columns]), torch.tensor([c.std for c in columns]),
                    torch.tensor(inner.classes)).eval()


def log_tensor_model(raylane_model_uri: str, registered_name: str, example: Any) -> str:
    """Logs raylane's network as a user would log their own torch model (pickle serialization, a
    float32 (-1, 64) tensor signature, pinned requirements) in a new run, registers it under
    `registered_name`; returns `models:/<registered_name>/<version>`. MLflow must already point at
    the store and experiment."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    net = from_raylane_model(raylane_model_uri)
    width = int(net.mean.shape[0])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, width))]),
                               outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
    with mlflow.start_run(run_name=f"baseline-{registered_name}"):
        info = mlflow.pytorch.log_model(
            net, name="model", serialization_format="pickle", signature=signature,
            input_example=np.asarray(example, dtype=np.float32)[:5],
            code_paths=[os.path.dirname(os.path.abspath(__file__))],  # this package: LabelNet's module
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            registered_model_name=registered_name)
    return f"models:/{registered_name}/{info.registered_model_version}"
