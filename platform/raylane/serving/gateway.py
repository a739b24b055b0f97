"""The gateway: raylane's Serve application at `/`, beside one application per served model.

    GET  /v2/repository/index (or POST)   every model served here, by version, with its state
    GET  /, /v2, /v2/health/live|ready, /ping, /health
    GET  /docs, /openapi.json[?model=NAME]
    POST /v1/models/{name}:predict, /invocations[?model=NAME]   passed on to the model's application

Each model's application (raylane.serving.app, mounted at `/v2/models/<name>`) has its own
replicas, alias and canary. Serve routes by path prefix, so V2 requests reach a model's replicas
directly; behind HAProxy, `raylane-haproxy` sends V1 and `/invocations` there directly too. What
still arrives here for a model (Serve's Python proxy, or a Ray whose HAProxy runs without
raylane's command) is passed on to its replicas through a DeploymentHandle: the same answer, one
Ray call slower. `/invocations` names its model with `?model=NAME` or `X-Model-Name: NAME`, or
needs none while one model is served.
"""

# No `from __future__ import annotations`: FastAPI must see the route parameters' real types.
import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from ray import serve
from starlette.types import ASGIApp, Receive, Scope, Send

from raylane import serving
from raylane._compat.starlette import route_path
from raylane.config import AuthConfig, _Section
from raylane.serving import routes
from raylane.serving.auth import CHALLENGE, OPEN_PATHS, TokenAuth
from raylane.serving.browsers import BrowserGuard, machine_names

MODELS_TTL_S = 1.0
"""How long the gateway reuses its list of served models (read from Serve's controller)."""
# Serve's application states -> Triton's model-repository states.
STATES = {"RUNNING": "READY", "DEPLOYING": "LOADING", "DELETING": "UNLOADING"}


class GatewayArgs(_Section):
    """Arguments of the gateway application: the endpoint-wide settings of the last deploy."""

    auth: AuthConfig | None = None
    """Bearer tokens for the gateway's own routes (the models check theirs on what is passed on)."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    allowed_hosts: list[str] | None = None
    """The Host names answered (serve.allowed_hosts, resolved by the deploy); unset: see browsers."""
    cors_origins: list[str] = Field(default_factory=list)
    body_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    access_log: bool = False


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# Defined before the app: `serve.ingress` pickles the app, with the globals its routes use, when
# the class below is decorated.
class _Refused(Exception):
    def __init__(self, status: int, message: str, models: dict[str, str] | None) -> None:
        super().__init__(message)
        self.status, self.models = status, models

    def response(self, mlflow: bool = False) -> JSONResponse:
        served = "" if self.models is None else f"; served: {', '.join(sorted(self.models)) or 'none'}"
        message = (f"{self}{served}. Pick one with ?{routes.MODEL_PARAM}=NAME or the "
                   f"{routes.MODEL_HEADER} header")
        extra = {"error_code": "BAD_REQUEST" if self.status == 400 else "RESOURCE_DOES_NOT_EXIST",
                 "message": message} if mlflow else {}
        return JSONResponse({"error": message, **extra}, status_code=self.status)


def _refused(status: int, message: str, path: str) -> JSONResponse:
    """A body refused (413, 408) in the protocol's shape (/invocations: MLflow's, as the model's own
    app answers)."""
    extra = {"error_code": "BAD_REQUEST", "message": message} if path == "/invocations" else {}
    return JSONResponse({"error": message, **extra}, status_code=status)


def _not_served(name: str, models: dict[str, str] | None) -> JSONResponse:
    """404 for a model not served; the models that are, unless `models` is None (not to be told)."""
    served = "" if models is None else f"; served: {', '.join(sorted(models)) or 'none'}"
    return _error(404, f"model {name!r} is not served here{served}")


gateway = FastAPI(title="raylane inference", docs_url=None, redoc_url=None, openapi_url=None,
                  description="The models served on this endpoint; each model's own routes are "
                              "documented at /docs?model=NAME.")
# The replica's Gateway, for the middleware: in raylane.serving.REPLICA["gateway"], not in a dict
# of this module. Serve runs the class pickled by value (this module's `Gateway` is the Deployment,
# not the class), so a dict here written by __init__ would be a copy the middleware never sees.


class GatewayAuth:
    """Bearer tokens on the gateway's own routes; what is passed on is checked by its model (whose
    tokens may differ), and the gateway's answers to an unchecked request name no model."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = serving.REPLICA.get("gateway")
        path = route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or server is None or server.auth is None or _passed_on(path) \
                or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        reason = server.auth.check(headers.get("authorization"))  # the first one, as Starlette reads it
        if reason is None:
            await self.app(scope, receive, send)
            return
        challenge = CHALLENGE + (', error="invalid_token"' if "authorization" in headers else "")
        await _error(401, reason, {"WWW-Authenticate": challenge})(scope, receive, send)


def _passed_on(path: str) -> bool:
    return path.startswith("/v1/models/") or path == "/invocations"


def _gateway_server() -> "Gateway | None":
    return serving.REPLICA.get("gateway")


gateway.add_middleware(GatewayAuth)
gateway.add_middleware(BrowserGuard, server=_gateway_server)  # outermost: the Host before auth


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(gateway)
class Gateway:
    def __init__(self, args: GatewayArgs) -> None:
        self.args = args
        if args.allowed_hosts is None:
            machine_names()  # the default allow-list's lookup, now rather than in a request
        self.auth = TokenAuth(args.auth) if args.auth else None
        self._models: tuple[float, dict[str, str]] = (0.0, {})
        self._handles: dict[str, Any] = {}
        serving.REPLICA["gateway"] = self

    # --- what is served here ------------------------------------------------------------------------
    async def models(self) -> dict[str, str]:
        """Served model name -> its application's Serve status (cached for MODELS_TTL_S)."""
        at, models = self._models
        if time.monotonic() - at > MODELS_TTL_S:
            status = await asyncio.to_thread(serve.status)
            models = {name: app.status.value if hasattr(app.status, "value") else str(app.status)
                      for app_name, app in status.applications.items()
                      if (name := routes.model_of_app(app_name)) is not None}
            self._models = (time.monotonic(), models)
            self._handles = {name: h for name, h in self._handles.items() if name in models}
        return models

    async def _handle(self, name: str) -> Any:
        """The model application's handle, looked up once (the lookup asks Serve's controller)."""
        if name not in self._handles:
            self._handles[name] = await asyncio.to_thread(serve.get_app_handle, routes.model_app(name))
        return self._handles[name]

    def _may_list(self, request: Request) -> bool:
        """Whether an error may name the models served: the caller holds a token the gateway accepts,
        or the gateway asks for none."""
        return self.auth is None or self.auth.check(request.headers.get("authorization")) is None

    async def _pick(self, request: Request) -> str:
        models = await self.models()
        name = request.query_params.get(routes.MODEL_PARAM) or request.headers.get(routes.MODEL_HEADER)
        if name is None:
            if len(models) == 1:
                return next(iter(models))
            raise _Refused(400, "several models are served here" if models else "no model is served here",
                           models if self._may_list(request) else None)
        if name not in models:
            raise _Refused(404, f"model {name!r} is not served here",
                           models if self._may_list(request) else None)
        return name

    # --- passed on to a model's replicas -----------------------------------------------------------
    async def _forward(self, name: str, request: Request) -> Response:
        models = await self.models()
        if name not in models:
            return _not_served(name, models if self._may_list(request) else None)
        length, limit = request.headers.get("content-length"), self.args.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return _refused(413, f"request body of {length} bytes is over the limit of {limit} "
                                 "(serve.max_body_bytes)", request.scope["path"])
        body = bytearray()
        try:
            async with asyncio.timeout(self.args.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        return _refused(413, f"request body is over the limit of {limit} bytes "
                                             "(serve.max_body_bytes)", request.scope["path"])
        except TimeoutError:
            return _refused(408, f"request body not received within {self.args.body_timeout_s:g} s "
                                 "(serve.body_timeout_s)", request.scope["path"])
        try:
            handle = await self._handle(name)
            status, headers, content = await handle.forward.remote(
                request.method, route_path(request.scope), request.scope["query_string"],
                list(request.scope["headers"]), bytes(body))
        except Exception as err:  # the model being removed or replaced right now
            self._handles.pop(name, None)
            return _error(503, f"model {name!r} did not answer: {type(err).__name__}; try again",
                          {"Retry-After": "1"})
        answer = Response(content, status_code=status)
        # Via (RFC 9110): this answer took the gateway's extra hop, not the ingress's direct route.
        answer.raw_headers = [(k, v) for k, v in headers if k.lower() != b"content-length"] + \
            [(b"content-length", str(len(content)).encode()), (b"via", b"1.1 raylane-gateway")]
        return answer

    @gateway.post("/v1/models/{name}:predict")
    async def v1_predict(self, name: str, request: Request) -> Response:
        return await self._forward(name, request)

    @gateway.get("/v1/models/{name}")
    async def v1_status(self, name: str, request: Request) -> Response:
        return await self._forward(name.removesuffix(":predict"), request) if not name.endswith(":predict") \
            else _error(405, "use POST for :predict", {"Allow": "POST"})

    async def _forward_picked(self, request: Request, mlflow: bool = False) -> Response:
        try:
            name = await self._pick(request)
        except _Refused as refused:
            return refused.response(mlflow=mlflow)
        return await self._forward(name, request)

    @gateway.post("/invocations")
    async def invocations(self, request: Request) -> Response:
        return await self._forward_picked(request, mlflow=True)

    @gateway.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Response:
        return await self._forward_picked(request)

    @gateway.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        try:
            name = await self._pick(request)
        except _Refused as refused:
            return refused.response()
        return get_swagger_ui_html(openapi_url=f"/openapi.json?{routes.MODEL_PARAM}={name}",
                                   title=f"raylane inference: {name}")

    # --- the endpoint's own routes ------------------------------------------------------------------
    @gateway.api_route("/v2/repository/index", methods=["GET", "POST"])
    async def repository_index(self) -> list[dict[str, Any]]:
        """Triton's model-repository extension: one entry per version held, with its state."""
        models = await self.models()

        async def entries(name: str, status: str) -> list[dict[str, Any]]:
            state = STATES.get(status, "UNAVAILABLE")
            if state != "READY":
                return [{"name": name, "version": "", "state": state, "reason": status.lower()}]
            try:
                described = await asyncio.wait_for(
                    serve.get_app_handle(routes.model_app(name)).describe.remote(), timeout=10)
            except Exception as err:  # a model being replaced or removed right now
                return [{"name": name, "version": "", "state": "UNAVAILABLE", "reason": str(err)[:200]}]
            return [{"name": name, "version": version, "state": "READY", "reason": "", "role": role}
                    for version, role in described["versions"].items()]

        listed = await asyncio.gather(*(entries(n, s) for n, s in sorted(models.items())))
        return [entry for entries_of_model in listed for entry in entries_of_model]

    @gateway.get("/")
    async def index(self) -> dict[str, Any]:
        models = sorted(await self.models())
        return {"status": "alive", "models": models, "repository": "/v2/repository/index",
                "docs": "/docs" + (f"?{routes.MODEL_PARAM}={models[0]}" if len(models) == 1 else ""),
                "routes": {name: {"v1": f"/v1/models/{name}:predict", "v2": f"/v2/models/{name}/infer",
                                  "mlflow": f"/invocations?{routes.MODEL_PARAM}={name}"} for name in models}}

    @gateway.get("/v2")
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "raylane", "version": "1", "extensions": ["binary_tensor_data", "model_repository"]}

    @gateway.get("/v2/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @gateway.get("/v2/health/ready")
    async def ready(self) -> Response:
        """Ready once a model is served and every model served is (Triton's server readiness)."""
        models = await self.models()
        ready = bool(models) and all(status == "RUNNING" for status in models.values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @gateway.get("/ping")
    async def ping(self) -> Response:
        """MLflow's health check: 200 while a model answers (another one being deployed or failing
        does not take the endpoint out of a load balancer)."""
        running = any(status == "RUNNING" for status in (await self.models()).values())
        return Response("\n", media_type="application/json", status_code=200 if running else 503)

    @gateway.get("/health")
    async def health(self) -> Response:
        return await self.ping()

    @gateway.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                       include_in_schema=False)
    async def not_found(self, path: str) -> Response:
        """`/v2/models/<name>...` of a model not served here, and every unknown path."""
        if path.startswith("v2/models/"):  # the gateway's auth already checked this request
            return _not_served(path.split("/")[2], await self.models())
        return _error(404, f"no route /{path}; see / for the models served here")

    # --- called through a DeploymentHandle ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"gateway": self.args.model_dump(mode="json")}


def build_gateway(args: GatewayArgs | dict[str, Any]) -> Any:
    """Returns the gateway application; mount it at `/` (name routes.GATEWAY_APP)."""
    args = args if isinstance(args, GatewayArgs) else GatewayArgs.model_validate(args)
    return Gateway.options(logging_config={"enable_access_log": args.access_log}).bind(args)
