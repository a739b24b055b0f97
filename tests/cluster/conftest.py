"""The multi-host rig's tests: `make cluster-test` builds the rig, runs them, and removes it.

Every pipeline is submitted from the client host with `ray job submit --working-dir .`, as a user
submits it from a workstation; what the tests check they ask from the client host too
(`tests/cluster/probe.py`): the MLflow server, S3, the head's State API and the endpoint.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = "deploy/local-cluster/digits.yaml"


def _load_rig():
    spec = importlib.util.spec_from_file_location("raylane_rig", REPO / "deploy/local-cluster/rig.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rig = _load_rig()
REPORT = rig.RIG_DIR / "logs" / "measured.json"  # kept by `rig.py down --keep-logs`


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session", autouse=True)
def rig_is_up():
    if not rig.state():
        pytest.fail("the multi-host rig is not up: run `make cluster-test` (or `make cluster-up` first)")
    expected = {rig.HEAD.ip, *(w.ip for w in rig.WORKERS)}
    assert set(rig.alive_nodes()) == expected, "not every Ray node is alive"


def probe(command: str, *args: str, timeout: float = 180):
    """Runs tests/cluster/probe.py on the client host; returns its JSON answer."""
    result = rig.run("client", ["python", "-m", "tests.cluster.probe", command, *args], cwd=str(REPO),
                     timeout=timeout)
    return json.loads(result.stdout.strip().splitlines()[-1])


class Job:
    """A pipeline submitted from the client host with `ray job submit --working-dir .`."""

    def __init__(self, *pipeline_args: str, name: str = "run") -> None:
        self.id = f"rig-{name}-{uuid.uuid4().hex[:6]}"
        argv = ["ray", "job", "submit", "--working-dir", ".", "--submission-id", self.id, "--no-wait", "--",
                "python", "-m", "pipelines.train_tune_serve", "--config", CONFIG, *pipeline_args]
        self.command = shlex.join(argv)
        rig.run("client", argv, cwd=str(REPO), timeout=300)
        self.submitted = time.time()

    def status(self) -> dict:
        return probe("job", self.id)

    def wait(self, timeout: float = 900) -> dict:
        """Waits for the job to end; returns its status and logs."""
        deadline = time.monotonic() + timeout
        state = {"status": "unknown", "logs": ""}
        while True:
            try:
                state = self.status()
            except (RuntimeError, subprocess.TimeoutExpired) as err:  # one slow probe is not a failure
                state = {**state, "logs": f"{state['logs']}\n(last probe failed: {err})"}
            if state["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return state
            assert time.monotonic() < deadline, (
                f"job {self.id} still {state['status']}:\n{state['logs'][-3000:]}")
            time.sleep(5)

    def succeed(self, timeout: float = 900) -> str:
        state = self.wait(timeout)
        assert state["status"] == "SUCCEEDED", f"job {self.id} {state['status']}:\n{state['logs'][-5000:]}"
        return state["logs"]

    def stop(self) -> None:
        rig.run("client", ["ray", "job", "stop", self.id], cwd=str(REPO), timeout=120)


SESSION = uuid.uuid4().hex[:4]


def unique(name: str) -> str:
    """A model and experiment name of this test session: the tests can run again on a rig kept up."""
    return f"{name}-{SESSION}"


def settings(name: str, **extra: object) -> list[str]:
    """`--set` flags giving a scenario its own model and experiment on the shared MLflow server."""
    values = {"model.name": name, "tracking.experiment": name, **extra}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def trial_runs(experiment: str) -> list[dict]:
    return [run for run in probe("runs", experiment) if run["parent"]]


def wait_until(what: str, check, timeout: float = 600, interval: float = 3, job: Job | None = None):
    """Polls `check` until it returns something true; with `job`, fails as soon as that job has ended
    (its logs in the message) instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (RuntimeError, subprocess.TimeoutExpired):  # one slow probe is not a failure
            result = None
        if result:
            return result
        if job is not None:
            try:
                state = job.status()
            except (RuntimeError, subprocess.TimeoutExpired):
                state = {"status": "unknown"}
            assert state["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"), (
                f"{what}: job {job.id} ended {state['status']} first:\n{state.get('logs', '')[-5000:]}")
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout:.0f} s"
        time.sleep(interval)


def record(key: str, value: object) -> None:
    """Adds a measured figure to the rig's measured.json and prints it (`pytest -s` shows it)."""
    figures = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    figures[key] = value
    REPORT.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"[measured] {key} = {value}")


def steps_of(run: dict, metric: str) -> list[int]:
    return [step for step, _, _ in run["metrics"].get(metric, [])]
