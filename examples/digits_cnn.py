"""A small CNN for the PNG digits (`make data-images`): what a team's own PyTorch builder looks like.

    model:
      builder: examples.digits_cnn:build
      params: {channels: 16, hidden: 64}

raylane calls `build(inputs, outputs, **model.params)` on every training worker and again wherever
the logged model is loaded; this module travels with the job (`ray job submit --working-dir .`)
and inside the MLflow model, so nothing else has to be installed there.
"""

from __future__ import annotations

from torch import nn


def build(inputs, outputs, *, channels: int = 16, hidden: int = 64, dropout: float = 0.1) -> nn.Module:
    """Two conv blocks (conv, ReLU, 2x2 max-pool), then a hidden layer and one logit per class.

    inputs: images [batch, inputs.channels, inputs.height, inputs.width], normalized.
    outputs.size: the number of classes.
    """
    if not inputs.is_image:
        raise ValueError("digits_cnn builds a network for images; data.source must be an image folder")
    flat = 2 * channels * (inputs.height // 4) * (inputs.width // 4)
    return nn.Sequential(
        nn.Conv2d(inputs.channels, channels, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, outputs.size),
    )
