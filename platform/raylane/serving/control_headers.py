"""Ray Serve's per-request control headers, which a client must not set (`serve.allow_control_headers`).

Ray 2.60 reads two request headers before any application code runs, in its Python proxy
(`ray/serve/_private/proxy.py`, `HTTPProxy.send_request_to_replica`) and in a replica's own HTTP
server behind HAProxy (`replica.py`, `_direct_ingress_asgi`):

- `x-request-timeout-seconds`: the request's timeout, overriding `http_options.request_timeout_s`;
  0 or less lifts it.
- `x-request-disconnect-disabled: ?1`: the request keeps running after its client disconnects, so
  a client can start expensive requests and leave, without holding a connection for each.

Both are removed where requests arrive: by `StripControlHeaders`, which Ray runs in front of its
proxy and of each replica's HTTP server (raylane.serving.ingress), and by `raylane-haproxy`'s
`http-request del-header` rules in HAProxy's frontend (raylane.serving.haproxy). With
`RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS=1` (a local Ray: `serve.allow_control_headers: true`) they
pass, for a trusted network in front that sets them itself.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from raylane import env

CONTROL_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")
"""Ray's names (SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER, SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER)."""
_ENCODED = frozenset(name.encode() for name in CONTROL_HEADERS)


def allowed() -> bool:
    """Whether clients may send Serve's control headers (RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS=1)."""
    return env.INGRESS_ALLOW_CONTROL_HEADERS.get() == "1"


class StripControlHeaders:
    """Plain ASGI middleware: the request without Serve's control headers, unless `allowed()`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.strip = app, not allowed()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.strip and scope["type"] in ("http", "websocket") and \
                any(k.lower() in _ENCODED for k, _ in scope["headers"]):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() not in _ENCODED]}
        await self.app(scope, receive, send)
