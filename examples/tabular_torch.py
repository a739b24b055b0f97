"""A PyTorch builder for tabular rows: residual blocks with layer normalization.

    model:
      builder: examples.tabular_torch:build
      params: {width: 128, blocks: 2}
"""

from __future__ import annotations

from torch import nn


class Block(nn.Module):
    """x + MLP(LayerNorm(x)): a pre-norm residual block."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                  nn.Dropout(dropout))

    def forward(self, x):
        return x + self.body(x)


def build(inputs, outputs, *, width: int = 128, blocks: int = 2, dropout: float = 0.0) -> nn.Module:
    """A projection to `width`, `blocks` residual blocks, then one output per class."""
    return nn.Sequential(nn.Linear(inputs.features, width),
                         *(Block(width, dropout) for _ in range(blocks)),
                         nn.LayerNorm(width), nn.Linear(width, outputs.size))
