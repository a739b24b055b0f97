"""Training in Prometheus: while a search trains, every DDP worker's metrics are on the node's Ray
metrics agent, labelled by run, trial and rank, and the training dashboard names only those."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from raylane import data
from raylane import tune as raylane_tune
from raylane.config import load_config
from raylane.serving import deploy

DASHBOARD = Path(__file__).resolve().parents[2] / "serve_apps" / "grafana" / "raylane-training.json"
PREFIX = "ray_raylane_train_"
RUN = "watched"
EPOCHS = 60
# One trial of 2 DDP workers streaming their shards through Ray Data. Small batches make many
# steps (and all-reduces); 60 epochs of 0.2-0.35 s here keep the workers training for 12-20 s,
# longer than Ray's metrics export interval (10 s: a worker's values reach the agent on its next
# export), so at least one export falls while they train and the scrapes below see it.
SEARCH = ["tune.num_samples=1", "tune.max_concurrent_trials=1", "tune.search_alg=random",
          "tune.scheduler=fifo", "tune.search_space={lr: {choice: [0.01]}}",
          "train.num_workers=2", "train.ingest=stream", "train.batch_size=16", f"train.epochs={EPOCHS}"]
TORCH_METRICS = ["epoch", "loss", "val_loss", "val_score", "samples_per_second", "steps_total",
                 "data_wait_seconds_total", "allreduce_seconds_total", "cpu_percent", "memory_bytes"]
# Exported only by GPU workers: the searches here train on CPU workers, so these two are proven by
# a worker's metrics with an injected GPU sample (test_gpu_gauges_...).
GPU_METRICS = ["gpu_utilization_percent", "gpu_memory_bytes"]


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    return data.prepare(load_config(None, []).data, str(tmp_path_factory.mktemp("storage")))


class Scraper:
    """Scrapes the node's metrics agent every `every_s` seconds in a thread, keeping the latest
    value of each raylane training series of `run` seen so far (a gauge leaves the agent about
    20 s after its worker ends: what was seen, was seen while the run trained)."""

    def __init__(self, address: str, run: str, every_s: float = 2.0) -> None:
        self.address, self.run, self.every_s = address, run, every_s
        self.series: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.names: set[str] = set()  # every ray_raylane_* sample name scraped, of any run
        self.scrapes, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                text = httpx.get(self.address, timeout=10).text
            except httpx.HTTPError:
                text = ""
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if not sample.name.startswith("ray_raylane_"):
                        continue
                    self.names.add(sample.name)
                    if sample.labels.get("run") == self.run:
                        self.series[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
            self.scrapes += 1
            self.stop.wait(self.every_s)

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(labels), value) for (found, labels), value in self.series.items()
                if found == PREFIX + name]


def dashboard_metrics() -> set[str]:
    """The ray_raylane_* names in the dashboard's panel queries and template variables."""
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return {name for query in queries for name in re.findall(r"ray_raylane_\w+", query)}


GPU_SEEN: set[str] = set()
"""The ray_raylane_* names scraped by test_gpu_gauges_... (the dashboard check covers them too)."""


def test_gpu_gauges_reach_the_metrics_agent_with_their_labels(ray_local) -> None:
    """A Ray actor's WorkerMetrics with an injected GPU sample (a CPU machine has no NVML): its
    flush sets both GPU gauges, labelled by run, trial and rank, and the node's agent serves them."""
    import ray
    from raylane.train import metrics

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self) -> None:
            self.watch = metrics.WorkerMetrics("gpu-watched", "gpu-trial", 3, gpu=lambda: (42.0, 1.5e9))

        def flush(self) -> None:
            self.watch.flush(time.perf_counter())

    address = deploy.metrics_address()
    assert address is not None, "the session's Ray exports no metrics"
    worker = Worker.remote()
    started = time.monotonic()
    try:
        ray.get(worker.flush.remote())
        with Scraper(address, "gpu-watched", every_s=1.0) as scraper:
            while time.monotonic() - started < 30 and not all(scraper.values(n) for n in GPU_METRICS):
                time.sleep(0.5)
    finally:
        ray.kill(worker)
    print(f"GPU gauges after {time.monotonic() - started:.1f} s, {scraper.scrapes} scrapes")
    GPU_SEEN.update(scraper.names)
    assert [v for _, v in scraper.values("gpu_utilization_percent")] == [42.0]
    assert [v for _, v in scraper.values("gpu_memory_bytes")] == [1.5e9]
    for name in GPU_METRICS:
        (labels, _), = scraper.values(name)
        assert (labels["run"], labels["trial"], labels["rank"]) == ("gpu-watched", "gpu-trial", "3"), labels


def test_ddp_workers_export_their_training_metrics_while_the_run_trains(prepared, tmp_path) -> None:
    address = deploy.metrics_address()
    assert address is not None, "the session's Ray exports no metrics"
    started = time.monotonic()
    with Scraper(address, RUN) as scraper:
        best = raylane_tune.search(load_config(None, SEARCH), prepared, RUN, str(tmp_path))
    print(f"search {time.monotonic() - started:.0f} s, {scraper.scrapes} scrapes, "
          f"{len(scraper.series)} series of run {RUN}")

    for name in TORCH_METRICS:
        print(name, sorted((labels["rank"], round(value, 4)) for labels, value in scraper.values(name)))
    missing = [n for n in TORCH_METRICS if {lab["rank"] for lab, _ in scraper.values(n)} != {"0", "1"}]
    assert not missing, f"not exported by both ranks while the run trained: {missing}"
    for name in TORCH_METRICS:
        for labels, _ in scraper.values(name):
            assert labels["trial"] == best.trial_id, (name, labels)

    def each(name: str) -> list[float]:
        return [value for _, value in scraper.values(name)]

    assert all(0 <= v < EPOCHS for v in each("epoch"))
    assert all(math.isfinite(v) and v >= 0 for v in each("loss") + each("val_loss"))
    assert {labels["metric"] for labels, _ in scraper.values("val_score")} == {"val_accuracy"}
    assert all(0 <= v <= 1 for v in each("val_score"))
    assert all(v > 0 for v in each("samples_per_second"))
    assert all(v >= 1 for v in each("steps_total"))
    assert all(v >= 0 for v in each("data_wait_seconds_total"))
    assert all(v > 0 for v in each("allreduce_seconds_total")), "2 DDP workers all-reduce every step"
    assert all(v > 0 for v in each("cpu_percent") + each("memory_bytes"))
    assert not scraper.values("gpu_memory_bytes"), "a CPU worker reported GPU memory"

    assert not scraper.values("gpu_utilization_percent"), "a CPU worker reported GPU utilisation"
    # The GPU gauges, set by the previous test's worker, are still on the agent (or were seen by
    # this scraper): every name the dashboard queries is one the metrics agent served.
    named = dashboard_metrics()
    assert {PREFIX + n for n in GPU_METRICS} <= named
    assert GPU_SEEN, "run with test_gpu_gauges_reach_the_metrics_agent_with_their_labels (it comes first)"
    missing = named - scraper.names - GPU_SEEN
    assert not missing, f"the training dashboard queries metrics nobody exports: {missing}"


def test_tensorflow_workers_export_their_training_metrics_while_they_train(prepared, tmp_path) -> None:
    """The same figures from MultiWorkerMirroredStrategy workers, but the all-reduce: it runs
    inside the compiled step and is not timed apart from it."""
    pytest.importorskip("tensorflow", reason="the [tf] extra is part of the dev install")
    from raylane.train.trainer import build_trainer

    # 60 epochs of about 0.3 s: longer than Ray's 10 s export interval, so at least one export
    # falls while they train (the fit also takes about 35 s for the workers to start). 16 epochs,
    # about 7 s, once trained between two exports on CI: only the epoch gauge, set before
    # training, was ever seen.
    cfg = load_config(None, ["train.backend=tensorflow", "train.num_workers=2", "train.batch_size=16",
                             "train.epochs=60"])
    started = time.monotonic()
    with Scraper(deploy.metrics_address(), "tf-watched") as scraper:
        trainer = build_trainer(cfg, {"lr": 0.01}, prepared, name="tf-watched", storage_path=str(tmp_path))
        result = trainer.fit()
    print(f"fit {time.monotonic() - started:.0f} s, {scraper.scrapes} scrapes")
    assert result.error is None
    basic = [n for n in TORCH_METRICS if n != "allreduce_seconds_total"]
    for name in basic:
        print(name, sorted((labels["rank"], round(value, 4)) for labels, value in scraper.values(name)))
    missing = [n for n in basic if {labels["rank"] for labels, _ in scraper.values(n)} != {"0", "1"}]
    assert not missing, f"not exported by both ranks while the run trained: {missing}"
    assert {labels["trial"] for name in basic for labels, _ in scraper.values(name)} == {"tf-watched"}
    assert all(v > 0 for name in ("samples_per_second", "steps_total", "memory_bytes")
               for _, v in scraper.values(name))
    assert not scraper.values("allreduce_seconds_total")
