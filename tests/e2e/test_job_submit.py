"""`ray job submit` against a `ray start --head` cluster on 127.0.0.1: the job trains, registers
and deploys, exits 0, and the endpoint still answers after the job has ended; a second job scores
files with the champion it registered (`pipelines.predict`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _ray(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "ray"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _submit(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`ray job submit ...`, asked again while the head's job agent has not registered yet (the
    dashboard answers a few seconds before it: "No available agent to submit job")."""
    deadline = time.monotonic() + 60
    while True:
        job = _ray("job", "submit", *args, env=env, timeout=timeout)
        if "No available agent" not in job.stderr + job.stdout or time.monotonic() > deadline:
            return job
        time.sleep(2)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A separate Ray cluster started with `ray start --head --block`, stopped by SIGTERM."""
    tmp = tmp_path_factory.mktemp("cluster")
    gcs_port, dashboard_port = free_port(), free_port()
    # Ray's unix sockets live under --temp-dir, and AF_UNIX paths are limited to 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", "--num-cpus=8", "--disable-usage-stats",
         f"--temp-dir={ray_tmp}"],
        env=env, cwd=ROOT, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            # 401 is an answer too: Ray 2.60 wants its token, which the ray CLI reads itself.
            if httpx.get(f"{address}/api/version", timeout=2).status_code in (200, 401):
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (tmp / "head.log").read_text()
        time.sleep(1)
    else:
        pytest.fail("ray start --head did not come up: " + (tmp / "head.log").read_text()[-2000:])
    yield {"address": address, "env": env, "tmp": tmp}
    _stop_tree(process.pid)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_tree(pid: int) -> None:
    """Stops this cluster's processes only: `ray stop` would stop every Ray on the machine, and
    SIGTERM to `ray start --block` leaves the GCS, raylet and agents running."""
    import psutil

    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


@pytest.fixture(scope="module")
def trained(head):
    """The training job, submitted once: its result and the port of the endpoint it deployed."""
    tmp, serve_port = head["tmp"], free_port()
    job = _submit(
        "--address", head["address"], "--working-dir", ".", "--",
        "python", "-m", "pipelines.train_tune_serve", "--config", "tests/configs/tiny.yaml",
        "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--run-name", "job",
        "--set", f"storage_path={tmp / 'storage'}", "--set", f"serve.port={serve_port}",
        # a team's own builder, in the working directory: it travels with the job to every worker
        "--set", "model.builder=examples.tabular_torch:build",
        "--set", "tune.search_space={lr: {loguniform: [0.003, 0.01]}, width: {choice: [32, 64]}}",
        env=head["env"], timeout=900,
    )
    return job, serve_port


def test_submitted_job_deploys_an_endpoint_that_outlives_it(trained) -> None:
    job, serve_port = trained
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "the endpoint keeps running on the cluster after this job exits" in job.stdout
    assert "succeeded" in job.stdout.lower()

    response = httpx.post(f"http://127.0.0.1:{serve_port}/v1/models/digits:predict",
                          json={"instances": [[0.0] * 64, [8.0] * 64]}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2
    assert response.headers["X-Model-Version"] == "1"


def test_a_submitted_predict_job_scores_files_with_the_champion(head, trained) -> None:
    import mlflow
    import pandas as pd
    from sklearn.datasets import load_digits

    assert trained[0].returncode == 0, "the training job failed (see the test above)"
    tmp = head["tmp"]
    digits = load_digits()
    frame = pd.DataFrame(digits.data[:300], columns=[f"pixel_{i // 8}_{i % 8}" for i in range(64)])
    frame.insert(0, "id", range(300))
    (tmp / "new").mkdir()
    frame.iloc[:150].to_parquet(tmp / "new" / "a.parquet", index=False)
    frame.iloc[150:].to_parquet(tmp / "new" / "b.parquet", index=False)
    job = _submit(
        "--address", head["address"], "--working-dir", ".", "--",
        "python", "-m", "pipelines.predict", "--model", "digits@champion", "--input", str(tmp / "new"),
        "--output", str(tmp / "scores"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
        env=head["env"], timeout=600,
    )
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout.lower()
    scored = pd.concat(pd.read_parquet(f) for f in sorted((tmp / "scores").glob("*.parquet")))
    assert sorted(scored["id"]) == list(range(300))
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    expected = dict(zip(frame["id"], model.predict(frame.drop(columns="id")), strict=True))
    assert [expected[i] for i in scored["id"]] == scored["prediction"].tolist()
