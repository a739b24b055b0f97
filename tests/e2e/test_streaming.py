"""A dataset larger than Ray's object store, given by config alone: the pipeline streams it (the
files read twice, the encoded splits written as Parquet under the run, the epochs streamed from
there), trains, and registers a model far better than chance. Run as a user runs it: its own
process and its own local Ray, with `cluster.object_store_memory` smaller than the data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

ROWS, COLS, STORE = 240_000, 64, 75 * 2**20  # 75 MiB: the smallest object store Ray accepts


def write_files(directory: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, COLS)).astype(np.float32)
    directory.mkdir()
    for i in range(8):
        label = rng.integers(0, 10, size=ROWS // 8)
        x = centers[label] + rng.normal(scale=1.5, size=(len(label), COLS)).astype(np.float32)
        columns = {f"f{j}": pa.array(x[:, j]) for j in range(COLS)}
        pq.write_table(pa.table({**columns, "label": pa.array(label)}), directory / f"part-{i}.parquet")


def test_dataset_larger_than_the_object_store_streams_to_a_registered_model(tmp_path) -> None:
    assert ROWS * COLS * 8 > 1.5 * STORE  # the typed rows alone would not fit in the object store
    write_files(tmp_path / "src")
    config = tmp_path / "big.yaml"
    config.write_text(f"""
storage_path: {tmp_path / 'storage'}
cluster:
  object_store_memory: {STORE}
data:
  source: {tmp_path / 'src'}
  label_column: label
train:
  num_workers: 1
  epochs: 1
  batch_size: 512
tune:
  num_samples: 1
  max_concurrent_trials: 1
  search_alg: random
  scheduler: fifo
  search_space:
    lr: {{choice: [0.003]}}
model:
  name: big
  params: {{hidden_size: 64, num_layers: 1}}
serve:
  enabled: false
""")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.train_tune_serve", "--config", str(config),
         "--tracking-uri", uri, "--run-name", "big"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "data.streaming=auto: streaming" in output, output[-4000:]
    for name in ("train", "val", "test"):
        assert list((tmp_path / "storage" / "big" / "data" / f"split={name}").glob("*.parquet")), name
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("big", "champion")
    metrics = client.get_run(champion.run_id).data.metrics
    assert metrics["test_accuracy"] > 0.8, metrics  # 10 classes: chance is 0.1
