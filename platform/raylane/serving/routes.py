"""Where each served model lives on the endpoint, and how a request names its model.

Each registered model served is its own Ray Serve application, mounted at `/v2/models/<name>`, with
its own replicas, alias and canary; the gateway application at `/` answers what names no model
(`/`, `/v2`, health, `GET /v2/repository/index`) and passes on KServe V1 and MLflow requests that
the ingress did not send to the model's replicas itself (see raylane.serving.haproxy).
"""

from __future__ import annotations

GATEWAY_APP = "raylane"
"""The Serve application at `/`."""
MODEL_APP_PREFIX = "raylane-"
MODEL_PREFIX = "/v2/models/"
MODEL_HEADER = "x-model-name"
"""`/invocations` picks its model by this header, or by the `?model=` query parameter."""
MODEL_PARAM = "model"
PASSED_ON = "/_"
"""A request the ingress moved under a model's prefix: `/v2/models/<name>/_<original path>`."""


def model_app(name: str) -> str:
    """The Serve application serving registered model `name`."""
    return MODEL_APP_PREFIX + name


def model_of_app(app: str) -> str | None:
    """The registered model an application of raylane serves; None for any other application."""
    return app[len(MODEL_APP_PREFIX):] if app.startswith(MODEL_APP_PREFIX) else None


def route_prefix(name: str) -> str:
    return MODEL_PREFIX + name
