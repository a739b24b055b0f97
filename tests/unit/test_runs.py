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


# -- run names (issue 20, items 8-10) --------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits-20261125-101500", "digits.v2_nightly", "a", "R" * 128, "0-x"])
def test_a_run_name_of_letters_digits_dash_underscore_and_dot_is_accepted(name) -> None:
    assert runs.check_name(name) == name


@pytest.mark.parametrize("name", ["../../x", "..", ".hidden", "/abs/x", "a/b", "a\\b", "", "R" * 129,
                                  "née", "a b", "x\n", "s3://bucket/x", "~x"])
def test_a_run_name_that_could_leave_its_folder_is_refused_naming_the_flag_and_the_rule(name) -> None:
    with pytest.raises(ConfigError) as refused:
        runs.check_name(name, "--resume")
    said = str(refused.value)
    assert said.startswith(f"--resume {name!r}: ") and "letters, digits" in said and "128" in said


def test_no_run_of_an_escaping_name_is_started_resumed_or_looked_up(tmp_path) -> None:
    """Local storage, and an s3:// storage path where an absolute name used to become a local path."""
    cfg = load_config(None, ["train.epochs=3"])
    storage = tmp_path / "a" / "storage"
    runs.start(str(storage), "ok", cfg)
    (tmp_path / "a" / "outside").mkdir()
    record = (storage / "ok" / runs.RECORD_FILE).read_text()
    (tmp_path / "a" / "outside" / runs.RECORD_FILE).write_text(record)
    for name in ("../escaped", str(tmp_path / "absolute")):
        with pytest.raises(ConfigError, match="--run-name .*: a run name is"):
            runs.start(str(storage), name, cfg)
        with pytest.raises(ConfigError, match="--run-name .*: a run name is"):
            runs.start(f"s3://runs/raylane?endpoint_override=127.0.0.1:{free_port()}&scheme=http", name, cfg)
    with pytest.raises(ConfigError, match="--resume '../outside': a run name is"):
        runs.resume(str(storage), "../outside", None)
    with pytest.raises(ConfigError, match="a run name is"):
        runs.exists(str(storage), "../outside")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["outside", "storage"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_resume_refuses_a_record_whose_name_is_not_its_folders(tmp_path) -> None:
    """A run.json copied or edited to name another run would steer this run's later writes there."""
    import json

    storage = str(tmp_path)
    runs.start(storage, "r", load_config(None))
    path = tmp_path / "r" / runs.RECORD_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "run_name": "victim"}))
    with pytest.raises(ConfigError, match=r"--resume 'r': .*run_name: the record says 'victim', "
                                          r"its folder is 'r'"):
        runs.resume(storage, "r", None)
    assert not (tmp_path / "victim").exists()


def _start_after_everyone_checked(storage: str, epochs: int, barrier, results) -> None:
    """One of several processes starting run `same`: each passes the check that the name is new
    before any of them creates the run, as two `raylane run --run-name same` can."""
    checked = runs.check_new

    def check_then_wait(*args: object) -> None:
        checked(*args)
        barrier.wait(timeout=120)

    runs.check_new = check_then_wait
    try:
        runs.start(storage, "same", load_config(None, [f"train.epochs={epochs}"]))
        results.put(("won", epochs))
    except ConfigError as err:
        results.put(("lost", str(err)))


def test_of_runs_started_at_once_under_one_name_exactly_one_is_created(tmp_path) -> None:
    import json
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_start_after_everyone_checked,
                                 args=(str(tmp_path), epochs, barrier, results)) for epochs in range(1, 5)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=180) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    winners = [epochs for outcome, epochs in outcomes if outcome == "won"]
    assert len(winners) == 1, outcomes
    for outcome, said in outcomes:
        assert outcome == "won" or ("'same'" in said and "taken by a concurrent start" in said), said
    recorded = json.loads((tmp_path / "same" / runs.RECORD_FILE).read_text())
    assert recorded["config"]["train"]["epochs"] == winners[0]
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == [runs.RECORD_FILE]  # no temp files
