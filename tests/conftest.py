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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with room for 2 trials x 2 workers, Ray Data and Serve (logical CPUs)."""
    import ray

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
