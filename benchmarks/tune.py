"""raylane's hyperparameter search against its baselines, same machine, same run; prints ratios.

    python -m benchmarks.tune [--samples 16] [--epochs 9] [--rows 40000] [--trivial 30]

1. ASHA against full-budget random search. The same random configurations (same seed) of a
   search space with good and bad regions (lr log-uniform over 1e-4..0.3, hidden size 16, 64 or
   256), on `--rows` x 64 synthetic 10-class rows, through `raylane.tune.search` as the pipeline
   runs it (a Ray Train fit per trial, one worker, two trials at a time): once with ASHA (grace 1
   epoch, reduction factor 3; `--asha`: the paper's promotion rule, each trial paused at a rung
   until it is among the best third there, or Ray's rule, which stops a trial below the cutoff so
   far), once with every trial run to `--epochs`.
   Compute is what the trials' epochs cost: in count, in worker seconds (training, evaluation,
   checkpoint: wall time, which grows when another trial's fit starts beside it on a small
   machine) and in the workers' CPU seconds over the same span. The ratio is ASHA's over random
   search's, given that ASHA found a configuration as good (its best validation accuracy within
   half a point of random search's best).

2. Per-trial overhead of the Tune layer: `--trivial` trials that report once and do nothing else,
   two at a time on two CPUs, with stock Tune's defaults (a new actor process per trial) and with
   raylane's trial settings (`raylane.tune`: a near-zero CPU reservation for the trial's driver,
   and each trial's process handed on to the next trial; a trial ASHA stops ends its Ray Train
   fit at once so that its process is free). A raylane trial also pays its Ray Train fit's own
   fixed cost, measured by benchmarks/ingest.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPACE = "tune.search_space={lr: {loguniform: [0.0001, 0.3]}, hidden_size: {choice: [16, 64, 256]}}"


def search(source: str, storage: str, scheduler: str, samples: int, epochs: int) -> dict[str, Any]:
    from raylane import data
    from raylane import tune as raylane_tune
    from raylane.config import load_config

    cfg = load_config(None, [
        f"data.source={source}", "data.label_column=label", SPACE, "train.batch_size=256",
        f"tune.scheduler={scheduler}", "tune.search_alg=random", f"tune.num_samples={samples}",
        "tune.grace_period=1", "tune.reduction_factor=3", "tune.max_concurrent_trials=2",
        f"train.epochs={epochs}", "train.num_workers=1", f"train.checkpoints_to_keep={epochs}",
    ])
    prepared = data.prepare(cfg.data, storage)
    started = time.perf_counter()
    best = raylane_tune.search(cfg, prepared, f"bench-{scheduler}", storage)
    wall = time.perf_counter() - started
    epochs_run, seconds, cpu, fits = 0, 0.0, 0.0, 0
    for result in best.results:
        frame = result.metrics_dataframe
        epochs_run += len(frame)
        seconds += float(frame["epoch_wall_s"].sum())
        cpu += float(frame["epoch_cpu_s"].sum())
        fits += frame["start_epoch"].nunique()  # a trial promoted after a pause runs a fit again
    print(f"[bench] {scheduler:<5} {len(best.results)} trials, {fits} fits, {epochs_run} epochs, "
          f"{seconds:.1f} worker-s ({cpu:.1f} CPU-s) in epochs, {wall:.0f} s wall; best val_accuracy "
          f"{best.metrics['val_accuracy']:.4f}", flush=True)
    return {"trials": len(best.results), "fits": fits, "epochs": epochs_run, "epoch_seconds": seconds,
            "epoch_cpu_seconds": cpu,
            "wall_s": wall, "best_val_accuracy": float(best.metrics["val_accuracy"])}


TRIVIAL = """
import sys, time
import ray
from ray import tune
from raylane import tune as raylane_tune
n, settings = int(sys.argv[1]), sys.argv[2]
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="error")
def trivial(config):
    tune.report({"score": config["x"]})
trainable, reuse = trivial, False
if settings == "raylane":
    trainable = tune.with_resources(trivial, {"cpu": raylane_tune.TRIAL_DRIVER_CPUS})
    reuse = raylane_tune.REUSE_TRIAL_PROCESSES
start = time.perf_counter()
tune.Tuner(trainable, param_space={"x": tune.uniform(0, 1)},
           tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=2, metric="score", mode="max",
                                       reuse_actors=reuse),
           run_config=tune.RunConfig(storage_path=sys.argv[3], verbose=0)).fit()
print("WALL", time.perf_counter() - start)
"""


def trivial_trials(n: int, settings: str, storage: str) -> float:
    """Seconds per trivial trial, in a fresh interpreter and Ray of its own."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", TRIVIAL, str(n), settings, storage], check=True,
                         capture_output=True, text=True).stdout
    per_trial = float(out.split("WALL", 1)[1].split()[0]) / n
    print(f"[bench] {n} trivial trials, {settings} settings: {per_trial:.2f} s per trial", flush=True)
    return per_trial


def main(argv: list[str] | None = None) -> int:
    from raylane.cli import show_progress

    show_progress()  # raylane's own lines, as the CLI shows them
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16, help="configurations each search tries")
    parser.add_argument("--rows", type=int, default=40_000, help="rows of the synthetic data")
    parser.add_argument("--epochs", type=int, default=9, help="full budget of a trial")
    parser.add_argument("--trivial", type=int, default=30, help="trivial trials for the overhead")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--asha", choices=("asha_promotion", "asha"), default="asha_promotion",
                        help="the ASHA side: the paper's promotion rule (tune.scheduler=asha_promotion) "
                             "or Ray's stopping rule (asha)")
    parser.add_argument("--skip-trivial", action="store_true", help="measure only the searches")
    parser.add_argument("--workdir", default="bench_data/tune")
    args = parser.parse_args(argv)

    import ray
    from raylane import cluster
    from raylane.config import load_config

    from benchmarks.ingest import make_files

    workdir = Path(args.workdir).resolve()
    source = workdir / "source"
    make_files(source, args.rows, 64)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        stock = ours = float("nan")
        if not args.skip_trivial:
            stock = trivial_trials(args.trivial, "stock", tmp + "/trivial")
            ours = trivial_trials(args.trivial, "raylane", tmp + "/trivial")
        # As the pipeline starts Ray (the dashboard's State API frees stopped trials' resources),
        # with Ray's output shown.
        cluster.connect(load_config(None, [f"cluster.num_cpus={args.cpus}", "serve.enabled=false"]))
        asha = search(str(source), tmp + "/asha", args.asha, args.samples, args.epochs)
        full = search(str(source), tmp + "/fifo", "fifo", args.samples, args.epochs)
        ray.shutdown()

    found = asha["best_val_accuracy"] >= full["best_val_accuracy"] - 0.005
    result = {"scheduler": args.asha, "asha": asha, "random": full, "asha_found_the_best": found,
              "compute_ratio": asha["epoch_seconds"] / full["epoch_seconds"],
              "cpu_ratio": asha["epoch_cpu_seconds"] / full["epoch_cpu_seconds"],
              "epochs_ratio": asha["epochs"] / full["epochs"], "wall_ratio": asha["wall_s"] / full["wall_s"],
              "overhead_stock_s": stock, "overhead_raylane_s": ours}
    print(f"ratio compute={result['compute_ratio']:.2f}x (epochs {result['epochs_ratio']:.2f}x, "
          f"CPU-s {result['cpu_ratio']:.2f}x, "
          f"wall {result['wall_ratio']:.2f}x; ASHA / random search; target <= 0.35; ASHA's best "
          f"{'matches' if found else 'is below'} random search's) "
          f"per_trial_overhead={ours:.2f}s vs stock {stock:.2f}s (target <= 0.3 s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
