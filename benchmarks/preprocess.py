"""Wall time and peak memory of raylane's data stage against pandas, same files, same machine,
same run; prints the ratios.

    python -m benchmarks.preprocess [--rows 5000000] [--cols 32] [--files 16]

The data: `--files` Parquet files of `--rows` x `--cols` float32 features (5% missing) and an
integer label, generated once under `--workdir`. Each side runs in a process of its own, and its
peak memory is the largest sum, over its whole process tree, of proportional set sizes (PSS: a
page shared by several processes, such as Ray's object store, counts once), sampled every 0.2 s.

    pandas   what a pandas user writes: read every file, fill missing values with the column
             mean, standardize, write Parquet
    raylane  `data.prepare_once` as the pipeline runs it, on a local Ray: typed read with
             bad-row checks, hash split, imputation and scaling fitted on train, encoding, the
             three splits written as Parquet (held in the object store on the way, or streamed
             when the data is large for it: `data.streaming=auto`)

raylane does more than the pandas script (the split, the bad-row checks, statistics on train only),
which is the work the pipeline needs; the ratio is what a user pays for it.

With `--memory-cap GB`, a side whose process tree's PSS goes over the cap is killed there, as a
container's memory limit would, and reported as over the cap; raylane's local Ray then gets an
object store of a quarter of the cap (`cluster.object_store_memory`), as a user under such a
limit would set it. At a size where the pandas script needs more than the cap:

    python -m benchmarks.preprocess --rows 10000000 --memory-cap 4 --streaming true
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.files import write_once


def make_files(directory: Path, rows: int, cols: int, files: int) -> None:
    """Standard-normal features, 5% missing; the label is the sign of the first."""

    def block(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, cols)).astype(np.float32)
        x[rng.random(size=x.shape) < 0.05] = np.nan
        return x, (np.nan_to_num(x[:, 0]) > 0).astype(np.int64)

    write_once(directory, rows, cols, files, block)


PANDAS = """
import glob, sys, time
import pandas as pd
source, out = sys.argv[1], sys.argv[2]
start = time.perf_counter()
frame = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(source + "/*.parquet"))], ignore_index=True)
features = [c for c in frame.columns if c != "label"]
x = frame[features]
x = x.fillna(x.mean())
frame[features] = (x - x.mean()) / x.std(ddof=0)
frame.to_parquet(out)
print("WALL", time.perf_counter() - start)
"""

RAYLANE = """
import sys, time
import ray
from raylane import data
from raylane.config import DataConfig
source, out, cpus, store = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="error",
         object_store_memory=store or None)
start = time.perf_counter()
streaming = {"auto": "auto", "true": True, "false": False}[sys.argv[4]]
prepared, _ = data.prepare_once(DataConfig(source=source, label_column="label", streaming=streaming),
                                out + "/storage", out + "/prepared")
print("WALL", time.perf_counter() - start, "ROWS", sum(prepared.num_rows.values()))
ray.shutdown()
"""


def measure(code: str, *args: str, cap_gb: float | None = None) -> dict[str, Any]:
    """Runs `code` in a new interpreter; returns its reported wall time and the peak PSS of its
    tree. Over `cap_gb`, the tree is killed: wall_s is None and over_cap True."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak, stop, over = [0], threading.Event(), threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            total, tree = 0, []
            try:
                tree = [root, *root.children(recursive=True)]
                for p in tree:
                    try:
                        total += p.memory_full_info().pss
                    except psutil.Error:
                        continue
            except psutil.Error:
                break
            peak[0] = max(peak[0], total)
            if cap_gb is not None and total > cap_gb * 2**30:
                over.set()
                os.killpg(proc.pid, signal.SIGKILL)  # the whole session: Ray's processes too
                break
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if over.is_set():
        return {"wall_s": None, "peak_gb": peak[0] / 2**30, "over_cap": True,
                "killed_after_s": time.perf_counter() - started}
    if proc.returncode != 0:
        raise SystemExit(f"[bench] a side failed (exit {proc.returncode}):\n{out}")
    fields = out.split("WALL", 1)[1].split()
    return {"wall_s": float(fields[0]), "peak_gb": peak[0] / 2**30, "over_cap": False}


def describe(side: dict[str, Any]) -> str:
    if side["over_cap"]:
        return (f"over the memory cap after {side['killed_after_s']:.1f} s "
                f"(killed at {side['peak_gb']:.2f} GB)")
    return f"{side['wall_s']:.1f} s, peak {side['peak_gb']:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    from raylane.cli import show_progress

    show_progress()  # raylane's own lines, as the CLI shows them
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--cols", type=int, default=32)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of raylane's local Ray")
    parser.add_argument("--streaming", choices=("auto", "true", "false"), default="auto",
                        help="raylane's data.streaming")
    parser.add_argument("--memory-cap", type=float, default=None, metavar="GB",
                        help="kill a side whose process tree goes over this many GB (PSS)")
    parser.add_argument("--workdir", default="bench_data")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    source = workdir / "source"
    make_files(source, args.rows, args.cols, args.files)
    cap = args.memory_cap
    store = int(cap * 2**30 / 4) if cap else 0
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        pandas = measure(PANDAS, str(source), str(Path(tmp) / "pandas.parquet"), cap_gb=cap)
        print(f"[bench] pandas   {describe(pandas)}", flush=True)
        raylane = measure(RAYLANE, str(source), str(Path(tmp) / "raylane"), str(args.cpus), args.streaming,
                          str(store), cap_gb=cap)
        print(f"[bench] raylane  {describe(raylane)}", flush=True)
    result = {"rows": args.rows, "cols": args.cols, "memory_cap_gb": cap,
              "pandas": pandas, "raylane": raylane}
    if pandas["over_cap"] or raylane["over_cap"]:
        print(f"capped at {cap} GB: pandas {'over the cap' if pandas['over_cap'] else 'finished'}, "
              f"raylane {'over the cap' if raylane['over_cap'] else 'finished'}")
    else:
        result.update(time_ratio=raylane["wall_s"] / pandas["wall_s"],
                      memory_ratio=raylane["peak_gb"] / pandas["peak_gb"])
        print(f"ratio time={result['time_ratio']:.2f}x memory={result['memory_ratio']:.2f}x "
              "(raylane / pandas; target: time <= 2x at 5M rows)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
