"""The champion model of the MLflow registry behind a FastAPI ingress on Ray Serve.

    serve run serve_apps.champion:app model_name=digits tracking_uri=sqlite:////abs/path/mlflow.db
    serve deploy serve_apps/champion.yaml

`app` is a typed application builder: Serve passes the `args` of a config file (or the
key=value pairs of `serve run`) to it, validated as `raylane.serving.model.ServeArgs`. Alone (as
`serve run` mounts it, at `/`) it answers every route for its model. Beside other models, each is
mounted at `/v2/models/<name>` as `raylane-<name>`, with `gateway` (`raylane.serving.gateway`,
args validated as `GatewayArgs`) at `/`, as champion.yaml shows.
"""

from __future__ import annotations

from typing import Any

from raylane.serving.app import build_app
from raylane.serving.gateway import GatewayArgs, build_gateway
from raylane.serving.model import ServeArgs


def app(args: dict[str, Any]) -> Any:
    return build_app(ServeArgs.model_validate(args))


def gateway(args: dict[str, Any]) -> Any:
    return build_gateway(GatewayArgs.model_validate(args))
