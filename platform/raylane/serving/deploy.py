"""Deploying the champion on Ray Serve, and serving it in the foreground until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

from raylane.config import ModelConfig, ServeConfig, ServingOptions
from raylane.errors import ConfigError, RaylaneError
from raylane.registry import champion_version
from raylane.serving import routes
from raylane.serving.model import ServeArgs

if TYPE_CHECKING:
    from raylane.serving.gateway import GatewayArgs

log = logging.getLogger(__name__)


def serve_args(serve_cfg: ServeConfig, model: ModelConfig, tracking_uri: str, version: str) -> ServeArgs:
    """The Serve application's arguments for the pipeline's serve section; `version` is the alias's
    version now, pinned when the endpoint does not follow the alias (so later replicas serve it too)."""
    options = serve_cfg.model_dump(include=set(ServingOptions.model_fields))
    options["allowed_hosts"] = allowed_hosts(serve_cfg)
    return ServeArgs(model_name=model.name, alias=model.champion_alias, tracking_uri=tracking_uri,
                     version=None if serve_cfg.follow_alias else version, proxy=serve_cfg.proxy,
                     **options)


def allowed_hosts(serve_cfg: ServeConfig) -> list[str] | None:
    """`serve.allowed_hosts`, or unset, the default for the address Serve binds (`serve.host`)."""
    from raylane.serving.browsers import EVERY_INTERFACE, default_allowed_hosts

    given = serve_cfg.allowed_hosts
    if given is None and serve_cfg.host in EVERY_INTERFACE:
        return None  # each replica answers to its own node's names (browsers.default_allowed_hosts)
    return given if given is not None else default_allowed_hosts(serve_cfg.host)


def deploy(serve_cfg: ServeConfig, model: ModelConfig, tracking_uri: str) -> str:
    """Adds the model's champion to the endpoint, or updates it there; returns the base URL.

    Each model is its own Serve application (raylane.serving.routes), so deploying, updating or
    removing one leaves the others' replicas alone. If the model's application already runs with
    the same arguments and follows the alias, it is left running: its replicas load the new
    champion beside the old one and switch without a restart or a failed request.
    """
    from ray import serve

    from raylane.serving.app import build_app
    from raylane.serving.gateway import build_gateway

    version = champion_version(tracking_uri, model.name, model.champion_alias)  # fail early, clearly
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    args = serve_args(serve_cfg, model, tracking_uri, version)
    if not (args.follows and _switch_running_app(args, version)):
        # blocking=False: returns once the replicas are up; the app lives as long as the cluster.
        serve.run(build_app(args), name=routes.model_app(model.name),
                  route_prefix=routes.route_prefix(model.name), blocking=False)
    running = _running_args(routes.GATEWAY_APP)
    gateway = _gateway_args(serve_cfg, running)
    if running != {"gateway": gateway.model_dump(mode="json")}:
        serve.run(build_gateway(gateway), name=routes.GATEWAY_APP, route_prefix="/", blocking=False)
    return f"http://{_reachable_host(serve_cfg.host)}:{serve_cfg.port}"


def _gateway_args(serve_cfg: ServeConfig, running: dict | None) -> GatewayArgs:
    """The gateway's arguments after deploying `serve_cfg`'s model beside a running gateway: a
    deploy never weakens it. Its auth stays on once on (a model deployed without auth does not
    open the repository index), and its body limit is the largest any model took (each model
    still holds requests to its own). Its Host allow-list and CORS origins are this deploy's, as
    Serve's host is endpoint-wide."""
    from raylane.serving.gateway import GatewayArgs

    new = GatewayArgs(auth=serve_cfg.auth, max_body_bytes=serve_cfg.max_body_bytes,
                      allowed_hosts=allowed_hosts(serve_cfg), cors_origins=serve_cfg.cors_origins,
                      body_timeout_s=serve_cfg.body_timeout_s, access_log=serve_cfg.access_log)
    if not running or "gateway" not in running:
        return new
    old = GatewayArgs.model_validate(running["gateway"])
    if old.auth is not None and new.auth != old.auth:
        log.warning("the endpoint's gateway keeps the auth it runs with (serve.auth of this deploy: "
                    f"{'off' if new.auth is None else 'different'}); each model checks its own tokens")
    return GatewayArgs(auth=old.auth or new.auth, max_body_bytes=max(old.max_body_bytes, new.max_body_bytes),
                       body_timeout_s=max(old.body_timeout_s, new.body_timeout_s), access_log=new.access_log,
                       allowed_hosts=new.allowed_hosts, cors_origins=new.cors_origins)


def served_models() -> list[str]:
    """The registered models the endpoint on the connected Ray serves."""
    from ray import serve

    try:
        applications = serve.status().applications
    except Exception:  # Serve not started on this cluster
        return []
    return sorted(name for app in applications if (name := routes.model_of_app(app)) is not None)


def remove(name: str) -> None:
    """Takes model `name` off the endpoint; the other models keep serving. ConfigError if it is not
    served there."""
    from ray import serve

    served = served_models()
    if name not in served:
        raise ConfigError(f"--remove {name}: model {name!r} is not served on this endpoint; served: "
                          f"{', '.join(served) or 'none'}")
    serve.delete(routes.model_app(name))


def _running_args(app: str) -> dict | None:
    """What a running application's `describe` answers; None if it is not running (or is not one
    of raylane's)."""
    from ray import serve

    try:
        return serve.get_app_handle(app).describe.remote().result(timeout_s=30)
    except Exception:
        return None


def _reachable_host(bound: str) -> str:
    """The address to call an endpoint bound to `bound` at: this node's (the head's, under a job) when
    it binds every interface of a cluster's nodes, 127.0.0.1 on a local Ray."""
    import ray

    if bound not in ("0.0.0.0", "::"):
        return bound
    if ray.is_initialized() and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
        return ray.util.get_node_ip_address()
    return "127.0.0.1"


def _switch_running_app(args: ServeArgs, version: str, timeout_s: float = 300) -> bool:
    """True if a running app with these arguments now serves `version`; False to redeploy."""
    from ray import serve

    running = _running_args(routes.model_app(args.model_name))
    if running is None or running.get("args") != args.model_dump(mode="json"):
        return False
    log.info(f"the endpoint already follows {args.model_name}@{args.alias}: switching to v{version} "
             "in place (new version loaded and warmed up before it takes traffic)")
    handle = serve.get_app_handle(routes.model_app(args.model_name))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            held = handle.check_registry.remote().result(timeout_s=timeout_s)
        except Exception as err:
            raise RaylaneError(f"the running endpoint could not load {args.model_name} v{version}: {err}; "
                               "it keeps serving the previous version") from err
        if version in held and held[version] == args.alias:
            return True
        time.sleep(0.5)
    return False


def announce(url: str, model: ModelConfig) -> None:
    """Logs where the endpoint, its docs and its metrics are."""
    log.info(f"endpoint {url}/v1/models/{model.name}:predict | {url}/v2/models/{model.name}/infer | "
             f"{url}/invocations  (docs: {url}/docs)")
    address = metrics_address()
    if address:
        log.info(f"Prometheus metrics: {address} (ray_raylane_*, ray_serve_*)")


def metrics_address() -> str | None:
    """Returns the Prometheus scrape address of this node's Ray metrics agent (raylane's metrics and
    Serve's), None if the node exports none."""
    import ray

    here = ray.util.get_node_ip_address()
    for node in ray.nodes():
        port = node.get("MetricsExportPort") or 0  # -1: a Ray without its metrics agent (no ray[default])
        if node.get("Alive") and node.get("NodeManagerAddress") == here and port > 0:
            return f"http://{here}:{port}/metrics"
    return None


def curl_example(url: str, model: ModelConfig, kinds: dict[str, str]) -> str:
    """A V1 request for one row: positional zeros for an all-numeric model, else by column name
    (an image model: one PNG file as the body)."""
    if list(kinds.values()) == ["image"]:
        return (f"curl -s -X POST {url}/v1/models/{model.name}:predict "
                "-H 'Content-Type: image/png' --data-binary @image.png")
    if all(kind == "numeric" for kind in kinds.values()):
        row = "[" + ", ".join(["0"] * len(kinds)) + "]"
    else:
        sample = {"numeric": "0", "categorical": '"a"', "boolean": "false"}
        row = "{" + ", ".join(f'"{name}": {sample[kind]}' for name, kind in kinds.items()) + "}"
    return (f"curl -s -X POST {url}/v1/models/{model.name}:predict "
            f"-H 'Content-Type: application/json' -d '{{\"instances\": [{row}]}}'")


def keep_serving(*, on_cluster: bool, block: bool) -> None:
    """Logs how long the endpoint lives; on a local Ray with `block`, serves until Ctrl-C."""
    if on_cluster:
        log.info("the endpoint keeps running on the cluster after this job exits")
    elif not block:
        log.info("--no-block: the local Ray, and the endpoint with it, stop when this process exits")
    else:
        log.info("serving in the foreground; press Ctrl-C to stop")
        serve_until_interrupted()


def serve_until_interrupted() -> None:
    """Blocks until Ctrl-C or SIGTERM, then shuts Serve and Ray down cleanly."""
    import ray
    from ray import serve

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("shutting down Serve and Ray")
        serve.shutdown()
        ray.shutdown()
