"""A regression config end to end, on dirty typed data given by config alone: a CSV directory
with numeric, categorical and boolean columns, missing values and broken rows (dropped, counted
and logged), through Tune and the champion gate (test MAE, lower is better) to the endpoint,
which answers values by column name exactly as the logged model does in memory."""

from __future__ import annotations

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines import train_tune_serve
from tests.typed_data import spending

TINY_OVERRIDES = ["tune.num_samples=2", "tune.max_concurrent_trials=2", "tune.search_alg=random",
                  "tune.scheduler=fifo", "train.epochs=8", "train.batch_size=32", "train.num_workers=1"]


@pytest.fixture(scope="module")
def pipeline(ray_local, serve_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e_regression")
    frame = spending()
    (tmp / "csv").mkdir()
    frame.iloc[:300].to_csv(tmp / "csv" / "a.csv", index=False)
    frame.iloc[300:].to_csv(tmp / "csv" / "b.csv", index=False)
    with (tmp / "csv" / "b.csv").open("a") as f:
        f.write("9001,40.0,lyon,True,50.0,lots\n9002,41.0,lyon,True\n")  # bad label; too few fields
    (tmp / "spend.yaml").write_text(f"""
data:
  source: {tmp / 'csv'}/*.csv
  task: regression
  label_column: spend
  id_column: id
  on_bad_rows: drop
model:
  name: spend
""")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = [f"storage_path={tmp / 'storage'}", f"serve.port={serve_port}", *TINY_OVERRIDES]
    argv = ["--config", str(tmp / "spend.yaml"), "--tracking-uri", uri, "--run-name", "e2e-spend",
            "--no-block", *[a for o in overrides for a in ("--set", o)]]
    assert train_tune_serve.main(argv) == 0
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("spend", "champion")
    mlflow.set_tracking_uri(uri)
    rows = frame.drop(columns=["id", "spend"]).head(40)
    rows = pd.concat([rows, pd.DataFrame({"age": [None], "city": ["marseille"], "member": [None],
                                          "income": [55.0]})], ignore_index=True)
    expected = mlflow.pyfunc.load_model(f"models:/spend/{champion.version}").predict(rows)
    return {"client": client, "champion": champion, "rows": rows, "expected": expected,
            "truth": frame["spend"].head(40).to_numpy(), "mean": frame["spend"].mean(),
            "url": f"http://127.0.0.1:{serve_port}"}


def test_champion_is_judged_by_test_mae_and_beats_the_mean(pipeline) -> None:
    champion = pipeline["champion"]
    assert champion.tags["raylane.gate_metric"] == "test_mae"
    mae = float(champion.tags["test_mae"])
    baseline = float(np.mean(np.abs(pipeline["truth"] - pipeline["mean"])))
    assert mae < 0.5 * baseline, (mae, baseline)
    run = pipeline["client"].get_run(champion.run_id)
    assert run.data.params["data.bad_rows_dropped"] == "2"
    assert 0 < run.data.metrics["best_val_mae"] < baseline
    assert run.data.metrics["test_mae"] == pytest.approx(mae, abs=1e-5)


def test_endpoint_answers_values_by_column_name_as_the_model_does(pipeline) -> None:
    rows = pipeline["rows"]
    instances = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    response = httpx.post(f"{pipeline['url']}/v1/models/spend:predict", json={"instances": instances},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["predictions"], pipeline["expected"], atol=1e-4)
    v2 = httpx.post(f"{pipeline['url']}/v2/models/spend/infer", timeout=60, json={"inputs": [
        {"name": c, "shape": [len(instances)], "datatype": dt, "data": [r[c] for r in instances]}
        for c, dt in (("age", "FP64"), ("city", "BYTES"), ("member", "BOOL"), ("income", "FP64"))]})
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["name"] == "predictions" and output["datatype"] == "FP64"
    assert np.allclose(output["data"], pipeline["expected"], atol=1e-4)
    refused = httpx.post(f"{pipeline['url']}/v1/models/spend:predict", timeout=60,
                         json={"instances": instances[:1], "return_probabilities": True})
    assert refused.status_code == 400 and "regression" in refused.json()["error"]
