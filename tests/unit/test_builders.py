"""A model builder named by import path is checked before any work starts: every problem is a
ConfigError naming model.builder or model.params, and the CLI exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from raylane.builders import check_builder, check_output, code_location, model_spec
from raylane.config import load_config
from raylane.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BUILDERS = '''
from torch import nn

def build(inputs, outputs, *, width: int = 16, depth: int = 1):
    return nn.Sequential(nn.Linear(inputs.features, width), nn.ReLU(), nn.Linear(width, outputs.size))

def fixed_ten(inputs, outputs):
    return nn.Linear(inputs.features, 10)

def one_arg(inputs):
    return nn.Linear(inputs.features, 3)

def needs_width(inputs, outputs, *, width):
    return nn.Linear(inputs.features, outputs.size)

def keras_like(inputs, outputs):
    return "not a model"

def needs_depth(inputs, outputs, *, depth):
    return nn.Linear(inputs.features, outputs.size)

def flat(inputs, outputs):
    return nn.Sequential(nn.Linear(inputs.features, 1), nn.Flatten(0))

not_a_function = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A builder module in a folder outside raylane's tree, importable as `my_models`."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(BUILDERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models"
    sys.modules.pop("my_models", None)


def check(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        check_builder(load_config(None, list(overrides)))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_the_default_builder_is_the_built_in_mlp() -> None:
    cfg = load_config(None, ["model.params.hidden_size=8"])
    assert check_builder(cfg).__name__ == "torch_mlp"
    tf_cfg = load_config(None, ["train.backend=tensorflow"])
    assert check_builder(tf_cfg).__name__ == "keras_mlp"
    assert code_location(cfg) is None  # raylane's own builders travel with raylane


def test_old_train_fields_are_the_mlps_params() -> None:
    cfg = load_config(None, ["train.hidden_size=32", "train.num_layers=1"])
    assert cfg.model.params == {"hidden_size": 32, "num_layers": 1}
    with pytest.raises(ConfigError, match="train.hidden_size: a parameter of the built-in MLP"):
        load_config(None, ["train.hidden_size=32", "model.builder=my_models:build"])


def test_a_module_that_does_not_import_is_named() -> None:
    assert check("model.builder=nope.models:build") == (
        "model.builder 'nope.models:build': module 'nope' not found (is it importable from the "
        "working directory or an installed package?)")


def test_a_missing_function_and_a_non_function(user_module: str) -> None:
    assert f"{user_module!r} has no 'nothing'" in check(f"model.builder={user_module}:nothing")
    assert "not a function (int)" in check(f"model.builder={user_module}:not_a_function")


def test_a_wrong_signature_is_refused(user_module: str) -> None:
    message = check(f"model.builder={user_module}:one_arg")
    assert "takes (inputs); expected build(inputs, outputs, **params)" in message


def test_an_unknown_param_names_what_the_builder_accepts(user_module: str) -> None:
    message = check(f"model.builder={user_module}:build", "model.params.hidden_size=64")
    assert message == (f"model.params.hidden_size: not a parameter of model builder "
                       f"'{user_module}:build'; it accepts width, depth")
    message = check(f"model.builder={user_module}:build", "tune.search_space.momentum={choice: [1]}")
    assert message.startswith("tune.search_space.momentum: not a parameter of model builder")
    assert "(or a train field: lr, weight_decay, batch_size)" in message


def test_a_required_param_must_be_given(user_module: str) -> None:
    assert "requires width (no default)" in check(f"model.builder={user_module}:needs_width")
    cfg = load_config(None, [f"model.builder={user_module}:needs_width", "model.params.width=4"])
    check_builder(cfg)


def test_searched_values_are_checked_against_the_annotations(user_module: str) -> None:
    assert check("tune.search_space.dropout={uniform: [0.5, 1.5]}") == (
        "tune.search_space.dropout: 1.5: input should be less than 1 "
        "(model builder 'raylane.model.network:torch_mlp')")
    assert "tune.search_space.hidden_size: 16.0: input should be a valid integer" in check(
        "tune.search_space.hidden_size={uniform: [16, 64]}")
    assert "model.params.width: 'wide': input should be a valid integer" in check(
        f"model.builder={user_module}:build", "model.params.width=wide")
    cfg = load_config(None, [f"model.builder={user_module}:build",
                             "tune.search_space.width={choice: [8, 32]}"])
    check_builder(cfg)


def prepared(classes: int = 3, features: int = 5) -> SimpleNamespace:
    return SimpleNamespace(input_dim=features, classes=list(range(classes)), task="classification",
                           image_shape=None)


def test_an_output_width_that_is_not_the_classes_is_refused(user_module: str) -> None:
    cfg = load_config(None, [f"model.builder={user_module}:fixed_ten"])
    with pytest.raises(ConfigError) as err:
        check_output(model_spec(cfg, prepared(classes=3)))
    assert str(err.value) == (f"model.builder '{user_module}:fixed_ten': the model outputs 10 values "
                              "per row; the data has 3 classes (0, 1, 2): end with one value per "
                              "output, [rows, outputs.size]")
    check_output(model_spec(load_config(None, [f"model.builder={user_module}:build"]), prepared()))


def test_a_param_given_only_by_the_search_is_built_with_a_searched_value(user_module: str) -> None:
    from raylane.builders import probe_params

    cfg = load_config(None, [f"model.builder={user_module}:needs_depth",
                             "tune.search_space.depth={choice: [2, 3]}"])
    check_builder(cfg)
    assert probe_params(cfg) == {"depth": 2}
    check_output(model_spec(cfg, prepared(), probe_params(cfg)))


def test_an_output_that_is_not_two_dimensional_names_its_shape(user_module: str) -> None:
    cfg = load_config(None, [f"model.builder={user_module}:flat"])
    with pytest.raises(ConfigError, match=r"the model outputs shape \[2\] for 2 rows"):
        check_output(model_spec(cfg, prepared()))


def test_a_builder_in_main_and_a_missing_dependency_are_named(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert "define it in a .py module" in check("model.builder=__main__:build")
    (tmp_path / "needs_x.py").write_text("import not_installed_anywhere\n\ndef build(i, o):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check("model.builder=needs_x:build") == (
        "model.builder 'needs_x:build': importing 'needs_x' failed: No module named "
        "'not_installed_anywhere'")


def test_the_builders_requirements_are_pinned_into_the_model() -> None:
    from raylane.tracking.model_logging import _pinned

    assert _pinned("numpy").startswith("numpy==")
    assert _pinned("einops>=0.8") == "einops>=0.8"
    assert _pinned("surely-not-installed-pkg") == "surely-not-installed-pkg"
    cfg = load_config(None, ["model.requirements=[timm, 'einops>=0.8']"])
    assert cfg.model.requirements == ["timm", "einops>=0.8"]


def test_a_builder_returning_no_model_is_refused(user_module: str) -> None:
    cfg = load_config(None, [f"model.builder={user_module}:keras_like"])
    with pytest.raises(ConfigError, match="returned a str; train.backend torch needs a torch.nn.Module"):
        check_output(model_spec(cfg, prepared()))


def test_the_cli_exits_2_on_a_bad_builder_before_ray_starts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train_tune_serve", "--set", "model.builder=nope:build",
         "--set", f"storage_path={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "model.builder 'nope:build': module 'nope' not found" in result.stderr
    assert "Ray" not in result.stderr and "Traceback" not in result.stderr


def test_a_later_model_version_loads_its_own_copy_of_the_builder(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A Serve replica following its alias loads v2 after v1: each model's code/ has its own copy
    of the builder's module, under the same name; v2 must not get v1's, already imported."""
    from raylane.model.network import prefer_code_from, resolve_builder

    for version in ("v1", "v2"):
        (tmp_path / version / "code").mkdir(parents=True)
        source = f"def build(i, o):\n    return {version!r}\n"
        (tmp_path / version / "code" / "team_same.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "v1" / "code"))
    assert resolve_builder("team_same:build")(None, None) == "v1"
    monkeypatch.syspath_prepend(str(tmp_path / "v2" / "code"))  # as MLflow does when loading v2
    prefer_code_from(str(tmp_path / "v2" / "code"))
    assert resolve_builder("team_same:build")(None, None) == "v2"
    sys.modules.pop("team_same", None)
