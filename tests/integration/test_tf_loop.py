"""The TensorFlow worker loop on real Ray Train: two workers form one MultiWorkerMirroredStrategy,
stay in sync, and a worker killed with SIGKILL resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from raylane import data
from raylane.config import load_config
from raylane.model.checkpoint import load_keras_model as load_model
from raylane.train.trainer import build_trainer

pytest.importorskip("tensorflow", reason="the [tf] extra is part of the dev install")

TF = ["train.backend=tensorflow", "train.batch_size=32"]


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    return data.prepare(load_config(None, TF).data, str(tmp_path_factory.mktemp("storage")))


def test_two_workers_form_one_strategy_with_identical_weights(prepared, tmp_path) -> None:
    cfg = load_config(None, [*TF, "train.epochs=2"])
    result = build_trainer(cfg, {"lr": 0.01}, prepared, name="sync", storage_path=str(tmp_path)).fit()
    assert result.metrics["num_replicas_in_sync"] == 2, "workers trained as independent runs"
    assert result.metrics["replica_weight_spread"] == 0.0, "weights differ between the workers"
    assert result.metrics["val_accuracy"] > 0.8  # 10 classes: chance is 0.1
    with result.checkpoint.as_directory() as directory:
        model, spec, epoch = load_model(directory)
    assert epoch == 1 and spec.inputs.features == 64 and model.output_shape == (None, 10)


def _train_workers(since: float) -> list[int]:
    """Returns the pids of the live Train workers started after `since` (the State API can still
    list the workers of an earlier run as alive for a moment)."""
    import psutil
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    pids = []
    for actor in actors:
        try:
            if psutil.Process(actor.pid).create_time() >= since:
                pids.append(actor.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def _registered_epochs(snapshot) -> list[int]:
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [r["metrics"]["epoch"] for r in results]


def test_worker_killed_with_sigkill_resumes_from_last_checkpoint(prepared, tmp_path) -> None:
    cfg = load_config(None, [*TF, "train.epochs=12", "train.max_failures=2"])
    trainer = build_trainer(cfg, {"lr": 0.01}, prepared, name="kill", storage_path=str(tmp_path))
    outcome: dict = {}
    started = time.time()
    thread = threading.Thread(target=lambda: outcome.update(result=trainer.fit()), daemon=True)
    thread.start()

    # Wait until Ray Train has *registered* a checkpoint (its manager snapshot lists it): a
    # checkpoint directory on disk that the controller has not ingested yet is not resumable.
    snapshot = tmp_path / "kill" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        registered = _registered_epochs(snapshot)
        if registered and max(registered) >= 1 and len(_train_workers(started)) == 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail("training did not register a checkpoint")
    victim = _train_workers(started)[-1]
    os.kill(victim, signal.SIGKILL)

    thread.join(timeout=400)
    result = outcome["result"]
    assert result.error is None
    assert victim not in _train_workers(started), "the killed worker is still listed"
    assert result.metrics["epoch"] == 11
    assert result.metrics["start_epoch"] >= max(registered) + 1, (
        f"resumed at epoch {result.metrics['start_epoch']}; epochs {registered} were registered")
    assert result.metrics["val_accuracy"] > 0.8
    assert result.metrics["num_replicas_in_sync"] == 2 and result.metrics["replica_weight_spread"] == 0
