"""A model in seconds, without Ray Train: one process, plain PyTorch, the pipeline's formats.

For the serving tests and benchmarks, which need real registered models but not a tuning run:
the checkpoint is written in the training loops' format (`raylane.model.checkpoint`), then
logged by `tracking.log_best_model` and gated by `registry.register_if_better` exactly as the
pipeline does.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from raylane.config import ModelConfig


def train_and_register(prepared: Any, directory: str, model: ModelConfig, epochs: int, hidden: int,
                       layers: int = 1, seed: int = 0) -> Any:
    """Trains an MLP on the train split, logs it in a new MLflow run, runs the champion gate;
    returns the gate's Promotion. MLflow must already point at the store and experiment."""
    import mlflow
    import torch
    from raylane import registry, tracking
    from raylane.model.checkpoint import save_torch_state
    from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec

    torch.manual_seed(seed)
    batch = prepared.train.take_batch(prepared.train.count(), batch_format="numpy")
    x = torch.from_numpy(np.stack(batch["features"]).astype(np.float32))
    regression = prepared.task == "regression"
    if regression:  # the network learns the standardized value, as in the training loops
        target = prepared.target
        y = torch.from_numpy(((batch["label"] - target["mean"]) / target["std"]).astype(np.float32))
    else:
        y = torch.from_numpy(batch["label"].astype(np.int64))
    outputs = OutputSpec(prepared.task, prepared.num_outputs)
    spec = ModelSpec(TORCH_MLP, "torch", InputSpec(x.shape[1]), outputs,
                     {"hidden_size": hidden, "num_layers": layers})
    net = spec.build()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            outputs = net(x[i:i + 64])
            loss = (torch.nn.functional.mse_loss(outputs[:, 0], y[i:i + 64]) if regression else
                    torch.nn.functional.cross_entropy(outputs, y[i:i + 64]))
            loss.backward()
            optimizer.step()
    checkpoint = os.path.join(directory, f"checkpoint-{seed}")
    os.makedirs(checkpoint, exist_ok=True)
    save_torch_state(checkpoint, net, optimizer, epochs - 1, spec)
    with mlflow.start_run(run_name=f"quick-{model.name}-{seed}"):
        params = {"hidden_size": hidden, "num_layers": layers, "epochs": epochs}
        logged = tracking.log_best_model(checkpoint, prepared, params, 0.0, "torch")
        return registry.register_if_better(model, logged)
