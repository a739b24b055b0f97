"""Loading a registered model for serving: whatever the framework, a LoadedModel looks the same."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ServeArgs(BaseModel):
    """Arguments of the Serve application (`serve run serve_apps.champion:app key=value ...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model_name: str = "digits"
    """Registered model to serve; also the {name} in the endpoint URLs."""
    alias: str = "champion"
    """Registry alias whose version is served (when `version` is unset)."""
    version: str | None = None
    """Exact version to serve; the pipeline pins it so every replica serves the same one."""
    tracking_uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", ""),
                              min_length=1)
    """MLflow tracking URI of the registry (an absolute sqlite path, or a server URL); required."""
    num_replicas: int = Field(default=1, ge=1)
    """Replicas of the model deployment."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    """Requests one replica accepts at once."""
    replica_cpus: float = Field(default=0.5, gt=0)
    """Logical CPUs each replica reserves."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer: name, version, input columns, classes and a predict function."""

    name: str
    version: str
    feature_columns: list[str]
    classes: list[Any]
    predict_proba: Callable[[np.ndarray], np.ndarray]
    framework: str = "torch"

    def predict(self, rows: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Returns (class labels, probabilities) for raw feature rows in column order."""
        probabilities = self.predict_proba(rows)
        labels = [self.classes[i] for i in probabilities.argmax(axis=1)]
        return labels, probabilities


def load_from_registry(args: ServeArgs) -> LoadedModel:
    """Returns the model version the alias points at, loaded through MLflow pyfunc."""
    import mlflow.pyfunc

    from raylane.tracking import champion_version

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    mlflow.set_tracking_uri(args.tracking_uri)
    version = args.version or champion_version(args.tracking_uri, args.model_name, args.alias)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{args.model_name}/{version}")
    inner = pyfunc.unwrap_python_model()
    return LoadedModel(
        name=args.model_name, version=version, feature_columns=list(inner.feature_columns),
        classes=list(inner.classes), predict_proba=inner.predict_proba,
        framework=getattr(inner, "framework", "unknown"),
    )
