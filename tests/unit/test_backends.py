"""A Torch user never pays for TensorFlow, and a missing framework names the extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from raylane.config import load_config
from raylane.errors import ConfigError
from raylane.train.trainer import check_backend_installed

ROOT = Path(__file__).resolve().parents[2]


def test_importing_raylane_and_the_torch_pipeline_never_imports_tensorflow() -> None:
    code = (
        "import sys, importlib\n"
        "for m in ['raylane', 'raylane.config', 'raylane.data', 'raylane.tune', 'raylane.tracking',\n"
        "          'raylane.train.trainer', 'raylane.train.torch_loop', 'raylane.mlflow_model',\n"
        "          'raylane.serving.app', 'raylane.serving.deploy', 'raylane.cli',\n"
        "          'pipelines.train_tune_serve', 'pipelines.serve', 'serve_apps.champion']:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == "[]"


def test_tensorflow_backend_without_tensorflow_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if it were not installed
    with pytest.raises(ConfigError) as err:
        check_backend_installed(load_config(None, ["train.backend=tensorflow"]).train)
    assert str(err.value) == ("train.backend: 'tensorflow' needs tensorflow, which is not installed; "
                              "pip install 'raylane[tf]'")


def test_torch_backend_is_available_in_the_dev_install() -> None:
    check_backend_installed(load_config(None, []).train)
