"""The epoch report workers send and Tune's callbacks read back (pure logic)."""

from __future__ import annotations

import math

import pandas as pd
from raylane.train.report import EpochReport


def test_a_report_reads_back_what_it_sent_including_the_history_of_a_resumed_group() -> None:
    sent = EpochReport(epoch=3, train_loss=0.5, val_loss=0.4, val_metric="val_mae", val_score=1.5,
                       start_epoch=3, history=[{"epoch": 0, "val_loss": 0.9, "val_mae": 2.0}])
    back = EpochReport.of(sent.metrics())
    assert back.epoch == 3 and back.resumed and back.val_metric == "val_mae"
    assert back.scores() == {"train_loss": 0.5, "val_loss": 0.4, "val_mae": 1.5}
    assert EpochReport.of(back.history[0]).scores() == {"val_loss": 0.9, "val_mae": 2.0}


def test_a_diverged_loss_is_kept_and_a_result_without_an_epoch_is_no_report() -> None:
    report = EpochReport.of({"epoch": 1, "train_loss": float("nan"), "val_loss": 0.3, "val_accuracy": 0.9})
    assert math.isnan(report.scores()["train_loss"]) and report.start_epoch == 0
    assert EpochReport.of({"training_iteration": 1}) is None


def test_a_row_of_tunes_table_treats_nan_as_not_reported() -> None:
    row = pd.Series({"epoch": 2.0, "train_loss": 0.2, "val_loss": float("nan"), "val_accuracy": 0.8,
                     "val_mae": float("nan"), "start_epoch": float("nan")})
    report = EpochReport.of(row, nan_is_missing=True)
    assert report.epoch == 2 and report.start_epoch == 0 and report.val_metric == "val_accuracy"
    assert report.scores() == {"train_loss": 0.2, "val_accuracy": 0.8}
