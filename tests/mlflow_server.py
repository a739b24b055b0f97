"""A real `mlflow server` on 127.0.0.1 (sqlite behind it), for tests that need several processes
on one tracking store, as pipelines on a cluster share one."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import free_port


@contextlib.contextmanager
def mlflow_server(directory: Path, workers: int = 1, auth_config: Path | None = None) -> Iterator[str]:
    """Starts `mlflow server` on a sqlite store in `directory`; yields its URI (about 11 s to answer
    on 2 cores). Its output goes to `directory/server.log`. One worker still serves requests at
    once (on threads); with more, uvicorn kills a worker that misses its health check on a
    loaded machine, and the server may never answer. With `auth_config` (a basic_auth.ini), it
    runs MLflow's basic-auth app on that config's user database."""
    bin_dir = Path(sys.executable).parent
    port = free_port()
    with open(directory / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
             "--default-artifact-root", str(directory / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers),
             *(["--app-name", "basic-auth"] if auth_config else [])],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{bin_dir}:{os.environ['PATH']}",
                 **({"MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                     "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)} if auth_config else {})})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(uri + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                f"mlflow server did not start: {(directory / 'server.log').read_text()[-2000:]}"
            time.sleep(0.3)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
