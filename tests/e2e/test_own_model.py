"""A team's own PyTorch CNN, from a module outside raylane's tree, on a folder of PNG digits,
through the real entrypoint: trained by Ray Train workers that import it from the job's
uploaded code, registered with the builder and the image preprocessing inside the MLflow model,
served by raylane over V1 (b64), V2 (binary BYTES) and a raw PNG body, and by stock
`mlflow models serve` from a fresh virtualenv that has neither raylane nor the team's code."""

from __future__ import annotations

import base64
import io
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from pipelines import digits_images, train_tune_serve
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
SIZE = 16

CNN_BUILDER = """
from torch import nn

def build(inputs, outputs, *, channels: int = 8, hidden: int = 32):
    flat = 2 * channels * (inputs.height // 4) * (inputs.width // 4)
    return nn.Sequential(
        nn.Conv2d(inputs.channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, outputs.size))
"""


@pytest.fixture(scope="module")
def pipeline(ray_local, serve_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own_model")
    images = tmp / "digits_png"
    digits_images.write_digits(images, SIZE)
    code = tmp_path_factory.mktemp("team_code")  # outside raylane's tree, not on the workers' path
    (code / "team_cnn.py").write_text(textwrap.dedent(CNN_BUILDER))
    sys.path.insert(0, str(code))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = [f"storage_path={tmp / 'storage'}", f"serve.port={serve_port}", f"data.source={images}",
                 f"data.image_size={SIZE}", "data.image_channels=1", "model.name=digits_cnn",
                 "model.builder=team_cnn:build", "train.epochs=4", "train.batch_size=32",
                 "tune.num_samples=1", "tune.max_concurrent_trials=1",
                 "tune.search_space={lr: {choice: [0.004]}, channels: {choice: [8]}}"]
    argv = ["--config", TINY, "--tracking-uri", uri, "--run-name", "own-cnn", "--no-block"]
    argv += [a for o in overrides for a in ("--set", o)]
    try:
        assert train_tune_serve.main(argv) == 0
    finally:
        sys.path.remove(str(code))
    files = sorted(images.glob("*/*.png"))[::23][:40]  # a spread of every class
    return {"uri": uri, "url": f"http://127.0.0.1:{serve_port}", "files": files,
            "labels": [int(f.parent.name) for f in files], "tmp": tmp}


def pyfunc_predictions(pipeline, files: list[Path]) -> list[int]:
    mlflow.set_tracking_uri(pipeline["uri"])
    model = mlflow.pyfunc.load_model("models:/digits_cnn@champion")
    return [int(v) for v in model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_team_cnn_is_champion_with_its_code_inside_the_model(pipeline) -> None:
    client = MlflowClient(pipeline["uri"])
    version = client.get_model_version_by_alias("digits_cnn", "champion")
    assert float(version.tags["test_accuracy"]) > 0.85
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/digits_cnn/{version.version}",
                                                         tracking_uri=pipeline["uri"]))
    assert (model_dir / "code" / "team_cnn.py").is_file()
    requirements = (model_dir / "requirements.txt").read_text()
    assert "torch==" in requirements and "pillow==" in requirements.lower()


def test_v1_b64_instances_answer_what_pyfunc_answers(pipeline) -> None:
    files = pipeline["files"]
    response = httpx.post(f"{pipeline['url']}/v1/models/digits_cnn:predict",
                          json={"instances": [{"b64": b64(f)} for f in files]}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions == pyfunc_predictions(pipeline, files)
    assert np.mean(np.asarray(predictions) == pipeline["labels"]) > 0.8


def test_v2_binary_bytes_and_a_raw_png_body(pipeline) -> None:
    files = pipeline["files"][:8]
    expected = pyfunc_predictions(pipeline, files)
    blobs = [f.read_bytes() for f in files]
    binary = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    header = (b'{"inputs":[{"name":"image","shape":[%d],"datatype":"BYTES","parameters":'
              b'{"binary_data_size":%d}}]}' % (len(blobs), len(binary)))
    response = httpx.post(f"{pipeline['url']}/v2/models/digits_cnn/infer", content=header + binary,
                          headers={"Inference-Header-Content-Length": str(len(header)),
                                   "Content-Type": "application/octet-stream"}, timeout=60)
    assert response.status_code == 200, response.text
    assert [int(v) for v in response.json()["outputs"][0]["data"]] == expected
    raw = httpx.post(f"{pipeline['url']}/v1/models/digits_cnn:predict", content=blobs[0],
                     headers={"Content-Type": "image/png"}, timeout=60)
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"] == expected[:1]


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height pixels."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_a_decompression_bomb_is_refused_and_the_replica_lives_on(pipeline) -> None:
    started = time.perf_counter()
    response = httpx.post(f"{pipeline['url']}/v1/models/digits_cnn:predict",
                          json={"instances": [{"b64": base64.b64encode(bomb_png()).decode()}]}, timeout=60)
    assert response.status_code in (400, 413), response.text
    assert "pixels" in response.text
    assert time.perf_counter() - started < 10
    not_png = httpx.post(f"{pipeline['url']}/v1/models/digits_cnn:predict",
                         json={"instances": [{"b64": base64.b64encode(b"hello").decode()}]}, timeout=60)
    assert not_png.status_code == 400 and "not an image" in not_png.text
    assert httpx.get(f"{pipeline['url']}/v2/health/ready", timeout=30).status_code == 200
    again = httpx.post(f"{pipeline['url']}/v1/models/digits_cnn:predict",
                       json={"instances": [{"b64": b64(pipeline["files"][0])}]}, timeout=60)
    assert again.status_code == 200


def test_stock_mlflow_serves_the_champion_from_a_fresh_virtualenv(pipeline, tmp_path) -> None:
    """Only what the model's requirements.txt pins is installed: no raylane, no Ray, no team code."""
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/digits_cnn@champion",
                                                         dst_path=str(tmp_path / "model"),
                                                         tracking_uri=pipeline["uri"]))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "-r",
                              str(model_dir / "requirements.txt")],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    missing = subprocess.run([python, "-c", "import raylane"], capture_output=True, cwd=tmp_path)
    assert missing.returncode != 0  # the model must carry what it needs
    assert subprocess.run([python, "-c", "import ray"], capture_output=True, cwd=tmp_path).returncode != 0

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", MLFLOW_DISABLE_TELEMETRY="true")
    log = open(tmp_path / "mlflow-serve.log", "w")
    server = subprocess.Popen([str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir),
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "mlflow-serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        files = pipeline["files"][:6]
        body = {"dataframe_split": {"columns": ["image"], "data": [[b64(f)] for f in files]}}
        response = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert [int(v) for v in response.json()["predictions"]] == pyfunc_predictions(pipeline, files)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
