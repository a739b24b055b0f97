"""The per-run costs that decide how raylane scales toward 100 nodes, measured on one machine.

    python -m benchmarks.scale --quick                  # about 3 minutes: small sizes, short levels
    python -m benchmarks.scale --out scale.json         # the full run, about 15 minutes
    python -m benchmarks.scale --only s3,objstore --rows 1000000

It starts its own services on 127.0.0.1, as the multi-host rig does (deploy/local-cluster/rig.py),
in a temporary folder, and stops them by PID when it ends, also on Ctrl-C: PostgreSQL (initdb and
pg_ctl as the `postgres` user, on a free port), moto as S3, and `mlflow server` on PostgreSQL with
its artifacts proxied to S3 (--serve-artifacts). Four parts (--only picks some):

1. mlflow-rate   The MLflow REST calls one trial makes. The tiny pipeline (tests/configs/tiny.yaml,
                 serving off) runs against that server. Its driver records every request MLflow's
                 client sends, with its thread: raylane's trial logger writes from a thread of its
                 own, so its calls are the trials'; the rest (parent run, model, registry) are the
                 pipeline's, once per run. The server's access log counts the same span: a request
                 sent from anywhere else (a worker) would show as a difference.
                   calls per epoch     the trial logger's calls carrying epoch metrics / epochs
                                       logged (distinct run, step pairs)
                   fixed per trial     its other calls (open, params, close) / trials
                   req/s per trial     its calls / the trials' lifetimes as the server saw them
                                       (first call to last: starting the workers included)
                   ... while training  calls per epoch / the epoch interval (Tune's time between
                                       a trial's epoch reports, a fit's first left out); digits
                                       epochs take well under a second: a busy trial
2. mlflow-load   How many trials the PostgreSQL-backed server takes before latency doubles. N
                 simulated trials (N = 1, 2, 4 ... --max-trials), one process each, make a trial
                 logger's calls over HTTP: search, create, params; an epoch's metrics per epoch
                 (--epochs-per-trial, the metric and param names of part 1); two tags and the
                 close; then the next trial. Each waits `think` seconds after an epoch's call and
                 after a trial's last: by default part 1's epoch interval over its calls per
                 epoch, or --think-s.
                 Per N: requests/s the server answered and per-request latency p50/p99 over
                 --level-s seconds, against `mlflow server --workers W` (--server-workers), and the
                 first N where p50 (p99) passes twice N=1's. Then the server's capacity: the same
                 calls with no think time (--saturate-at trials), the highest req/s it answered.
3. s3            Checkpoint write throughput to S3: a checkpoint folder of --checkpoint-mb (one
                 state.pt as raylane writes it, plus spec.json and history.json) copied with
                 pyarrow.fs.copy_files as Ray Train's storage does (no threads, 64 MiB chunks),
                 MB/s; the same copy to a local folder is the baseline (ratio = S3 / local). Also
                 the same bytes as 4 MiB files (each a single PUT, under pyarrow's 10 MiB
                 multipart threshold), and the read back (a restore). Against moto, a file that
                 goes multipart costs about 25 s more: pyarrow retries CompleteMultipartUpload
                 (the count is printed), which real S3 does not make it do.
4. objstore      Object store per million rows: --rows rows x 64 float32 features (10 classes, in
                 Parquet) through raylane's data stage in memory (data.streaming=false) on a local
                 Ray. The plasma store's used bytes at the stage's peak (sampled every 0.2 s; what
                 must fit), right after it returned, and after a gc.collect() (the three splits
                 alone), per million rows, against the raw float32 size (rows x 64 x 4 bytes):
                 ratio = peak / raw, splits_ratio = splits / raw.

Each part prints one line of `name=value` figures; a JSON summary comes last (and goes to --out).
Everything runs on this machine, so the server, the load generator and Ray share its CPUs: on a
small machine the figures are lower bounds of what separate hosts do. --ray-lock FILE holds an
exclusive lock on FILE while a part runs Ray (pipelines, data stage), for machines shared with
other Ray users.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
PARTS = ("mlflow-rate", "mlflow-load", "s3", "objstore")
FEATURES = 64
AWS = {"AWS_ACCESS_KEY_ID": "scale", "AWS_SECRET_ACCESS_KEY": "scale-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}
API = "/api/2.0/mlflow"
# The thread raylane's trial logger writes from (raylane.tracking.trial_logger).
TRIAL_WRITER_THREAD = "mlflow-trial-writer"
# (--quick value, full value) of the sizes and durations
PRESETS = {"max_trials": (8, 64), "level_s": (6.0, 15.0), "server_workers": ("2", "2,4"),
           "saturate_at": ("4", "1,4,16"), "checkpoint_mb": ("50", "50,200"), "repeats": (1, 2),
           "rows": ("200000", "200000,1000000")}


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, probe: Any, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"[bench] {what} exited ({proc.returncode}) before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"[bench] {what} not ready after {timeout:.0f} s")
        time.sleep(0.5)


def answers(url: str) -> bool:
    """True if `url` answers with a status below 500."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except urllib.error.HTTPError as err:
        return err.code < 500
    except OSError:
        return False


@contextlib.contextmanager
def ray_lock(path: str | None) -> Iterator[None]:
    """Holds an exclusive flock on `path` (if given) while a part runs Ray."""
    if not path:
        yield
        return
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for the lock on {path} (another Ray user holds it) ...")
            waited = time.perf_counter()
            fcntl.flock(lock, fcntl.LOCK_EX)
            say(f"got the lock on {path} after {time.perf_counter() - waited:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- the services: PostgreSQL, S3 (moto), mlflow server ---------------------------------------------


@dataclass
class Services:
    """The benchmark's own PostgreSQL, moto and MLflow server, all on 127.0.0.1."""

    workdir: Path
    pg_port: int = 0
    pg_password: str = ""
    s3_port: int = 0
    mlflow_port: int = 0
    pids: dict[str, int] = field(default_factory=dict)  # moto, mlflow -> PID (of its process group)

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_options(self) -> str:
        # allow_delayed_open: a file under pyarrow's part size is one PUT (tests/s3_server.py)
        return (f"endpoint_override=127.0.0.1:{self.s3_port}&scheme=http&region=us-east-1"
                "&allow_delayed_open=true")

    @property
    def access_log(self) -> Path:
        return self.workdir / "mlflow-server.log"


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)])
    if not found:
        raise SystemExit("[bench] PostgreSQL's server is not installed (/usr/lib/postgresql/*/bin/initdb): "
                         "apt-get install postgresql, or run with --only s3,objstore")
    return found[-1].parent


def as_postgres(*argv: str) -> None:
    done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], cwd="/", capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[bench] {Path(argv[0]).name} (as postgres) exited {done.returncode}:\n"
                         f"{done.stdout[-1500:]}{done.stderr[-1500:]}")


def start_postgres(services: Services) -> None:
    """initdb and pg_ctl start as `postgres` in the workdir, listening on 127.0.0.1 only; a
    database `mlflow` owned by a user with a password (scram), as the rig sets it up."""
    binaries, pg = pg_bin(), services.workdir / "pg"
    pg.mkdir()
    shutil.chown(pg, "postgres", "postgres")
    services.pg_password = secrets.token_hex(16)
    (pg / "pwfile").write_text(services.pg_password)
    shutil.chown(pg / "pwfile", "postgres", "postgres")
    as_postgres(str(binaries / "initdb"), "-D", str(pg / "data"), "-U", "postgres", "--auth-local=trust",
                "--auth-host=scram-sha-256", f"--pwfile={pg / 'pwfile'}")
    services.pg_port = free_port()
    as_postgres(str(binaries / "pg_ctl"), "-D", str(pg / "data"), "-w", "-t", "300",
                "-l", str(pg / "postgres.log"),
                "-o", f"-c listen_addresses=127.0.0.1 -p {services.pg_port} -k {pg}", "start")
    as_postgres(str(binaries / "psql"), "-h", str(pg), "-p", str(services.pg_port), "-v", "ON_ERROR_STOP=1",
                "-c", f"CREATE USER mlflow PASSWORD '{services.pg_password}'",
                "-c", "CREATE DATABASE mlflow OWNER mlflow")


def start_s3(services: Services) -> None:
    """moto on a free port, with the buckets `mlflow` (the server's artifacts) and `bench`."""
    import pyarrow.fs as pafs

    services.s3_port = free_port()
    log = open(services.workdir / "moto.log", "wb")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                             str(services.s3_port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    services.pids["s3"] = proc.pid
    wait_until("moto", lambda: answers(f"http://127.0.0.1:{services.s3_port}"), 60, proc)
    for bucket in ("mlflow", "bench"):
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{services.s3_options}&allow_bucket_creation=true")
        fs.create_dir(bucket)


def start_mlflow(services: Services, workers: int) -> None:
    """`mlflow server` on PostgreSQL, artifacts proxied to S3, `workers` uvicorn workers; its
    access log (one line per request) in services.access_log."""
    services.mlflow_port = free_port()
    store = f"postgresql+psycopg://mlflow:{services.pg_password}@127.0.0.1:{services.pg_port}/mlflow"
    env = {**os.environ, **AWS, **QUIET, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{services.s3_port}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = open(services.access_log, "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server",
                             "--backend-store-uri", store,
                             "--artifacts-destination", "s3://mlflow/artifacts", "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(services.mlflow_port),
                             "--workers", str(workers),
                             # as the rig: a worker slow to import on a busy machine is not killed
                             "--uvicorn-opts", "--timeout-worker-healthcheck 60"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    services.pids["mlflow"] = proc.pid
    started = time.monotonic()
    wait_until("mlflow server", lambda: answers(f"{services.tracking_uri}/health"), 600, proc)
    say(f"mlflow server --workers {workers} answering after {time.monotonic() - started:.0f} s "
        f"({services.tracking_uri}, PostgreSQL :{services.pg_port}, S3 :{services.s3_port})")


def stop_mlflow(services: Services) -> None:
    """Kills the MLflow server and its uvicorn workers (its process group), by PID."""
    pid = services.pids.pop("mlflow", None)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop_services(services: Services) -> None:
    """Stops everything `start_*` started, by PID: MLflow, moto, then PostgreSQL (SIGQUIT: its
    immediate shutdown, which ends its own children), SIGKILL if it lingers."""
    stop_mlflow(services)
    pid = services.pids.pop("s3", None)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    postmaster = services.workdir / "pg" / "data" / "postmaster.pid"  # there while PostgreSQL runs
    fields = postmaster.read_text().split() if postmaster.exists() else []
    if fields and fields[0].isdigit():
        pid = int(fields[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                os.kill(pid, 0)  # ProcessLookupError once it is gone
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        postmaster.unlink(missing_ok=True)  # an immediate shutdown leaves it; a second stop must not reuse it


@contextlib.contextmanager
def interrupt_as_exception() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt as Ctrl-C does, so every `finally` runs."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# -- 1. MLflow calls per trial ---------------------------------------------------------------------

# The pipeline's driver, with every request MLflow's REST client sends written to a file: when it
# started, how long it took, from which thread, and for a run's calls its run id and the keys sent.
PIPELINE = r"""
import json, sys, threading, time
from urllib.parse import urlsplit
import requests

out, lock = open(sys.argv[1], "a", buffering=1), threading.Lock()
send = requests.Session.request

def counted(self, method, url, *args, **kwargs):
    started = time.time()
    response = send(self, method, url, *args, **kwargs)
    body = kwargs.get("json") or kwargs.get("params") or {}
    parts = urlsplit(url)
    record = {"t": started, "s": time.time() - started, "thread": threading.current_thread().name,
              "method": method, "host": parts.netloc, "path": parts.path, "status": response.status_code,
              "run": body.get("run_id") if isinstance(body, dict) else None}
    if isinstance(body, dict):
        record["metrics"] = [(m["key"], m.get("step", 0)) for m in body.get("metrics") or []]
        record["params"] = [p["key"] for p in body.get("params") or []]
    if record["path"].endswith("/runs/create") and response.ok:
        record["run"] = response.json()["run"]["info"]["run_id"]
    with lock:
        out.write(json.dumps(record) + "\n")
    return response

requests.Session.request = counted
from pipelines.train_tune_serve import main
sys.exit(main(sys.argv[2:]))
"""

ACCESS_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/[\d.]+" (\d+)')


def server_requests(log: Path, start: int, end: int) -> list[tuple[str, str, int]]:
    """(method, path, status) of each request the server's access log shows between two offsets."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    return [(m[1], m[2].split("?")[0], int(m[3])) for m in ACCESS_LINE.finditer(text)]


def run_pipeline(services: Services, args: argparse.Namespace, requests_log: Path) -> float:
    """Runs the tiny pipeline (no serving) against the benchmark's server; returns its wall time."""
    storage = services.workdir / "storage"
    command = [sys.executable, "-c", PIPELINE, str(requests_log), "--config", str(ROOT / args.config),
               "--tracking-uri", services.tracking_uri, "--run-name", RATE_RUN, "--no-block",
               "--set", "serve.enabled=false", "--set", f"storage_path={storage}"]
    command += [a for o in args.overrides for a in ("--set", o)]
    env = {**os.environ, **QUIET, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = services.workdir / "pipeline.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGINT)  # the pipeline stops its own Ray
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"[bench] the pipeline exited {code}; the end of {log}:\n{tail}")
    return time.perf_counter() - started


def mlflow_rate(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    """Runs the pipeline once and returns the MLflow calls of its trials, per epoch and per second."""
    requests_log = services.workdir / "pipeline-requests.jsonl"
    offset = services.access_log.stat().st_size
    say(f"mlflow-rate: the pipeline {args.config} (serving off) against {services.tracking_uri} ...")
    with ray_lock(args.ray_lock):
        wall = run_pipeline(services, args, requests_log)
    time.sleep(1.0)  # the access log's last lines
    server = server_requests(services.access_log, offset, services.access_log.stat().st_size)
    sent = [json.loads(line) for line in requests_log.read_text().splitlines()]
    # The driver also talks to Ray's dashboard over HTTP: only the tracking server's requests count.
    records = [r for r in sent if r["host"] == f"127.0.0.1:{services.mlflow_port}"]
    rate = trial_calls(records, epoch_seconds(services.workdir / "storage" / RATE_RUN))
    # Requests the server saw that MLflow's client did not send (raylane's own /health probe)
    unmatched = Counter(endpoint(path) for _, path, _ in server)
    unmatched -= Counter(endpoint(r["path"]) for r in records)
    rate.update(driver_requests=len(records), server_requests=len(server), pipeline_wall_s=wall,
                server_only=dict(unmatched))
    return rate


RATE_RUN = "scale-rate"  # part 1's run name


def epoch_seconds(run_dir: Path) -> list[float]:
    """Seconds between a trial's epoch reports, from Tune's records (each fit's first report, which
    includes starting the workers, left out)."""
    seconds = []
    for result in run_dir.glob("tune/**/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows = sorted((r for r in rows if "epoch" in r), key=lambda r: r["epoch"])
        seconds += [r["time_this_iter_s"] for r in rows[1:] if r.get("start_epoch") != r["epoch"]]
    return seconds


def endpoint(path: str) -> str:
    """A request's endpoint, its ids and artifact paths folded: /runs/get, /logged-models/<id>."""
    if path.startswith("/api/2.0/mlflow-artifacts/"):
        return "artifacts (proxied to S3)"
    return re.sub(r"/m-[0-9a-f]{16,}", "/<id>", path.removeprefix(API))


def trial_calls(records: list[dict], epoch_s: list[float]) -> dict[str, Any]:
    """The trial logger's calls (its thread's), split into per-epoch and fixed ones, and their rate."""
    writer = [r for r in records if r["thread"] == TRIAL_WRITER_THREAD]
    epoch_calls = [r for r in writer if r.get("metrics")]
    epochs = {(r["run"], step) for r in epoch_calls for _, step in r["metrics"]}
    lifetimes = {}
    for run in {r["run"] for r in writer if r["run"]}:
        mine = [r for r in writer if r["run"] == run]
        lifetimes[run] = max(r["t"] + r["s"] for r in mine) - min(r["t"] for r in mine)
    trials = len(lifetimes)
    if not trials or not epochs:
        raise SystemExit(f"[bench] no trial calls were seen ({len(records)} requests in all): did the "
                         f"trial logger's thread change its name from {TRIAL_WRITER_THREAD!r}?")
    per_epoch = len(epoch_calls) / len(epochs)
    interval = statistics.median(epoch_s) if epoch_s else None
    return {
        "trials": trials, "epochs": len(epochs), "trial_calls": len(writer),
        "calls_per_epoch_per_trial": per_epoch,
        "fixed_calls_per_trial": (len(writer) - len(epoch_calls)) / trials,
        "trial_lifetime_s": sum(lifetimes.values()) / trials,
        "req_per_s_per_trial": len(writer) / sum(lifetimes.values()),
        "epoch_interval_s": interval,
        "req_per_s_per_training_trial": per_epoch / interval if interval else None,
        "call_latency_ms": statistics.median(r["s"] for r in writer) * 1e3,
        "metric_keys": sorted({k for r in epoch_calls for k, _ in r["metrics"]}),
        "param_keys": sorted({k for r in writer for k in r.get("params") or []}),
        "trial_endpoints": dict(Counter(endpoint(r["path"]) for r in writer)),
        "pipeline_other_calls": len(records) - len(writer),
        "other_endpoints": dict(Counter(endpoint(r["path"]) for r in records
                                        if r["thread"] != TRIAL_WRITER_THREAD).most_common(10)),
    }


def print_rate(rate: dict[str, Any]) -> None:
    say(f"a trial's calls: {rate['trial_endpoints']}")
    say(f"the pipeline's own calls ({rate['pipeline_other_calls']}, once per run: parent run, model, "
        f"registry), the most frequent: {rate['other_endpoints']}")
    training = rate["req_per_s_per_training_trial"]
    print(f"mlflow_calls_per_epoch_per_trial={rate['calls_per_epoch_per_trial']:.2f} "
          f"mlflow_fixed_calls_per_trial={rate['fixed_calls_per_trial']:.1f} "
          f"mlflow_req_per_s_per_trial={rate['req_per_s_per_trial']:.3f} "
          f"mlflow_req_per_s_per_training_trial={'n/a' if training is None else f'{training:.2f}'} "
          f"({rate['trials']} trials, {rate['epochs']} epochs; a trial lives "
          f"{rate['trial_lifetime_s']:.1f} s, "
          f"its epochs {rate['epoch_interval_s'] or float('nan'):.2f} s apart; median call "
          f"{rate['call_latency_ms']:.0f} ms; requests seen by the server {rate['server_requests']}, "
          f"sent by the driver's MLflow client {rate['driver_requests']}, the difference "
          f"{rate['server_only'] or 'none'})", flush=True)


# -- 2. concurrent trials against the server -------------------------------------------------------


@dataclass(frozen=True)
class TrialShape:
    """What one simulated trial sends, and how fast."""

    epochs: int
    metric_keys: tuple[str, ...]
    param_keys: tuple[str, ...]
    think_s: float


class Stop(Exception):
    pass


WARM_UP_S = 1.0  # simulated trials begin up to this long before the measured window


def simulated_trial(url: str, experiment: str, parent: str, index: int, shape: TrialShape,
                    start_at: float, stop_at: float, results: Any) -> None:
    """One process: trial after trial of the trial logger's calls, until `stop_at`; puts
    [(started, seconds, ok)] of the requests it started in [start_at, stop_at) on `results`."""
    import httpx

    measured: list[tuple[float, float, bool]] = []

    def call(http: httpx.Client, endpoint: str, body: dict, then_wait: bool = False) -> dict:
        if time.time() >= stop_at:
            raise Stop
        started, begun = time.time(), time.perf_counter()
        try:
            response = http.post(f"{API}/{endpoint}", json=body)
            ok, answer = response.status_code == 200, response.json() if response.status_code == 200 else {}
        except httpx.HTTPError:
            ok, answer = False, {}
        if started >= start_at:
            measured.append((started, time.perf_counter() - begun, ok))
        if then_wait:
            time.sleep(shape.think_s)
        return answer

    with httpx.Client(base_url=url, timeout=120) as http:
        # Trials out of step, as real ones are: each begins at a random point of a think interval.
        offset = random.Random(index).uniform(0, min(shape.think_s, 2.0))
        time.sleep(max(0.0, start_at - WARM_UP_S + offset - time.time()))
        trial = 0
        try:
            while True:
                one_trial(lambda *a, **k: call(http, *a, **k), experiment, parent, f"{index}-{trial}", shape)
                trial += 1
        except Stop:
            pass
    results.put(measured)


def one_trial(call: Any, experiment: str, parent: str, trial_id: str, shape: TrialShape) -> None:
    """The calls of raylane's trial logger for one trial (raylane.tracking.trial_logger): the
    opening ones back to back, then one per epoch, `think_s` apart, then the closing ones."""
    now = int(time.time() * 1000)
    found = f"tags.`mlflow.parentRunId` = '{parent}' and tags.`raylane.trial_id` = '{trial_id}'"
    call("runs/search", {"experiment_ids": [experiment], "max_results": 1, "filter": found})
    run = call("runs/create", {"experiment_id": experiment, "run_name": f"trial-{trial_id}",
                               "start_time": now, "tags": [{"key": "mlflow.parentRunId", "value": parent},
                                                           {"key": "raylane.trial_id", "value": trial_id}]})
    run_id = run.get("run", {}).get("info", {}).get("run_id", "missing")
    call("runs/log-batch", {"run_id": run_id,
                            "params": [{"key": k, "value": "0.01"} for k in shape.param_keys]})
    for epoch in range(shape.epochs):
        stamp = int(time.time() * 1000)
        call("runs/log-batch", {"run_id": run_id, "metrics": [
            {"key": k, "value": 1.0 / (epoch + 1), "timestamp": stamp, "step": epoch}
            for k in shape.metric_keys]}, then_wait=True)
    call("runs/set-tag", {"run_id": run_id, "key": "raylane.epochs_completed", "value": str(shape.epochs)})
    call("runs/set-tag", {"run_id": run_id, "key": "raylane.restarts", "value": "0"})
    call("runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
         then_wait=True)  # the next trial starts a think interval later


def load_level(url: str, n: int, shape: TrialShape, seconds: float) -> dict[str, Any]:
    """N simulated trials for `seconds` (in a fresh experiment); their throughput and latency."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        experiment = http.post(f"{API}/experiments/create",
                               json={"name": f"scale-load-{n}-{time.time_ns()}"}).json()["experiment_id"]
        parent = http.post(f"{API}/runs/create", json={"experiment_id": experiment, "run_name": "parent",
                                                       "start_time": int(time.time() * 1000)}
                           ).json()["run"]["info"]["run_id"]
    context = multiprocessing.get_context("fork")  # this process holds no threads; starts fast
    results = context.Queue()
    start_at = time.time() + WARM_UP_S + 0.5 + 0.02 * n  # every process forked by then
    stop_at = start_at + seconds
    procs = [context.Process(target=simulated_trial, daemon=True,
                             args=(url, experiment, parent, i, shape, start_at, stop_at, results))
             for i in range(n)]
    for proc in procs:
        proc.start()
    try:
        measured = collect(results, procs, stop_at + 300)
    except BaseException:  # Ctrl-C: no waiting for them
        for proc in procs:
            proc.kill()
        raise
    finally:
        deadline = time.time() + 10
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.time()))
            if proc.is_alive():
                proc.kill()
    latencies = sorted(s for _, s, ok in measured if ok)
    return {"trials": n, "requests": len(measured), "errors": sum(not ok for *_, ok in measured),
            "rps": len(measured) / seconds, "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3}


def collect(results: Any, procs: list, deadline: float) -> list[tuple[float, float, bool]]:
    """Every simulated trial's measurements, as each sends them at its end."""
    measured, missing = [], len(procs)
    while missing:
        try:
            measured += results.get(timeout=5)
            missing -= 1
        except queue.Empty:
            if not any(p.is_alive() for p in procs) or time.time() > deadline:
                say(f"  {missing} of {len(procs)} simulated trials sent no results (crashed or stuck)")
                break
    return measured


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(q / 100 * (len(sorted_values) - 1))))]


def first_doubling(levels: list[dict], key: str) -> tuple[int | None, int | None]:
    """(last N under twice N=1's `key`, first N over it; None if none)."""
    base, last_under = levels[0][key], levels[0]["trials"]
    for level in levels[1:]:
        if level[key] > 2 * base:
            return last_under, level["trials"]
        last_under = level["trials"]
    return last_under, None


def mlflow_load(services: Services, args: argparse.Namespace, shape: TrialShape,
                workers: int) -> dict[str, Any]:
    """The latency sweep over N and the capacity with no think time, against `workers` workers."""
    counts = [n for n in (2 ** i for i in range(12)) if n <= args.max_trials]
    levels = []
    warm_up(services, workers, shape)
    say(f"mlflow-load, --workers {workers}: N = {counts}, {args.level_s:.0f} s each, {shape.epochs} "
        f"epochs per trial, think {shape.think_s:.2f} s after each epoch's call")
    print("  trials |  req/s | p50 ms | p99 ms | requests | errors | p50/N=1", flush=True)
    for n in counts:
        # N=1 is the baseline every level is held against: long enough for 100 requests (up to 3x).
        seconds = args.level_s
        if n == 1:
            seconds = min(3 * args.level_s, max(args.level_s, 100 * (shape.think_s + 0.02)))
        level = load_level(services.tracking_uri, n, shape, seconds)
        levels.append(level)
        ratio = level["p50_ms"] / levels[0]["p50_ms"]
        print(f"  {n:6d} | {level['rps']:6.1f} | {level['p50_ms']:6.1f} | {level['p99_ms']:6.1f} | "
              f"{level['requests']:8d} | {level['errors']:6d} | {ratio:6.2f}x", flush=True)
    saturated = []
    busy = TrialShape(shape.epochs, shape.metric_keys, shape.param_keys, 0.0)
    for n in args.saturate_at:
        level = load_level(services.tracking_uri, n, busy, args.level_s)
        saturated.append(level)
        say(f"  no think time, {n} trials: {level['rps']:.0f} req/s, p50 {level['p50_ms']:.1f} ms, "
            f"p99 {level['p99_ms']:.1f} ms, {level['errors']} errors")
    result = {"server_workers": workers, "think_s": shape.think_s, "levels": levels, "saturated": saturated,
              "capacity_rps": max((s["rps"] for s in saturated), default=None)}
    for key in ("p50_ms", "p99_ms"):
        under, over = first_doubling(levels, key)
        name = key.split("_")[0]
        result[f"trials_before_{name}_doubles"], result[f"{name}_doubles_at"] = under, over
        result[f"rps_at_{name}_doubling"] = next((lv["rps"] for lv in levels if lv["trials"] == over), None)
    return result


def warm_up(services: Services, workers: int, shape: TrialShape) -> None:
    """Lets a fresh server finish starting (its uvicorn workers and MLflow's job consumers keep
    importing after /health first answers), then sends every worker some calls, unmeasured."""
    settled = wait_until_idle(services.pids["mlflow"])
    load_level(services.tracking_uri, 2 * workers, TrialShape(shape.epochs, shape.metric_keys,
                                                              shape.param_keys, 0.0), 3.0)
    settled = wait_until_idle(services.pids["mlflow"]) and settled
    say("  the server was warmed up" + ("" if settled else "; it was still busy after 60 s: measured anyway"))


def wait_until_idle(pid: int, limit_s: float = 60.0) -> bool:
    """Waits until the process tree of `pid` uses under a quarter of a CPU; False if it did not
    within `limit_s`."""
    import psutil

    def cpu_seconds(procs: list) -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += sum(proc.cpu_times()[:2])
        return total

    started = time.monotonic()
    root = psutil.Process(pid)
    while time.monotonic() - started < limit_s:
        procs = [root, *root.children(recursive=True)]
        before = cpu_seconds(procs)
        time.sleep(1.0)
        if cpu_seconds(procs) - before < 0.25:
            return True
    return False


def print_load(load: dict[str, Any], rate: dict[str, Any] | None) -> None:
    def at(name: str) -> str:
        over = load[f"{name}_doubles_at"]
        reached = f"(not doubled up to {load['levels'][-1]['trials']})"
        if over:
            reached = f"(doubles at {over}, server {load[f'rps_at_{name}_doubling']:.1f} req/s there)"
        return f"mlflow_trials_before_{name}_doubles={load[f'trials_before_{name}_doubles']} {reached}"

    capacity = load["capacity_rps"]
    trials_at_capacity = ""
    if capacity and rate:
        training = rate["req_per_s_per_training_trial"]
        trials_at_capacity = (f" (that many req/s: {capacity / rate['req_per_s_per_trial']:.0f} trials at a "
                              "trial's lifetime rate" + (f", {capacity / training:.0f} all in their epochs"
                                                         if training else "") + ")")
    print(f"--workers {load['server_workers']}: {at('p50')} {at('p99')} "
          f"mlflow_server_capacity_rps={capacity and round(capacity, 1)}{trials_at_capacity}", flush=True)


# -- 3. checkpoint writes to S3 --------------------------------------------------------------------

# One copy in a fresh interpreter: its own pyarrow, its stderr (pyarrow's retry warnings) apart.
# The keyword arguments are Ray Train's for a checkpoint upload (ray.train.v2._internal.execution.
# storage._pyarrow_fs_copy_files: no threads towards S3, 64 MiB chunks), and its defaults otherwise.
COPY = r"""
import sys, time
import pyarrow.fs as pafs
source, destination = sys.argv[1], sys.argv[2]
def resolve(path):
    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
(src_fs, src), (dst_fs, dst) = resolve(source), resolve(destination)
kwargs = {"chunk_size": 64 << 20}
if isinstance(dst_fs, pafs.S3FileSystem):
    kwargs["use_threads"] = False
dst_fs.create_dir(dst, recursive=True)
start = time.perf_counter()
pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, **kwargs)
print("WALL", time.perf_counter() - start)
"""


def make_checkpoint(directory: Path, size_mb: int, sharded: bool) -> int:
    """A checkpoint folder of about `size_mb` of incompressible weights (as trained weights are):
    one state.pt, or 4 MiB files; plus spec.json and history.json. Returns its bytes."""
    import numpy as np

    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pieces = [size_mb * MB]
    if sharded:
        pieces = [4 * MB] * (size_mb // 4) + ([size_mb % 4 * MB] if size_mb % 4 else [])
    for i, size in enumerate(pieces):
        (directory / (f"state-{i:05d}.bin" if sharded else "state.pt")).write_bytes(rng.bytes(size))
    (directory / "spec.json").write_text(json.dumps({"builder": "mlp", "format_version": 2}))
    (directory / "history.json").write_text(json.dumps([{"epoch": e, "val_loss": 0.1} for e in range(10)]))
    return sum(f.stat().st_size for f in directory.iterdir())


def copy_once(source: str, destination: str, timeout: float) -> tuple[float | None, int]:
    """Seconds of one copy (None past `timeout`) and the multipart retries pyarrow logged."""
    env = {**os.environ, **AWS}
    try:
        done = subprocess.run([sys.executable, "-c", COPY, source, destination], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        return None, stderr.count("CompletedMultipartUpload got error")
    if done.returncode != 0:
        raise SystemExit(f"[bench] copying {source} to {destination} failed:\n{done.stderr[-2000:]}")
    retried = done.stderr.count("CompletedMultipartUpload got error")
    return float(done.stdout.split("WALL", 1)[1].split()[0]), retried


def s3_checkpoints(services: Services, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per size and layout: median MB/s of writes to S3, to a local folder, and of reads from S3."""
    import pyarrow.fs as pafs

    results = []
    bucket = f"s3://bench/checkpoints-{{}}?{services.s3_options}"
    for size in args.checkpoint_mb:
        for sharded in (False, True):
            layout = "4MiB-files" if sharded else "one-file"
            source = services.workdir / f"checkpoint-{size}-{layout}"
            total = make_checkpoint(source, size, sharded)
            s3, local, read, retries = [], [], [], 0
            for r in range(args.repeats):
                remote = bucket.format(f"{size}-{layout}-{r}")
                seconds, retried = copy_once(str(source), remote, args.copy_timeout_s)
                s3.append(seconds)
                retries += retried
                local.append(copy_once(str(source), str(services.workdir / f"local-{size}-{layout}-{r}"),
                                       args.copy_timeout_s)[0])
                if seconds is not None:
                    read.append(copy_once(remote, str(services.workdir / f"restored-{size}-{layout}-{r}"),
                                          args.copy_timeout_s)[0])
                shutil.rmtree(services.workdir / f"local-{size}-{layout}-{r}", ignore_errors=True)
                shutil.rmtree(services.workdir / f"restored-{size}-{layout}-{r}", ignore_errors=True)
                fs, path = pafs.FileSystem.from_uri(remote)
                fs.delete_dir(path)  # moto holds objects in its memory
            shutil.rmtree(source)
            results.append(checkpoint_figures(size, layout, total, s3, local, read, retries,
                                              args.copy_timeout_s))
    return results


def checkpoint_figures(size: int, layout: str, total: int, s3: list, local: list, read: list, retries: int,
                       timeout: float) -> dict[str, Any]:
    def rate(seconds: list) -> float | None:
        done = [s for s in seconds if s is not None]
        return total / MB / statistics.median(done) if done else None

    row = {"size_mb": size, "layout": layout, "bytes": total, "s3_write_MBps": rate(s3),
           "local_write_MBps": rate(local), "s3_read_MBps": rate(read),
           "timed_out": sum(s is None for s in s3), "multipart_retries": retries, "ratio": None}
    if row["s3_write_MBps"] and row["local_write_MBps"]:
        row["ratio"] = row["s3_write_MBps"] / row["local_write_MBps"]
    name = "s3_checkpoint_write_MBps" if layout == "one-file" else "s3_checkpoint_write_4MiB_files_MBps"

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"

    print(f"{name}={fmt(row['s3_write_MBps'])} local_write_MBps={fmt(row['local_write_MBps'])} "
          f"ratio={fmt(row['ratio'])} s3_read_MBps={fmt(row['s3_read_MBps'])} ({size} MB, {layout}; "
          f"{row['timed_out']} copies over {timeout:.0f} s, pyarrow retried CompleteMultipartUpload "
          f"{retries} times)", flush=True)
    return row


# -- 4. object store per million rows -------------------------------------------------------------

# The data stage in a fresh interpreter and a local Ray of its own. The plasma store's usage comes
# from Ray's memory summary (what `ray memory --stats-only` prints): no public API reports it.
OBJSTORE = r"""
import gc, json, re, sys, threading, time
import ray
from raylane import data
from raylane.config import DataConfig
source, storage, cpus, store = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ray.init(address="local", num_cpus=cpus, object_store_memory=store, include_dashboard=False,
         logging_level="error", log_to_driver=False)
from ray._private.internal_api import memory_summary
gcs = ray.get_runtime_context().gcs_address

def plasma():
    text = memory_summary(address=gcs, stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return int(used[1]) << 20 if used else 0, int(spilled[1]) << 20 if spilled else 0

before, _ = plasma()
peak, stop = [before], threading.Event()
def sample():
    while not stop.wait(0.2):
        peak[0] = max(peak[0], plasma()[0])
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
prepared = data.prepare(DataConfig(source=source, label_column="label", streaming=False), storage)
wall = time.perf_counter() - start
stop.set()
sampler.join()
time.sleep(2.0)  # objects freed by the stage are released asynchronously
held, spilled = plasma()
gc.collect()  # the stage's typed rows are freed only with a reference cycle (Python's cyclic GC)
time.sleep(2.0)
splits, _ = plasma()
blocks = {name: getattr(prepared, name).size_bytes() for name in ("train", "val", "test")}
print("RESULT", json.dumps({"before": before, "peak": max(peak[0], held), "held": held, "splits": splits,
                            "spilled": spilled,
                            "blocks": blocks, "rows": prepared.num_rows, "wall_s": wall,
                            "store": int(ray.cluster_resources()["object_store_memory"])}))
ray.shutdown()
"""


def object_store(args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """Prepares `rows` rows in memory on a local Ray; the object store it takes, per million rows."""
    from benchmarks.ingest import make_files

    source = Path(args.workdir).resolve() / f"scale-source-{rows}"
    make_files(source, rows, FEATURES)
    raw = rows * FEATURES * 4
    store = max(1 << 30, 12 * raw)  # room for every copy: a spilled object would not count
    env = {**os.environ, **QUIET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as storage, ray_lock(args.ray_lock):
        say(f"objstore: {rows:,} rows x {FEATURES} features through the data stage (in memory) ...")
        done = subprocess.run([sys.executable, "-c", OBJSTORE, str(source), storage, str(args.cpus),
                               str(store)], env=env, capture_output=True, text=True)
    if done.returncode != 0 or "RESULT" not in done.stdout:
        raise SystemExit(f"[bench] the data stage failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.split("RESULT", 1)[1])
    return object_store_figures(rows, found)


def object_store_figures(rows: int, found: dict[str, Any]) -> dict[str, Any]:
    million, raw = rows / 1e6, rows * FEATURES * 4

    def per_million(used: int) -> float:
        return (used - found["before"]) / MB / million

    row = {"rows": rows, "raw_MB": raw / MB, "prepare_s": found["wall_s"],
           "spilled_MB": found["spilled"] / MB,
           "object_store_MB_per_million_rows": per_million(found["peak"]),
           "held_after_prepare_MB_per_million_rows": per_million(found["held"]),
           "splits_MB_per_million_rows": per_million(found["splits"]),
           "datasets_size_bytes_MB_per_million_rows": sum(found["blocks"].values()) / MB / million,
           "raw_float32_MB_per_million_rows": raw / MB / million, "split_rows": found["rows"]}
    row["ratio"] = row["object_store_MB_per_million_rows"] / row["raw_float32_MB_per_million_rows"]
    row["splits_ratio"] = row["splits_MB_per_million_rows"] / row["raw_float32_MB_per_million_rows"]
    spilled = f"; SPILLED {row['spilled_MB']:.0f} MB: the figures miss it" if found["spilled"] else ""
    print(f"object_store_MB_per_million_rows={row['object_store_MB_per_million_rows']:.0f} "
          f"splits_MB_per_million_rows={row['splits_MB_per_million_rows']:.0f} "
          f"raw_float32_MB_per_million_rows={row['raw_float32_MB_per_million_rows']:.0f} "
          f"ratio={row['ratio']:.2f} splits_ratio={row['splits_ratio']:.2f} ({rows:,} rows prepared in "
          f"{found['wall_s']:.1f} s. The first figure is the stage's peak; once it returned the store held "
          f"{row['held_after_prepare_MB_per_million_rows']:.0f} MB per million, until a gc.collect() left "
          f"the three splits, whose size_bytes say {row['datasets_size_bytes_MB_per_million_rows']:.0f}"
          f"{spilled})", flush=True)
    return row


# -- the run --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, short levels (about 3 minutes)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    parser.add_argument("--config", default="tests/configs/tiny.yaml", help="part 1's pipeline recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="an override for part 1's pipeline (repeatable)")
    parser.add_argument("--max-trials", type=int, help="part 2: the largest N (full 64, quick 8)")
    parser.add_argument("--level-s", type=float, help="part 2: seconds per N (full 15, quick 6)")
    parser.add_argument("--server-workers", help="part 2: mlflow server --workers, comma-separated "
                                                 "(full 2,4, quick 2)")
    parser.add_argument("--saturate-at", help="part 2: trials with no think time, comma-separated "
                                              "(full 1,4,16, quick 4)")
    parser.add_argument("--think-s", type=float,
                        help="part 2: seconds a simulated trial waits after an epoch's call (default: "
                             "part 1's interval between a training trial's calls; 1.0 without part 1)")
    parser.add_argument("--epochs-per-trial", type=int, default=10,
                        help="part 2: epochs of a simulated trial")
    parser.add_argument("--checkpoint-mb", help="part 3: checkpoint sizes in MB, comma-separated "
                                                "(full 50,200, quick 50)")
    parser.add_argument("--repeats", type=int, help="part 3: copies per size and layout (full 2, quick 1)")
    parser.add_argument("--copy-timeout-s", type=float, default=240.0,
                        help="part 3: give up on a copy after this many seconds")
    parser.add_argument("--rows", help="part 4: row counts, comma-separated (full 200000,1000000, "
                                       "quick 200000)")
    parser.add_argument("--cpus", type=int, default=4, help="part 4: logical CPUs of the local Ray")
    parser.add_argument("--workdir", default="bench_data", help="part 4's generated Parquet files (kept)")
    parser.add_argument("--ray-lock", metavar="FILE", help="hold an flock on FILE while a part runs Ray")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the services' folder (logs, the pipeline's requests) after a success too")
    args = parser.parse_args(argv)
    for name, (quick, full) in PRESETS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(args.only) - set(PARTS))
    if unknown:
        parser.error(f"--only: {unknown} not among {', '.join(PARTS)}")
    for name in ("server_workers", "saturate_at", "checkpoint_mb", "rows"):
        setattr(args, name, [int(v) for v in str(getattr(args, name)).split(",") if v.strip()])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Nothing leaves 127.0.0.1: no proxy for local addresses, and S3 credentials of our own so the
    # AWS SDK never asks an instance metadata service for some.
    local = "127.0.0.1,localhost"
    os.environ.update(AWS, AWS_EC2_METADATA_DISABLED="true",
                      NO_PROXY=f"{local},{os.environ.get('NO_PROXY', '')}",
                      no_proxy=f"{local},{os.environ.get('no_proxy', '')}")
    if {"mlflow-rate", "mlflow-load"} & set(args.only) and os.geteuid() != 0:
        raise SystemExit("[bench] the MLflow parts start PostgreSQL as the `postgres` user (runuser): run as "
                         "root, or with --only s3,objstore")
    summary: dict[str, Any] = {"quick": args.quick, "parts": args.only}
    workdir = Path(tempfile.mkdtemp(prefix="raylane-scale-"))
    workdir.chmod(0o711)  # postgres reaches its folder inside
    services = Services(workdir)
    failed = True
    try:
        with interrupt_as_exception():
            run_parts(args, services, summary)
        failed = False
    except KeyboardInterrupt as err:
        say(f"interrupted ({err or 'Ctrl-C'}): stopping the services")
        return 130
    finally:
        stop_services(services)
        if failed or args.keep_workdir:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(summary, indent=None, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


def run_parts(args: argparse.Namespace, services: Services, summary: dict[str, Any]) -> None:
    mlflow_parts = {"mlflow-rate", "mlflow-load"} & set(args.only)
    took = summary["wall_s"] = {}  # seconds per part, waits for --ray-lock included
    with timed(took, "services"):
        if mlflow_parts or "s3" in args.only:
            start_s3(services)
        if mlflow_parts:
            start_postgres(services)
            start_mlflow(services, args.server_workers[0])
    rate = None
    if "mlflow-rate" in args.only:
        with timed(took, "mlflow-rate"):
            rate = summary["mlflow_rate"] = mlflow_rate(services, args)
        print_rate(rate)
    if "mlflow-load" in args.only:
        with timed(took, "mlflow-load"):
            summary["mlflow_load"] = mlflow_loads(args, services, rate)
    if "s3" in args.only:
        say(f"s3: checkpoints of {args.checkpoint_mb} MB, {args.repeats} copies each ...")
        with timed(took, "s3"):
            summary["s3"] = s3_checkpoints(services, args)
    if "objstore" in args.only:
        stop_services(services)  # not needed there: nothing else on the CPUs beside Ray
        with timed(took, "objstore"):
            summary["objstore"] = [object_store(args, rows) for rows in args.rows]
    say("seconds per part: " + ", ".join(f"{part} {s:.0f}" for part, s in took.items()))


@contextlib.contextmanager
def timed(took: dict[str, float], part: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    took[part] = time.perf_counter() - started


def mlflow_loads(args: argparse.Namespace, services: Services, rate: dict[str, Any] | None) -> list[dict]:
    """Part 2 against each --server-workers setting, a fresh server for each."""
    shape, loads = trial_shape(args, rate), []
    for i, workers in enumerate(args.server_workers):
        if i:  # a fresh server on the same database
            stop_mlflow(services)
            start_mlflow(services, workers)
        loads.append(mlflow_load(services, args, shape, workers))
        print_load(loads[-1], rate)
    return loads


def trial_shape(args: argparse.Namespace, rate: dict[str, Any] | None) -> TrialShape:
    """A simulated trial: part 1's metric and param names, and its think time: --think-s, else the
    interval between a trial's calls while it trains (its epoch interval / calls per epoch), else
    over its lifetime; 1 s without part 1."""
    from raylane.task import CLASSIFICATION, TRAIN_LOSS, VAL_LOSS

    think = 1.0
    if rate and rate["req_per_s_per_training_trial"]:
        think = 1 / rate["req_per_s_per_training_trial"]
    elif rate:
        think = 1 / rate["req_per_s_per_trial"]
    return TrialShape(
        epochs=args.epochs_per_trial,
        metric_keys=tuple(rate["metric_keys"]) if rate else (TRAIN_LOSS, VAL_LOSS, CLASSIFICATION.val_metric),
        param_keys=tuple(rate["param_keys"]) if rate else ("hidden_size", "lr"),
        think_s=think if args.think_s is None else args.think_s)


if __name__ == "__main__":
    sys.exit(main())
