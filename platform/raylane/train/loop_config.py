"""The typed settings every training worker receives: built once from the config, read by the loops.

Ray Train hands a plain dict to the worker function (it records it with the run), so the trainer
passes `WorkerLoopConfig.to_dict()` and the loop's first line is `WorkerLoopConfig.from_dict(...)`.
Every field is resolved here, once; the loops never restate a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from raylane.builders import model_spec
from raylane.config import HYPERPARAMETERS, PipelineConfig, TrainConfig
from raylane.model.network import ModelSpec
from raylane.task import Task, task_named


@dataclass(frozen=True)
class WorkerLoopConfig:
    """One trial's training settings, as every worker of its fit sees them."""

    spec: ModelSpec
    """The network to build (its builder, shapes and params)."""
    task: str
    """classification or regression (`raylane.task`)."""
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    seed: int
    cpus_per_worker: float
    precision: Literal["fp32", "bf16"]
    strategy: Literal["ddp", "fsdp"]
    ingest: Literal["auto", "memory", "stream"]
    ingest_memory_fraction: float
    train_rows: int
    """Rows of the whole train split (a worker's shard is about train_rows / world size)."""
    val_rows: int
    target_mean: float = 0.0
    """Regression: the label's train mean and std; the network learns the standardized label."""
    target_std: float = 1.0
    hold_at: tuple[int, ...] = ()
    """asha_promotion: epochs done after which the workers wait for the scheduler (`train.rungs`)."""
    hold_key: str = ""
    """asha_promotion: where the scheduler's answer for this trial appears."""
    run_name: str = ""
    """The raylane run this fit trains for, and its Tune trial: the labels of the workers'
    Prometheus metrics (`raylane.train.metrics`; empty: the Train run's name)."""
    trial: str = ""

    @property
    def objective(self) -> Task:
        return task_named(self.task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorkerLoopConfig:
        values = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        values["spec"] = ModelSpec.from_dict(values["spec"])
        values["hold_at"] = tuple(values.get("hold_at", ()))
        return cls(**values)


def loop_config(cfg: PipelineConfig, hyperparams: dict[str, Any], data: Any, *, run_name: str = "",
                trial: str = "", **hold: Any) -> WorkerLoopConfig:
    """Returns the workers' settings: train fields and model params with the trial's values on
    top, the data's shapes and label statistics, (asha_promotion) where to hold at the rungs, and
    the run and trial that label the workers' metrics."""
    train = TrainConfig.model_validate(
        {**cfg.train.model_dump(), **{k: v for k, v in hyperparams.items() if k in HYPERPARAMETERS}})
    return WorkerLoopConfig(
        spec=model_spec(cfg, data, hyperparams), task=data.task, lr=train.lr,
        weight_decay=train.weight_decay, batch_size=train.batch_size, epochs=train.epochs, seed=train.seed,
        cpus_per_worker=train.cpus_per_worker, precision=train.precision, strategy=train.strategy,
        ingest=train.ingest,
        ingest_memory_fraction=train.ingest_memory_fraction,
        train_rows=data.num_rows.get("train", 0), val_rows=data.num_rows.get("val", 0),
        target_mean=data.target.get("mean", 0.0), target_std=data.target.get("std", 1.0),
        run_name=run_name, trial=trial, **hold,
    )
