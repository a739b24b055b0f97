"""What one PyTorch worker does: resume, then per epoch train on its shard, evaluate, report.

Runs inside each Ray Train worker (gloo on CPU, NCCL on GPU), with DDP or, under
`train.strategy: fsdp`, the network sharded across the workers (`raylane.train.fsdp`). `config` is
a `WorkerLoopConfig` as a dict (`raylane.train.loop_config`): optimiser settings plus the model spec.
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
from raylane.task import Task
from raylane.train import fsdp, ingest, metrics, steps
from raylane.train.loop_config import WorkerLoopConfig
from raylane.train.report import EpochReport

logger = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = WorkerLoopConfig.from_dict(config)
    steps.worker_logging()
    torch.manual_seed(cfg.seed)
    sharded = cfg.strategy == "fsdp"
    if sharded:  # parameters, gradients and optimizer state split across the workers
        model = fsdp.shard(ray.train.torch.prepare_model(cfg.spec.build(), parallel_strategy=None))
    else:  # the model.builder's network, whole on every worker, DDP-wrapped
        model = ray.train.torch.prepare_model(cfg.spec.build())
    # AdamW: decoupled weight decay, as Keras' Adam(weight_decay=...) on the TensorFlow path.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective = Objective(cfg)

    # A restarted worker group or a resumed trial continues from its checkpoint, never starts over.
    # history: every epoch's metrics so far, kept in the checkpoints.
    def restore(directory: str) -> int:
        if sharded:  # each rank loads its shards from the full state
            return fsdp.restore_full_state(directory, model, optimizer)
        return restore_torch_state(directory, _unwrap(model), optimizer)

    start_epoch, history = steps.resume(restore)

    train_shard = ray.train.get_dataset_shard("train")  # this worker's part of train
    val_data = ray.train.get_dataset_shard("val")  # all of val, on every worker
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    world_size = context.get_world_size()
    # Prometheus, through Ray's metrics agent (`raylane.train.metrics`); DDP's gradient all-reduce
    # is timed in a communication hook, registered before the first backward pass.
    watch = metrics.for_worker(cfg, gpu=metrics.torch_gpu(device))
    watch.time_allreduce(model)

    mode, why = ingest.choose(cfg, device, context.get_local_world_size(), world_size,
                              row_bytes=4 * cfg.spec.inputs.features + 8)
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

    def network(features: torch.Tensor) -> torch.Tensor:  # images: [batch, C, H, W]
        return model(cfg.spec.inputs.batch(features, "torch"))

    def save(directory: str, epoch: int) -> None:  # fsdp: end_epoch calls it on every rank
        if sharded:  # every rank sends its shards, rank 0 writes the full state
            fsdp.save_full_state(directory, model, optimizer, epoch, cfg.spec)
        else:
            save_torch_state(directory, _unwrap(model), optimizer, epoch, cfg.spec)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        clock = steps.EpochClock()
        watch.start_epoch(epoch)
        total_loss, total_rows = torch.zeros((), device=device), 0
        for features, labels in watch.batches(batches(train_shard, cfg.batch_size, cfg.seed + epoch)):
            optimizer.zero_grad(set_to_none=True)
            with precision:
                loss = objective.loss(network(features), labels)
            loss.backward()  # DDP all-reduces the gradients here (FSDP reduce-scatters them)
            optimizer.step()
            # Summed on the device: no host synchronisation per batch (loss.item() would wait).
            total_loss += loss.detach() * len(labels)
            total_rows += len(labels)
            watch.step(len(labels))

        train_loss = total_loss.item() / max(total_rows, 1)  # waits for the device: the epoch's end
        epoch_time = clock.wall_s()
        model.eval()
        val_loss, val_score = evaluate(network, batches(val_data, max(cfg.batch_size, 256)), objective,
                                       precision)
        report = EpochReport(
            epoch=epoch, train_loss=train_loss, val_loss=val_loss,
            val_metric=objective.task.val_metric, val_score=val_score, start_epoch=start_epoch,
            train_rows=total_rows * world_size,  # rows seen by all workers this epoch
            epoch_time_s=epoch_time,
            extra={"parameters_on_worker": fsdp.local_parameters(model)} if sharded else {},
        )
        watch.end_epoch(report)
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


def evaluate(network: Any, batches: Any, objective: Objective, precision: Any) -> tuple[float, float]:
    """Returns (loss, score: accuracy or mean absolute error) of `network` (in eval mode) over
    (features, labels)."""
    loss_sum, score, rows = 0.0, 0.0, 0
    with torch.no_grad():
        for features, labels in batches:
            with precision:
                outputs = network(features).float()
            loss_sum += objective.loss(outputs, labels, reduction="sum").item()
            score += objective.score(outputs, labels)
            rows += len(labels)
    return loss_sum / max(rows, 1), score / max(rows, 1)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
