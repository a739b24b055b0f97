"""The network a run trains: a model builder named by import path, and the spec that rebuilds it.

A model builder is any function

    def build(inputs: InputSpec, outputs: OutputSpec, **params) -> torch.nn.Module | keras.Model

named as `model.builder: "mypkg.models:build"`; `model.params` are its keyword arguments (each one
searchable by `tune.search_space`). raylane's own MLP is such a builder (`torch_mlp`,
`keras_mlp`), the default. The spec (builder, framework, input and output shapes, params) is saved
with every checkpoint and inside the logged MLflow model, which carries the builder's module, so
`ModelSpec.build()` rebuilds the same network wherever the model is loaded.

Torch and Keras are imported inside the builders, so a PyTorch user never pays for TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from annotated_types import Ge, Lt

TORCH_MLP = "raylane.model.network:torch_mlp"
KERAS_MLP = "raylane.model.network:keras_mlp"
BUILTIN_BUILDERS = {"torch": TORCH_MLP, "tensorflow": KERAS_MLP}


@dataclass(frozen=True)
class InputSpec:
    """What the network takes: `features` values per row, or images of height x width x channels.

    Tabular rows arrive as float32 [batch, features]. Images arrive as float32
    [batch, channels, height, width] in a PyTorch model and [batch, height, width, channels] in a
    Keras model, normalized with the train split's per-channel statistics.
    """

    features: int
    """Values per row as the preprocessing encodes it (images: height * width * channels)."""
    height: int | None = None
    width: int | None = None
    channels: int | None = None

    @property
    def is_image(self) -> bool:
        return self.height is not None

    def shape(self, framework: str) -> tuple[int, ...]:
        """One example's shape as the network takes it (see the class docstring)."""
        if not self.is_image:
            return (self.features,)
        if framework == "torch":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    def batch(self, rows: Any, framework: str) -> Any:
        """Returns encoded rows [batch, features] (a torch tensor or numpy array) as the network
        takes them: images become [batch, C, H, W] for torch, [batch, H, W, C] for Keras (the
        encoded values are in height, width, channel order)."""
        if not self.is_image:
            return rows
        images = rows.reshape(-1, self.height, self.width, self.channels)
        if framework != "torch":
            return images
        return images.permute(0, 3, 1, 2) if hasattr(images, "permute") else images.transpose(0, 3, 1, 2)


@dataclass(frozen=True)
class OutputSpec:
    """What the network gives: one logit per class, or one value for regression."""

    task: str
    """classification or regression."""
    size: int
    """Width of the output: the number of classes, or 1 for regression."""
    classes: list[Any] = field(default_factory=list)
    """The class labels in output order (empty for regression)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network: its builder, shapes and the builder's params."""

    builder: str
    framework: str
    inputs: InputSpec
    outputs: OutputSpec
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """Returns a fresh, untrained network from the builder."""
        return resolve_builder(self.builder)(self.inputs, self.outputs, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], legacy_framework: str = "torch") -> ModelSpec:
        """The spec from `to_dict`; a spec written before builders is the built-in MLP of
        `legacy_framework`."""
        if "builder" not in raw:
            return cls(BUILTIN_BUILDERS[legacy_framework], legacy_framework, InputSpec(raw["input_dim"]),
                       OutputSpec("classification", raw["num_classes"]),
                       {k: raw[k] for k in ("hidden_size", "num_layers", "dropout")})
        return cls(raw["builder"], raw["framework"], InputSpec(**raw["inputs"]),
                   OutputSpec(**raw["outputs"]), dict(raw.get("params") or {}))


def resolve_builder(path: str) -> Any:
    """Returns the function named by 'module.path:function'; ImportError or AttributeError as is."""
    module_name, _, name = path.partition(":")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in name.split("."):
        target = getattr(target, part)
    return target


def prefer_code_from(code_dir: str) -> None:
    """Makes the next import of each package carried in `code_dir` (a logged model's `code/`,
    which MLflow puts first on sys.path) load this model's copy: a process that loaded another
    model version earlier (a Serve replica following its alias) may hold a builder module of the
    same name with different code. raylane itself is never reloaded."""
    if not os.path.isdir(code_dir):
        return
    root = os.path.abspath(code_dir) + os.sep
    for entry in os.listdir(code_dir):
        name = entry.removesuffix(".py")
        module = sys.modules.get(name)
        if name == "raylane" or module is None or (getattr(module, "__file__", None) or "").startswith(root):
            continue
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]
    importlib.invalidate_caches()


Width = Annotated[int, Ge(1)]
Depth = Annotated[int, Ge(0)]
Rate = Annotated[float, Ge(0), Lt(1)]


def torch_mlp(inputs: InputSpec, outputs: OutputSpec, *, hidden_size: Width = 128, num_layers: Depth = 2,
              dropout: Rate = 0.0) -> Any:
    """Returns a torch MLP: num_layers x (Linear, ReLU, Dropout), then a Linear to the outputs.
    Images are flattened first."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()] if inputs.is_image else []
    width = inputs.features
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden_size
    layers.append(nn.Linear(width, outputs.size))
    return nn.Sequential(*layers)


def keras_mlp(inputs: InputSpec, outputs: OutputSpec, *, hidden_size: Width = 128, num_layers: Depth = 2,
              dropout: Rate = 0.0) -> Any:
    """Returns a Keras 3 MLP with the same architecture as `torch_mlp`; outputs logits."""
    import keras

    layers: list[Any] = [keras.Input(shape=inputs.shape("tensorflow"))]
    if inputs.is_image:
        layers.append(keras.layers.Flatten())
    for _ in range(num_layers):
        layers.append(keras.layers.Dense(hidden_size, activation="relu"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(outputs.size))
    return keras.Sequential(layers)
