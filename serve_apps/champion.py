"""The champion model of the MLflow registry behind a FastAPI ingress on Ray Serve.

    serve run serve_apps.champion:app model_name=digits tracking_uri=sqlite:////abs/path/mlflow.db
    serve deploy serve_apps/champion.yaml

`app` is a typed application builder: Serve passes the `args` of a config file (or the
key=value pairs of `serve run`) to it, validated as `raylane.serving.model.ServeArgs`.
"""

from __future__ import annotations

from typing import Any

from raylane.serving.app import build_app
from raylane.serving.model import ServeArgs


def app(args: dict[str, Any]) -> Any:
    return build_app(ServeArgs.model_validate(args))
