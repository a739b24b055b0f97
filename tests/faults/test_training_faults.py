"""Training survives what kills it: a Train worker SIGKILLed mid-epoch, the MLflow server down for
a while, the node holding the workers removed. Each run is the real pipeline entrypoint on a
two-node `ray.cluster_utils.Cluster`; each check reads what a user would read afterwards (MLflow
steps and tags, the registry).

The head has 1 CPU and the worker node 4, and each Train worker needs 1 CPU, so both workers of a
trial land on the worker node (the trial's own driver takes 0.01 CPU)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow import MlflowClient

from pipelines import train_tune_serve
from tests.conftest import free_port

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
# One trial, epochs small and many, so there is time to strike between checkpoints.
FAULT_RUN = ["tune.num_samples=1", "train.epochs=10", "train.batch_size=16", "serve.enabled=false"]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "120"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=4)
    ray.init(address=cluster.address, logging_level="warning")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that the test can kill and start again on the same store."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        bin_dir = Path(sys.executable).parent
        self.process = subprocess.Popen(
            [str(bin_dir / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{self.directory / 'mlflow.db'}", "--artifacts-destination",
             str(self.directory / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.uri + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def run_pipeline(cluster, tmp: Path, tracking_uri: str, run_name: str,
                 overrides: tuple[str, ...] = ()) -> threading.Thread:
    """Starts the pipeline in a thread; its exit code lands in thread.rc."""
    argv = ["--config", TINY, "--tracking-uri", tracking_uri, "--run-name", run_name,
            "--set", f"storage_path={tmp / 'storage'}", "--set", f"cluster.address={cluster.address}"]
    argv += [a for o in (*FAULT_RUN, *overrides) for a in ("--set", o)]
    thread = threading.Thread(target=lambda: setattr(thread, "rc", train_tune_serve.main(argv)), daemon=True)
    thread.rc = None
    thread.start()
    return thread


def wait_for_checkpoint(tmp: Path, run_name: str, epoch: int, timeout: float = 300) -> None:
    """Waits until the trial's latest registered checkpoint is from `epoch` or later."""
    pattern = str(tmp / "storage" / run_name / "trials" / "*" / "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for snapshot in glob.glob(pattern):
            try:
                latest = json.loads(Path(snapshot).read_text())["latest_checkpoint_result"]
            except (ValueError, KeyError):
                continue  # being rewritten
            if latest and latest["metrics"]["epoch"] >= epoch:
                return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


def train_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")]


def trial_runs(client: MlflowClient, run_name: str) -> list:
    parent = client.search_runs(
        [client.get_experiment_by_name("raylane").experiment_id],
        f"tags.`raylane.run_name` = '{run_name}'")
    assert len(parent) == 1, "one parent run per pipeline run"
    return client.search_runs(
        [parent[0].info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")


def assert_one_clean_run(client: MlflowClient, run_name: str, epochs: int = 10) -> object:
    (trial,) = trial_runs(client, run_name)
    for metric in ("train_loss", "val_loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, metric)]
        assert sorted(steps) == list(range(epochs)), f"{metric}: steps {sorted(steps)}"
    return trial


@pytest.fixture(scope="module")
def worker_kill_and_mlflow_outage(cluster, tmp_path_factory):
    """One run: a Train worker SIGKILLed once epoch 2 is checkpointed, then the MLflow server killed
    for 20 s while training goes on, then started again on the same store."""
    tmp = tmp_path_factory.mktemp("worker-kill")
    server = MlflowServer(tmp)
    server.start()
    pipeline = run_pipeline(cluster, tmp, server.uri, "worker-kill")
    wait_for_checkpoint(tmp, "worker-kill", 2)
    victim = train_workers()[0]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    server.kill()
    time.sleep(20)
    server.start()
    pipeline.join(timeout=600)
    yield {"rc": pipeline.rc, "client": MlflowClient(server.uri), "killed_at": killed_at}
    server.kill()


def test_worker_killed_mid_training_resumes_from_last_checkpoint(worker_kill_and_mlflow_outage) -> None:
    run = worker_kill_and_mlflow_outage
    assert run["rc"] == 0
    trial = assert_one_clean_run(run["client"], "worker-kill")
    assert trial.data.tags["raylane.restarts"] == "1"
    assert int(trial.data.tags["raylane.resumed_at_epoch"]) >= 3  # from its checkpoint, not epoch 0
    version = run["client"].get_model_version_by_alias("digits", "champion")
    assert float(version.tags["test_accuracy"]) > 0.85  # quality unchanged by the restart


def test_mlflow_outage_during_training_loses_and_duplicates_nothing(worker_kill_and_mlflow_outage) -> None:
    run = worker_kill_and_mlflow_outage
    assert run["rc"] == 0
    trial = assert_one_clean_run(run["client"], "worker-kill")  # every epoch exactly once
    assert trial.info.status == "FINISHED"
    assert trial.data.tags["raylane.epochs_completed"] == "10"


def test_fsdp_worker_killed_mid_training_resumes_its_shards_from_the_last_checkpoint(cluster,
                                                                                  tmp_path) -> None:
    """train.strategy fsdp: each checkpoint holds the full state gathered from both workers' shards;
    the restarted worker group loads it back into new shards and goes on after it, every epoch in
    MLflow once, and the logged model (a plain network) is as good as DDP's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = run_pipeline(cluster, tmp_path, uri, "fsdp-kill", ("train.strategy=fsdp",))
    wait_for_checkpoint(tmp_path, "fsdp-kill", 2)
    train_workers()[0].send_signal(signal.SIGKILL)
    pipeline.join(timeout=600)
    assert pipeline.rc == 0
    client = MlflowClient(uri)
    trial = assert_one_clean_run(client, "fsdp-kill")  # every epoch exactly once
    assert trial.data.tags["raylane.restarts"] == "1"
    assert int(trial.data.tags["raylane.resumed_at_epoch"]) >= 3  # from its checkpoint, not epoch 0
    assert trial.data.tags["raylane.epochs_completed"] == "10"
    version = client.get_model_version_by_alias("digits", "champion")
    assert float(version.tags["test_accuracy"]) > 0.85


def test_unreachable_tracking_server_fails_fast_before_training(tmp_path, capsys) -> None:
    started = time.monotonic()
    dead = f"http://127.0.0.1:{free_port()}"
    rc = train_tune_serve.main(["--config", TINY, "--tracking-uri", dead, "--set",
                                f"storage_path={tmp_path / 'storage'}", "--set", "serve.enabled=false"])
    assert rc == 1 and time.monotonic() - started < 30
    assert f"tracking.tracking_uri '{dead}': no MLflow server answers" in capsys.readouterr().err


def test_node_lost_mid_training_continues_on_a_new_node(cluster, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = run_pipeline(cluster, tmp_path, uri, "node-loss")
    wait_for_checkpoint(tmp_path, "node-loss", 2)
    (worker_node,) = cluster.worker_nodes
    cluster.remove_node(worker_node, allow_graceful=False)
    time.sleep(5)  # nowhere to run 2 workers: training waits for resources, it does not fail
    cluster.add_node(num_cpus=4)
    pipeline.join(timeout=600)
    assert pipeline.rc == 0
    client = MlflowClient(uri)
    trial = assert_one_clean_run(client, "node-loss")
    assert int(trial.data.tags["raylane.restarts"]) >= 1
    assert int(trial.data.tags["raylane.resumed_at_epoch"]) >= 3
    assert client.get_model_version_by_alias("digits", "champion").tags["raylane.run_id"]
