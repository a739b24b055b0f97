"""Run records in storage: a name is never reused by a new run, and --resume checks the config."""

from __future__ import annotations

import pytest
from raylane import runs
from raylane.config import load_config
from raylane.errors import ConfigError


def test_a_taken_run_name_is_refused_and_resume_counts_attempts(tmp_path) -> None:
    cfg = load_config(None, ["train.epochs=3"])
    storage = str(tmp_path)
    runs.start(storage, "r1", cfg)
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
