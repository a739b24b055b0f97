"""The real entrypoint on tests/configs/tiny.yaml, checked the way a user would look at it:
the MLflow runs, the registry, the logged model and the HTTP endpoint."""

from __future__ import annotations

from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from raylane import data, registry, tracking
from raylane.config import load_config

from pipelines import serve as serve_pipeline
from pipelines import train_tune_serve

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def pipeline(ray_local, serve_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = [f"storage_path={tmp / 'storage'}", f"serve.port={serve_port}"]
    argv = ["--config", TINY, "--tracking-uri", uri, "--run-name", "e2e", "--no-block"]
    argv += [a for o in overrides for a in ("--set", o)]
    assert train_tune_serve.main(argv) == 0
    cfg = load_config(TINY, overrides)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    parent = client.search_runs([experiment.experiment_id], "tags.`raylane.run_name` = 'e2e'")[0]
    prepared = data.prepare(cfg.data, str(tmp / "storage"))
    return {"uri": uri, "cfg": cfg, "client": client, "experiment": experiment, "parent": parent,
            "url": f"http://127.0.0.1:{serve_port}", "data": prepared, "tmp": tmp}


def raw_test_rows(prepared) -> tuple[list[list[float]], list[int]]:
    raw, labels = data.raw_rows(prepared.test)
    return raw.to_numpy(dtype=float).tolist(), [prepared.classes[i] for i in labels]


def test_best_model_is_registered_as_champion_with_its_test_metric(pipeline) -> None:
    client = pipeline["client"]
    version = client.get_model_version_by_alias("digits", "champion")
    assert float(version.tags["test_accuracy"]) > 0.8
    assert version.tags["raylane.promotion"].startswith("promoted: no champion yet")
    assert pipeline["parent"].data.tags["raylane.model_version"] == str(version.version)


def test_one_nested_run_per_trial_and_no_duplicate_steps(pipeline) -> None:
    client, parent = pipeline["client"], pipeline["parent"]
    children = client.search_runs(
        [pipeline["experiment"].experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == pipeline["cfg"].tune.num_samples
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == sorted(set(steps)) == list(range(len(steps))), steps
        assert len(steps) == pipeline["cfg"].train.epochs
        assert {"lr", "hidden_size"} <= set(child.data.params)
        assert child.info.status == "FINISHED"


def test_parent_run_records_what_makes_it_reproducible(pipeline) -> None:
    client, parent = pipeline["client"], pipeline["parent"]
    run = client.get_run(parent.info.run_id)
    assert run.data.params["train.epochs"] == "2"
    assert run.inputs.dataset_inputs[0].dataset.digest == pipeline["data"].digest
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "data", "tune"} <= artifacts
    assert "test_accuracy" in run.data.metrics


def test_logged_model_predicts_raw_features_through_pyfunc(pipeline) -> None:
    import pandas as pd

    mlflow.set_tracking_uri(pipeline["uri"])
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    rows, labels = raw_test_rows(pipeline["data"])
    frame = pd.DataFrame(rows, columns=pipeline["data"].feature_columns)
    predictions = model.predict(frame)
    assert np.mean(predictions == np.asarray(labels)) > 0.8
    probabilities = model.predict(frame.head(3), params={"return_probabilities": True})
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_endpoint_answers_the_test_split_above_chance(pipeline) -> None:
    rows, labels = raw_test_rows(pipeline["data"])
    response = httpx.post(f"{pipeline['url']}/v1/models/digits:predict", json={"instances": rows})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    assert np.mean(np.asarray(predictions) == np.asarray(labels)) > 0.8  # chance is 0.1
    champion = pipeline["client"].get_model_version_by_alias("digits", "champion").version
    assert response.headers["X-Model-Version"] == str(champion)


def test_endpoint_probabilities_and_named_columns(pipeline) -> None:
    rows, _ = raw_test_rows(pipeline["data"])
    url = f"{pipeline['url']}/v1/models/digits:predict"
    body = httpx.post(url, json={"instances": rows[:2], "return_probabilities": True}).json()
    assert np.asarray(body["probabilities"]).shape == (2, 10) and len(body["predictions"]) == 2
    named = [dict(zip(pipeline["data"].feature_columns, row, strict=True)) for row in rows[:2]]
    by_name = httpx.post(url, json={"instances": named}).json()["predictions"]
    assert by_name == httpx.post(url, json={"instances": rows[:2]}).json()["predictions"]


def test_health_and_model_metadata(pipeline) -> None:
    url = pipeline["url"]
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"]
    assert meta["inputs"][0]["shape"] == [-1, 64] and meta["outputs"][0]["datatype"] == "INT64"
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"instances": [[1.0, 2.0, 3.0]]}, 400, "has 3 values; the model expects 64"),
        ({"instances": [["a"] * 64]}, 422, "instances"),
        ({"instances": []}, 422, "instances"),
        ({"rows": [[0] * 64]}, 422, "instances"),
        ({"instances": [{"pixel_0_0": 1.0}]}, 400, "missing"),
    ],
)
def test_bad_input_is_a_4xx_naming_what_was_expected(pipeline, body, status, fragment) -> None:
    response = httpx.post(f"{pipeline['url']}/v1/models/digits:predict", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_malformed_json_nan_and_unknown_model_are_4xx(pipeline) -> None:
    url = pipeline["url"]
    headers = {"Content-Type": "application/json"}
    broken = httpx.post(f"{url}/v1/models/digits:predict", content=b'{"instances": [[1,', headers=headers)
    assert broken.status_code == 400 and "malformed JSON" in broken.json()["error"]
    nan_row = "[" + ", ".join(["NaN"] + ["0"] * 63) + "]"
    nan = httpx.post(f"{url}/v1/models/digits:predict", content=f'{{"instances": [{nan_row}]}}',
                     headers=headers)
    assert 400 <= nan.status_code < 500
    unknown = httpx.post(f"{url}/v1/models/cats:predict", json={"instances": [[0] * 64]})
    assert unknown.status_code == 404 and "not served here; served: " in unknown.json()["error"], unknown.text


def test_logged_model_loads_and_predicts_without_ray(pipeline, tmp_path) -> None:
    """What `mlflow models serve` needs: the model's own requirements, not raylane's runtime."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({pipeline['uri']!r})\n"
        "model = mlflow.pyfunc.load_model('models:/digits@champion')\n"
        f"columns = {pipeline['data'].feature_columns!r}\n"
        "print(model.predict(pd.DataFrame([[0.0] * 64], columns=columns)).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("[")


def test_readiness_endpoints_and_405_allow(pipeline) -> None:
    url = pipeline["url"]
    assert httpx.get(f"{url}/v1/models/digits").json() == {"name": "digits", "ready": True}
    assert httpx.get(f"{url}/v2/models/digits/ready").json()["ready"] is True
    assert httpx.get(f"{url}/v2").json()["name"] == "raylane"
    wrong_method = httpx.get(f"{url}/v1/models/digits:predict")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["allow"]


def test_overflowing_values_are_a_400_not_garbage(pipeline) -> None:
    response = httpx.post(f"{pipeline['url']}/v1/models/digits:predict",
                          json={"instances": [[1e300] * 64], "return_probabilities": True})
    assert response.status_code == 400 and "overflowed" in response.json()["error"]


def test_a_worse_model_does_not_take_the_champion_alias(pipeline) -> None:
    client = pipeline["client"]
    mlflow.set_tracking_uri(pipeline["uri"])
    champion = client.get_model_version_by_alias("digits", "champion")
    source = champion.source  # the logged model behind the champion
    worse = tracking.LoggedModel(source, pipeline["parent"].info.run_id, 0.05, 0.05, {"lr": 1.0})
    with mlflow.start_run(run_id=pipeline["parent"].info.run_id):
        promotion = registry.register_if_better(pipeline["cfg"].model, worse)
    assert not promotion.promoted and promotion.previous_version == str(champion.version)
    assert "does not beat" in promotion.reason
    assert client.get_model_version_by_alias("digits", "champion").version == champion.version
    assert client.get_model_version("digits", promotion.version).tags["raylane.promotion"].startswith("kept")


def test_serve_without_a_champion_fails_with_a_clear_message(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    assert serve_pipeline.main(["--config", TINY, "--tracking-uri", uri, "--no-block"]) == 1
    err = capsys.readouterr().err
    assert "ModelNotFoundError: no version of model 'digits' has the alias 'champion'" in err
