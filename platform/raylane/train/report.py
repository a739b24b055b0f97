"""What a training worker reports each epoch: one type for the loops, Tune's schedulers and MLflow.

The loops build an `EpochReport` and send `report.metrics()` with `ray.train.report`; Tune hands
the same keys to its callbacks and schedulers, which read them back with `EpochReport.of(result)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from raylane.task import ALL_EPOCH_METRICS, EPOCH, TRAIN_LOSS, VAL_LOSS

START_EPOCH = "start_epoch"
HISTORY = "history"


@dataclass
class EpochReport:
    """One epoch of one trial's fit, as rank 0 and every other rank report it."""

    epoch: int
    """0-based; `epoch + 1` epochs are done."""
    train_loss: float
    val_loss: float
    val_metric: str
    """The task's validation score's name: val_accuracy or val_mae."""
    val_score: float
    start_epoch: int = 0
    """The first epoch of this worker group: > 0 when it resumed from a checkpoint."""
    train_rows: int = 0
    """Rows seen by all workers this epoch."""
    epoch_time_s: float = 0.0
    """Training only."""
    epoch_wall_s: float = 0.0
    """Training, evaluation and checkpoint."""
    epoch_cpu_s: float = 0.0
    """This worker's CPU seconds in the epoch."""
    history: list[dict[str, float]] | None = None
    """On a resumed worker group's first epoch: the epochs before its checkpoint, which a killed
    driver may never have passed on."""
    extra: dict[str, float] = field(default_factory=dict)
    """Backend-specific figures (TensorFlow: num_replicas_in_sync, replica_weight_spread)."""

    @property
    def resumed(self) -> bool:
        return self.start_epoch > 0 and self.epoch == self.start_epoch

    def metrics(self) -> dict[str, Any]:
        """The flat dict `ray.train.report` takes."""
        out: dict[str, Any] = {
            EPOCH: self.epoch, TRAIN_LOSS: self.train_loss, VAL_LOSS: self.val_loss,
            self.val_metric: self.val_score, START_EPOCH: self.start_epoch,
            "train_rows": self.train_rows, "epoch_time_s": self.epoch_time_s,
            "epoch_wall_s": self.epoch_wall_s, "epoch_cpu_s": self.epoch_cpu_s, **self.extra,
        }
        if self.history is not None:
            out[HISTORY] = json.dumps(self.history)
        return out

    def scores(self) -> dict[str, float]:
        """The metrics recorded per epoch (losses and the validation score)."""
        return {TRAIN_LOSS: self.train_loss, VAL_LOSS: self.val_loss, self.val_metric: self.val_score}


def epoch_of(result: dict[str, Any]) -> int | None:
    """The 0-based epoch of a Tune result, None for a result that is not an epoch's report."""
    epoch = result.get(EPOCH)
    return None if epoch is None else int(epoch)


def scores_of(result: Any, drop_nan: bool = False) -> dict[str, float]:
    """The per-epoch metrics found in a result, a history entry or a row of Tune's table (where a
    NaN is a metric the row's trial never reported: `drop_nan`)."""
    found = {k: float(result[k]) for k in ALL_EPOCH_METRICS if k in result}
    return {k: v for k, v in found.items() if v == v} if drop_nan else found


def history_of(result: dict[str, Any]) -> list[dict[str, float]]:
    """The epochs before a resumed worker group's checkpoint, carried by its first report."""
    return list(json.loads(result.get(HISTORY) or "[]"))
