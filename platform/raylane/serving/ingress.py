"""Limits on request bodies where they first arrive: Serve's Python proxy, and each replica's own
HTTP server behind HAProxy.

Serve's Python proxy reads a request's body into an unbounded queue as fast as the client sends
it, before a replica is assigned; `serve.max_body_bytes` is checked only in the replica. While the
replicas are busy, 64 clients sending 100 MB each put 6.4 GB in the proxy. Ray runs the
middlewares a callback returns (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, which raylane sets to
`raylane.serving.ingress:middlewares`) in front of the proxy and of every replica's HTTP server;
`IngressLimits` there bounds what a request can make them hold:

- a body over `RAYLANE_INGRESS_MAX_BODY_BYTES` gets 413, from its Content-Length before any of it
  is read, or as soon as a streamed body passes it;
- a body not complete within `RAYLANE_INGRESS_BODY_TIMEOUT_S` of the request's start gets 408;
- the bodies of all requests in progress together hold at most `RAYLANE_INGRESS_BODY_BUDGET_BYTES`
  of a process's memory: a request that would pass it gets 503 with Retry-After.

A local Ray that raylane starts gets the first two from `serve.max_body_bytes` and
`serve.body_timeout_s`; a cluster's nodes read them when Ray starts (README). HAProxy, in front
of the replicas by default, holds at most its buffer per connection and gets the same two limits
from `raylane-haproxy` (raylane.serving.haproxy).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raylane import env

MAX_BODY_ENV = env.INGRESS_MAX_BODY_BYTES.name
BODY_TIMEOUT_ENV = env.INGRESS_BODY_TIMEOUT_S.name
BUDGET_ENV = env.INGRESS_BODY_BUDGET_BYTES.name


class IngressLimits:
    """Plain ASGI middleware: the body limit, the body-read deadline and the process's body budget
    (see the module docstring). Answers its refusals itself, as JSON `{"error": ...}`."""

    held = 0
    """Body bytes received by this process's requests in progress (all instances together)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None, body_timeout_s: float | None = None,
                 budget_bytes: int | None = None) -> None:
        self.app = app
        self.max_body = max_body_bytes or env.INGRESS_MAX_BODY_BYTES.positive(int)
        self.timeout_s = body_timeout_s or env.INGRESS_BODY_TIMEOUT_S.positive(float)
        self.budget = budget_bytes or env.INGRESS_BODY_BUDGET_BYTES.positive(int)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _refuse(send, 413, f"request body of {int(length)} bytes is over the endpoint's limit of "
                                     f"{self.max_body} ({MAX_BODY_ENV}, serve.max_body_bytes)")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        state: dict[str, Any] = {"refusal": None, "started": False, "held": 0, "done": False}

        async def refuse(status: int, message: str) -> Message:
            # Answered now, before the app hears of it: a replica's own HTTP server raises when its
            # body is cut, and an answer sent after that would never leave.
            state["refusal"] = (status, message)
            if not state["started"]:
                state["started"] = True
                await _refuse(send, status, message)
            return {"type": "http.disconnect"}  # the app (the proxy) stops reading and drops the request

        async def receive_limited() -> Message:
            if state["done"]:  # after the body: waiting for a disconnect, no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await refuse(408, f"request body not received within {self.timeout_s:g} s "
                                         f"({BODY_TIMEOUT_ENV}, serve.body_timeout_s)")
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            state["held"] += size
            IngressLimits.held += size
            if state["held"] > self.max_body:
                return await refuse(413, f"request body is over the endpoint's limit of {self.max_body} "
                                         f"bytes ({MAX_BODY_ENV}, serve.max_body_bytes)")
            if size and IngressLimits.held > self.budget:
                return await refuse(503, "the endpoint holds as many request bodies as it may "
                                         f"({BUDGET_ENV}); retry shortly")
            state["done"] = not message.get("more_body", False)
            return message

        async def send_unless_refused(message: Message) -> None:
            if state["refusal"] is not None:
                return  # the answer was the refusal, already sent
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_unless_refused)
        except (Exception, asyncio.CancelledError):
            if state["refusal"] is None:  # the app's own failure; a refused request's is expected
                raise
        finally:
            IngressLimits.held -= state["held"]


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def middlewares() -> list[Middleware]:
    """The callback Ray Serve calls at each proxy's and replica's HTTP start
    (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=raylane.serving.ingress:middlewares`)."""
    from raylane.serving.control_headers import StripControlHeaders

    # The last is outermost: Serve's control headers are gone before anything reads the request.
    return [Middleware(IngressLimits), Middleware(StripControlHeaders)]
