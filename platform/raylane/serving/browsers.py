"""What keeps a web page in a browser from using the endpoint, with auth off (the default).

A page from any site can make its visitor's browser POST to 127.0.0.1:8000 without asking the
endpoint first (no CORS preflight) when the body's Content-Type is text/plain,
application/x-www-form-urlencoded or multipart/form-data, or when it has none (a Blob or an
ArrayBuffer body); it cannot read the answer. With DNS rebinding (the page's own name made to
resolve to 127.0.0.1) the page and the endpoint are the same origin and it can read answers; the
browser then sends the page's name as Host. So, on the models' apps and the gateway alike:

- **Content types** (`refused_media_type`): each inference route takes only its documented types,
  415 otherwise. A missing Content-Type is read as JSON on V1 and V2, as `tritonclient` sends none;
  a page can send such a body but not read the answer.
- **Host allow-list** (`serve.allowed_hosts`, `HostAllowList`): 421 for any other Host, except on
  the health routes, which load balancers and Kubernetes probes call by any name or IP.
- **CORS**: no CORS headers unless `serve.cors_origins` lists origins (`BrowserGuard`).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from raylane._compat.starlette import route_path

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/health", "/-/healthz"})
"""Answered whatever the Host: they say only whether the endpoint is up."""
EVERY_INTERFACE = frozenset({"0.0.0.0", "::", "[::]", "*", ""})
ANY_ADDRESS = ("0.0.0.0/0", "::/0")

JSON = "application/json"
CSV = "text/csv"
IMAGES = ("image/png", "image/jpeg")
BINARY = ("application/octet-stream", "application/vnd.sagemaker-triton.binary+json")
"""V2's binary tensor extension, with Inference-Header-Content-Length: the body's type (Triton's
SageMaker name for it too)."""
CORS_HEADERS = ("authorization", "content-type", "inference-header-content-length", "x-model-name")
CORS_EXPOSED = ("x-model-version", "inference-header-content-length")


def default_allowed_hosts(bind: str | None) -> list[str]:
    """The Host names an endpoint bound to `bind` (`serve.host`) answers by default: `localhost`
    and the bind address (with 127.0.0.1 and ::1 when it is loopback). Bound to every interface
    (or not known, as in a `serve deploy` config), clients call it by any of the machines'
    addresses: then any IP address, `localhost` and this machine's host names; other DNS names
    must be listed in `serve.allowed_hosts`."""
    if bind is None or bind in EVERY_INTERFACE:
        return ["localhost", *machine_names(), *ANY_ADDRESS]
    hosts = [bind.strip("[]"), "localhost"]
    if _is_loopback(bind):
        hosts += ["127.0.0.1", "::1"]
    return list(dict.fromkeys(hosts))


@functools.cache
def machine_names() -> list[str]:
    """This machine's host name and fully qualified name (as /etc/hosts or DNS say); looked up once,
    when a replica starts (a slow reverse lookup must not hold a request)."""
    names = [socket.gethostname()]
    try:
        names.append(socket.getfqdn())
    except OSError:
        pass
    return [n.lower() for n in dict.fromkeys(names) if n and n != "localhost"]


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str | None) -> str:
    """The name or address in a Host header, without its port, brackets or trailing dot; lower case."""
    host = (header or "").strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


class HostAllowList:
    """`serve.allowed_hosts`: names and addresses (any port), networks (`10.0.0.0/8`), a domain with
    its subdomains (`.svc.cluster.local`, as Django's ALLOWED_HOSTS writes it), or `*`."""

    def __init__(self, entries: list[str]) -> None:
        self.any = "*" in entries
        self.names = {host_name(e) for e in entries if "/" not in e and e != "*" and not e.startswith(".")}
        self.domains = tuple(e.lower().rstrip(".") for e in entries if e.startswith(".") and len(e) > 1)
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if "/" in e]

    def allows(self, header: str | None) -> bool:
        """Whether a request with this Host header may be answered."""
        host = host_name(header)
        if not host:
            return False
        if self.any or host in self.names:
            return True
        if any(host.endswith(domain) or host == domain[1:] for domain in self.domains):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address.version == net.version and address in net for net in self.networks)


def refused_media_type(path: str, content_type: str | None, binary: bool, image_model: bool) -> str | None:
    """None if a POST to inference route `path` may have this Content-Type, else why not (415).
    `binary`: the request has Inference-Header-Content-Length (V2's binary extension)."""
    mime = (content_type or "").partition(";")[0].strip().lower()
    images = IMAGES if image_model else ()
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        accepted: tuple[str, ...] = (JSON, "application/*+json", *images)
        ok = not mime or mime == JSON or (mime.startswith("application/") and mime.endswith("+json"))
    elif path.startswith("/v2/models/") and path.endswith("/infer"):
        accepted = (JSON, *(f"{b} (with Inference-Header-Content-Length)" for b in BINARY), *images)
        ok = not mime or mime == JSON or (binary and mime in BINARY)
    elif path == "/invocations":
        accepted, ok = (JSON, CSV, *images), mime in (JSON, CSV)
    else:
        return None
    if ok or mime in images:
        return None
    given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return f"{given} is not accepted here; send one of: {', '.join(accepted)}"


class BrowserGuard:
    """Plain ASGI middleware in front of an app's own: the Host allow-list, then CORS where
    configured. `server` returns the replica's object (with `.args.allowed_hosts` and
    `.args.cors_origins`), None before it is constructed."""

    def __init__(self, app: ASGIApp, server: Callable[[], Any]) -> None:
        self.app, self.server = app, server
        self._built: tuple[Any, HostAllowList, ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server()
        if scope["type"] != "http" or server is None:
            await self.app(scope, receive, send)
            return
        hosts, app = self._for(server.args)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"host"), None)
        if not hosts.allows(host) and route_path(scope) not in HEALTH_PATHS:
            shown = host_name(host) or "(none)"
            await JSONResponse({"error": f"Host {shown!r} is not one this endpoint answers to; to call it "
                                         "by that name, add it to serve.allowed_hosts"},
                               status_code=421)(scope, receive, send)
            return
        await app(scope, receive, send)

    def _for(self, args: Any) -> tuple[HostAllowList, ASGIApp]:
        if self._built is None or self._built[0] is not args:
            allowed = args.allowed_hosts if args.allowed_hosts is not None else default_allowed_hosts(None)
            app = self.app if not args.cors_origins else CORSMiddleware(
                self.app, allow_origins=list(args.cors_origins), allow_methods=["GET", "POST"],
                allow_headers=list(CORS_HEADERS), expose_headers=list(CORS_EXPOSED), max_age=600)
            self._built = (args, HostAllowList(allowed), app)
        return self._built[1], self._built[2]
