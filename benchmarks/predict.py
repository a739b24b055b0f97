"""Batch scoring throughput and peak memory: `raylane predict` against the single-process loop a
user would write, the same model over the same files, on the same machine in the same run; prints
a table and the ratio.

    python -m benchmarks.predict [--rows 5000000] [--files 10] [--threads-baseline] [--out result.json]

Method
  A 64-256-256-10 MLP is trained on the digits data and registered the pipeline's way (a quick
  in-process run: tests/quick.py), raylane's preprocessing inside the logged model. `--rows` rows
  of digits-like data (rows of scikit-learn's digits drawn at random: 64 float64 pixel columns
  and an int64 `id`) are written once as `--files` Parquet files under `--workdir`.

  baseline  one Python process, what a user writes (mlflow.pyfunc, the model loaded once):
                model = mlflow.pyfunc.load_model("models:/digits/N")
                for file in files:
                    frame = pd.read_parquet(file)
                    out = pd.DataFrame({"id": frame.id, "prediction": model.predict(frame[features])})
                    out.to_parquet(...)
            The loaded model sets torch to one thread (raylane's pyfunc does, for serving); with
            `--threads-baseline` the loop is also run with torch.set_num_threads(cores), and the
            faster of the two is the baseline.
  raylane   the command users run: `python -m pipelines.predict --model digits/N --input DIR
            --output DIR` (a local Ray with a CPU per core, an actor per CPU, each loading the
            model once, reading, predicting and writing its files).

  Each side runs in a process of its own, timed from launch to exit (interpreter start, imports,
  Ray start and model loading included: what a user waits for); its scoring phase alone is
  reported too (baseline: after the model loaded; raylane: the time the command reports, from
  the actors' start to the last file written). Peak memory: the largest sum over the side's
  process tree (raylane: the driver, Ray's processes and the actors), sampled every 0.25 s with
  psutil, as RSS (pages shared between Ray's processes counted once per process) and as PSS
  (shared pages split between them). The first file's predictions of both sides must be equal.
  Target: raylane >= 1.5x the baseline's rows/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "digits"
TARGET = 1.5

BASELINE = """
import glob, os, sys, time
start = time.perf_counter()
import mlflow
import pandas as pd
tracking_uri, model_uri, source, out, threads = sys.argv[1:6]
mlflow.set_tracking_uri(tracking_uri)
model = mlflow.pyfunc.load_model(model_uri)
if int(threads):
    import torch
    torch.set_num_threads(int(threads))
features = model.metadata.get_input_schema().input_names()
loaded = time.perf_counter()
rows = 0
for path in sorted(glob.glob(os.path.join(source, "*.parquet"))):
    frame = pd.read_parquet(path)
    prediction = model.predict(frame[features])
    pd.DataFrame({"id": frame["id"], "prediction": prediction}).to_parquet(
        os.path.join(out, os.path.basename(path)), index=False)
    rows += len(frame)
print("ROWS", rows, "SCORING", time.perf_counter() - loaded)
"""


def register_model(workdir: Path) -> tuple[str, str, list[str]]:
    """Registers a 64-256-256-10 MLP; returns (tracking URI, model URI, feature columns)."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    log = workdir / "register.log"
    print(f"[bench] training and registering the model (Ray's and MLflow's output: {log})", flush=True)
    with _output_to(log):
        return _register(workdir, uri)


@contextlib.contextmanager
def _output_to(path: Path):
    """Sends this process's stdout and stderr (Python's and the libraries' own) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _register(workdir: Path, uri: str) -> tuple[str, str, list[str]]:
    import logging

    import mlflow
    import ray
    from raylane import data
    from raylane.config import DataConfig, ModelConfig

    from tests.quick import train_and_register

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name("predict-benchmark") is None:
        mlflow.create_experiment("predict-benchmark", artifact_location=(workdir / "mlartifacts").as_uri())
    mlflow.set_experiment("predict-benchmark")
    prepared = data.prepare(DataConfig(source="sklearn:digits"), str(workdir / "storage"))
    promotion = train_and_register(prepared, str(workdir), ModelConfig(name=MODEL), epochs=3, hidden=256,
                                   layers=2)
    columns = list(prepared.feature_columns)
    ray.shutdown()
    return uri, f"models:/{MODEL}/{promotion.version}", columns


def make_files(directory: Path, rows: int, files: int, columns: list[str]) -> None:
    """Rows of scikit-learn's digits drawn at random, with an id; written once per shape."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    marker = directory / f"_{rows}x{files}"
    if marker.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    pixels = load_digits().data.astype(np.float64)
    rng = np.random.default_rng(0)
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        x = pixels[rng.integers(0, len(pixels), n)]
        table = {"id": pa.array(np.arange(i * per_file, i * per_file + n, dtype=np.int64))}
        table.update({name: pa.array(x[:, j]) for j, name in enumerate(columns)})
        pq.write_table(pa.table(table), directory / f"part-{i:03d}.parquet")
    marker.touch()
    print(f"[bench] wrote {rows:,} rows x {len(columns)} columns in {files} files to {directory}", flush=True)


def measure(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Runs `command`; returns its output, its wall time from launch to exit, and the peak RSS and
    PSS sums of its process tree."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            rss = pss = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in tree:
                try:
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                except psutil.Error:
                    continue
            if rss > peak["rss"]:
                peak.update(rss=rss, processes=len(tree))
            peak["pss"] = max(peak["pss"], pss)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"[bench] {' '.join(command[:4])} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return {"wall_s": wall, "peak_rss_gb": peak["rss"] / 2**30, "peak_pss_gb": peak["pss"] / 2**30,
            "processes": peak["processes"], "output": out}


def run_baseline(tracking_uri: str, model_uri: str, source: Path, out: Path, threads: int,
                 env: dict[str, str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    side = measure([sys.executable, "-c", BASELINE, tracking_uri, model_uri, str(source), str(out),
                    str(threads)], env)
    fields = side["output"].split("ROWS", 1)[1].split()
    side.update(rows=int(fields[0]), scoring_s=float(fields[2]), threads=threads or 1)
    return side


def run_raylane(tracking_uri: str, model_uri: str, source: Path, out: Path, env: dict[str, str],
                extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "pipelines.predict", "--model", model_uri.removeprefix("models:/"),
               "--input", str(source), "--output", str(out), "--tracking-uri", tracking_uri, *extra]
    side = measure(command, env)
    done = re.search(r"scored ([\d,]+) rows from \d+ files? with .* in ([\d.]+) s .*?(\d+) actors",
                     side["output"])
    if done is None:
        raise SystemExit(f"[bench] raylane predict printed no summary:\n{side['output'][-3000:]}")
    side.update(rows=int(done.group(1).replace(",", "")), scoring_s=float(done.group(2)),
                actors=int(done.group(3)))
    return side


def check_same(baseline_out: Path, raylane_out: Path, source: Path) -> None:
    import pandas as pd
    from raylane.predict import output_name

    first = sorted(source.glob("*.parquet"))[0]
    mine = pd.read_parquet(raylane_out / output_name(str(first)))
    theirs = pd.read_parquet(baseline_out / first.name)
    same = all(np.array_equal(mine[c], theirs[c]) for c in ("id", "prediction"))
    if not same:
        raise SystemExit(f"[bench] raylane's predictions differ from the baseline's on {first}")


def table(baselines: list[dict[str, Any]], raylane: dict[str, Any]) -> str:
    lines = ["| | rows/s (launch to exit) | wall s | rows/s (scoring only) | peak RSS (tree) "
             "| peak PSS (tree) |",
             "|---|---:|---:|---:|---:|---:|"]
    sides = [("single process: read_parquet -> pyfunc.predict -> to_parquet "
              f"(torch threads {b['threads'] or 'as loaded'})", b) for b in baselines]
    for name, side in (*sides, (f"raylane predict ({raylane['actors']} actors)", raylane)):
        lines.append(f"| {name} | {side['rows'] / side['wall_s']:,.0f} | {side['wall_s']:.1f} | "
                     f"{side['rows'] / side['scoring_s']:,.0f} | {side['peak_rss_gb']:.2f} GB | "
                     f"{side['peak_pss_gb']:.2f} GB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in all (default 5,000,000)")
    parser.add_argument("--files", type=int, default=10, help="Parquet files they are split into")
    parser.add_argument("--threads-baseline", action="store_true",
                        help="also run the baseline with torch using every core; keep the faster")
    parser.add_argument("--raylane-args", default="",
                        help="extra flags of raylane predict, e.g. '--actors 2'")
    parser.add_argument("--workdir", default="bench_data/predict")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    tracking_uri, model_uri, columns = register_model(workdir)
    source = workdir / "source"
    make_files(source, args.rows, args.files, columns)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        baselines = [run_baseline(tracking_uri, model_uri, source, Path(tmp) / "baseline-1", 0, env)]
        print(f"[bench] baseline  {baselines[0]['wall_s']:.1f} s", flush=True)
        if args.threads_baseline and cores > 1:
            baselines.append(run_baseline(tracking_uri, model_uri, source, Path(tmp) / f"baseline-{cores}",
                                          cores, env))
            print(f"[bench] baseline, torch {cores} threads  {baselines[1]['wall_s']:.1f} s", flush=True)
        baseline = min(baselines, key=lambda side: side["wall_s"])
        raylane = run_raylane(tracking_uri, model_uri, source, Path(tmp) / "raylane", env,
                              args.raylane_args.split())
        print(f"[bench] raylane   {raylane['wall_s']:.1f} s", flush=True)
        check_same(Path(tmp) / f"baseline-{baseline['threads'] if baseline['threads'] > 1 else 1}",
                   Path(tmp) / "raylane", source)
    ratio = (raylane["rows"] / raylane["wall_s"]) / (baseline["rows"] / baseline["wall_s"])
    scoring_ratio = (raylane["rows"] / raylane["scoring_s"]) / (baseline["rows"] / baseline["scoring_s"])
    print(f"\n{args.rows:,} rows in {args.files} Parquet files, {cores} cores\n")
    print(table(baselines, raylane))
    print("(the baseline: the faster single process)")
    print(f"\nratio={ratio:.2f}x rows/s launch to exit (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'}); scoring only {scoring_ratio:.2f}x; "
          f"memory (RSS) {raylane['peak_rss_gb'] / baseline['peak_rss_gb']:.2f}x")
    result = {"rows": args.rows, "files": args.files, "cores": cores, "ratio": ratio,
              "scoring_ratio": scoring_ratio,
              "baselines": [{k: v for k, v in b.items() if k != "output"} for b in baselines],
              "raylane": {k: v for k, v in raylane.items() if k != "output"}}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
