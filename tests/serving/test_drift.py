"""Drift watched from inside the endpoint, over real HTTP on the session's Ray: the logged models
carry their reference, each replica compares a window of its live rows with it, the drift route
flags only the feature that moved, an unseen category shows, the gauges reach Prometheus with
model, version and feature labels, and the Grafana dashboard names only metrics that exist."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from raylane.config import ModelConfig, ServeConfig
from raylane.serving import deploy, routes

from tests.typed_data import customers, write_csv

WINDOW = 400
"""Rows per window: PSI's noise grows as (bins - 1) / rows, so with 64 features of up to 10 bins a
200-row window flags an unshifted one now and then (max about 0.2); 400 rows keep it near 0.1.
A window flags nothing before it holds raylane.drift.rows_to_flag rows (here 300: 10 bins, 10
classes); every test sends a whole window."""
DASHBOARD = Path(__file__).resolve().parents[2] / "serve_apps" / "grafana" / "raylane-serving.json"


@pytest.fixture(scope="module")
def digits(registry, serve_port):
    # No auth here: the session's gateway keeps the first auth it is given, which the later modules'
    # tokens would not pass (the drift route is checked like every model route: test_protocols' fuzz).
    url = deploy.deploy(ServeConfig(port=serve_port, drift_window=WINDOW), ModelConfig(name="digits"),
                        registry["uri"])
    client = httpx.Client(base_url=url, timeout=60)
    prepared = registry["prepared"]
    mean = np.array([c.mean for c in prepared.preprocessor.columns])
    std = np.array([c.std for c in prepared.preprocessor.columns])

    def raw(split) -> np.ndarray:  # a split's network input decoded back to raw pixel values
        encoded = np.stack(split.take_batch(split.count(), batch_format="numpy")["features"])
        return np.round(encoded.astype(np.float64) * std + mean)

    # Unshifted traffic the numeric bins (a train sample) never saw: validation rows, then test rows.
    unseen = np.concatenate([raw(prepared.val), registry["rows"]])[:WINDOW]
    yield {**registry, "client": client, "unshifted": unseen, "train_rows": raw(prepared.train),
           "columns": prepared.preprocessor.names}
    client.close()
    deploy.remove("digits")


def send_v1(client: httpx.Client, model: str, rows: list, per_request: int = 40) -> None:
    for start in range(0, len(rows), per_request):
        batch = rows[start:start + per_request]
        response = client.post(f"/v1/models/{model}:predict", json={"instances": batch})
        assert response.status_code == 200, response.text


def drift(client: httpx.Client, model: str) -> dict:
    response = client.get(f"/v2/models/{model}/drift")
    assert response.status_code == 200, response.text
    return response.json()


def test_the_logged_model_carries_its_reference(digits) -> None:
    import mlflow

    mlflow.set_tracking_uri(digits["uri"])
    model = f"models:/digits/{digits['champion']}"
    path = mlflow.artifacts.download_artifacts(f"{model}/artifacts/drift_reference.json")
    reference = json.loads(Path(path).read_text())
    assert [f["name"] for f in reference["features"]] == digits["columns"]
    assert reference["prediction"]["kind"] == "classes" and len(reference["prediction"]["expected"]) == 10
    assert all(abs(sum(f["expected"]) - 1) < 1e-9 for f in reference["features"] if reference["rows"])


def test_unshifted_traffic_flags_no_feature(digits) -> None:
    client = digits["client"]
    assert len(digits["unshifted"]) == WINDOW
    send_v1(client, "digits", digits["unshifted"].tolist())
    report = drift(client, "digits")
    assert report["window"]["rows"] == WINDOW and report["threshold"] == 0.2
    over = {name: report["features"][name] for name in report["over_threshold"]}
    assert over == {}, (over, digits["prepared"].num_rows)
    assert report["prediction"]["psi"] < 0.2, report["prediction"]
    assert max(f["psi"] for f in report["features"].values()) < 0.2
    assert report["status"] == "ok"
    assert report["version"] == digits["champion"] and report["replica"] not in ("", "unknown")
    assert len(report["features"]) == 64


def test_one_numeric_feature_shifted_is_the_only_one_over_the_threshold(digits) -> None:
    rows, columns = digits["train_rows"][:WINDOW].copy(), digits["columns"]
    shifted = int(np.argmax(rows.std(axis=0)))  # a pixel that varies: its shift is a real change
    rows[:, shifted] += 8.0
    send_v1(digits["client"], "digits", rows.tolist())
    report = drift(digits["client"], "digits")
    assert report["status"] == "drifted"
    assert report["over_threshold"] == [columns[shifted]], report["over_threshold"]
    assert report["features"][columns[shifted]]["psi"] > 1.0
    # The same report for the version by number, and through the gateway's hop (Serve's Python
    # proxy path): the model's app answers the full path either way.
    by_version = digits["client"].get(f"/v2/models/digits/versions/{digits['champion']}/drift").json()
    assert by_version["over_threshold"] == [columns[shifted]]
    assert digits["client"].get("/v2/models/digits/versions/999/drift").status_code == 404


def test_the_route_answers_through_the_gateway_hop(digits) -> None:
    from ray import serve

    handle = serve.get_app_handle(routes.model_app("digits"))
    headers = [(b"host", b"127.0.0.1")]
    status, _, body = handle.forward.remote("GET", "/v2/models/digits/drift", b"", headers, b"").result()
    assert status == 200 and json.loads(body)["model"] == "digits"


@pytest.fixture(scope="module")
def typed(ray_local, serve_port, tmp_path_factory):
    """A model of numeric, categorical and boolean columns (tests/typed_data), trained in seconds."""
    import mlflow
    from raylane import data
    from raylane.config import DataConfig

    from tests.quick import train_and_register

    tmp = tmp_path_factory.mktemp("drift-typed")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("drift-typed")
    write_csv(tmp / "csv", customers())
    prepared = data.prepare(DataConfig(source=str(tmp / "csv"), label_column="label", id_column="id"),
                            str(tmp / "storage"))
    promotion = train_and_register(prepared, str(tmp), ModelConfig(name="customers"), epochs=5, hidden=16)
    url = deploy.deploy(ServeConfig(port=serve_port, drift_window=WINDOW), ModelConfig(name="customers"), uri)
    client = httpx.Client(base_url=url, timeout=60)
    yield {"client": client, "version": promotion.version}
    client.close()
    deploy.remove("customers")


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def test_unseen_categories_raise_the_unseen_category_rate(typed) -> None:
    live = customers(WINDOW, seed=7).drop(columns=["id", "label"])
    send_v1(typed["client"], "customers", records(live))
    before = drift(typed["client"], "customers")
    assert before["features"]["city"]["unseen_category_rate"] == 0.0
    assert before["over_threshold"] == [], before["over_threshold"]
    assert 0 < before["features"]["age"]["missing_rate"] < 0.15  # customers() leaves 5% of ages out
    live["city"] = np.where(np.arange(WINDOW) % 2 == 0, "berlin", "madrid")
    send_v1(typed["client"], "customers", records(live))
    after = drift(typed["client"], "customers")
    assert after["features"]["city"]["unseen_category_rate"] == 1.0
    assert after["features"]["city"]["reference_unseen_category_rate"] == 0.0
    assert "city" in after["over_threshold"] and "age" not in after["over_threshold"]


def scrape(address: str, wanted) -> dict[str, list]:
    """The Prometheus samples by name, polled until `wanted(samples)` (Ray's agent exports what the
    replicas set every few seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline, samples = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        samples = {}
        for family in text_string_to_metric_families(httpx.get(address, timeout=10).text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        if wanted(samples):
            break
        time.sleep(2)
    return samples


def test_drift_gauges_reach_prometheus_and_the_dashboard_names_only_real_metrics(digits, typed) -> None:
    address = deploy.metrics_address()
    assert address is not None
    shifted = drift(digits["client"], "digits")["over_threshold"][0]
    names = sorted(set(re.findall(r"ray_raylane_[a-z_]+", DASHBOARD.read_text())))

    def ready(samples: dict) -> bool:
        psi = [s for s in samples.get("ray_raylane_drift_psi", []) if s.labels.get("feature") == shifted
               and s.labels.get("model") == "digits" and s.value > 0.2]
        unseen = [s for s in samples.get("ray_raylane_drift_unseen_category_rate", [])
                  if s.labels.get("feature") == "city" and s.value == 1.0]
        return bool(psi and unseen) and all(n in samples for n in names)

    samples = scrape(address, ready)
    psi = [s for s in samples.get("ray_raylane_drift_psi", []) if s.labels.get("model") == "digits"]
    assert {s.labels["feature"] for s in psi} == set(digits["columns"])
    mine = [s for s in psi if s.labels["feature"] == shifted]
    assert mine and mine[0].labels["version"] == digits["champion"] and mine[0].value > 0.2
    assert any(s.labels.get("model") == "customers" and s.labels.get("feature") == "city" and s.value == 1.0
               for s in samples.get("ray_raylane_drift_unseen_category_rate", []))
    for name in ("ray_raylane_drift_missing_rate", "ray_raylane_drift_prediction_psi",
                 "ray_raylane_drift_window_rows", "ray_raylane_drift_features_over_threshold"):
        assert name in samples, name
    over = [s for s in samples["ray_raylane_drift_features_over_threshold"] if s.labels["model"] == "digits"]
    assert over and over[0].value == 1.0
    assert any(n.startswith("ray_raylane_drift_") for n in names), "the dashboard has no drift panel"
    missing = [n for n in names if n not in samples]
    assert not missing, f"the dashboard queries metrics the endpoint does not export: {missing}"
