"""The Tune callback that writes one MLflow run per trial, against a real sqlite store, fed the
results a trial reports when its worker group is killed and resumes from a checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

from mlflow import MlflowClient
from raylane.tracking import TrialRunLogger


def test_resumed_worker_group_is_counted_and_no_step_is_logged_twice(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    logger = TrialRunLogger(uri, experiment, parent)
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.01})
    logger.on_trial_start(0, [], trial)
    # Epochs 0-2, a kill during epoch 3 with the checkpoint of epoch 1 last registered, so the
    # resumed group redoes epoch 2; then a second kill and a resume at epoch 4.
    reports = [(0, 0), (1, 0), (2, 0), (2, 2), (3, 2), (4, 4), (5, 4)]
    for epoch, start in reports:
        logger.on_trial_result(0, [], trial, {"epoch": epoch, "start_epoch": start, "val_accuracy": 0.5,
                                              "timestamp": 1_800_000_000 + epoch})
    logger.on_trial_complete(0, [], trial)
    logger.on_experiment_end([])  # waits until the writer thread has sent everything
    run = client.get_run(logger.run_ids["t1"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == [0, 1, 2, 3, 4, 5]
    assert run.data.tags["raylane.restarts"] == "2" and run.data.tags["raylane.resumed_at_epoch"] == "4"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"


def test_a_resumed_pipeline_continues_the_trial_run_it_finds_by_tag(tmp_path) -> None:
    import pickle

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.01})
    first = TrialRunLogger(uri, experiment, parent)
    first.on_trial_start(0, [], trial)
    first.on_trial_result(0, [], trial, {"epoch": 0, "start_epoch": 0, "val_accuracy": 0.5})
    first.flush()
    # The driver dies after the workers checkpointed epoch 1 but before epoch 1 reached MLflow;
    # Tune restores its callbacks from the pickled experiment state.
    second = pickle.loads(pickle.dumps(first))
    assert second.run_ids == {}
    second.on_trial_start(0, [], trial)
    history = json.dumps([{"epoch": 0, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.55}])
    second.on_trial_result(0, [], trial, {"epoch": 2, "start_epoch": 2, "val_accuracy": 0.6,
                                          "history": history})
    second.on_trial_result(0, [], trial, {"epoch": 3, "start_epoch": 2, "val_accuracy": 0.6})
    second.on_trial_complete(0, [], trial)
    second.on_experiment_end([])
    (run,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    points = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert points == {0: 0.5, 1: 0.55, 2: 0.6, 3: 0.6}  # epoch 1 from the checkpoint, none twice
    assert run.data.tags["raylane.restarts"] == "1" and run.info.status == "FINISHED"
