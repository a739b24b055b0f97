"""The same entrypoint with `train.backend: tensorflow` and a team's own Keras model builder (a
module in a folder outside raylane's tree, as `model.builder`): trained under
MultiWorkerMirroredStrategy, registered in MLflow with the builder's code inside the model, and
served through the same HTTP contract, answering exactly what `mlflow.pyfunc` answers."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from raylane import data
from raylane.config import load_config

from pipelines import train_tune_serve

pytest.importorskip("tensorflow", reason="the [tf] extra is part of the dev install")

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


KERAS_BUILDER = """
import keras

def build(inputs, outputs, *, units: int = 64, dropout: float = 0.0):
    x = features = keras.Input(shape=(inputs.features,))
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(features, keras.layers.Dense(outputs.size)(x))
"""


@pytest.fixture(scope="module")
def pipeline(ray_local, serve_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e_tf")
    code = tmp_path_factory.mktemp("team_code")  # outside raylane's tree
    (code / "team_keras.py").write_text(textwrap.dedent(KERAS_BUILDER))
    sys.path.insert(0, str(code))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = [f"storage_path={tmp / 'storage'}", f"serve.port={serve_port}",
                 "train.backend=tensorflow", "model.name=digits_tf", "train.batch_size=32",
                 "model.builder=team_keras:build", "model.params.dropout=0.1",
                 "tune.search_space={lr: {loguniform: [0.005, 0.02]}, units: {choice: [64, 128]}}"]
    argv = ["--config", TINY, "--tracking-uri", uri, "--run-name", "e2e-tf", "--no-block"]
    argv += [a for o in overrides for a in ("--set", o)]
    try:
        assert train_tune_serve.main(argv) == 0
    finally:
        sys.path.remove(str(code))
    cfg = load_config(TINY, overrides)
    prepared = data.prepare(cfg.data, str(tmp / "storage"))
    raw, labels = data.raw_rows(prepared.test)
    return {"uri": uri, "url": f"http://127.0.0.1:{serve_port}", "data": prepared,
            "rows": raw.to_numpy(dtype=float), "labels": np.asarray(prepared.classes)[labels]}


def test_tf_champion_is_registered_with_pinned_tensorflow(pipeline) -> None:
    client = MlflowClient(pipeline["uri"])
    version = client.get_model_version_by_alias("digits_tf", "champion")
    assert float(version.tags["test_accuracy"]) > 0.8
    mlflow.set_tracking_uri(pipeline["uri"])
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/digits_tf@champion")).read_text()
    assert "tensorflow-cpu==" in requirements and "keras==" in requirements
    assert "torch" not in requirements
    parent = client.get_run(version.run_id)
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{version.run_id}'")
    assert trials and {t.data.params.get("units") for t in trials} <= {"64", "128"}  # searched
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/digits_tf/{version.version}"))
    assert (model_dir / "code" / "team_keras.py").is_file()  # the builder travels inside the model


def test_served_tf_model_returns_what_pyfunc_returns(pipeline) -> None:
    mlflow.set_tracking_uri(pipeline["uri"])
    model = mlflow.pyfunc.load_model("models:/digits_tf@champion")
    frame = pd.DataFrame(pipeline["rows"], columns=pipeline["data"].feature_columns)
    expected = model.predict(frame)
    url = f"{pipeline['url']}/v1/models/digits_tf:predict"
    response = httpx.post(url, json={"instances": pipeline["rows"].tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == expected.tolist()
    assert np.mean(expected == pipeline["labels"]) > 0.8
    served = httpx.post(url, json={"instances": pipeline["rows"][:4].tolist(),
                                   "return_probabilities": True}).json()["probabilities"]
    local = model.predict(frame.head(4), params={"return_probabilities": True})
    assert np.allclose(served, local, atol=1e-6)


def test_metadata_names_the_framework_and_same_contract(pipeline) -> None:
    meta = httpx.get(f"{pipeline['url']}/v2/models/digits_tf").json()
    assert meta["platform"] == "mlflow-pyfunc/tensorflow"
    assert meta["inputs"][0]["shape"] == [-1, 64]
    bad = httpx.post(f"{pipeline['url']}/v1/models/digits_tf:predict", json={"instances": [[1, 2]]})
    assert bad.status_code == 400 and "expects 64" in bad.json()["error"]
