"""MLflow's private functions that raylane's `/invocations` needs (raylane tested mlflow 3.17.2).

`/invocations` answers like `mlflow models serve`, but merges requests into batches and calls the
network itself, so it needs the two steps `mlflow models serve` takes before predicting, without
the predicting. MLflow publishes neither on its own. They are imported on first use, so importing
this module imports no MLflow; `tests/unit/test_compat_serving.py` says which one moved.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

TESTED = "3.17.2"


@functools.cache
def private(module: str, name: str) -> Any:
    """Returns MLflow's private `module.name`; ImportError naming the release raylane tested."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        import mlflow

        raise ImportError(f"mlflow {mlflow.__version__} moved {module}.{name} (raylane tested {TESTED}): "
                          "update raylane/_compat/mlflow.py") from err


def parse_json_input(body: bytes, metadata: Any, schema: Any) -> tuple[Any, Any]:
    """Returns (data, params) of a JSON scoring request, with MLflow's own MlflowException and
    message for a bad one. Wraps `mlflow.pyfunc.scoring_server._parse_json_data`: the public
    `scoring_server.invocations` parses and predicts in one call, and the public
    `infer_and_parse_data` neither splits off `params` nor checks the request's keys."""
    parsed = private("mlflow.pyfunc.scoring_server", "_parse_json_data")(body, metadata, schema)
    return parsed.data, parsed.params


def enforce_schema(data: Any, schema: Any) -> Any:
    """Returns `data` converted to the model signature's input schema, MlflowException naming the
    column otherwise. Wraps `mlflow.models.utils._enforce_schema`: the public
    `PyFuncModel.predict` applies it only on the way to predicting, one request at a time."""
    return private("mlflow.models.utils", "_enforce_schema")(data, schema)


# MLflow's basic-auth app answers this route with the user it authenticated the request as; a
# server without the app answers 404. `AuthServiceClient` does not wrap it (3.17.2).
CURRENT_USER_ROUTE = "/api/2.0/mlflow/users/current"


def authenticated_user(tracking_uri: str, timeout_s: float = 10.0) -> str | None:
    """Returns the user the tracking server at `tracking_uri` authenticates this client as (MLflow's
    basic-auth app, with MLflow's own credentials: MLFLOW_TRACKING_USERNAME/PASSWORD or its
    credentials file); None for a store that is not a server, a server without auth, or one that
    refuses the credentials. Uses `mlflow.utils.credentials.get_default_host_creds` and
    `mlflow.utils.rest_utils.http_request`, as MLflow's `AuthServiceClient` does."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(tracking_uri), CURRENT_USER_ROUTE, "GET",
                                max_retries=0, timeout=timeout_s, raise_on_status=False)
        if response.status_code != 200:
            return None
        username = response.json()["user"]["username"]
    except Exception:  # not MLflow's auth app (a proxy's page), or the server went away
        return None
    return username if isinstance(username, str) and username else None
