"""What one PyTorch worker does: resume, then per epoch train on its shard, evaluate, report.

Runs inside each Ray Train worker (DDP over gloo on CPU, NCCL on GPU). `config` is a
`WorkerLoopConfig` as a dict (`raylane.train.loop_config`): optimiser settings plus the model spec.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from raylane.model.checkpoint import restore_torch_state, save_torch_state
from raylane.model.network import build_mlp
from raylane.task import Task
from raylane.train import ingest, steps
from raylane.train.loop_config import WorkerLoopConfig
from raylane.train.report import EpochReport

logger = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = WorkerLoopConfig.from_dict(config)
    steps.worker_logging()
    torch.manual_seed(cfg.seed)
    model = ray.train.torch.prepare_model(build_mlp(cfg.spec))  # DDP wrapper, moved to the device
    # AdamW: decoupled weight decay, as Keras' Adam(weight_decay=...) on the TensorFlow path.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective = Objective(cfg)

    # A restarted worker group or a resumed trial continues from its checkpoint, never starts over.
    # history: every epoch's metrics so far, kept in the checkpoints.
    start_epoch, history = steps.resume(lambda path: restore_torch_state(path, _unwrap(model), optimizer))

    train_shard = ray.train.get_dataset_shard("train")  # this worker's part of train
    val_data = ray.train.get_dataset_shard("val")  # all of val, on every worker
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    world_size = context.get_world_size()

    mode, why = ingest.choose(cfg, device, context.get_local_world_size(), world_size,
                              row_bytes=4 * cfg.spec.input_dim + 8)
    if cfg.ingest == "auto":
        agreed = ingest.agree(mode, world_size, device)
        why += "" if agreed == mode else "; stream, as another rank's shard does not fit"
        mode = agreed
    if mode == "memory":  # read once, then shuffle and slice on the device every epoch
        train_shard = ingest.InMemoryShard.read(train_shard, device)
        ingest.equal_rows(train_shard, world_size)
        val_data = ingest.InMemoryShard.read(val_data, device)
    if context.get_world_rank() == 0:
        logger.info("worker ingest: %s (%s)", mode, why)

    precision = autocast(cfg, device)

    def batches(dataset: Any, batch_size: int, seed: int | None = None) -> Any:
        if mode == "memory":
            return dataset.batches(batch_size, seed)
        return ingest.streamed(dataset, batch_size, device, seed)

    def save(directory: str, epoch: int) -> None:
        save_torch_state(directory, _unwrap(model), optimizer, epoch, cfg.spec)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        clock = steps.EpochClock()
        total_loss, total_rows = torch.zeros((), device=device), 0
        for features, labels in batches(train_shard, cfg.batch_size, cfg.seed + epoch):
            optimizer.zero_grad(set_to_none=True)
            with precision:
                loss = objective.loss(model(features), labels)
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
            # Summed on the device: no host synchronisation per batch (loss.item() would wait).
            total_loss += loss.detach() * len(labels)
            total_rows += len(labels)

        train_loss = total_loss.item() / max(total_rows, 1)  # waits for the device: the epoch's end
        epoch_time = clock.wall_s()
        val_loss, val_score = evaluate(model, batches(val_data, max(cfg.batch_size, 256)), objective,
                                       precision)
        report = EpochReport(
            epoch=epoch, train_loss=train_loss, val_loss=val_loss,
            val_metric=objective.task.val_metric, val_score=val_score, start_epoch=start_epoch,
            train_rows=total_rows * world_size,  # rows seen by all workers this epoch
            epoch_time_s=epoch_time,
        )
        if not steps.end_epoch(cfg, report, history, save, clock):
            return  # asha_promotion paused the trial at this rung: the fit ends here


class Objective:
    """The task's loss and validation score: cross-entropy and accuracy, or for regression the
    mean squared error of the standardized label and the mean absolute error in its own units."""

    def __init__(self, cfg: WorkerLoopConfig) -> None:
        self.task: Task = cfg.objective
        self.regression = self.task.loss == "mse"
        self.mean, self.std = cfg.target_mean, cfg.target_std

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


def autocast(cfg: WorkerLoopConfig, device: torch.device) -> Any:
    """The forward passes' precision (`train.precision`): bf16 autocast, or nothing at all for
    fp32. One context, entered once per batch."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model: nn.Module, batches: Any, objective: Objective, precision: Any) -> tuple[float, float]:
    """Returns (loss, score: accuracy or mean absolute error) of `model` over (features, labels)."""
    model.eval()
    loss_sum, score, rows = 0.0, 0.0, 0
    with torch.no_grad():
        for features, labels in batches:
            with precision:
                outputs = model(features).float()
            loss_sum += objective.loss(outputs, labels, reduction="sum").item()
            score += objective.score(outputs, labels)
            rows += len(labels)
    return loss_sum / max(rows, 1), score / max(rows, 1)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
