"""The Ray Serve application: a FastAPI ingress over one registered model.

    POST /v1/models/{name}:predict   {"instances": [[...], ...]}  ->  {"predictions": [...]}
    GET  /v2/health/live | /v2/health/ready | /v2/models/{name}

Every response carries `X-Model-Version`. Bad input gets a 4xx whose JSON names what was expected.
"""

# No `from __future__ import annotations` here: FastAPI must see the real body types of the
# route methods, or it takes the request model for a query parameter.
import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylane.serving.model import LoadedModel, ServeArgs, load_from_registry

VERSION_HEADER = "X-Model-Version"

app = FastAPI(
    title="raylane inference",
    description="Predictions from the champion version of a model in the MLflow registry.",
    version="1",
)

Number = Annotated[float, Field(allow_inf_nan=False, strict=False)]


class V1PredictRequest(BaseModel):
    """KServe V1 predict request: rows of raw feature values, in the model's column order."""

    model_config = ConfigDict(extra="forbid")

    instances: list[list[Number] | dict[str, Number]] = Field(min_length=1)
    """Rows: lists of numbers in feature order, or objects mapping feature name to value."""
    return_probabilities: bool = False
    """Return class probabilities instead of class labels."""


class V1PredictResponse(BaseModel):
    predictions: list[Any]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class BadInput(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@app.middleware("http")
async def _add_model_version(request: Request, call_next: Callable) -> Any:
    response = await call_next(request)
    version = getattr(request.app.state, "model_version", None)
    if version is not None:
        response.headers[VERSION_HEADER] = version
    return response


@app.exception_handler(BadInput)
async def _bad_input(request: Request, exc: BadInput) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
    return JSONResponse({"error": f"{where}: {first['msg']}", "detail": detail}, status_code=422)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))  # e.g. Allow on a 405


def _rows_to_matrix(instances: list[Any], columns: list[str]) -> np.ndarray:
    """Returns the rows as a float matrix in column order; BadInput naming the first bad row."""
    width = len(columns)
    matrix = np.empty((len(instances), width), dtype=np.float64)
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            missing = [c for c in columns if c not in row]
            extra = [c for c in row if c not in columns]
            if missing or extra:
                problem = f"missing {missing[:3]}" if missing else f"unknown {extra[:3]}"
                raise BadInput(400, f"instances[{i}]: {problem}; expected the {width} feature names "
                                    f"{columns[0]}..{columns[-1]}")
            row = [row[c] for c in columns]
        if len(row) != width:
            raise BadInput(400, f"instances[{i}] has {len(row)} values; the model expects {width} "
                                f"numbers ({columns[0]}..{columns[-1]})")
        if not all(math.isfinite(v) for v in row):
            raise BadInput(400, f"instances[{i}]: values must be finite numbers")
        matrix[i] = row
    return matrix


@serve.deployment
@serve.ingress(app)
class ModelServer:
    """One replica: loads the model once, then answers the HTTP routes."""

    def __init__(self, args: ServeArgs, loader: Callable[[ServeArgs], LoadedModel] = load_from_registry):
        self.args = args
        self.model = loader(args)
        app.state.model_version = self.model.version

    @app.get("/", include_in_schema=False)
    def index(self) -> dict[str, Any]:
        name = self.model.name
        return {"model": name, "version": self.model.version, "docs": "/docs",
                "predict": f"/v1/models/{name}:predict", "metadata": f"/v2/models/{name}"}

    @app.get("/v2/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready(self) -> dict[str, bool]:
        return {"ready": True}  # a replica only takes traffic once __init__ has loaded the model

    @app.get("/v2")
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "raylane", "version": "1", "extensions": []}

    @app.get("/v2/models/{name}/ready")
    def model_ready(self, name: str) -> dict[str, Any]:
        model = self._model(name)
        return {"name": model.name, "ready": True}

    @app.get("/v1/models/{name}")
    def v1_model_status(self, name: str) -> dict[str, Any]:
        if name.endswith(":predict"):
            raise StarletteHTTPException(405, "use POST for :predict", headers={"Allow": "POST"})
        model = self._model(name)  # KServe V1 readiness: 200 once the model is loaded
        return {"name": model.name, "ready": True}

    @app.get("/v2/models/{name}", response_model=ModelMetadata)
    def metadata(self, name: str) -> ModelMetadata:
        model = self._model(name)
        label_type = "INT64" if all(isinstance(c, int) for c in model.classes) else "BYTES"
        return ModelMetadata(
            name=model.name, versions=[model.version], platform=f"mlflow-pyfunc/{model.framework}",
            inputs=[TensorMetadata(name="features", datatype="FP64",
                                   shape=[-1, len(model.feature_columns)])],
            outputs=[TensorMetadata(name="predictions", datatype=label_type, shape=[-1])],
            parameters={"feature_names": model.feature_columns, "classes": model.classes},
        )

    @app.post("/v1/models/{name}:predict", response_model=V1PredictResponse)
    def predict(self, name: str, request: V1PredictRequest) -> V1PredictResponse:
        model = self._model(name)
        rows = _rows_to_matrix(request.instances, model.feature_columns)
        labels, probabilities = model.predict(rows)
        bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        if bad.size:  # values so large that the network overflowed: no answer beats a wrong one
            raise BadInput(400, f"instances{bad[:5].tolist()}: values out of the range the model "
                                "can compute with (the network overflowed); send raw feature values")
        if request.return_probabilities:
            return V1PredictResponse(predictions=probabilities.tolist())
        return V1PredictResponse(predictions=labels)

    def _model(self, name: str) -> LoadedModel:
        if name != self.model.name:
            raise BadInput(404, f"model {name!r} not found; this endpoint serves {self.model.name!r}")
        return self.model


def build_app(args: ServeArgs | dict[str, Any],
              loader: Callable[[ServeArgs], LoadedModel] = load_from_registry) -> Any:
    """Returns the Serve application for `args`; `serve run` and `serve deploy` call this."""
    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    return ModelServer.options(
        name=f"{args.model_name}-model",
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.replica_cpus},
    ).bind(args, loader)
