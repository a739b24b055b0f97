"""Run records in storage: a name is never reused by a new run, --resume checks the config, and
--resume-if-exists continues a recorded run or starts a new one."""

from __future__ import annotations

import os
from unittest import mock

import pytest
from raylane import cli, runs
from raylane.config import load_config
from raylane.errors import ConfigError

from tests.conftest import free_port


def test_a_taken_run_name_is_refused_and_resume_counts_attempts(tmp_path) -> None:
    cfg = load_config(None, ["train.epochs=3"])
    storage = str(tmp_path)
    assert not runs.exists(storage, "r1")
    runs.start(storage, "r1", cfg)
    assert runs.exists(storage, "r1")
    with pytest.raises(ConfigError, match="--run-name 'r1' already exists.*--resume r1"):
        runs.start(storage, "r1", cfg)
    record = runs.resume(storage, "r1", None)
    assert record.resumes == 1 and record.pipeline_config().train.epochs == 3
    assert runs.resume(storage, "r1", cfg).resumes == 2
    assert runs.known_runs(storage) == ["r1"]


def test_resume_names_the_fields_that_differ_and_the_known_runs(tmp_path) -> None:
    storage = str(tmp_path)
    runs.start(storage, "r1", load_config(None, ["train.epochs=3"]))
    with pytest.raises(ConfigError, match=r"train.epochs: 3 -> 5"):
        runs.resume(storage, "r1", load_config(None, ["train.epochs=5"]), ["train.epochs=5"])
    record = runs.resume(storage, "r1", load_config(None, ["serve.port=9000"]), ["serve.port=9000"])
    assert record.resumes == 1 and record.pipeline_config().serve.port == 9000
    assert record.pipeline_config().train.epochs == 3  # the run's own config, not the defaults
    with pytest.raises(ConfigError, match=r"no run of that name.*known runs: r1"):
        runs.resume(storage, "nope", None)


def test_a_run_recorded_before_model_builders_resumes_with_the_same_config_file(tmp_path) -> None:
    """A record whose config has the MLP's fields under `train` and none of the fields added
    since is the same run as today's reading of the same YAML, not a changed one."""
    import json

    storage = str(tmp_path)
    recipe = tmp_path / "old.yaml"
    recipe.write_text("train:\n  epochs: 3\n  num_layers: 1\n")
    runs.start(storage, "old", load_config(recipe))
    path = tmp_path / "old" / runs.RECORD_FILE
    record = json.loads(path.read_text())
    config = record["config"]
    model = config["model"]
    config["train"].update(hidden_size=128, num_layers=model.pop("params")["num_layers"], dropout=0.0)
    for gone in ("builder", "requirements"):
        model.pop(gone)
    config["train"].pop("strategy")
    for field in ("image_column", "image_size", "image_channels"):
        config["data"].pop(field)
    path.write_text(json.dumps(record))
    resumed = runs.resume(storage, "old", load_config(recipe), from_file=True)
    assert resumed.pipeline_config().model.params == {"num_layers": 1}  # the rest: the MLP defaults


@pytest.mark.parametrize(("argv", "words"), [
    (["--resume-if-exists"], "--resume-if-exists needs --run-name NAME"),
    (["--resume-if-exists", "--resume", "r1"], "--resume-if-exists and --resume do not go together"),
    (["--resume-if-exists", "--run-name", "r1", "--resume", "r1"], "do not go together"),
])
def test_resume_if_exists_needs_a_run_name_and_not_resume(argv, words, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.run_command(argv)
    assert exited.value.code == 2 and words in capsys.readouterr().err


def test_resume_if_exists_continues_a_recorded_run_and_starts_a_new_one(tmp_path, capsys) -> None:
    """Both ways stop before Ray starts: the recorded run on a changed config (so it was taken as
    --resume), the new one on an MLflow server that is not there (so it was started)."""
    storage = ["--set", f"storage_path={tmp_path}"]
    runs.start(str(tmp_path), "r1", load_config(None, ["train.epochs=3", f"storage_path={tmp_path}"]))
    code = cli.run_command(["--run-name", "r1", "--resume-if-exists", *storage, "--set", "train.epochs=5"])
    assert code == 2 and "--resume 'r1': the config differs" in capsys.readouterr().err
    # --verbose: the tools' logging stays as it is in this process; the run's settings are undone.
    with mock.patch.dict(os.environ):
        code = cli.run_command(["--run-name", "r2", "--resume-if-exists", *storage, "--verbose",
                                "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    said = capsys.readouterr()
    assert code == 1 and "no run r2 under" in said.out and "no MLflow server answers" in said.err
