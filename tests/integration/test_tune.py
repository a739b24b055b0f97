"""The search on real Ray Tune: ASHA stops weak trials, and a stopped trial's process runs the next."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient
from ray.experimental import internal_kv
from ray.util.state import list_actors
from raylane import data
from raylane import tune as raylane_tune
from raylane.config import load_config
from raylane.tracking import TrialRunLogger

# One good and three hopeless learning rates. The seed (train.seed 0) draws 0.02, then 1e-6
# twice, one trial at a time: the hopeless trials are below the first rung's cutoff (the 67th
# percentile, reduction factor 3), and ASHA stops them after one epoch.
SEARCH = ["tune.scheduler=asha", "tune.search_alg=random", "tune.num_samples=3",
          "tune.max_concurrent_trials=1", "tune.grace_period=1", "tune.reduction_factor=3",
          "tune.search_space={lr: {choice: [0.000002, 0.000003, 0.000001, 0.02]}}",
          "train.epochs=3", "train.num_workers=1", "train.batch_size=64"]


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    return data.prepare(load_config(None, []).data, str(tmp_path_factory.mktemp("storage")))


def train_actors_alive() -> set[str]:
    return {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
            if a.class_name in ("TrainController", "RayTrainWorker")}


def gone(actors: set[str], within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while actors & train_actors_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_asha_stops_weak_trials_and_hands_their_process_on(prepared, tmp_path) -> None:
    train_before = train_actors_alive()
    best = raylane_tune.search(load_config(None, SEARCH), prepared, "asha", str(tmp_path))

    epochs = {r.metrics["trial_id"]: len(r.metrics_dataframe) for r in best.results}
    print("epochs per trial:", epochs, "lr:", [r.config["lr"] for r in best.results])
    assert not [r.error for r in best.results if r.error], "a trial errored"
    assert sorted(epochs.values()) == [1, 1, 3], "ASHA did not stop the hopeless trials after one epoch"
    assert best.hyperparams["lr"] == 0.02 and best.metrics["val_accuracy"] > 0.8
    # One process ran the three trials one after another: the stopped trial's fit was ended at
    # once, so its process was free for the next trial (a new process per trial otherwise).
    processes = {int(pid) for r in best.results for pid in r.metrics_dataframe["pid"]}
    print("trial processes:", processes)
    assert len(processes) == 1
    assert internal_kv._internal_kv_list("raylane:controller:") == []  # the search cleared its keys
    # The last trial's process ends with the search, and its fit's actors with it.
    assert gone(train_actors_alive() - train_before), "a stopped trial's Train controller or workers live on"


def test_promotion_asha_pauses_trials_at_a_rung_and_continues_only_the_best(prepared, tmp_path) -> None:
    """Each trial waits at the first rung (1 epoch) until it is the best third of the trials there:
    the good trial is promoted once three have reported, and continues from its checkpoint."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    logger = TrialRunLogger(uri, experiment, client.create_run(experiment).info.run_id)
    cfg = load_config(None, [*SEARCH, "tune.scheduler=asha_promotion"])
    best = raylane_tune.search(cfg, prepared, "promotion", str(tmp_path), callbacks=[logger])

    assert not [r.error for r in best.results if r.error], "a trial errored"
    frames = {r.metrics["trial_id"]: r.metrics_dataframe for r in best.results}
    epochs = {trial: sorted(frame["epoch"]) for trial, frame in frames.items()}
    print("epochs per trial:", epochs)
    assert sorted(map(len, epochs.values())) == [1, 1, 3]
    assert all(e == list(range(len(e))) for e in epochs.values()), "an epoch was trained twice"
    promoted = max(frames.values(), key=len)
    assert list(promoted["start_epoch"]) == [0, 1, 1], "the promoted trial started over"
    assert best.hyperparams["lr"] == 0.02 and best.metrics["val_accuracy"] > 0.8
    assert best.results.num_terminated == 3
    # In MLflow the promoted trial's run continues, tagged as promoted, not as restarted.
    run = client.get_run(logger.run_ids[promoted["trial_id"].iloc[0]])
    assert run.data.tags["raylane.promoted_at_epoch"] == "1" and run.data.tags["raylane.restarts"] == "0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1, 2]
    assert {client.get_run(r).info.status for r in logger.run_ids.values()} == {"FINISHED"}
    assert internal_kv._internal_kv_list("raylane:rung:") == []  # the rung decisions were cleared
