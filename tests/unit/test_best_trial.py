"""Choosing the best checkpoint: only checkpoints that still exist, the latest epoch on a tie."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from raylane.config import TuneConfig
from raylane.errors import TrainingError
from raylane.tune import best_trial


class Results(list):
    def get_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame()


def _result(tmp_path, name, accuracies, kept):
    rows = []
    for epoch, accuracy in enumerate(accuracies):
        path = tmp_path / f"{name}-{epoch}"
        if epoch in kept:
            path.mkdir()
        rows.append({"epoch": epoch, "val_accuracy": accuracy, "val_loss": 1 - accuracy,
                     "train_loss": 0.1, "checkpoint_path": str(path), "trial_id": name})
    return SimpleNamespace(metrics_dataframe=pd.DataFrame(rows), config={"lr": 0.1}, error=None)


def test_tie_takes_the_kept_later_checkpoint(tmp_path) -> None:
    results = Results([_result(tmp_path, "a", [0.5, 0.9, 0.8, 0.9], kept={2, 3}),
                       _result(tmp_path, "b", [0.6, 0.85], kept={0, 1})])
    best = best_trial(results, TuneConfig())
    assert best.trial_id == "a" and best.metrics["epoch"] == 3
    assert best.checkpoint_path.endswith("a-3")


def test_min_mode_and_no_checkpoint_is_an_error(tmp_path) -> None:
    results = Results([_result(tmp_path, "a", [0.5, 0.9], kept={0, 1})])
    assert best_trial(results, TuneConfig(metric="val_loss")).metrics["epoch"] == 1
    with pytest.raises(TrainingError, match="no trial reported a checkpoint"):
        best_trial(Results([_result(tmp_path, "c", [0.5], kept=set())]), TuneConfig())
