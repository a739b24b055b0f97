"""What a person sees in the terminal when they run the pipeline, as `make run` runs it: one line per
stage, the trials, the summary and the endpoint; Ray's and the workers' own output in a log file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
RAY_LINES = ("(RayTrainWorker", "(TrainController", "(raylet)", "TrainingReport(", "Moving model to device",
             "PYTHON worker processes", "(SplitCoordinator", "(DatasetManager", "Trial status:", "╭")

pytestmark = pytest.mark.slow


def test_the_terminal_shows_stages_trials_and_endpoint_and_no_ray_worker_lines(tmp_path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.train_tune_serve", "--config", TINY, "--no-block",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--run-name", "shown",
         "--set", f"storage_path={tmp_path / 'runs'}", "--set", f"serve.port={free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    terminal = done.stdout + done.stderr
    assert done.returncode == 0, terminal[-4000:]
    lines = terminal.splitlines()

    leaked = [line for line in lines if any(mark in line for mark in RAY_LINES)]
    assert not leaked, "Ray's own output reached the terminal:\n" + "\n".join(leaked[:10])
    for stage in ("data", "tune", "register", "serve"):
        assert any(f"▶ {stage}" in line for line in lines), f"no start line for the {stage} stage"
        assert any(re.search(rf"✔ {stage} \(\d+\.\d s\)", line) for line in lines), f"no end of {stage}"
    assert any("trial" in line and "started:" in line for line in lines), "no trial start lines"
    assert any("trials at the end" in line for line in lines), "no trial table"
    assert any(re.search(r"model digits v1: promoted", line) for line in lines), "no summary"
    endpoint = re.compile(r"endpoint http://127\.0\.0\.1:\d+/v1/models/digits:predict")
    assert any(endpoint.search(line) for line in lines), "no endpoint"
    assert len(lines) < 80, f"{len(lines)} lines: the terminal should read as a summary"

    logs = [line for line in lines if "ray.log" in line]
    assert logs, "the path of the log file is not printed"
    log_file = Path(re.search(r"(/\S+ray\.log)", logs[0]).group(1))
    assert log_file.is_file() and log_file.stat().st_size > 0
    assert str(tmp_path / "runs" / "shown") in str(log_file), "the log file is not in the run's directory"
