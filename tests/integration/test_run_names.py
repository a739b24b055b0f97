"""Run names and run records are input raylane must not trust (issue 20, items 8-10), through the
real `raylane run` command: a name cannot walk out of storage_path, a `run.json` that anyone with
write access to shared storage edited cannot steer `--resume` to another run, MLflow run or model
version, and a run is created exactly once, on local storage and on S3 (a moto server).

Every refusal here happens before Ray starts, so the commands take seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pyarrow.fs as pafs
import pytest
from mlflow import MlflowClient
from raylane import runs
from raylane.config import load_config
from raylane.errors import ConfigError

from tests.conftest import free_port
from tests.s3_server import s3_bucket

ROOT = Path(__file__).resolve().parents[2]
RULE = "a run name is letters, digits, '-', '_' and '.', not starting with '.', at most 128 characters"


def raylane_run(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    """Runs `python -m raylane run ARGS` and returns what it did. A command that went on to start
    Ray (what these tests refuse) is stopped with the Ray it started, and reported as rc None."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen([sys.executable, "-m", "raylane", "run", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return subprocess.CompletedProcess(process.args, None, out, err)


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- 8. a run name cannot leave storage_path -------------------------------------------------------


@pytest.mark.parametrize("attack", ["parent", "absolute", "absolute-on-s3"])
def test_a_run_name_that_leaves_storage_path_is_refused_before_anything_is_written(attack, tmp_path) -> None:
    """Before: `../../x` and an absolute name put the run's logs (then its checkpoints) outside
    storage_path, and on s3:// an absolute name became a local path."""
    storage = tmp_path / "a" / "b" / "storage"
    storage_path = {"absolute-on-s3": f"s3://runs/raylane?endpoint_override=127.0.0.1:{free_port()}"
                                      "&scheme=http&region=us-east-1"}.get(attack, str(storage))
    name = "../../escaped" if attack == "parent" else str(tmp_path / "elsewhere")
    # An MLflow server that is not there: a command that accepted the name stops at it, before Ray.
    done = raylane_run("--run-name", name, "--set", f"storage_path={storage_path}",
                       "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr
    assert f"ConfigError: --run-name {name!r}: {RULE}" in done.stderr
    assert everything_under(tmp_path) == []


@pytest.mark.parametrize("flags", [("--resume", "../r"), ("--run-name", "../r", "--resume-if-exists")])
def test_resume_flags_refuse_a_name_outside_storage_path(flags, tmp_path) -> None:
    """Before: `--resume ../r` read and rewrote the run.json of a folder beside storage_path."""
    storage = tmp_path / "storage"
    runs.start(str(tmp_path), "r", load_config(None, [f"storage_path={storage}"]))
    before = (tmp_path / "r" / runs.RECORD_FILE).read_text()
    done = raylane_run(*flags, "--set", f"storage_path={storage}",
                       "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr
    assert f"ConfigError: {flags[0]} '../r': {RULE}" in done.stderr
    assert (tmp_path / "r" / runs.RECORD_FILE).read_text() == before
    assert everything_under(tmp_path) == ["r", f"r/{runs.RECORD_FILE}"]


# -- 9. --resume checks run.json against the directory and MLflow ----------------------------------


@pytest.fixture
def forged(tmp_path):
    """A sqlite MLflow store holding run `r` as raylane records it (experiment `raylane`, tagged
    with its name, model `digits` v1 registered from it) and runs a forger could point at: another
    raylane run `other` (which registered v2), and a run tagged `r` in another experiment. Yields
    a function that writes storage/r/run.json with the given fields changed."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("raylane", artifact_location=(tmp_path / "art").as_uri())
    elsewhere = client.create_experiment("elsewhere", artifact_location=(tmp_path / "art2").as_uri())
    ids = {"r": client.create_run(experiment, tags={"raylane.run_name": "r"}).info.run_id,
           "other": client.create_run(experiment, tags={"raylane.run_name": "other"}).info.run_id,
           "elsewhere": client.create_run(elsewhere, tags={"raylane.run_name": "r"}).info.run_id,
           "experiment": experiment}
    client.create_registered_model("digits")
    for run in ("r", "other"):
        client.create_model_version("digits", (tmp_path / "art" / run).as_uri(), run_id=ids[run])
    storage = tmp_path / "storage"
    cfg = load_config(None, [f"tracking.tracking_uri={uri}", f"storage_path={storage}"])
    runs.start(str(storage), "r", cfg)
    record = runs.update(str(storage), runs.resume(str(storage), "r", None), mlflow_run_id=ids["r"],
                         experiment_id=experiment, registered_version="1", resumes=0)

    def write(**changes: str) -> str:
        path = storage / "r" / runs.RECORD_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return str(storage)

    return {"ids": ids, "write": write, "record": record, "uri": uri}


@pytest.mark.parametrize(("field", "change", "found"), [
    ("run_name", "victim", "its folder is 'r'"),
    ("mlflow_run_id", "0" * 32, "no such MLflow run"),
    ("mlflow_run_id", "other", "its raylane.run_name tag is 'other'"),
    ("mlflow_run_id", "elsewhere", "it belongs to experiment"),
    ("registered_version", "2", "was registered from MLflow run"),
])
def test_resume_refuses_a_run_json_that_points_elsewhere(forged, field, change, found) -> None:
    """Before: the resume went ahead, wrote under the record's name, logged to the record's MLflow
    run, or skipped training to deploy the record's version."""
    value = forged["ids"].get(change, change)
    storage = forged["write"](**{field: value})
    done = raylane_run("--resume", "r", "--set", f"storage_path={storage}")
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("ConfigError: --resume 'r': "), said
    assert f"{field}: the record says {value!r}" in said and found in said, said


def test_a_record_raylane_wrote_passes_the_checks(forged) -> None:
    from raylane import tracking

    uri, experiment = forged["uri"], forged["ids"]["experiment"]
    tracking.check_resumed_run(forged["record"], uri, experiment, "digits")
    tracking.check_resumed_run(dataclasses.replace(forged["record"], registered_version=None), uri,
                               experiment, "digits")
    not_yet_tracked = dataclasses.replace(forged["record"], mlflow_run_id=None, registered_version=None)
    tracking.check_resumed_run(not_yet_tracked, uri, experiment, "digits")


# -- 10. a run is created once -----------------------------------------------------------------------


def test_a_run_started_on_s3_while_another_of_its_name_is_created_is_refused(tmp_path) -> None:
    """Both starts passed the check that the name is new (as two commands started together do);
    the conditional put lets only the first create the run. Before: the second overwrote run.json."""
    with s3_bucket("runs") as bucket:
        storage = f"s3://runs/raylane?{bucket['options']}"
        runs.start(storage, "same", load_config(None, ["train.epochs=3"]))
        with mock.patch.object(runs, "check_new"), pytest.raises(ConfigError) as refused:
            runs.start(storage, "same", load_config(None, ["train.epochs=7"]))
        assert "'same'" in str(refused.value) and "taken by a concurrent start" in str(refused.value)
        assert runs.resume(storage, "same", None).pipeline_config().train.epochs == 3
        listed = bucket["fs"].get_file_info(pafs.FileSelector("runs/raylane", recursive=True))
        names = sorted(info.path for info in listed)
        assert names == ["runs/raylane/same", f"runs/raylane/same/{runs.RECORD_FILE}"]
