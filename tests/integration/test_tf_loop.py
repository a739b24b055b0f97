"""The TensorFlow worker loop on real Ray Train: two workers form one MultiWorkerMirroredStrategy,
stay in sync, and a worker killed with SIGKILL resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from raylane import data
from raylane.config import load_config
from raylane.train.tf_loop import load_model
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
    assert epoch == 1 and spec.input_dim == 64 and model.output_shape == (None, 10)


def _train_workers() -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def test_worker_killed_with_sigkill_resumes_from_last_checkpoint(prepared, tmp_path) -> None:
    cfg = load_config(None, [*TF, "train.epochs=12", "train.max_failures=2"])
    trainer = build_trainer(cfg, {"lr": 0.01}, prepared, name="kill", storage_path=str(tmp_path))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=trainer.fit()), daemon=True)
    thread.start()

    run_dir = tmp_path / "kill"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait for two checkpoints, then kill mid-training
        checkpoints = [p for p in run_dir.glob("checkpoint_2*") if p.is_dir()]
        if len(checkpoints) >= 2 and len(_train_workers()) == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail("training did not reach its second checkpoint")
    os.kill(_train_workers()[-1], signal.SIGKILL)

    thread.join(timeout=400)
    result = outcome["result"]
    assert result.error is None
    assert result.metrics["epoch"] == 11
    # The checkpoint written just before the kill may not be committed yet: resuming from the
    # one before it is still a resume. Starting from epoch 0 is not.
    assert result.metrics["start_epoch"] >= 1, "the restarted workers started over from epoch 0"
    assert result.metrics["val_accuracy"] > 0.8
    assert result.metrics["num_replicas_in_sync"] == 2 and result.metrics["replica_weight_spread"] == 0
