"""The networks raylane trains, and the spec that rebuilds one from a checkpoint or an MLflow model.

Torch and Keras are imported inside the builders, so a PyTorch user never pays for TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network: shapes and architecture hyperparameters."""

    input_dim: int
    num_classes: int
    hidden_size: int
    num_layers: int
    dropout: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_mlp(spec: ModelSpec) -> Any:
    """Returns a torch MLP: num_layers x (Linear, ReLU, Dropout), then a Linear to the classes."""
    from torch import nn

    layers: list[nn.Module] = []
    width = spec.input_dim
    for _ in range(spec.num_layers):
        layers += [nn.Linear(width, spec.hidden_size), nn.ReLU()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = spec.hidden_size
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


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
