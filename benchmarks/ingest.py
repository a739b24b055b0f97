"""Training throughput of a raylane PyTorch worker against a plain PyTorch loop, same model, same
batch, same data, same run; and the fixed cost of a `trainer.fit()` outside its epochs.

    python -m benchmarks.ingest [--rows 200000] [--cols 64] [--hidden 512] [--batch 512] [--epochs 5]
    python -m benchmarks.ingest --gpu --precision bf16 --rows 1430000 --cols 128 --hidden 4096 \
        --layers 3 --batch 8192        # the wide-tabular GPU case: 1M train rows, a 34M-parameter MLP

The data: `--rows` x `--cols` float32 features and a 10-class label in Parquet files, prepared by
`raylane.data.prepare` as the pipeline does (the train split is 70% of the rows). Then:

    plain    the train split already in memory as two tensors; each epoch one permutation,
             batches sliced from it; MLP cols-(hidden x layers)-10, AdamW, one thread (a Ray
             worker with one CPU runs torch on one thread too); with --gpu the tensors and the
             model are on the GPU, and --precision bf16 autocasts both sides' passes
    memory   raylane's TorchTrainer, one worker, train.ingest=memory (the default `auto` picks it
             when the shard fits): the shard read once into tensors, then the same loop
    stream   the same trainer with train.ingest=stream: Ray Data's iter_torch_batches each epoch,
             the stock Ray Train input path

samples/s is train rows / the training part of an epoch (median over epochs, and the best epoch
of each side, since a 2-core machine running Ray's own processes is noisy; each raylane epoch
also evaluates on val and writes a checkpoint, timed apart). The fixed cost is the fit's wall time
less its epochs (training, evaluation, checkpoint): starting the worker group and the dataset
split, and tearing them down.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.files import write_once


def make_files(directory: Path, rows: int, cols: int, files: int = 8) -> None:
    """10 classes around random centres, noisy enough that the MLP needs several epochs."""
    centers: list[np.ndarray] = []

    def block(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        if not centers:  # drawn first from the same generator, as the measured runs drew them
            centers.append(rng.normal(size=(10, cols)).astype(np.float32))
        label = rng.integers(0, 10, size=n)
        return centers[0][label] + rng.normal(scale=2.0, size=(n, cols)).astype(np.float32), label

    write_once(directory, rows, cols, files, block)


def plain_loop(x: np.ndarray, y: np.ndarray, cfg: Any, input_dim: int, epochs: int) -> list[float]:
    """Samples/s of each epoch of the loop a PyTorch user writes with the data in memory (on the
    GPU with --gpu)."""
    import torch
    from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
    spec = ModelSpec(TORCH_MLP, "torch", InputSpec(input_dim), OutputSpec("classification", 10),
                     {k: cfg.model.params[k] for k in ("hidden_size", "num_layers") if k in cfg.model.params})
    model = spec.build().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    features, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    bf16 = cfg.train.precision == "bf16"
    rates = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch)).to(device)
        xs, ys = features[order], labels[order]
        model.train()
        total = torch.zeros((), device=device)
        for start in range(0, len(ys), cfg.train.batch_size):
            xb, yb = xs[start:start + cfg.train.batch_size], ys[start:start + cfg.train.batch_size]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(yb)
        total.item()
        rates.append(len(ys) / (time.perf_counter() - started))
        print(f"[bench] plain    epoch {epoch}: {rates[-1]:,.0f} samples/s", flush=True)
    return rates


def device_name(gpu: bool) -> str:
    import torch

    return torch.cuda.get_device_name(0) if gpu else "cpu"


def raylane_fit(cfg: Any, prepared: Any, storage: str, ingest: str) -> dict[str, Any]:
    """One TorchTrainer fit as a Tune trial runs it; its epochs' figures and its fixed cost."""
    from raylane.config import PipelineConfig
    from raylane.train.trainer import build_trainer

    cfg = PipelineConfig.model_validate(
        {**cfg.model_dump(), "train": {**cfg.train.model_dump(), "ingest": ingest}})
    trainer = build_trainer(cfg, {}, prepared, name=f"ingest-{ingest}-{time.time_ns()}", storage_path=storage)
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    if result.error:
        raise SystemExit(f"[bench] the {ingest} fit failed: {result.error}")
    epochs = result.metrics_dataframe
    rates = list(epochs["train_rows"] / epochs["epoch_time_s"])
    spent = float((epochs["epoch_wall_s"]).sum())
    for epoch, rate in enumerate(rates):
        print(f"[bench] {ingest:<8} epoch {epoch}: {rate:,.0f} samples/s", flush=True)
    return {"samples_per_s": statistics.median(rates), "best_samples_per_s": max(rates),
            "fit_wall_s": wall, "epochs_s": spent, "fixed_s": wall - spent,
            "val_accuracy": float(epochs["val_accuracy"].iloc[-1])}


def main(argv: list[str] | None = None) -> int:
    from raylane.cli import show_progress

    show_progress()  # raylane's own lines, as the CLI shows them
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2, help="hidden layers of the MLP")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--gpu", action="store_true", help="one GPU: the plain loop's data on it, "
                        "the raylane worker with train.use_gpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="both sides' arithmetic (train.precision); bf16 autocast")
    parser.add_argument("--skip-stream", action="store_true", help="measure only plain and memory")
    parser.add_argument("--auto", action="store_true",
                        help="also a fit with train.ingest=auto (the default), to see what it picks")
    parser.add_argument("--workdir", default="bench_data/ingest")
    args = parser.parse_args(argv)

    import ray
    from raylane import cluster, data
    from raylane.config import PipelineConfig

    workdir = Path(args.workdir).resolve()
    make_files(workdir / "source", args.rows, args.cols)
    cfg = PipelineConfig.model_validate({
        "data": {"source": str(workdir / "source"), "label_column": "label"},
        "model": {"params": {"hidden_size": args.hidden, "num_layers": args.layers}},
        "train": {"num_workers": 1, "epochs": args.epochs, "batch_size": args.batch, "lr": 1e-3,
                  "use_gpu": args.gpu, "precision": args.precision,
                  "checkpoints_to_keep": args.epochs},  # the result lists kept checkpoints only
        "tune": {"metric": "val_accuracy"},
        "cluster": {"num_cpus": args.cpus}, "serve": {"enabled": False},
    })
    cluster.connect(cfg)  # as the pipeline starts Ray, with Ray's output shown (the workers' lines)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        prepared = data.prepare(cfg.data, tmp)
        batch = prepared.train.take_batch(batch_size=prepared.train.count(), batch_format="numpy")
        x, y = np.stack(batch["features"]).astype(np.float32), np.asarray(batch["label"])
        print(f"[bench] train split: {len(y):,} rows x {x.shape[1]} features", flush=True)
        plain_rates = plain_loop(x, y, cfg, prepared.input_dim, args.epochs)
        plain, plain_best = statistics.median(plain_rates), max(plain_rates)
        sides = {"memory": raylane_fit(cfg, prepared, tmp + "/runs", "memory")}
        if not args.skip_stream:
            sides["stream"] = raylane_fit(cfg, prepared, tmp + "/runs", "stream")
        if args.auto:  # the worker prints its choice: "[raylane] worker ingest: ..."
            sides["auto"] = raylane_fit(cfg, prepared, tmp + "/runs", "auto")
    ray.shutdown()

    print(f"[bench] plain loop: {plain:,.0f} samples/s (best epoch {plain_best:,.0f})")
    for name, side in sides.items():
        print(f"[bench] raylane {name}: {side['samples_per_s']:,.0f} samples/s "
              f"(best epoch {side['best_samples_per_s']:,.0f}), "
              f"fit {side['fit_wall_s']:.1f} s = epochs {side['epochs_s']:.1f} s "
              f"+ fixed {side['fixed_s']:.1f} s; "
              f"val_accuracy {side['val_accuracy']:.3f}")
    result = {"rows": args.rows, "cols": args.cols, "batch": args.batch, "hidden": args.hidden,
              "layers": args.layers, "precision": args.precision, "device": device_name(args.gpu),
              "plain_samples_per_s": plain,
              **{f"{n}_{k}": v for n, side in sides.items() for k, v in side.items()},
              **{f"ratio_{n}": side["samples_per_s"] / plain for n, side in sides.items()},
              **{f"best_epoch_ratio_{n}": side["best_samples_per_s"] / plain_best
                 for n, side in sides.items()}}
    ratios = [f"{n}={result[f'ratio_{n}']:.2f}x (best epochs {result[f'best_epoch_ratio_{n}']:.2f}x)"
              for n in sides]
    print("ratio " + " ".join(ratios)
          + f" fixed_cost={sides['memory']['fixed_s']:.1f}s (raylane / plain loop; targets: memory >= 0.9x, "
          "fixed cost <= 10 s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
