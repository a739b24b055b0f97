"""The simplest fast server a user would write: FastAPI + uvicorn, one process, predict inline.

    BARE_FASTAPI_MODEL_URI=models:/digits_tensor/1 MLFLOW_TRACKING_URI=sqlite:///... \\
        uvicorn benchmarks.bare_fastapi:app --port 8080 --no-access-log

Loads the torch module that `benchmarks/digits_baseline.py` logged (raylane's network with its
standardisation and argmax) once at start, and answers MLflow's scoring request
`POST /invocations {"inputs": [[64 floats], ...]}` with `{"predictions": [labels]}`: pydantic
parses the body as a list of float lists, the model runs inline, nothing else (no signature check,
no batching, no per-request log line).

    app        a plain `def` route: FastAPI runs it in its thread pool
    app_async  an `async def` route: the model runs on the event loop itself

On the 2-core machine, quiet, `app_async` answered one connection faster (p50 0.32 ms against
0.57 ms, 1-row requests); but at 64 connections `app` did 1.2-1.6k req/s against 0.2-1k for
`app_async` whenever anything else ran beside it, and its p99 stayed at 0.2-0.45 s where
`app_async`'s reached 2-4 s (the model on the loop delays reading the other connections). So `app`
is the baseline; benchmarks/serve.py --fastapi-route async measures the other.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

MODEL_URI_ENV = "BARE_FASTAPI_MODEL_URI"
loaded: dict[str, Any] = {}


class Invocation(BaseModel):
    inputs: list[list[float]]


@asynccontextmanager
async def load_model(_: FastAPI) -> AsyncIterator[None]:
    import mlflow.pytorch
    import torch

    loaded["torch"] = torch
    loaded["model"] = mlflow.pytorch.load_model(os.environ[MODEL_URI_ENV]).eval()
    yield


def predict(request: Invocation) -> dict[str, list[int]]:
    torch = loaded["torch"]
    with torch.inference_mode():
        labels = loaded["model"](torch.tensor(request.inputs, dtype=torch.float32))
    return {"predictions": labels.tolist()}


app = FastAPI(lifespan=load_model)
app_async = FastAPI(lifespan=load_model)


# No return annotations on the routes: FastAPI would validate each answer against them.
@app.post("/invocations")
def invocations(request: Invocation):
    return predict(request)


@app_async.post("/invocations")
async def invocations_async(request: Invocation):
    return predict(request)
