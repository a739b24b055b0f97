"""Samples/s of raylane's 2-worker TensorFlow training against single-process Keras, same data,
same model, same batch, same machine, same run; prints the ratio.

    python -m benchmarks.train_tf [--rows 200000] [--epochs 3] [--workers 2]

Both sides train the same MLP (64 -> 256 -> 256 -> 10, Adam) on the same synthetic rows. The
baseline is what a Keras user writes on one machine: `model.fit` on in-memory numpy arrays.
raylane's figure is the steady-state epoch (the last one) of `train_loop_per_worker` under a
TensorflowTrainer: Ray Data shards, MultiWorkerMirroredStrategy all-reduce every step. The
trainer's fixed cost (worker start, strategy set-up, teardown) is printed separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

FEATURES, CLASSES, HIDDEN, LAYERS = 64, 10, 256, 2


def make_data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    w = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    return x, (x @ w).argmax(axis=1).astype(np.int64)


def keras_baseline(x: np.ndarray, y: np.ndarray, epochs: int, batch: int) -> float:
    """Returns samples/s of the last epoch of single-process `model.fit`."""
    import keras
    from raylane.model.network import KERAS_MLP, InputSpec, ModelSpec, OutputSpec

    model = ModelSpec(KERAS_MLP, "tensorflow", InputSpec(FEATURES), OutputSpec("classification", CLASSES),
                      {"hidden_size": HIDDEN, "num_layers": LAYERS}).build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[EpochTimer()])
    return (len(x) // batch) * batch / times[-1]


def _table(x: np.ndarray, y: np.ndarray):
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    return pa.table({"features": ArrowTensorArray.from_numpy(x), "label": y})


def raylane_run(x: np.ndarray, y: np.ndarray, epochs: int, batch: int,
                workers: int) -> tuple[float, float]:
    """Returns (samples/s of the last epoch, seconds of fit() outside the epochs)."""
    import ray
    import ray.data
    from raylane.config import load_config
    from raylane.data import PreparedData
    from raylane.preprocess import Column, Preprocessor
    from raylane.train.trainer import build_trainer

    ray.init(address="local", num_cpus=workers + 2, include_dashboard=False, logging_level="error")
    ray.data.DataContext.get_current().enable_progress_bars = False
    train = ray.data.from_arrow(_table(x, y)).repartition(16).materialize()
    val = ray.data.from_arrow(_table(x[:512], y[:512])).materialize()
    columns = [f"f{i}" for i in range(FEATURES)]
    prepared = PreparedData(train=train, val=val, test=val, feature_columns=columns,
                            label_column="label", classes=list(range(CLASSES)),
                            preprocessor=Preprocessor([Column(c, "numeric") for c in columns]),
                            source="synthetic",
                            files=[], digest="")
    cfg = load_config(None, ["train.backend=tensorflow", f"train.num_workers={workers}",
                             f"train.epochs={epochs}", f"train.batch_size={batch}",
                             f"train.checkpoints_to_keep={epochs}",  # keep every epoch's timing
                             f"model.params.hidden_size={HIDDEN}", f"model.params.num_layers={LAYERS}",
                             "train.lr=0.001"])
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        result = build_trainer(cfg, {}, prepared, name="bench", storage_path=storage).fit()
        wall = time.perf_counter() - started
    history = result.metrics_dataframe
    epoch_seconds = float(history["epoch_time_s"].sum()) if history is not None else 0.0
    ray.shutdown()
    return result.metrics["train_rows"] / result.metrics["epoch_time_s"], wall - epoch_seconds


def main() -> None:
    from raylane.cli import show_progress

    show_progress()  # raylane's own lines, as the CLI shows them
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512, help="per-worker batch (the baseline uses it too)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    x, y = make_data(args.rows)
    baseline = keras_baseline(x, y, args.epochs, args.batch)
    ours, fixed = raylane_run(x, y, args.epochs, args.batch, args.workers)
    print(f"rows={args.rows} batch={args.batch} workers={args.workers} cores={os.cpu_count()}")
    print(f"keras_fit_samples_per_s={baseline:.0f}")
    print(f"raylane_tf_{args.workers}w_samples_per_s={ours:.0f}")
    print(f"raylane_fit_fixed_cost_s={fixed:.1f} (worker start, strategy set-up, teardown; "
          f"not in the samples/s)")
    print(f"ratio={ours / baseline:.2f}")


if __name__ == "__main__":
    main()
