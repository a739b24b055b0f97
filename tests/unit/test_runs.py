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
