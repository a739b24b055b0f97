"""The private APIs serving relies on, through raylane/_compat: each still exists with the call
shape raylane uses, or the failure names the dependency, the symbol and the release raylane tested."""

from __future__ import annotations

import inspect

import pandas as pd
import pytest
from raylane._compat import mlflow as mlflow_compat
from raylane._compat import starlette as starlette_compat
from raylane._compat import uvicorn as uvicorn_compat


def moved(package: str, symbol: str, tested: str, module: str) -> str:
    version = __import__(package).__version__
    return (f"{package} {version} moved or changed {symbol} (raylane tested {tested}): "
            f"update raylane/_compat/{module}.py")


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- MLflow -------------------------------------------------------------------------------------------
MLFLOW_PRIVATE = [
    ("mlflow.pyfunc.scoring_server", "_parse_json_data", ["data", "metadata", "input_schema"]),
    ("mlflow.models.utils", "_enforce_schema", ["pf_input", "input_schema"]),
]


@pytest.mark.parametrize(("module", "name", "expected"), MLFLOW_PRIVATE)
def test_mlflow_private_function_exists_with_its_call_shape(module, name, expected) -> None:
    message = moved("mlflow", f"{module}.{name}", mlflow_compat.TESTED, "mlflow")
    try:
        function = mlflow_compat.private(module, name)
    except ImportError as err:
        pytest.fail(f"{message} ({err.__cause__})")
    assert parameters(function)[:len(expected)] == expected, message


def test_parse_json_input_splits_data_and_params_with_mlflows_errors() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    message = moved("mlflow", "mlflow.pyfunc.scoring_server._parse_json_data", mlflow_compat.TESTED, "mlflow")
    data, params = mlflow_compat.parse_json_input(b'{"instances": [[1.0, 2.0]], "params": {"a": 1}}',
                                                  Model(), None)
    assert data.tolist() == [[1.0, 2.0]] and params == {"a": 1}, message
    with pytest.raises(MlflowException, match="dataframe_split") as caught:
        mlflow_compat.parse_json_input(b'{"rows": [[1.0]]}', Model(), None)
    assert caught.value.error_code == "BAD_REQUEST", message


def test_enforce_schema_converts_to_the_signature_and_names_a_missing_column() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.types import ColSpec, Schema

    message = moved("mlflow", "mlflow.models.utils._enforce_schema", mlflow_compat.TESTED, "mlflow")
    schema = Schema([ColSpec("double", "a")])
    converted = mlflow_compat.enforce_schema(pd.DataFrame({"a": [1]}), schema)
    assert str(converted["a"].dtype) == "float64", message
    with pytest.raises(MlflowException, match="missing inputs"):
        mlflow_compat.enforce_schema(pd.DataFrame({"b": [1.0]}), schema)


def test_a_moved_mlflow_symbol_is_named_with_the_tested_release() -> None:
    with pytest.raises(ImportError, match=r"moved mlflow\.models\.utils\._gone \(raylane tested 3\.17\.2\): "
                                          r"update raylane/_compat/mlflow\.py"):
        mlflow_compat.private("mlflow.models.utils", "_gone")


# --- Starlette -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "root_path", "expected"), [
    ("/invocations", "", "/invocations"),
    ("/app/invocations", "/app", "/invocations"),
    ("/app", "/app", ""),
    ("/application/v2", "/app", "/application/v2"),  # not under the mount point
    ("/v2/health/ready", "/other", "/v2/health/ready"),
])
def test_route_path_is_the_one_starlette_routes_by(path, root_path, expected) -> None:
    scope = {"type": "http", "path": path, "root_path": root_path}
    assert starlette_compat.route_path(scope) == expected
    try:
        from starlette._utils import get_route_path
    except ImportError:
        pytest.skip("starlette no longer has _utils.get_route_path to compare with")
    assert get_route_path(scope) == expected, moved(
        "starlette", "starlette._utils.get_route_path", starlette_compat.TESTED, "starlette")


# --- uvicorn ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", uvicorn_compat.CYCLE_MODULES)
def test_uvicorn_response_cycle_has_what_the_one_write_patch_wraps(module) -> None:
    if module.endswith("httptools_impl"):
        pytest.importorskip("httptools", reason="uvicorn's httptools protocol needs uvicorn[standard]")
    message = moved("uvicorn", f"{module}.RequestResponseCycle.send", uvicorn_compat.TESTED, "uvicorn")
    try:
        cycle = __import__(module, fromlist=["RequestResponseCycle"]).RequestResponseCycle
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{message} ({err})")
    assert inspect.iscoroutinefunction(cycle.send) and parameters(cycle.send) == ["self", "message"], message
    assert "transport" in parameters(cycle.__init__), message
    source = inspect.getsource(cycle)
    assert "self.transport" in source and "self.response_started" in source, message
    assert cycle in uvicorn_compat.response_cycles(), message


def test_install_one_write_responses_patches_each_cycle_once(monkeypatch) -> None:
    cycles = uvicorn_compat.response_cycles()
    assert cycles, moved("uvicorn", "uvicorn.protocols.http.*.RequestResponseCycle", uvicorn_compat.TESTED,
                         "uvicorn")
    for cycle in cycles:
        monkeypatch.setattr(cycle, "send", cycle.send)  # restored after the test
    uvicorn_compat.install_one_write_responses()
    patched = [cycle.send for cycle in cycles]
    uvicorn_compat.install_one_write_responses()
    assert all(getattr(cycle.send, "__raylane_one_write__", False) for cycle in cycles)
    assert [cycle.send for cycle in cycles] == patched  # idempotent
