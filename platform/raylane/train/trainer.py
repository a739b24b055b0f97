"""Builds the Ray Train trainer for one trial from the config and the trial's hyperparameters."""

from __future__ import annotations

import importlib.util
from typing import Any

from raylane.config import PipelineConfig, TrainConfig
from raylane.data import PreparedData
from raylane.errors import ConfigError
from raylane.train.model import ModelSpec

# backend -> (module that must be importable, the extra that installs it)
BACKEND_PACKAGES = {"torch": ("torch", "torch"), "tensorflow": ("tensorflow", "tf")}


def check_backend_installed(cfg: TrainConfig) -> None:
    """Raises ConfigError naming the extra to install when the backend's framework is missing."""
    module, extra = BACKEND_PACKAGES[cfg.backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: the module was blocked in sys.modules
        found = False
    if not found:
        raise ConfigError(f"train.backend: {cfg.backend!r} needs {module}, which is not installed; "
                          f"pip install 'raylane[{extra}]'")


def loop_config(cfg: PipelineConfig, hyperparams: dict[str, Any], data: PreparedData) -> dict[str, Any]:
    """Returns the dict each worker's loop receives: train fields with the trial's values on top."""
    train = TrainConfig.model_validate({**cfg.train.model_dump(), **hyperparams})
    spec = ModelSpec(
        input_dim=data.input_dim, num_classes=data.num_outputs, hidden_size=train.hidden_size,
        num_layers=train.num_layers, dropout=train.dropout,
    )
    return {
        "lr": train.lr, "weight_decay": train.weight_decay, "batch_size": train.batch_size,
        "epochs": train.epochs, "seed": train.seed, "spec": spec.to_dict(),
        "cpus_per_worker": train.cpus_per_worker, "task": data.task,
        "target_mean": data.target.get("mean", 0.0), "target_std": data.target.get("std", 1.0),
        "ingest": train.ingest, "ingest_memory_fraction": train.ingest_memory_fraction,
        "precision": train.precision,
        "train_rows": data.num_rows.get("train", 0), "val_rows": data.num_rows.get("val", 0),
    }


def build_trainer(
    cfg: PipelineConfig,
    hyperparams: dict[str, Any],
    data: PreparedData,
    *,
    name: str,
    storage_path: str,
    callbacks: list[Any] = (),
    loop_extra: dict[str, Any] | None = None,
) -> Any:
    """Returns the trainer for one trial (TorchTrainer with DDP, or TensorflowTrainer with
    MultiWorkerMirroredStrategy): per-epoch checkpoints, bounded retries. `loop_extra` adds to
    the workers' loop config (the search's rung settings)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    if cfg.train.backend == "tensorflow":
        from ray.train.tensorflow import TensorflowTrainer as Trainer

        from raylane.train.tf_loop import train_loop_per_worker
    else:
        from ray.train.torch import TorchTrainer as Trainer

        from raylane.train.torch_loop import train_loop_per_worker

    return Trainer(
        train_loop_per_worker,
        train_loop_config={**loop_config(cfg, hyperparams, data), **(loop_extra or {})},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        datasets={"train": data.train, "val": data.val},
        # Train is split across the workers, val is evaluated whole. A single worker reads train
        # whole too: splitting it would start a coordinator actor (a process) for nothing.
        dataset_config=DataConfig(datasets_to_split=["train"] if cfg.train.num_workers > 1 else []),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                checkpoint_score_attribute=cfg.tune.metric,
                checkpoint_score_order=cfg.tune.mode,
            ),
            # Train V2 retries a failing controller forever by default: bound it too.
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures, controller_failure_limit=cfg.train.max_failures
            ),
            callbacks=list(callbacks),
        ),
    )
