"""A registry with real models for the serving tests, trained in-process in seconds.

The pipeline's own path registers them (`raylane.train.quick`): `data.prepare`, a checkpoint in
the training loop's format, `tracking.log_best_model` and the champion gate. Only Ray Train and
Tune are skipped, which the e2e tests cover.
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pytest
from raylane import data, tracking
from raylane.config import DataConfig, ModelConfig
from raylane.train.quick import train_and_register

MODEL = ModelConfig(name="digits")


@pytest.fixture(scope="session")
def registry(ray_local, tmp_path_factory):
    """An sqlite registry with `digits` v1 (champion) and v2 (challenger), both real models."""
    from mlflow import MlflowClient

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-tests")
    prepared = data.prepare(DataConfig(source="sklearn:digits"), str(tmp / "storage"))
    first = train_and_register(prepared, str(tmp), MODEL, epochs=3, hidden=32, seed=1)
    second = train_and_register(prepared, str(tmp), MODEL, epochs=1, hidden=16, seed=2)
    client = MlflowClient(uri)
    champion = tracking.champion_version(uri, "digits", "champion")
    challenger = second.version if champion == first.version else first.version
    client.set_registered_model_alias("digits", "challenger", challenger)
    batch = prepared.test.take_batch(prepared.test.count(), batch_format="numpy")
    rows = np.stack(batch["raw"]).astype(np.float64)
    labels = np.asarray(prepared.classes)[batch["label"]]
    return {"uri": uri, "tmp": tmp, "prepared": prepared, "rows": rows, "labels": labels,
            "champion": champion, "challenger": challenger, "client": client}
