"""The endpoint over real HTTP, as the standard clients call it: KServe V1, the Open Inference
Protocol (plain JSON, binary tensors and the real `tritonclient`), MLflow's /invocations (checked
against MLflow's own scoring code), bearer auth, limits, OpenAPI, Prometheus metrics and a
schemathesis fuzz of the published spec."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from raylane.config import AuthConfig, ModelConfig, ServeConfig
from raylane.serving import deploy

TOKENS = ["first-token-0123456789", "second-token-9876543210"]


@pytest.fixture(scope="module")
def endpoint(registry, serve_port, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text(f"# accepted tokens\n{TOKENS[0]}\n{TOKENS[1]}\n")
    cfg = ServeConfig(port=serve_port, auth=AuthConfig(token_file=str(token_file)), max_batch_size=16,
                      batch_wait_timeout_s=0.01, max_body_bytes=256 * 1024, poll_interval_s=1.0)
    url = deploy.deploy(cfg, ModelConfig(name="digits"), registry["uri"])
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKENS[0]}"}, timeout=30)
    yield {**registry, "url": url, "client": client, "token_file": token_file}
    client.close()
    deploy.remove("digits")  # the session's endpoint serves the next module's models alone


def accuracy(predictions, labels) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def row_with(value: str) -> str:
    """A JSON row of 64 zeros with `value` written as it is at column 3 (pixel_0_3)."""
    return "[" + ",".join(value if i == 3 else "0" for i in range(64)) + "]"


# --- KServe V1 -------------------------------------------------------------------------------------
def test_v1_predict_is_accurate_and_names_the_version(endpoint) -> None:
    rows, labels = endpoint["rows"], endpoint["labels"]
    response = endpoint["client"].post("/v1/models/digits:predict", json={"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.headers["x-model-version"] == endpoint["champion"]
    assert accuracy(response.json()["predictions"], labels) > 0.8


def test_v1_predict_without_a_content_type_is_read_as_json(endpoint) -> None:
    """As FastAPI reads a body parameter: a client that sends JSON without saying so still gets 200."""
    rows = endpoint["rows"][:3].tolist()
    response = endpoint["client"].post("/v1/models/digits:predict", content=json.dumps({"instances": rows}))
    assert "content-type" not in response.request.headers  # httpx sends none for raw content
    assert response.status_code == 200, response.text
    expected = endpoint["client"].post("/v1/models/digits:predict", json={"instances": rows}).json()
    assert response.json() == expected


def test_missing_values_are_imputed_as_in_training(endpoint) -> None:
    """null is a missing value on every protocol: the model fills it with the train mean."""
    row = endpoint["rows"][0].tolist()
    holes = [None] * 8 + row[8:]
    v1 = endpoint["client"].post("/v1/models/digits:predict", json={"instances": [holes]})
    assert v1.status_code == 200, v1.text
    v2 = endpoint["client"].post("/v2/models/digits/infer", json={"inputs": [
        {"name": "x", "shape": [1, 64], "datatype": "FP64", "data": holes}]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == v1.json()["predictions"]
    mlflow = endpoint["client"].post("/invocations", json={"instances": [holes]})
    assert mlflow.status_code == 200, mlflow.text
    assert mlflow.json()["predictions"] == v1.json()["predictions"]


def test_v1_return_probabilities_adds_them_beside_the_labels(endpoint) -> None:
    client, rows = endpoint["client"], endpoint["rows"][:5].tolist()
    plain = client.post("/v1/models/digits:predict", json={"instances": rows})
    assert plain.status_code == 200 and set(plain.json()) == {"predictions"}
    both = client.post("/v1/models/digits:predict", json={"instances": rows, "return_probabilities": True})
    assert both.status_code == 200, both.text
    assert both.json()["predictions"] == plain.json()["predictions"]
    probabilities = np.asarray(both.json()["probabilities"])
    classes = client.get("/v2/models/digits").json()["parameters"]["classes"]
    assert probabilities.shape == (5, len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert [classes[i] for i in probabilities.argmax(axis=1)] == plain.json()["predictions"]


def test_v1_invalid_value_is_one_line_naming_row_and_column(endpoint) -> None:
    client, columns = endpoint["client"], endpoint["prepared"].feature_columns
    named = "{" + ",".join(f'"{c}": {"Infinity" if c == "pixel_0_3" else 0}' for c in columns) + "}"
    cases = [  # NaN and Infinity: 400, as on every protocol; a row of the wrong type: 422
        ('{"instances": [' + row_with("0") + "," + row_with("NaN") + "]}",
         "instances[1][3]: expected a finite number, got NaN", ["body", "instances", 1, 3], 400),
        ('{"instances": [' + named + "]}", "instances[0].pixel_0_3: expected a finite number, got Infinity",
         ["body", "instances", 0, "pixel_0_3"], 400),
        ('{"instances": [5]}', "instances[0]: expected a list or an object, got 5", ["body", "instances", 0],
         422),
    ]
    for body, error, loc, status in cases:
        response = client.post("/v1/models/digits:predict", content=body,
                               headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert response.json()["error"] == error
        assert [d["loc"] for d in response.json()["detail"]] == [loc]


# --- Open Inference Protocol ----------------------------------------------------------------------
def test_v2_infer_flat_and_nested_data_with_id_echoed(endpoint) -> None:
    rows, labels = endpoint["rows"][:40], endpoint["labels"][:40]
    for data in (rows.reshape(-1).tolist(), rows.tolist()):
        body = {"id": "req-7", "inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP64",
                                           "data": data}]}
        response = endpoint["client"].post("/v2/models/digits/infer", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["id"] == "req-7" and result["model_name"] == "digits"
        assert result["model_version"] == response.headers["x-model-version"] == endpoint["champion"]
        outputs = {o["name"]: o for o in result["outputs"]}
        assert outputs["predictions"]["shape"] == [40] and outputs["predictions"]["datatype"] == "INT64"
        assert outputs["probabilities"]["shape"] == [40, 10]
        assert accuracy(outputs["predictions"]["data"], labels) > 0.8


def test_v2_one_input_per_feature_and_requested_outputs(endpoint) -> None:
    rows = endpoint["rows"][:5]
    columns = endpoint["prepared"].feature_columns
    inputs = [{"name": c, "shape": [5], "datatype": "FP32", "data": rows[:, i].tolist()}
              for i, c in enumerate(columns)]
    response = endpoint["client"].post("/v2/models/digits/infer",
                                       json={"inputs": inputs, "outputs": [{"name": "predictions"}]})
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["predictions"]


def test_v2_versioned_infer_and_metadata(endpoint) -> None:
    client, version = endpoint["client"], endpoint["champion"]
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                        "data": endpoint["rows"][0].tolist()}]}
    assert client.post(f"/v2/models/digits/versions/{version}/infer", json=body).status_code == 200
    missing = client.post("/v2/models/digits/versions/999/infer", json=body)
    assert missing.status_code == 404 and "999" in missing.json()["error"]
    meta = client.get("/v2/models/digits").json()
    assert meta["inputs"][0]["shape"] == [-1, 64] and meta["inputs"][0]["datatype"] == "FP64"
    assert version in meta["versions"]
    assert client.get(f"/v2/models/digits/versions/{version}/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]


@pytest.mark.parametrize(("inputs", "fragment"), [
    ([{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}], "shape [1, 3]"),
    ([{"name": "x", "shape": [2, 64], "datatype": "FP64", "data": [0.0] * 64}], "do not fill shape"),
    ([{"name": "x", "shape": [1, 64], "datatype": "BYTES", "data": ["a"] * 64}], "datatype 'BYTES'"),
    ([{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ["a"] * 64}], "must be numbers"),
    ([{"name": "x", "shape": [1, 64], "datatype": "FP64"}], "no data"),
    ([{"name": "x", "shape": [-1, 64], "datatype": "FP64", "data": []}], "sizes >= 0"),
])
def test_v2_bad_tensors_are_400_with_the_reason(endpoint, inputs, fragment) -> None:
    response = endpoint["client"].post("/v2/models/digits/infer", json={"inputs": inputs})
    assert response.status_code == 400 and fragment in response.json()["error"], response.text


def test_v2_nan_malformed_json_and_unknown_model(endpoint) -> None:
    client = endpoint["client"]
    data = "[" + ",".join(["NaN"] + ["0"] * 63) + "]"
    body = '{"inputs":[{"name":"x","shape":[1,64],"datatype":"FP64","data":' + data + "}]}"
    nan = client.post("/v2/models/digits/infer", content=body, headers={"content-type": "application/json"})
    assert nan.status_code == 400 and "finite" in nan.json()["error"]
    broken = client.post("/v2/models/digits/infer", content=b'{"inputs": [', headers={
        "content-type": "application/json"})
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]
    unknown = client.post("/v2/models/other/infer", json={"inputs": []})
    assert unknown.status_code == 404 and "served: digits" in unknown.json()["error"], unknown.text


def test_v2_nan_beside_a_null_is_400_naming_row_and_column(endpoint) -> None:
    """A null is a missing value; a NaN in the same data is still refused, not imputed."""
    data = "[" + ",".join(["null"] + ["0"] * 63 + ["0"] * 5 + ["NaN"] + ["0"] * 58) + "]"
    body = '{"inputs":[{"name":"x","shape":[2,64],"datatype":"FP64","data":' + data + "}]}"
    nan = endpoint["client"].post("/v2/models/digits/infer", content=body,
                                  headers={"content-type": "application/json"})
    assert nan.status_code == 400
    assert nan.json()["error"] == "inputs[0] ('x'), row 1, column 5: expected a finite number, got NaN"


def test_tritonclient_binary_and_json_tensors(endpoint) -> None:
    triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
    headers = {"Authorization": f"Bearer {TOKENS[1]}"}
    client = triton.InferenceServerClient(endpoint["url"].removeprefix("http://"))
    assert client.is_server_live(headers=headers) and client.is_model_ready("digits", headers=headers)
    assert client.get_model_metadata("digits", headers=headers)["name"] == "digits"
    rows = endpoint["rows"][:16].astype(np.float32)
    for binary in (True, False):
        tensor = triton.InferInput("features", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [triton.InferRequestedOutput("predictions", binary_data=binary),
                   triton.InferRequestedOutput("probabilities", binary_data=binary)]
        # a fresh dict: tritonclient writes its binary header length into the one it is given
        result = client.infer("digits", [tensor], outputs=outputs, request_id="t1", headers=dict(headers))
        assert result.get_response()["id"] == "t1"
        assert accuracy(result.as_numpy("predictions"), endpoint["labels"][:16]) > 0.7
        assert result.as_numpy("probabilities").shape == (16, 10)
    client.close()


# --- MLflow scoring protocol --------------------------------------------------------------------------
def mlflow_answer(endpoint, body: bytes, content_type: str) -> dict:
    """What `mlflow models serve` answers: MLflow's own scoring function on the same model."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    mlflow.set_tracking_uri(endpoint["uri"])
    model = mlflow.pyfunc.load_model(f"models:/digits/{endpoint['champion']}")
    result = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
    assert result.status == 200, result.response
    return json.loads(result.response)


def test_invocations_answers_what_mlflow_models_serve_answers(endpoint) -> None:
    rows, columns = endpoint["rows"][:6], endpoint["prepared"].feature_columns
    records = [dict(zip(columns, r, strict=True)) for r in rows.tolist()]
    bodies = [
        {"dataframe_split": {"columns": columns, "data": rows.tolist()}},
        {"dataframe_records": records},
        {"instances": records},
        {"inputs": {c: rows[:, i].tolist() for i, c in enumerate(columns)}},
        {"dataframe_split": {"columns": columns, "data": rows.tolist()},
         "params": {"return_probabilities": True}},
    ]
    for body in bodies:
        raw = json.dumps(body).encode()
        ours = endpoint["client"].post("/invocations", content=raw,
                                       headers={"content-type": "application/json"})
        assert ours.status_code == 200, ours.text
        expected = mlflow_answer(endpoint, raw, "application/json")
        np.testing.assert_allclose(np.asarray(ours.json()["predictions"]),
                                   np.asarray(expected["predictions"]), rtol=1e-5, atol=1e-6)
    csv = ",".join(columns) + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows.tolist())
    ours = endpoint["client"].post("/invocations", content=csv, headers={"content-type": "text/csv"})
    assert ours.json() == mlflow_answer(endpoint, csv.encode(), "text/csv")


@pytest.mark.parametrize("body", [
    b'{"instances": [[' + b"1" * 400 + b"," + b"0," * 62 + b"0]]}",                 # overflows a double
    b'{"dataframe_split": {"columns": [0, 1, 2], "data": [[1, 2, 3]]}}',          # integer names
    b'{"inputs": {"pixel_0_0": [1, 2], "pixel_0_1": [1]}}',                       # unequal columns
    b'{"inputs": [[[1.5, 2.5]]]}',                                                # 3-D
    b"[" * 50_000 + b"]" * 50_000,                                                # deep nesting
])
def test_invocations_bad_bodies_are_400_in_mlflow_shape(endpoint, body) -> None:
    response = endpoint["client"].post("/invocations", content=body,
                                       headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:500]
    assert response.json()["error_code"] and response.json()["message"] == response.json()["error"]


@pytest.mark.parametrize(("body", "error"), [
    ('{"inputs": [' + row_with("NaN") + "]}", "inputs[0][3] (pixel_0_3): expected a finite number, got NaN"),
    ('{"instances": [' + row_with("0") + "," + row_with("Infinity") + "]}",
     "instances[1][3] (pixel_0_3): expected a finite number, got Infinity"),
    ('{"dataframe_split": {"columns": COLUMNS, "data": [' + row_with("-Infinity") + "]}}",
     "dataframe_split.data[0][3] (pixel_0_3): expected a finite number, got -Infinity"),
    ('{"dataframe_records": [{"pixel_0_3": NaN}]}',
     "dataframe_records[0].pixel_0_3: expected a finite number, got NaN"),
    ('{"inputs": {"pixel_0_3": [0, NaN]}}', "inputs.pixel_0_3[1]: expected a finite number, got NaN"),
])
def test_invocations_refuses_nan_and_infinity_naming_row_and_column(endpoint, body, error) -> None:
    """MLflow's parser would read NaN as a missing value; here, as on V1 and V2, only null is one."""
    columns = endpoint["prepared"].feature_columns
    assert columns[3] == "pixel_0_3"
    response = endpoint["client"].post("/invocations", content=body.replace("COLUMNS", json.dumps(columns)),
                                       headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error and response.json()["error_code"] == "BAD_REQUEST"


def test_invocations_empty_frame_and_unknown_params_like_mlflow(endpoint) -> None:
    columns = endpoint["prepared"].feature_columns
    empty = endpoint["client"].post("/invocations",
                                    json={"dataframe_split": {"columns": columns, "data": []}})
    assert empty.status_code == 200 and empty.json() == {"predictions": []}
    extra = endpoint["client"].post("/invocations", json={"instances": [endpoint["rows"][0].tolist()],
                                                          "params": {"unknown": 1}})
    assert extra.status_code == 200 and len(extra.json()["predictions"]) == 1


def test_invocations_errors_follow_mlflow(endpoint) -> None:
    client = endpoint["client"]
    bad = client.post("/invocations", json={"rows": [[0] * 64]})
    assert bad.status_code == 400 and bad.json()["error_code"] == "BAD_REQUEST"
    assert "dataframe_split" in bad.json()["message"] and bad.json()["error"]
    wrong_type = client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415


# --- auth, limits, docs ------------------------------------------------------------------------------
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for_status(url: str, body: dict, headers: dict[str, str], status: int) -> None:
    deadline = time.monotonic() + 30
    while httpx.post(url, json=body, headers=headers).status_code != status:
        assert time.monotonic() < deadline, f"never {status}"
        time.sleep(0.5)


def test_auth_401_with_challenge_open_health_and_rotation(endpoint) -> None:
    url, body = endpoint["url"], {"instances": [endpoint["rows"][0].tolist()]}
    missing = httpx.post(f"{url}/v1/models/digits:predict", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{url}/v1/models/digits:predict", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "nope" not in wrong.text
    for token in TOKENS:
        ok = httpx.post(f"{url}/v1/models/digits:predict", json=body, headers=bearer(token))
        assert ok.status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/docs", "/openapi.json"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    assert httpx.get(f"{url}/v2/models/digits").status_code == 401

    endpoint["token_file"].write_text(f"{TOKENS[1]}\nthird-token-abcdefabcdef\n")  # rotate: drop the first
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        old = httpx.post(f"{url}/v1/models/digits:predict", json=body, headers=bearer(TOKENS[0]))
        if old.status_code == 401:
            break
        time.sleep(0.5)
    assert old.status_code == 401
    third = httpx.post(f"{url}/v1/models/digits:predict", json=body,
                       headers={"Authorization": "Bearer third-token-abcdefabcdef"})
    assert third.status_code == 200

    endpoint["token_file"].write_text("")  # emptying the file revokes every token
    wait_for_status(f"{url}/v1/models/digits:predict", body, bearer(TOKENS[1]), 401)
    endpoint["token_file"].write_text(f"{TOKENS[1]}\n")
    wait_for_status(f"{url}/v1/models/digits:predict", body, bearer(TOKENS[1]), 200)
    endpoint["client"].headers["Authorization"] = f"Bearer {TOKENS[1]}"


def test_huge_body_is_413_and_wrong_method_405(endpoint) -> None:
    client = endpoint["client"]
    huge = client.post("/v1/models/digits:predict", content=b"[" + b"0," * 500_000 + b"0]",
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"]
    assert client.get("/v1/models/digits:predict").status_code == 405


def test_huge_streamed_body_is_413_in_each_protocols_shape(endpoint) -> None:
    """No Content-Length to refuse early: the limit trips while the body is read."""
    def chunks():
        yield b'{"instances": [['
        for _ in range(100):
            yield b"0," * 2_000
        yield b"0]]}"

    client = endpoint["client"]
    for path in ("/v1/models/digits:predict", "/v2/models/digits/infer", "/invocations"):
        huge = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"], (path, huge.text)
    assert huge.json()["message"] == huge.json()["error"]  # /invocations: MLflow's shape


def test_openapi_describes_every_protocol_with_the_model_schema(endpoint) -> None:
    spec = httpx.get(f"{endpoint['url']}/openapi.json").json()
    for path in ("/v1/models/{name}:predict", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer", "/invocations", "/v2/health/ready"):
        assert path in spec["paths"], path
    rows = spec["components"]["schemas"]["V1PredictRequest"]["properties"]["instances"]["items"]["anyOf"]
    assert any(v.get("minItems") == 64 == v.get("maxItems") for v in rows)
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "V2InferRequest" in json.dumps(spec["paths"]["/v2/models/{name}/infer"])
    docs = httpx.get(f"{endpoint['url']}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# --- batching and metrics ----------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_counted_in_prometheus(endpoint) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client, row = endpoint["client"], endpoint["rows"][0].tolist()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/models/digits:predict",
                                                    json={"instances": [row]}).status_code, range(64)))
    assert codes == [200] * 64
    address = deploy.metrics_address()
    assert address is not None
    deadline, samples = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        text = httpx.get(address, timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        requests = [s for s in samples.get("ray_raylane_requests_total", [])
                    if s.labels["protocol"] == "v1" and s.labels["status"] == "200"]
        if sum(s.value for s in requests) >= 64 and samples.get("ray_raylane_batch_rows_count"):
            break
        time.sleep(2)  # Ray's agent exports what the replicas report every few seconds
    assert sum(s.value for s in requests) >= 64
    assert requests[0].labels["version"] == endpoint["champion"]
    rows = sum(s.value for s in samples["ray_raylane_batch_rows_sum"])
    calls = sum(s.value for s in samples["ray_raylane_batch_rows_count"])
    assert rows / calls > 1.0, "concurrent requests were not merged into batches"
    assert "ray_raylane_request_seconds_bucket" in samples and "ray_raylane_model_load_seconds" in samples
    assert any(name.startswith("ray_serve_") for name in samples)  # Serve's own metrics beside ours


# --- fuzz ----------------------------------------------------------------------------------------------
def test_schemathesis_fuzz_finds_no_server_errors(endpoint, tmp_path) -> None:
    cli = shutil.which("st", path=str(__import__("pathlib").Path(sys.executable).parent))
    if cli is None:
        pytest.fail("schemathesis is missing: install the dev extra (pip install -e .[dev])")
    command = [cli, "run", f"{endpoint['url']}/openapi.json", "--checks", "not_a_server_error",
               "--max-examples", "25", "--header", f"Authorization: Bearer {TOKENS[1]}",
               "--phases", "examples,coverage,fuzzing", "--seed", "1", "--request-timeout", "30"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
