"""Shared fixtures: one local Ray for the session, a fresh MLflow sqlite store per test."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)  # never join a stray cluster from the tests
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")  # slow starts under load
# The S3 tests talk to a local moto server; Ray workers started by the session's Ray read these too.
# They also keep a developer's real AWS credentials out of the tests.
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
os.environ.update(AWS)


@pytest.fixture(autouse=True, scope="module")
def _each_module_serves_its_own_models():
    """Takes every model a test module deployed off the session's endpoint when the module ends:
    one endpoint serves several models, so a module's `/invocations` (no model named) and its
    repository index would otherwise see the models of the modules before it."""
    yield
    import ray

    if not ray.is_initialized():
        return
    from raylane.serving import deploy

    for name in deploy.served_models():
        try:
            deploy.remove(name)
        except Exception:  # removed meanwhile
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with room for 2 trials x 2 workers, Ray Data and Serve (logical CPUs)."""
    import ray
    from raylane import env

    # The Train settings a raylane run sets (Train's controller polling its workers every 0.25 s),
    # in this process's environment before Ray starts, so every worker has them whichever test
    # comes first: a fit's pace is then the same alone and in the whole suite.
    env.apply(env.TRAIN)
    # The dashboard serves the State API: Train V2 needs it to free the placement groups of
    # stopped trials, and the fault tests use it to find worker processes.
    ray.init(address="local", num_cpus=8, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="warning")
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_port() -> int:
    """The one HTTP port of Serve in the session's Ray (Serve keeps its first http_options)."""
    return free_port()


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# A registry with real models for the serving and fault tests, trained in-process in seconds
# through the pipeline's own path (`tests.quick`): `data.prepare`, a checkpoint in the
# training loop's format, `tracking.log_best_model` and the champion gate. Only Ray Train and Tune
# are skipped, which the e2e tests cover.
@pytest.fixture(scope="session")
def registry(ray_local, tmp_path_factory):
    """An sqlite registry with `digits` v1 (champion) and v2 (challenger), both real models."""
    import logging

    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from raylane import data, registry
    from raylane.config import DataConfig, ModelConfig

    from tests.quick import train_and_register

    model = ModelConfig(name="digits")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-tests")
    prepared = data.prepare(DataConfig(source="sklearn:digits"), str(tmp / "storage"))
    first = train_and_register(prepared, str(tmp), model, epochs=3, hidden=32, seed=1)
    second = train_and_register(prepared, str(tmp), model, epochs=1, hidden=16, seed=2)
    client = MlflowClient(uri)
    champion = registry.champion_version(uri, "digits", "champion")
    challenger = second.version if champion == first.version else first.version
    client.set_registered_model_alias("digits", "challenger", challenger)
    raw, label_index = data.raw_rows(prepared.test)
    rows = raw.to_numpy(dtype=np.float64)
    labels = np.asarray(prepared.classes)[label_index]
    return {"uri": uri, "tmp": tmp, "prepared": prepared, "rows": rows, "labels": labels,
            "champion": champion, "challenger": challenger, "client": client}
