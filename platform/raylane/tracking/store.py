"""MLflow's store: which tracking URI, a fast check that a server answers, the experiment.

    experiment_id = configure(cfg.tracking)      # once, in the driver, before any trial starts
"""

from __future__ import annotations

from pathlib import Path

from raylane import env
from raylane.config import TrackingConfig
from raylane.errors import RaylaneError, TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Returns the tracking URI to use, with a relative sqlite path made absolute."""
    uri = cfg.tracking_uri or env.MLFLOW_TRACKING_URI.get() or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def configure_client() -> None:
    """Settings every MLflow client of raylane's runs with."""
    # The machines this runs on often have no route out; MLflow would otherwise try its telemetry.
    env.apply(env.MLFLOW)


def configure(cfg: TrackingConfig) -> str:
    """Points MLflow at the store and creates the experiment once; returns the experiment id."""
    import mlflow

    configure_client()
    uri = resolve_tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment)  # creates a sqlite schema once
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(cfg.experiment, artifact_location=_artifact_location(cfg, uri))
    except Exception as err:
        raise RaylaneError(f"tracking.tracking_uri {uri!r}: cannot reach the MLflow store: {err}") from err


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fails fast, naming the URI, when no MLflow server answers there (MLflow's own client would
    retry for minutes before giving up)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError:
        return  # something answers (a proxy, auth): let MLflow's own calls report what it says
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"tracking.tracking_uri {uri!r}: no MLflow server answers ({reason}); start "
                            "it (mlflow server ...) or point tracking.tracking_uri elsewhere") from err


def _artifact_location(cfg: TrackingConfig, uri: str) -> str | None:
    if cfg.artifact_location:
        return cfg.artifact_location
    if uri.startswith("sqlite:///"):  # next to the database, never relative to a worker's cwd
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None
