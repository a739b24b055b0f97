"""The Ray Serve application: one deployment, three inference protocols, over a registered model.

    POST /v1/models/{name}:predict                      KServe V1
    POST /v2/models/{name}[/versions/{version}]/infer   Open Inference Protocol (KServe V2, Triton)
    POST /invocations                                   MLflow scoring protocol (`mlflow models serve`)
    GET  /v2, /v2/health/live|ready, /v2/models/{name}[/versions/{version}][/ready], /ping, /health
    GET  /v2/models/{name}[/versions/{version}]/drift   live traffic against the model's reference
    GET  /docs, /openapi.json                           generated from the model's signature

Requests are merged by `@serve.batch` into one model call. Every response names the version that
answered in `X-Model-Version`. Bad input gets a 4xx whose JSON `error` names what was expected.
An image model takes its images on every protocol (protocols/images.py), and on the three POST
routes one image as the body (Content-Type image/png or image/jpeg).
"""

# No `from __future__ import annotations` here: FastAPI must see the real body types of the
# route methods, or it takes the request model for a query parameter.
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raylane import env, serving
from raylane._compat.starlette import route_path
from raylane._compat.uvicorn import install_one_write_responses
from raylane.errors import ModelNotFoundError
from raylane.serving import browsers, openapi, routes
from raylane.serving.auth import CHALLENGE, OPEN_PATHS, TokenAuth
from raylane.serving.drift_watch import DriftWatch
from raylane.serving.errors import (
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    UnprocessableEntity,
    UnsupportedMediaType,
    describe_validation,
    validation_problems,
)
from raylane.serving.metrics import ServingMetrics, protocol_of
from raylane.serving.model import LoadedModel, ServeArgs
from raylane.serving.protocols.images import image_frame, raw_image, v1_images
from raylane.serving.protocols.invocations import invocations_response, parse_invocations
from raylane.serving.protocols.rows import check_computable, encode_rows, refuse_out_of_range
from raylane.serving.protocols.v1 import (
    V1ImagePredictRequest,
    V1PredictRequest,
    V1PredictResponse,
    rows_to_frame,
    rows_to_matrix,
)
from raylane.serving.protocols.v2 import (
    BINARY_HEADER,
    V2InferRequest,
    V2Tensor,
    parse_v2,
    v2_matrix,
    v2_response,
)
from raylane.serving.rollout import ModelSlot

VERSION_HEADER = "X-Model-Version"
PARSE_ON_LOOP_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the replica's event loop (a few ms at most). Bigger ones
are parsed in a worker thread, one at a time per replica, so a heavy body never holds up the
health checks and small requests the loop is answering meanwhile."""
GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a replica's parsing thread keeps the GIL while the event loop waits for it (Python's
default, 5 ms, makes each step of a request the loop answers meanwhile wait that long)."""
IMAGE_DECODES_AT_ONCE = 2
"""Requests whose images a replica decodes at the same time; the others wait their turn. With each
image held to `request_pixel_limit`, this bounds a replica's decoding memory whatever the load."""

# The one place raylane's error types become HTTP statuses (as KServe's handler table does); call
# sites raise the type. FastAPI's and Starlette's own exceptions keep their handlers below, and a
# refused bearer token gets its 401 with the challenge header from the middleware.
STATUS: dict[type[Exception], int] = {
    InvalidInput: 400,
    ModelNotFoundError: 404,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    UnprocessableEntity: 422,
}


def _json_error(status: int, message: str, headers: dict[str, str] | None = None,
                extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, **(extra or {})}, status_code=status, headers=headers)


def error_response(err: Exception, path: str) -> JSONResponse:
    """Returns the answer to a request refused with one of the STATUS types, in its protocol's
    shape: KServe and the Open Inference Protocol `{"error": ...}`; /invocations adds MLflow's
    `error_code` and `message`, as `mlflow models serve` answers."""
    status = next(STATUS[cls] for cls in type(err).__mro__ if cls in STATUS)
    message = str(err)
    if path != "/invocations":
        return _json_error(status, message)
    code = getattr(err, "error_code", None) or "BAD_REQUEST"
    return _json_error(status, message, extra={"error_code": code, "message": message})


async def _typed_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, route_path(request.scope))


app = FastAPI(
    title="raylane inference",
    description="Predictions from a model in the MLflow registry, by KServe V1, the Open Inference "
                "Protocol (V2) and MLflow's scoring protocol. Every response carries X-Model-Version.",
    version="1",
    exception_handlers={error_type: _typed_error for error_type in STATUS},
)


def first_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name, the first of each repeated one (as Starlette's
    `request.headers.get` and most gateways read them: a second Authorization changes nothing)."""
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def _replica_server() -> "ModelServer | None":
    return serving.REPLICA.get("server")


class ServingMiddleware:
    """Auth, body limit, metrics and the version header, as plain ASGI (no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = serving.REPLICA.get("server")
        if scope["type"] != "http" or server is None:
            await self.app(scope, receive, send)
            return
        # Mounted at /v2/models/<name> (raylane.serving.routes), the app still routes by whole paths:
        # V1 and MLflow requests reach it too, from the ingress or the gateway.
        mount = routes.route_prefix(server.args.model_name)
        if scope.get("root_path", "").endswith(mount):
            scope["root_path"] = scope["root_path"][:-len(mount)]
        moved = scope["root_path"] + mount + routes.PASSED_ON
        if scope["path"].startswith(moved + "/"):  # moved by raylane-haproxy: back to the original
            scope["path"] = scope["root_path"] + scope["path"][len(moved):]
            scope["raw_path"] = scope["path"].encode()
        path, start = route_path(scope), time.perf_counter()  # without a route prefix
        answering = serving.ANSWERING.set(None)
        headers = first_headers(scope)
        if path == "/openapi.json":  # FastAPI's document, completed with what the model knows
            await JSONResponse(server.openapi_schema())(scope, receive, send)
            return
        status_seen = {"status": 500, "version": server.slot.champion.version}

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
                raw = message.setdefault("headers", [])
                given = [v for k, v in raw if k.lower() == b"x-model-version"]
                if given:
                    status_seen["version"] = given[0].decode()
                else:
                    status_seen["version"] = serving.ANSWERING.get() or status_seen["version"]
                    raw.append((b"x-model-version", status_seen["version"].encode()))
            await send(message)

        try:
            refusal = self._refuse(server, path, headers, scope["method"])
            if refusal is not None:
                await refusal(scope, receive, send_with_version)
                return
            limited = self._limited(receive, server.args.max_body_bytes, server.args.body_timeout_s)
            await self.app(scope, limited, send_with_version)
        finally:
            serving.ANSWERING.reset(answering)
            server.metrics.request(status_seen["version"], protocol_of(path), status_seen["status"],
                                   time.perf_counter() - start)

    @staticmethod
    def _refuse(server: "ModelServer", path: str, headers: dict[str, str], method: str) -> Response | None:
        if server.auth is not None and path not in OPEN_PATHS:
            reason = server.auth.check(headers.get("authorization"))
            if reason is not None:
                challenge = CHALLENGE + (', error="invalid_token"' if "authorization" in headers else "")
                return _json_error(401, reason, {"WWW-Authenticate": challenge})
        binary, image = BINARY_HEADER.lower() in headers, server.slot.champion.is_image
        unaccepted = method == "POST" and browsers.refused_media_type(path, headers.get("content-type"),
                                                                      binary, image)
        if unaccepted:
            return error_response(UnsupportedMediaType(unaccepted), path)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.args.max_body_bytes:
            return error_response(PayloadTooLarge(f"request body of {length} bytes is over the limit of "
                                                  f"{server.args.max_body_bytes} (serve.max_body_bytes)"),
                                  path)
        return None

    @staticmethod
    def _limited(receive: Receive, limit: int, timeout_s: float) -> Receive:
        """`receive`, refusing a body over `limit` bytes (413) or not complete `timeout_s` after the
        request reached the replica (408): a client sending its body a byte at a time holds one of
        the replica's `max_ongoing_requests` slots only that long."""
        seen, done, deadline = 0, False, asyncio.get_running_loop().time() + timeout_s

        async def receive_limited() -> Message:
            nonlocal seen, done
            if done:  # after the body: waiting for a disconnect, no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"request body not received within {timeout_s:g} s "
                                     "(serve.body_timeout_s)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes "
                                          "(serve.max_body_bytes)")
                done = not message.get("more_body", False)
            return message

        return receive_limited


app.add_middleware(ServingMiddleware)
app.add_middleware(browsers.BrowserGuard, server=_replica_server)  # outermost: before auth


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _json_error(400, f"malformed JSON: {errors[0].get('ctx', {}).get('error', 'cannot parse')}")
    # FastAPI's `detail` for its clients, one entry per problem rather than per union alternative.
    detail = validation_problems(errors, exc.body)
    # NaN and Infinity are bad values, 400 as on every protocol; a body of the wrong shape is 422.
    status = 400 if all(problem["type"] == "finite_number" for problem in detail) else 422
    return _json_error(status, describe_validation(errors, exc.body), extra={"detail": detail})


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc.__cause__, tuple(STATUS)):  # FastAPI's 400 for an error raised in reading a body
        return error_response(exc.__cause__, route_path(request.scope))
    return _json_error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


def _v1_request(body: bytes, content_type: str | None, request_type: type[BaseModel]) -> Any:
    """The V1 request validated from its body as FastAPI validates a body parameter (the route reads
    the body itself, since an image model also takes a raw image): JSON when the content type says
    JSON or is missing, else the bytes as they are (which no request model takes); the same errors
    and statuses."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    value: Any = body
    mime = (content_type or "application/json").partition(";")[0].strip().lower()
    if mime.startswith("application/") and (mime == "application/json" or mime.endswith("+json")):
        refuse_out_of_range(body)  # an int no float holds would pass the schema, then fail as a 500
        try:
            value = json.loads(body)
        except json.JSONDecodeError as err:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", err.pos),
                                           "msg": "JSON decode error", "ctx": {"error": err.msg}}]) from None
        except (ValueError, RecursionError):  # not UTF-8, nested too deep: FastAPI's own 400
            raise InvalidInput("There was an error parsing the body") from None
    try:
        return request_type.model_validate(value, from_attributes=True)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()],
                                     body=value) from None


def _v1_rows(instances: list[Any], model: LoadedModel) -> np.ndarray | pd.DataFrame:
    """The V1 instances as the model's rows (images, a typed model's raw columns, or numbers)."""
    if model.is_image:
        return v1_images(instances, model)
    return (rows_to_matrix(instances, model.feature_columns) if model.numeric_only
            else rows_to_frame(instances, model.feature_columns))


def _v2_rows(body: bytes, json_length: str | None, model: LoadedModel
             ) -> tuple[V2InferRequest, np.ndarray | pd.DataFrame]:
    infer_request, binary = parse_v2(body, json_length)
    return infer_request, v2_matrix(infer_request, binary, model)


def _answer(body: bytes, model: LoadedModel, headers: dict[str, str] | None = None) -> Response:
    headers = {"content-type": "application/json", **(headers or {}), VERSION_HEADER: model.version}
    return Response(body, headers=headers)


def _replica_name() -> str:
    """Serve's name of this replica (its `replica` tag in the metrics)."""
    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # not inside a Serve replica (a test building the class directly)
        return "unknown"


@serve.deployment
@serve.ingress(app)
class ModelServer:
    """One replica: holds the champion (and canary), follows the registry, answers the routes."""

    def __init__(self, args: ServeArgs):
        # Behind HAProxy (asked for, or the cluster's Ray started in HAProxy mode, as a `serve deploy`
        # of serve_apps does it) a killed replica then leaves no cut answer HAProxy cannot replay.
        if args.proxy == "haproxy" or env.SERVE_ENABLE_HA_PROXY.value() == "1":
            install_one_write_responses()  # see raylane._compat.uvicorn
        self.args = args
        if args.allowed_hosts is None:
            browsers.machine_names()  # the default allow-list's lookup, now rather than in a request
        self.metrics = ServingMetrics(args.model_name)
        self.slot = ModelSlot(args, on_load=lambda m: self.metrics.loaded(m.version, m.load_seconds))
        self.auth = TokenAuth(args.auth) if args.auth else None
        self._predict_batch.set_max_batch_size(args.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)
        if args.follows or args.canary or args.auth:
            self.slot.follow(also=self.auth.reload if self.auth else None)
        self._openapi: tuple[str, dict[str, Any]] | None = None
        self._decoding = asyncio.Semaphore(IMAGE_DECODES_AT_ONCE)
        self._parsing = asyncio.Semaphore(1)
        self.drift = DriftWatch(args.model_name, args.drift_window, args.drift_threshold, self.metrics,
                                _replica_name())
        self.drift.start(self.slot.loaded)
        serving.REPLICA["server"] = self

    # --- model calls ----------------------------------------------------------------------------------
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _predict_batch(self, items: list[tuple[LoadedModel, np.ndarray, bool, pd.DataFrame | None]]
                             ) -> list[np.ndarray]:
        """One model call per version for the whole batch; returns each request's probabilities.
        Rows are raw (an all-numeric model) or already encoded (a typed model's network input, with
        its raw frame for the drift window; an image model's, without)."""
        results: list[np.ndarray | None] = [None] * len(items)
        for version, encoded in {(model.version, encoded) for model, _, encoded, _ in items}:
            members = [i for i, (model, _, e, _) in enumerate(items)
                       if model.version == version and e == encoded]
            model = items[members[0]][0]
            rows = np.concatenate([items[i][1] for i in members])
            probabilities = model.forward(rows) if encoded else model.predict_proba(rows)
            self.metrics.batch(version, len(rows))
            raw = [items[i][3] for i in members] if encoded else rows
            self.drift.record(model, None if encoded and raw[0] is None else raw, probabilities)
            offset = 0
            for i in members:
                n = len(items[i][1])
                results[i], offset = probabilities[offset:offset + n], offset + n
        return results  # type: ignore[return-value]

    async def _parsed(self, size: int, parse: Callable[..., Any], *args: Any) -> Any:
        """`parse(*args)`: on the event loop for a body of at most PARSE_ON_LOOP_BYTES, else in a
        worker thread, one at a time (a parse is mostly Python: parallel ones would only take turns
        at the GIL, and each one more slows the loop's turn)."""
        if size <= PARSE_ON_LOOP_BYTES:
            return parse(*args)
        async with self._parsing:
            # Only while the thread parses: the whole process's threads (Serve runs user code on a
            # thread of its own) then hand the GIL over 10x as often, which costs throughput.
            previous = sys.getswitchinterval()
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
            try:
                return await asyncio.to_thread(parse, *args)
            finally:
                sys.setswitchinterval(previous)

    async def _probabilities(self, model: LoadedModel, rows: np.ndarray | pd.DataFrame,
                             field: str = "inputs") -> np.ndarray:
        if isinstance(rows, pd.DataFrame) and model.is_image:  # decoding: off the event loop, bounded
            async with self._decoding:
                encoded = await asyncio.to_thread(encode_rows, model, rows, field)
            probabilities = await self._predict_batch((model, encoded, True, None))
        elif isinstance(rows, pd.DataFrame):  # a typed model: encoded here, batched as network input
            encoded = await self._parsed(rows.size * 8, encode_rows, model, rows, field)  # ~8 bytes a value
            probabilities = await self._predict_batch((model, encoded, True, rows))
        else:
            probabilities = await self._predict_batch((model, rows, False, None))
        check_computable(probabilities)
        return probabilities

    # --- KServe V1 ------------------------------------------------------------------------------------
    @app.post("/v1/models/{name}:predict", response_model=V1PredictResponse, tags=["KServe V1"],
              openapi_extra=openapi.V1_PREDICT_EXTRA)
    async def predict(self, name: str, http: Request) -> Response:
        """Class labels (and with `return_probabilities`, class probabilities) for rows of raw
        feature values."""
        body, content_type = await http.body(), http.headers.get("content-type")
        image = raw_image(content_type, body) if self.slot.champion.is_image else None
        if image is None:  # validated before the model is looked up, as FastAPI validates a body
            request_type = V1ImagePredictRequest if self.slot.champion.is_image else V1PredictRequest
            request = await self._parsed(len(body), _v1_request, body, content_type, request_type)
        model = self._pick(name)
        if image is not None:
            request, rows = V1ImagePredictRequest(instances=[image]), image_frame(model, [image])
        else:
            rows = await self._parsed(len(body), _v1_rows, request.instances, model)
        if request.return_probabilities and model.regression:
            raise InvalidInput("return_probabilities: this is a regression model; it predicts values")
        probabilities = await self._probabilities(model, rows, "instances")
        asked = probabilities.tolist() if request.return_probabilities else None
        response = V1PredictResponse(predictions=model.labels(probabilities).tolist(), probabilities=asked)
        return _answer(response.model_dump_json(exclude_none=True).encode(), model)

    @app.get("/v1/models/{name}", tags=["KServe V1"])
    def v1_model_status(self, name: str) -> dict[str, Any]:
        """KServe V1 readiness: 200 once the model is loaded."""
        if name.endswith(":predict"):
            raise StarletteHTTPException(405, "use POST for :predict", headers={"Allow": "POST"})
        model = self._model(name)
        return {"name": model.name, "ready": True}

    # --- Open Inference Protocol (V2) -----------------------------------------------------------------
    @app.post("/v2/models/{name}/infer", tags=["Open Inference Protocol (V2)"],
              openapi_extra=openapi.V2_INFER_EXTRA)
    async def infer(self, name: str, request: Request) -> Response:
        """Inference on the serving version (champion, or the canary for its share of requests)."""
        return await self._infer(self._pick(name), request)

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["Open Inference Protocol (V2)"],
              openapi_extra=openapi.V2_INFER_EXTRA)
    async def infer_version(self, name: str, version: str, request: Request) -> Response:
        """Inference on one version held by this endpoint (the champion or the canary)."""
        return await self._infer(self._version(name, version), request)

    async def _infer(self, model: LoadedModel, request: Request) -> Response:
        body = await request.body()
        image = raw_image(request.headers.get("content-type"), body) if model.is_image else None
        if image is not None:  # one image as the body: answered as a one-row BYTES input
            tensor = V2Tensor(name=model.feature_columns[0], shape=[1], datatype="BYTES")
            infer_request, rows = V2InferRequest(inputs=[tensor]), image_frame(model, [image])
        else:
            infer_request, rows = await self._parsed(len(body), _v2_rows, body,
                                                     request.headers.get(BINARY_HEADER), model)
        probabilities = await self._probabilities(model, rows)
        content, headers = v2_response(infer_request, model, probabilities)
        return _answer(content, model, headers)

    @app.get("/v2", tags=["Open Inference Protocol (V2)"])
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "raylane", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", tags=["Health"])
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["Health"])
    def ready(self) -> dict[str, bool]:
        return {"ready": True}  # a replica only takes traffic once __init__ has loaded the model

    @app.get("/v2/models/{name}", response_model=openapi.ModelMetadata, tags=["Open Inference Protocol (V2)"])
    def metadata(self, name: str) -> Response:
        return self._metadata(self._model(name))

    @app.get("/v2/models/{name}/versions/{version}", response_model=openapi.ModelMetadata,
             tags=["Open Inference Protocol (V2)"])
    def version_metadata(self, name: str, version: str) -> Response:
        return self._metadata(self._version(name, version))

    @app.get("/v2/models/{name}/ready", tags=["Open Inference Protocol (V2)"])
    def model_ready(self, name: str) -> dict[str, Any]:
        return {"name": self._model(name).name, "ready": True}

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["Open Inference Protocol (V2)"])
    def version_ready(self, name: str, version: str) -> dict[str, Any]:
        return {"name": name, "version": self._version(name, version).version, "ready": True}

    @app.get("/v2/models/{name}/drift", response_model=openapi.DriftReport, tags=["Drift"])
    def drift_report(self, name: str) -> Response:
        """Live inputs and predictions of this replica's window against the serving version's
        reference: per-feature population stability index, missing and unseen-category rates, the
        predicted classes' shares, and the features over serve.drift_threshold."""
        return self._drift(self._model(name))

    @app.get("/v2/models/{name}/versions/{version}/drift", response_model=openapi.DriftReport,
             tags=["Drift"])
    def version_drift_report(self, name: str, version: str) -> Response:
        """The drift report of one version held by this endpoint (the champion or the canary)."""
        return self._drift(self._version(name, version))

    def _drift(self, model: LoadedModel) -> Response:
        return _answer(json.dumps(self.drift.report(model)).encode(), model)

    def _metadata(self, model: LoadedModel) -> Response:
        body = openapi.model_metadata(model, self.slot.loaded()).model_dump_json().encode()
        return _answer(body, model)

    # --- MLflow scoring protocol ----------------------------------------------------------------------
    @app.post("/invocations", tags=["MLflow scoring"], openapi_extra=openapi.INVOCATIONS_EXTRA)
    async def invocations(self, request: Request) -> Response:
        """Drop-in for `mlflow models serve`: same request formats, same `{"predictions": ...}`."""
        model = self._pick(self.args.model_name)
        body = await request.body()
        rows, params = await self._parsed(len(body), parse_invocations, body,
                                          request.headers.get("content-type"), model)
        if not len(rows):  # an empty frame: MLflow answers with empty predictions
            return _answer(b'{"predictions":[]}', model)
        probabilities = await self._probabilities(model, rows, "input")
        return _answer(invocations_response(model, probabilities, params), model)

    @app.get("/ping", tags=["Health"])
    def ping(self) -> Response:
        return Response("\n", media_type="application/json")  # as `mlflow models serve`

    @app.get("/health", tags=["Health"])
    def health(self) -> Response:
        return Response("\n", media_type="application/json")

    @app.get("/", include_in_schema=False)
    def index(self) -> dict[str, Any]:
        name = self.args.model_name
        return {"status": "alive", "model": name, "versions": self.slot.loaded(), "docs": "/docs",
                "v1": f"/v1/models/{name}:predict", "v2": f"/v2/models/{name}/infer",
                "mlflow": "/invocations", "metadata": f"/v2/models/{name}"}

    # --- called through a DeploymentHandle, not HTTP --------------------------------------------------
    async def forward(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answers one HTTP request passed on by the gateway (raylane.serving.gateway), through the
        same ASGI app, middleware included; returns (status, headers, body)."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
                 "root_path": "", "headers": headers, "client": None, "server": None, "state": {}}
        sent = False
        answer: dict[str, Any] = {"status": 500, "headers": [], "body": [], "started": False}

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no disconnect: the gateway waits for the answer
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], message.get("headers", [])
                answer["started"] = True
            elif message["type"] == "http.response.body":
                answer["body"].append(message.get("body", b""))

        try:
            await self.app(scope, receive, send)
        except Exception:
            # Starlette answers an unhandled error with 500, then raises it again for the server to
            # log: the gateway passes that 500 on (logged here), not a 503 "try again".
            if not answer["started"]:
                raise
            logging.getLogger("ray.serve").exception("raylane: %s %s failed", method, path)
        return answer["status"], list(answer["headers"]), b"".join(answer["body"])

    def describe(self) -> dict[str, Any]:
        """The arguments this replica runs with and the versions it holds."""
        return {"args": self.args.model_dump(mode="json"), "versions": self.slot.loaded()}

    def openapi_schema(self) -> dict[str, Any]:
        if self._openapi is None or self._openapi[0] != self.slot.champion.version:
            self._openapi = (self.slot.champion.version, openapi.schema(app, self.args, self.slot.champion))
        return self._openapi[1]

    def check_registry(self) -> dict[str, str]:
        """Checks the aliases now instead of at the next poll; returns the versions held."""
        self.slot.refresh()
        return self.slot.loaded()

    # --- lookups ------------------------------------------------------------------------------------
    def _model(self, name: str) -> LoadedModel:
        if name != self.args.model_name:
            raise ModelNotFoundError(f"model {name!r} not found; this endpoint serves "
                                     f"{self.args.model_name!r}")
        return self.slot.champion

    def _pick(self, name: str) -> LoadedModel:
        self._model(name)
        model = self.slot.pick()
        serving.ANSWERING.set(model.version)
        return model

    def _version(self, name: str, version: str) -> LoadedModel:
        self._model(name)
        model = self.slot.find(version)
        if model is None:
            held = ", ".join(f"{v} ({role})" for v, role in self.slot.loaded().items())
            raise ModelNotFoundError(f"version {version!r} of {name!r} is not served here; loaded: {held}")
        serving.ANSWERING.set(model.version)
        return model


def build_app(args: ServeArgs | dict[str, Any]) -> Any:
    """Returns the Serve application of one model for `args`; `serve run` and `serve deploy` call
    this. Mount it at `routes.route_prefix(name)` beside the gateway, or alone at `/`."""
    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    scaling: dict[str, Any] = (
        {"autoscaling_config": args.autoscaling.model_dump()} if args.autoscaling
        else {"num_replicas": args.num_replicas})
    return ModelServer.options(
        name=f"{args.model_name}-model",
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus},
        logging_config={"enable_access_log": args.access_log},
        **scaling,
    ).bind(args)
