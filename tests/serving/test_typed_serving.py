"""A model trained on dirty typed data (numeric, categorical and boolean columns, missing values,
bad rows dropped), served by column name over the three protocols: a category never seen in
training and missing values are answered, and the endpoint gives exactly what the in-memory
preprocessing and model give for the same rows (no training/serving skew)."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
from raylane.config import DataConfig, ModelConfig, ServeConfig
from raylane.serving import deploy

from tests.typed_data import FEATURES, customers, write_csv


@pytest.fixture(scope="module")
def endpoint(ray_local, serve_port, tmp_path_factory):
    import mlflow
    from raylane import data

    from tests.quick import train_and_register

    tmp = tmp_path_factory.mktemp("typed")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("typed")
    write_csv(tmp / "csv", customers(), bad=True)
    cfg = DataConfig(source=str(tmp / "csv"), label_column="label", id_column="id", on_bad_rows="drop")
    prepared = data.prepare(cfg, str(tmp / "storage"))
    promotion = train_and_register(prepared, str(tmp), ModelConfig(name="customers"), epochs=30, hidden=32)
    raw, labels = data.raw_rows(prepared.test)
    # A category never seen in training, missing values, and booleans as text ('false', 'no').
    unseen = pd.DataFrame({"age": [None, 35.0, 50.0, 50.0], "city": ["marseille", None, "paris", "paris"],
                           "member": [None, True, "false", "no"], "income": [50.0, None, 60.0, 60.0]})
    rows = pd.concat([raw, unseen], ignore_index=True)
    expected = mlflow.pyfunc.load_model(f"models:/customers/{promotion.version}").predict(rows)
    url = deploy.deploy(ServeConfig(port=serve_port), ModelConfig(name="customers"), uri)
    client = httpx.Client(base_url=url, timeout=60)
    yield {"client": client, "rows": rows, "expected": expected.tolist(), "version": promotion.version,
           "truth": np.asarray(prepared.classes)[labels].tolist()}
    client.close()
    deploy.remove("customers")  # the session's endpoint serves the next module's models alone


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as a JSON client sends them: null where a value is missing."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def test_v1_by_column_name_matches_the_in_memory_model(endpoint) -> None:
    response = endpoint["client"].post("/v1/models/customers:predict",
                                       json={"instances": records(endpoint["rows"])})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions == endpoint["expected"]
    truth = endpoint["truth"]
    assert np.mean(np.asarray(predictions[:len(truth)]) == np.asarray(truth)) > 0.8


def test_v2_one_input_per_column_with_nulls_matches(endpoint) -> None:
    rows = records(endpoint["rows"])
    datatypes = {"numeric": "FP64", "categorical": "BYTES", "boolean": "BOOL"}
    inputs = [{"name": c, "shape": [len(rows)], "datatype": datatypes[k], "data": [r[c] for r in rows]}
              for c, k in FEATURES.items()]
    response = endpoint["client"].post("/v2/models/customers/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["predictions"]["data"] == endpoint["expected"]
    metadata = endpoint["client"].get("/v2/models/customers").json()
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == \
        [("age", "FP64"), ("city", "BYTES"), ("member", "BOOL"), ("income", "FP64")]


def test_invocations_dataframe_split_matches(endpoint) -> None:
    frame = endpoint["rows"]
    split = {"columns": list(frame.columns), "data": [list(r.values()) for r in records(frame)]}
    response = endpoint["client"].post("/invocations", json={"dataframe_split": split})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == endpoint["expected"]
    assert response.headers["x-model-version"] == endpoint["version"]


def test_a_value_of_the_wrong_kind_is_a_400_naming_the_column(endpoint) -> None:
    row = {"age": "old", "city": "paris", "member": True, "income": 10.0}
    response = endpoint["client"].post("/v1/models/customers:predict", json={"instances": [row]})
    assert response.status_code == 400 and "column 'age'" in response.json()["error"]
    response = endpoint["client"].post("/v1/models/customers:predict",
                                       json={"instances": [{**row, "age": 30, "colour": "red"}]})
    assert response.status_code == 400 and "colour" in response.json()["error"]
    bad = {"inputs": [{"name": "city", "shape": [1], "datatype": "BYTES", "data": ["paris"]}]}
    response = endpoint["client"].post("/v2/models/customers/infer", json=bad)
    assert response.status_code == 400 and "missing inputs ['age'" in response.json()["error"]
