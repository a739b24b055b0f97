"""raylane on separate hosts: Ray nodes with no shared disk, MLflow on PostgreSQL + S3, jobs
submitted from a workstation, a worker host lost, a job stopped, two pipelines racing, the MLflow
server restarted. Run by `make cluster-test` on the rig of deploy/local-cluster/rig.py."""

from __future__ import annotations

import json
import time

from tests.cluster.conftest import Job, probe, record, rig, settings, steps_of, trial_runs, unique, wait_until

WORKER_IPS = {w.ip for w in rig.WORKERS}


def serve_token() -> str:
    return (rig.CLIENT.root / "tmp/home/serve-tokens").read_text().strip()


def test_a_local_storage_path_fails_the_storage_check() -> None:
    job = Job(*settings(unique("rig-local"), storage_path="raylane_runs", **{"serve.enabled": "false"}),
              name="local")
    state = job.wait(timeout=300)
    assert state["status"] == "FAILED"
    assert "is local to this node" in state["logs"] and "s3://" in state["logs"]


def test_training_across_hosts_registered_on_the_server_served_from_the_workers() -> None:
    # 3 CPUs per Train worker, 4 per worker host: each trial's DDP group spans both hosts.
    name = unique("rig-digits")
    job = Job(*settings(name, **{"train.cpus_per_worker": 3, "tune.max_concurrent_trials": 1}),
              "--run-name", name, name="across")
    logs = job.succeed()
    state = job.status()

    # Every trial's Train workers ran on both worker hosts (the head takes none), one on each.
    workers = [a for a in probe("actors", "RayTrainWorker") if a["job_id"] == state["ray_job_id"]]
    groups: dict[str, list[str]] = {}
    for worker in workers:
        groups.setdefault(worker["placement_group"], []).append(worker["ip"])
    assert len(groups) == 2 and all(sorted(ips) == sorted(WORKER_IPS) for ips in groups.values()), workers
    trials = trial_runs(name)
    first_trial = min(run["start"] for run in trials) / 1000
    record("submit_to_first_trial_s", round(first_trial - job.submitted, 1))

    # The champion is registered on the MLflow server, its files in S3 behind it.
    model = probe("model", name)
    assert model["alias"] == "1" and len(model["versions"]) == 1
    model_id = model["versions"][0]["source"].rsplit("/", 1)[-1]  # models:/m-...
    keys = probe("objects", rig.MLFLOW_BUCKET, "artifacts/")
    assert any(model_id in key and key.endswith("/MLmodel") for key in keys), (model_id, keys[:20])
    assert any(key.endswith("/model.pt") or "/data/" in key for key in keys if model_id in key)

    # The endpoint: replicas on the worker hosts, called from the client at the head's address.
    assert f"endpoint {rig.ENDPOINT}/v1/models/{name}:predict" in logs
    replicas = [a for a in probe("actors", f"ServeReplica:raylane-{name}:") if a["state"] == "ALIVE"]
    assert replicas and {a["ip"] for a in replicas} == WORKER_IPS, replicas
    url = f"{rig.ENDPOINT}/v1/models/{name}:predict"
    answer = probe("predict", url, serve_token())
    assert answer["status"] == 200 and len(json.loads(answer["body"])["predictions"]) == 2
    refused = probe("predict", url, "")
    assert refused["status"] == 401


def test_a_worker_host_lost_mid_training_then_rejoining() -> None:
    # Small batches: epochs of a few seconds, so the host is lost in the middle of training.
    name, epochs = unique("rig-loss"), 30
    job = Job(*settings(name, **{"train.epochs": epochs, "train.batch_size": 16, "serve.enabled": "false"}),
              name="loss")

    def two_epochs_everywhere():
        runs = trial_runs(name)
        return len(runs) == 2 and all(len(steps_of(r, "val_accuracy")) >= 2 for r in runs) and runs

    wait_until("two epochs on both trials", two_epochs_everywhere, job=job)
    lost = rig.WORKERS[0]
    try:
        killed_at = time.time()
        assert rig.kill_host_processes(lost) > 0
        detected = rig.wait_for_nodes({rig.HEAD.ip, rig.WORKERS[1].ip}, timeout=180)
        job.succeed()
    finally:  # the host comes back, also for the tests after this one if something failed
        started = time.monotonic()
        if set(rig.alive_nodes()) != {rig.HEAD.ip, *WORKER_IPS}:
            rig.start_ray(lost)
            rig.wait_for_nodes({rig.HEAD.ip, *WORKER_IPS})
        rejoined = time.monotonic() - started

    runs = trial_runs(name)
    assert len(runs) == 2 and all(run["status"] == "FINISHED" for run in runs)
    for run in runs:
        # Every epoch logged exactly once: the restarted workers resumed from the last checkpoint
        # and what had been logged after it was not logged twice.
        assert steps_of(run, "val_accuracy") == list(range(epochs)), run["metrics"]["val_accuracy"]
    # Recovery: until every trial logged an epoch again after the host was lost.
    again = [min(ts / 1000 for _, _, ts in run["metrics"]["val_accuracy"] if ts / 1000 > killed_at)
             - killed_at for run in runs]
    record("host_loss_detected_s", round(detected, 1))
    record("host_loss_recovery_s", round(max(again), 1))
    parents = [r for r in probe("runs", name) if not r["parent"]]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"

    record("node_rejoin_s", round(rejoined, 1))  # `ray start` on the host, until the cluster lists it


def test_a_stopped_job_resumes_the_same_run_without_rerunning_finished_trials() -> None:
    name = unique("rig-resume")
    # A trial's epochs take about a second here: 40 keep the second trial running for long enough
    # that the polls (a few seconds each) see it started before it finishes.
    epochs = 40
    common = settings(name, **{"serve.enabled": "false", "tune.max_concurrent_trials": 1,
                               "train.epochs": epochs, "train.batch_size": 16})
    # The first attempt of a RayJob: --resume-if-exists starts the run when there is none.
    first = Job(*common, "--run-name", name, "--resume-if-exists", name="resume")

    def one_finished_one_started():
        runs = trial_runs(name)
        done = [r for r in runs if r["status"] == "FINISHED"]
        going = [r for r in runs if r["status"] == "RUNNING" and steps_of(r, "val_accuracy")]
        return done and going and (done, going)

    done, _ = wait_until("a finished trial and one that has started", one_finished_one_started, job=first)
    first.stop()
    assert first.wait(timeout=120)["status"] == "STOPPED"
    parent_id = done[0]["parent"]

    resumed = Job(*common, "--resume", name, name="resumed")
    logs = resumed.succeed()
    runs = trial_runs(name)
    assert len(runs) == 2, [r["name"] for r in runs]  # the finished trial was not run again
    assert {r["parent"] for r in runs} == {parent_id}
    finished_before = next(r for r in runs if r["run_id"] == done[0]["run_id"])
    assert finished_before["metrics"] == done[0]["metrics"]  # untouched
    for run in runs:
        assert steps_of(run, "val_accuracy") == list(range(epochs))
    parents = [r for r in probe("runs", name) if not r["parent"]]
    assert [p["run_id"] for p in parents] == [parent_id] and parents[0]["status"] == "FINISHED"
    assert parent_id in logs


def test_two_pipelines_at_once_on_one_registered_model() -> None:
    # Submitted together with the same shape, they reach the champion gate at about the same time;
    # the learning rates make one clearly better.
    name = unique("rig-race")
    jobs = {lr: Job(*settings(name, **{"serve.enabled": "false", "tune.num_samples": 1, "train.epochs": 2,
                                       "tune.search_space": "{}", "train.lr": lr}),
                    "--run-name", f"{name}-lr{lr}", name="race")
            for lr in (0.0003, 0.01)}
    for job in jobs.values():
        job.succeed()
    model = probe("model", name)
    scores = {v["version"]: v["metrics"]["test_accuracy"] for v in model["versions"]}
    assert len(scores) == 2
    assert model["alias"] == max(scores, key=scores.get), (model["alias"], scores)
    # Every move is in the history, the last one the alias's version.
    history = json.loads(model["tags"]["raylane.champion.history"])
    assert history[-1]["version"] == model["alias"]
    promoted = {v["version"] for v in model["versions"]
                if v["tags"].get("raylane.promotion", "").startswith("promoted")}
    assert promoted <= {entry["version"] for entry in history}, (promoted, history)


def test_the_champion_gate_under_real_concurrency_on_postgresql() -> None:
    """Processes on the client host racing through the gate against the PostgreSQL-backed server."""
    race = rig.run("client", ["python", "-m", "tests.concurrency", rig.TRACKING_URI, "5", "3"],
                   cwd=str(rig.REPO), timeout=900, check=False)
    print(race.stdout[-3000:])
    assert race.returncode == 0, race.stdout[-3000:] + race.stderr[-3000:]


def test_the_mlflow_server_restarts_mid_run() -> None:
    name, epochs = unique("rig-outage"), 20
    job = Job(*settings(name, **{"serve.enabled": "false", "train.epochs": epochs, "train.batch_size": 16}),
              name="outage")
    wait_until("an epoch logged", lambda: any(steps_of(r, "val_accuracy") for r in trial_runs(name)), job=job)
    rig.stop_mlflow()
    time.sleep(15)  # trials report epochs while the server is down
    restarted = time.monotonic()
    rig.start_mlflow()
    record("mlflow_server_restart_s", round(time.monotonic() - restarted, 1))
    job.succeed()
    runs = trial_runs(name)
    assert len(runs) == 2
    for run in runs:
        assert run["status"] == "FINISHED"
        for metric in ("val_accuracy", "train_loss"):
            assert steps_of(run, metric) == list(range(epochs)), (metric, run["metrics"][metric])
    parents = [r for r in probe("runs", name) if not r["parent"]]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    assert probe("model", name)["alias"] == "1"

