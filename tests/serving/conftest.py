"""A registry with real models for the serving tests, trained in-process in seconds.

The pipeline's own path registers them: `data.prepare`, a torch checkpoint in the training loop's
format, `tracking.log_best_model` and the champion gate. Only Ray Train and Tune are skipped,
which the e2e tests cover.
"""

from __future__ import annotations

import logging
import os

import mlflow
import numpy as np
import pytest
from raylane import data, tracking
from raylane.config import DataConfig, ModelConfig

MODEL = ModelConfig(name="digits")


def train_and_register(prepared, tmp, epochs: int, hidden: int, seed: int) -> tracking.Promotion:
    """Trains a small MLP on the train split, logs it as the pipeline does, runs the gate."""
    import torch
    from raylane.train.model import ModelSpec, build_mlp
    from raylane.train.torch_loop import save_checkpoint

    torch.manual_seed(seed)
    batch = prepared.train.take_batch(prepared.train.count(), batch_format="numpy")
    x = torch.from_numpy(np.stack(batch["features"]).astype(np.float32))
    y = torch.from_numpy(batch["label"].astype(np.int64))
    spec = ModelSpec(input_dim=x.shape[1], num_classes=len(prepared.classes), hidden_size=hidden,
                     num_layers=1, dropout=0.0)
    net = build_mlp(spec)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            optimizer.step()
    checkpoint = os.path.join(tmp, f"ckpt-{seed}")
    os.makedirs(checkpoint, exist_ok=True)
    save_checkpoint(checkpoint, net, optimizer, epochs - 1, spec)
    with mlflow.start_run(run_name=f"serving-test-{seed}"):
        logged = tracking.log_best_model(checkpoint, prepared, {"hidden_size": hidden}, 0.0, "torch")
        return tracking.register_if_better(MODEL, logged)


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
    first = train_and_register(prepared, str(tmp), epochs=3, hidden=32, seed=1)
    second = train_and_register(prepared, str(tmp), epochs=1, hidden=16, seed=2)
    client = MlflowClient(uri)
    champion = tracking.champion_version(uri, "digits", "champion")
    challenger = second.version if champion == first.version else first.version
    client.set_registered_model_alias("digits", "challenger", challenger)
    batch = prepared.test.take_batch(prepared.test.count(), batch_format="numpy")
    rows = np.stack(batch["raw"]).astype(np.float64)
    labels = np.asarray(prepared.classes)[batch["label"]]
    return {"uri": uri, "tmp": tmp, "prepared": prepared, "rows": rows, "labels": labels,
            "champion": champion, "challenger": challenger, "client": client}
