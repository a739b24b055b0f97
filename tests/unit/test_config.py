"""Config errors name the dotted field, the bad value and what is accepted; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from raylane.config import load_config
from raylane.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.backend=pytorch", "train.backend: 'pytorch' is not one of 'torch', 'tensorflow'"),
        ("train.epochs=0", "train.epochs: 0: input should be greater than or equal to 1"),
        ("train.lr=fast", "train.lr: 'fast': input should be a valid number"),
        ("trian.epochs=3", "trian: unknown field; accepted: storage_path, cluster, data, train"),
        ("train.epoch=3", "train.epoch: unknown field; accepted: backend, num_workers"),
        ("tune.search_alg=grid", "tune.search_alg: 'grid' is not one of 'optuna', 'random'"),
        ("tune.search_space.lr={uniform: [2, 1]}", "tune.search_space.lr: uniform needs low < high"),
        ("tune.search_space.lr={loguniform: [0, 1]}", "loguniform needs low > 0"),
        ("tune.search_space.lr={}", "tune.search_space.lr: give exactly one of loguniform"),
        ("serve.port=70000", "serve.port: 70000: input should be less than or equal to 65535"),
        ("model.name=bad name", "model.name: 'bad name': string should match pattern"),
        ("data.val_fraction=0.9", "data.val_fraction: 0.9: input should be less than 0.5"),
        ("tune.search_space.batch_size={uniform: [16, 64]}",
         "tune.search_space.batch_size: uniform draws floats; batch_size is an integer"),
        ("tune.search_space.lr={choice: [0.01, fast]}",
         "tune.search_space.lr: 'fast': input should be a valid number"),
    ],
)
def test_bad_value_names_field_value_and_accepted(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_then_overrides_are_applied_in_order(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 3\n  lr: 0.1\n")
    cfg = load_config(recipe, ["train.epochs=7", "tune.search_space.lr={uniform: [0.1, 0.2]}"])
    assert (cfg.train.epochs, cfg.train.lr) == (7, 0.1)
    assert cfg.tune.search_space["lr"].kind == "uniform"


def test_missing_file_and_bad_yaml_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file .*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="expected dotted.path=value"):
        load_config(None, ["train.epochs"])


def test_shipped_recipes_are_valid() -> None:
    for recipe in (ROOT / "pipelines" / "configs").glob("*.yaml"):
        load_config(recipe)
    load_config(ROOT / "tests" / "configs" / "tiny.yaml")


def test_cli_bad_config_exits_2_with_one_line_and_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train_tune_serve", "--config",
         "pipelines/configs/digits_torch.yaml", "--set", "train.backend=pytorch"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ConfigError: train.backend: 'pytorch' is not one of 'torch', 'tensorflow'"
    assert "Traceback" not in proc.stderr


def test_bf16_is_for_pytorch_workers() -> None:
    assert load_config(None, ["train.precision=bf16"]).train.precision == "bf16"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.backend=tensorflow", "train.precision=bf16"])
    assert "train.precision: 'bf16' is supported with train.backend 'torch' only" in str(err.value)
    with pytest.raises(ConfigError, match="train.precision: 'fp16' is not one of 'fp32', 'bf16'"):
        load_config(None, ["train.precision=fp16"])


def test_the_search_metrics_accepted_are_those_of_the_tasks() -> None:
    import typing

    from raylane.config import TuneConfig
    from raylane.task import TASKS

    accepted = set(typing.get_args(TuneConfig.model_fields["metric"].annotation))
    assert accepted == {m for task in TASKS.values() for m in task.search_metrics}
