"""Pure-logic pieces of serving: token checks, the canary split, V2 tensor parsing, the error
table, the serve config file and the deployment options built from it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from raylane.config import AuthConfig, ModelConfig, ServeConfig, load_config
from raylane.errors import ConfigError, ModelNotFoundError
from raylane.serving.auth import TokenAuth
from raylane.serving.errors import InvalidInput, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType
from raylane.serving.model import LoadedModel, ServeArgs
from raylane.serving.protocols.v1 import rows_to_matrix
from raylane.serving.protocols.v2 import parse_v2, v2_matrix, v2_response
from raylane.serving.rollout import TrafficSplit

ROOT = Path(__file__).resolve().parents[2]


def test_tokens_from_env_and_file_any_accepted(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_TOKENS", "alpha-token-0123456789, beta-token-0123456789")
    path = tmp_path / "tokens"
    path.write_text("# comment\ngamma-token-0123456789\n\n")
    auth = TokenAuth(AuthConfig(token_env="TEST_TOKENS", token_file=str(path)))
    for token in ("alpha-token-0123456789", "beta-token-0123456789", "gamma-token-0123456789"):
        assert auth.check(f"Bearer {token}") is None
    assert auth.check("Bearer delta") == "invalid bearer token"
    assert "missing" in auth.check(None)
    assert "Bearer <token>" in auth.check("Basic abc")


def test_auth_with_no_token_fails_closed_naming_the_source(monkeypatch) -> None:
    monkeypatch.delenv("EMPTY_TOKENS", raising=False)
    with pytest.raises(ConfigError, match=r"\$EMPTY_TOKENS holds no token"):
        TokenAuth(AuthConfig(token_env="EMPTY_TOKENS"))
    with pytest.raises(ConfigError, match="serve.auth: set token_env or token_file"):
        load_config(None, ["serve.auth={}"])


@pytest.mark.parametrize("percent", [0, 1, 10, 33.3, 50, 100])
def test_traffic_split_is_exact_over_any_window(percent) -> None:
    split = TrafficSplit(percent)
    turns = sum(split.canary_turn() for _ in range(1000))
    assert abs(turns - percent * 10) <= 1


def model(width: int = 3) -> LoadedModel:
    return LoadedModel(name="m", version="4", feature_columns=[f"f{i}" for i in range(width)],
                       classes=[0, 1], predict_proba=lambda rows: np.tile([0.25, 0.75], (len(rows), 1)))


def test_v2_binary_input_and_output_round_trip() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    head = (b'{"id":"x","inputs":[{"name":"in","shape":[2,3],"datatype":"FP32",'
            b'"parameters":{"binary_data_size":24}}],'
            b'"outputs":[{"name":"predictions","parameters":{"binary_data":true}}]}')
    request, binary = parse_v2(head + rows.tobytes(), str(len(head)))
    np.testing.assert_array_equal(v2_matrix(request, binary, model()), rows)
    body, headers = v2_response(request, model(), np.tile([0.25, 0.75], (2, 1)))
    length = int(headers["Inference-Header-Content-Length"])
    assert struct.unpack("<2q", body[length:]) == (1, 1)


@pytest.mark.parametrize(("body", "fragment"), [
    (b'{"inputs":[{"name":"f0","shape":[2],"datatype":"FP64","data":[1,2]}]}', "shape [2]"),
    (b'{"inputs":[{"name":"a","shape":[1,3],"datatype":"FP64","data":[1,2,3]}],'
     b'"outputs":[{"name":"logits"}]}', "unknown output 'logits'"),
    (b'{"inputs":[{"name":"f0","shape":[1],"datatype":"FP64","data":[1]},'
     b'{"name":"zz","shape":[1],"datatype":"FP64","data":[1]}]}', "unknown inputs ['zz']"),
    (b'{"inputs":[{"name":"a","shape":[1,3],"datatype":"FP64","data":[[1,2],[3]]}]}', "ragged"),
    (b'{"inputs":[{"name":"a","shape":[1,3],"datatype":"FP64","data":[1e400,0,0]}]}', "finite"),
    (b'{"inputs": "nope"}', "inputs"),
])
def test_v2_bad_requests_name_the_problem(body, fragment) -> None:
    with pytest.raises(InvalidInput) as caught:
        request, binary = parse_v2(body, None)
        v2_matrix(request, binary, model())
    assert fragment in str(caught.value)


def test_v1_value_of_the_wrong_type_is_unprocessable() -> None:
    with pytest.raises(UnprocessableEntity, match=r"instances\[0\]\[1\] \(f1\): 'x' is not a number"):
        rows_to_matrix([[1, "x", 3]], ["f0", "f1", "f2"])
    with pytest.raises(InvalidInput, match=r"instances\[0\] has 2 values"):
        rows_to_matrix([[1, 2]], ["f0", "f1", "f2"])


@pytest.mark.parametrize(("error", "status"), [
    (InvalidInput("bad"), 400), (ModelNotFoundError("gone"), 404), (PayloadTooLarge("big"), 413),
    (UnsupportedMediaType("text/plain"), 415), (UnprocessableEntity("not a number"), 422),
])
def test_each_error_type_has_its_status_and_the_protocols_body_shape(error, status) -> None:
    from raylane.serving.app import error_response

    kserve = error_response(error, "/v2/models/m/infer")
    assert kserve.status_code == status and json.loads(kserve.body) == {"error": str(error)}
    mlflow = error_response(error, "/invocations")
    assert mlflow.status_code == status
    assert json.loads(mlflow.body) == {"error": str(error), "error_code": "BAD_REQUEST",
                                       "message": str(error)}


def test_invocations_errors_keep_mlflows_error_code() -> None:
    from raylane.serving.app import error_response

    body = json.loads(error_response(InvalidInput("no", error_code="INVALID_PARAMETER_VALUE"),
                                     "/invocations").body)
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"


def test_serve_args_carry_the_proxy_that_decides_the_uvicorn_patch() -> None:
    from raylane.serving.deploy import serve_args

    args = serve_args(ServeConfig(proxy="haproxy"), ModelConfig(name="m"), "sqlite:////x.db", "3")
    assert args.proxy == "haproxy" and ServeArgs(tracking_uri="sqlite:////x.db").proxy == "auto"


def test_serve_yaml_is_a_valid_serve_config_with_valid_args() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "serve_apps" / "champion.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    args = ServeArgs.model_validate(config["applications"][0]["args"])
    assert args.autoscaling is not None and args.follows


def test_build_app_passes_autoscaling_or_replicas_to_serve() -> None:
    from raylane.serving.app import build_app

    scaled = build_app({"tracking_uri": "sqlite:////x.db", "autoscaling": {"max_replicas": 3}})
    config = scaled._bound_deployment._deployment_config
    assert config.autoscaling_config.max_replicas == 3
    fixed = build_app({"tracking_uri": "sqlite:////x.db", "num_replicas": 2, "max_ongoing_requests": 7})
    assert fixed._bound_deployment.num_replicas == 2
    assert fixed._bound_deployment._deployment_config.max_ongoing_requests == 7


def test_bad_serving_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match="serve.canary.percent"):
        load_config(None, ["serve.canary={alias: challenger, percent: 120}"])
    with pytest.raises(ConfigError, match="min_replicas"):
        load_config(None, ["serve.autoscaling={min_replicas: 5, max_replicas: 2}"])
    with pytest.raises(ConfigError, match="serve.proxy"):
        load_config(None, ["serve.proxy=nginx"])
