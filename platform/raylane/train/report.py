"""What a training worker reports each epoch: one type for the loops, Tune's schedulers and MLflow.

The loops build an `EpochReport` and send `report.metrics()` with `ray.train.report`; Tune hands
the same keys to its callbacks and schedulers (the trial logger, `asha`, the trial table), which
read them back with `EpochReport.of(result)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from raylane.task import EPOCH, TASKS, TRAIN_LOSS, VAL_LOSS

START_EPOCH = "start_epoch"
HISTORY = "history"
VAL_SCORES = tuple(task.val_metric for task in TASKS.values())


@dataclass
class EpochReport:
    """One epoch of one trial's fit, as rank 0 and every other rank report it."""

    epoch: int
    """0-based; `epoch + 1` epochs are done."""
    train_loss: float | None
    """None only in a report read back (`of`) that lacks it; a NaN is a loss that diverged."""
    val_loss: float | None
    val_metric: str
    """The task's validation score's name: val_accuracy or val_mae."""
    val_score: float | None
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
        """The metrics recorded per epoch (losses and the validation score) that were reported."""
        found = {TRAIN_LOSS: self.train_loss, VAL_LOSS: self.val_loss, self.val_metric: self.val_score}
        return {k: v for k, v in found.items() if v is not None}

    @classmethod
    def of(cls, result: Any, nan_is_missing: bool = False) -> EpochReport | None:
        """Reads a report back from what Tune passes on (a result, a history entry, or a row of
        Tune's table, where a NaN is a metric that row's trial did not report: `nan_is_missing`);
        None for a result that is not an epoch's report."""
        def number(key: str) -> float | None:
            try:
                value = float(result.get(key))
            except (TypeError, ValueError):
                return None
            return None if nan_is_missing and value != value else value

        epoch = number(EPOCH)
        if epoch is None or epoch != epoch:
            return None
        val_metric = next((m for m in VAL_SCORES if number(m) is not None), VAL_SCORES[0])
        start, history = number(START_EPOCH), result.get(HISTORY)
        return cls(
            epoch=int(epoch), train_loss=number(TRAIN_LOSS), val_loss=number(VAL_LOSS),
            val_metric=val_metric, val_score=number(val_metric),
            start_epoch=int(start) if start is not None and start == start else 0,
            history=list(json.loads(history)) if isinstance(history, str) and history else None,
        )
