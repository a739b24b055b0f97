"""What one PyTorch worker does: resume, then per epoch train on its shard, evaluate, report.

Runs inside each Ray Train worker (DDP over gloo on CPU, NCCL on GPU). `config` is the dict
built by `raylane.train.trainer.loop_config`: optimiser settings plus the model spec.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from raylane.train import ingest, rungs
from raylane.train.model import ModelSpec, build_mlp
from raylane.train.weights import (
    TORCH_STATE_FILE,
    history_entry,
    load_torch_model,
    read_history,
    write_history,
    write_spec,
)

load_model = load_torch_model  # (model, spec, epoch) from a checkpoint directory


def train_loop_per_worker(config: dict[str, Any]) -> None:
    torch.manual_seed(config["seed"])
    spec = ModelSpec(**config["spec"])
    model = ray.train.torch.prepare_model(build_mlp(spec))  # DDP wrapper, moved to the device
    # AdamW: decoupled weight decay, as Keras' Adam(weight_decay=...) on the TensorFlow path.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    objective = Objective(config)

    start_epoch, history = 0, []  # history: every epoch's metrics so far, kept in the checkpoints
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group, or a resumed trial: continue, never start over
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, TORCH_STATE_FILE), map_location="cpu")
            history = read_history(directory)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    train_shard = ray.train.get_dataset_shard("train")  # this worker's part of train
    val_data = ray.train.get_dataset_shard("val")  # all of val, on every worker
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    world_size = context.get_world_size()

    mode, why = ingest.choose(config, device, context.get_local_world_size(), world_size,
                              row_bytes=4 * spec.input_dim + 8)
    if config.get("ingest", "auto") == "auto":
        agreed = ingest.agree(mode, world_size, device)
        why += "" if agreed == mode else "; stream, as another rank's shard does not fit"
        mode = agreed
    if mode == "memory":  # read once, then shuffle and slice on the device every epoch
        train_shard = ingest.InMemoryShard.read(train_shard, device)
        ingest.equal_rows(train_shard, world_size)
        val_data = ingest.InMemoryShard.read(val_data, device)
    if context.get_world_rank() == 0:
        print(f"[raylane] worker ingest: {mode} ({why})", flush=True)

    precision = autocast(config, device)

    def batches(dataset: Any, batch_size: int, seed: int | None = None) -> Any:
        if mode == "memory":
            return dataset.batches(batch_size, seed)
        return ingest.streamed(dataset, batch_size, device, seed)

    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        total_loss, total_rows, started = torch.zeros((), device=device), 0, time.perf_counter()
        cpu_started = time.process_time()
        for features, labels in batches(train_shard, config["batch_size"], config["seed"] + epoch):
            optimizer.zero_grad(set_to_none=True)
            with precision:
                loss = objective.loss(model(features), labels)
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
            # Summed on the device: no host synchronisation per batch (loss.item() would wait).
            total_loss += loss.detach() * len(labels)
            total_rows += len(labels)
        total_loss = total_loss.item()

        epoch_time = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(total_rows, 1),
            **evaluate(model, batches(val_data, max(config["batch_size"], 256)), objective, precision),
            "start_epoch": start_epoch,  # > 0 when this worker group resumed from a checkpoint
            "train_rows": total_rows * world_size,  # rows seen by all workers this epoch
            "epoch_time_s": epoch_time,
        }
        if epoch == start_epoch and start_epoch > 0:
            # Epochs before the checkpoint whose reports may have died with a killed driver.
            metrics["history"] = json.dumps(history)
        history.append(history_entry(metrics))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                save_checkpoint(directory, model, optimizer, epoch, spec)
                write_history(directory, history)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            metrics["epoch_wall_s"] = time.perf_counter() - started  # training, evaluation, checkpoint
            metrics["epoch_cpu_s"] = time.process_time() - cpu_started  # this worker's CPU time in it
            ray.train.report(metrics, checkpoint=checkpoint)  # a barrier: every rank reports
        if not rungs.go_on(config, epoch):  # asha_promotion: paused at this rung, the fit ends here
            return


class Objective:
    """The task's loss and validation score: cross-entropy and accuracy, or for regression the
    mean squared error of the standardized label and the mean absolute error in its own units."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.regression = config.get("task") == "regression"
        self.mean, self.std = config.get("target_mean", 0.0), config.get("target_std", 1.0)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.regression:
            target = (labels.float() - self.mean) / self.std
            return nn.functional.mse_loss(outputs[:, 0], target, reduction=reduction)
        return nn.functional.cross_entropy(outputs, labels, reduction=reduction)

    def score(self, outputs: torch.Tensor, labels: torch.Tensor) -> float:
        """Summed over the batch: correct predictions, or absolute errors."""
        if self.regression:
            return (outputs[:, 0] * self.std + self.mean - labels.float()).abs().sum().item()
        return (outputs.argmax(dim=1) == labels).sum().item()

    @property
    def score_name(self) -> str:
        return "val_mae" if self.regression else "val_accuracy"


def autocast(config: dict[str, Any], device: torch.device) -> Any:
    """The forward passes' precision (`train.precision`): bf16 autocast, or nothing at all for
    fp32. One context, entered once per batch."""
    if config.get("precision") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model: nn.Module, batches: Any, objective: Objective, precision: Any) -> dict[str, float]:
    """Returns {val_loss, val_accuracy or val_mae} of `model` over (features, labels) `batches`."""
    model.eval()
    loss_sum, score, rows = 0.0, 0.0, 0
    with torch.no_grad():
        for features, labels in batches:
            with precision:
                outputs = model(features).float()
            loss_sum += objective.loss(outputs, labels, reduction="sum").item()
            score += objective.score(outputs, labels)
            rows += len(labels)
    return {"val_loss": loss_sum / max(rows, 1), objective.score_name: score / max(rows, 1)}


def save_checkpoint(directory: str, model: nn.Module, optimizer: Any, epoch: int,
                    spec: ModelSpec) -> None:
    """Writes model and optimizer state, the epoch, and the model spec into `directory`."""
    state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
    torch.save(state, os.path.join(directory, TORCH_STATE_FILE))
    write_spec(directory, spec)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
