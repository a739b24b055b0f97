"""A Keras builder for tabular rows: what a team's own TensorFlow builder looks like.

    train: {backend: tensorflow}
    model:
      builder: examples.tabular_keras:build
      params: {units: [128, 64], dropout: 0.1}

raylane trains it under MultiWorkerMirroredStrategy (the model is built inside the strategy's
scope) with its own synchronous step; the model must output logits (no softmax).
"""

from __future__ import annotations

import keras


def build(inputs, outputs, *, units: tuple[int, ...] = (128, 64), dropout: float = 0.0) -> keras.Model:
    """Dense layers of the given widths with batch normalization, then one logit per class."""
    x = features = keras.Input(shape=(inputs.features,))
    for width in units:
        x = keras.layers.Dense(width)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return keras.Model(features, keras.layers.Dense(outputs.size)(x))
