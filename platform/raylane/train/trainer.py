"""Builds the Ray Train trainer for one trial from the config and the trial's hyperparameters."""

from __future__ import annotations

import importlib.util
from typing import Any

from raylane.config import PipelineConfig, TrainConfig
from raylane.data import PreparedData
from raylane.errors import ConfigError
from raylane.train.loop_config import loop_config

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


def build_trainer(
    cfg: PipelineConfig,
    hyperparams: dict[str, Any],
    data: PreparedData,
    *,
    name: str,
    storage_path: str,
    callbacks: list[Any] = (),
    hold: dict[str, Any] | None = None,
    worker_env: dict[str, Any] | None = None,
    run_name: str = "",
    trial: str = "",
) -> Any:
    """Returns the trainer for one trial (TorchTrainer with DDP, or TensorflowTrainer with
    MultiWorkerMirroredStrategy): per-epoch checkpoints, bounded retries. `hold`: where the
    workers wait at the rungs (asha_promotion; `raylane.asha.hold_config`). `worker_env`: the
    workers' runtime env (`raylane.builders.worker_runtime_env`: the model builder's code).
    `run_name`, `trial`: the raylane run and Tune trial, which label the workers' Prometheus
    metrics (default: `name`)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    if cfg.train.backend == "tensorflow":
        from ray.train.tensorflow import TensorflowTrainer as Trainer

        from raylane.train.tf_loop import train_loop_per_worker
    else:
        from ray.train.torch import TorchTrainer as Trainer

        from raylane.train.torch_loop import train_loop_per_worker

    return Trainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, hyperparams, data, run_name=run_name or name, trial=trial or name,
                                      **(hold or {})).to_dict(),
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
            worker_runtime_env=worker_env or None,
        ),
    )
