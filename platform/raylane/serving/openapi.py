"""The OpenAPI document and the V2 model metadata, filled in from the served model's signature.

FastAPI describes the routes; this adds what only the loaded model knows: the input width and
feature names, the datatypes, real example rows, and the bearer scheme when auth is on.
"""

# No `from __future__ import annotations`: FastAPI reads ModelMetadata's field types at runtime.
from typing import Any

from pydantic import BaseModel

from raylane.serving.auth import OPEN_PATHS
from raylane.serving.model import LoadedModel, ServeArgs
from raylane.serving.protocols.invocations import InvocationsRequest
from raylane.serving.protocols.v2 import V2InferRequest, V2InferResponse

V2_KIND_DATATYPES = {"numeric": "FP64", "categorical": "BYTES", "boolean": "BOOL"}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """Open Inference Protocol model metadata."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: str
    """What was wrong, naming the field or value."""


def _body(schema_name: str, *content_types: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name}"}
    content = {ct: {"schema": ref if ct == "application/json" else {"type": "string"}}
               for ct in content_types}
    return {"requestBody": {"required": True, "content": content}}


V2_INFER_EXTRA = {**_body("V2InferRequest", "application/json"),
                  "responses": {"200": {"description": "Inference result", "content": {
                      "application/json": {"schema": {"$ref": "#/components/schemas/V2InferResponse"}}}}}}
INVOCATIONS_EXTRA = _body("InvocationsRequest", "application/json", "text/csv")


def input_datatype(model: LoadedModel) -> str:
    kinds = set(model.input_datatypes)
    return kinds.pop() if len(kinds) == 1 else "FP64"


def model_metadata(model: LoadedModel, held: dict[str, str]) -> ModelMetadata:
    if model.numeric_only:
        inputs = [TensorMetadata(name="features", datatype=input_datatype(model),
                                 shape=[-1, len(model.feature_columns)])]
    else:  # categorical or boolean columns: one input per feature, by name
        inputs = [TensorMetadata(name=c, datatype=V2_KIND_DATATYPES[model.kinds[c]], shape=[-1])
                  for c in model.feature_columns]
    return ModelMetadata(
        name=model.name, versions=sorted(held, key=lambda v: int(v) if v.isdigit() else 0),
        platform=f"mlflow-pyfunc/{model.framework}",
        inputs=inputs,
        outputs=[TensorMetadata(name="predictions", datatype=model.label_datatype, shape=[-1])] + (
            [] if model.regression else
            [TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(model.classes)])]),
        parameters={"version": model.version, "feature_names": model.feature_columns,
                    "feature_datatypes": model.input_datatypes, "classes": model.classes,
                    "task": model.task,
                    "served_versions": held},
    )


def schema(app: Any, args: ServeArgs, model: LoadedModel) -> dict[str, Any]:
    """Returns the OpenAPI document of `app` for the model the replica serves."""
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description,
                       routes=app.routes)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for cls in (V2InferRequest, V2InferResponse, InvocationsRequest, ErrorResponse):
        doc = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(doc.pop("$defs", {}))
        components[cls.__name__] = doc
    columns, width = model.feature_columns, len(model.feature_columns)
    # Under auth the document is public, so it shows zeros rather than rows of the real data.
    rows = (model.example[:2] if args.auth is None else []) or [[0.0] * width]
    _tighten_v1(components.get("V1PredictRequest"), columns, rows, model.kinds)
    if model.numeric_only:
        inputs = [{"name": "features", "shape": [len(rows), width], "datatype": "FP64",
                   "data": [v for row in rows for v in row]}]
    else:
        inputs = [{"name": c, "shape": [len(rows)], "datatype": V2_KIND_DATATYPES[model.kinds[c]],
                   "data": [row[i] for row in rows]} for i, c in enumerate(columns)]
    components["V2InferRequest"]["example"] = {"id": "1", "inputs": inputs}
    components["InvocationsRequest"]["example"] = {"dataframe_split": {"columns": columns, "data": rows}}
    if args.auth is not None:
        components_root = spec["components"]
        components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param.get("name") == "name" and param.get("in") == "path":
                    param["schema"] = {**param.get("schema", {}), "enum": [args.model_name]}
            responses = operation.setdefault("responses", {})
            responses.setdefault("4XX", {"description": "Bad request: the error names the field or value",
                                         "content": {"application/json": {"schema": {
                                             "$ref": "#/components/schemas/ErrorResponse"}}}})
            if args.auth is not None and path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
    return spec


def _tighten_v1(doc: dict[str, Any] | None, columns: list[str], rows: list[list[Any]],
                kinds: dict[str, str]) -> None:
    """Makes each V1 instance exactly one value per feature, in order, or an object with every
    feature name: numbers for numeric columns, text for categorical ones, true/false for boolean
    ones (null allowed where the model imputes: a model with categorical or boolean columns)."""
    if not doc:
        return
    width = len(columns)
    numeric_only = all(kinds.get(c, "numeric") == "numeric" for c in columns)
    json_types = {"numeric": "number", "categorical": "string", "boolean": "boolean"}

    def value(column: str) -> dict[str, Any]:
        kind = json_types[kinds.get(column, "numeric")]
        return {"type": kind} if numeric_only else {"anyOf": [{"type": kind}, {"type": "null"}]}

    items = doc.get("properties", {}).get("instances", {}).get("items", {})
    for variant in items.get("anyOf", []):
        if variant.get("type") == "array":
            variant.update(minItems=width, maxItems=width)
            if numeric_only:
                variant["items"] = {"type": "number"}
            else:
                variant.pop("items", None)
                variant["prefixItems"] = [value(c) for c in columns]
        elif variant.get("type") == "object":
            variant.update(required=columns, properties={c: value(c) for c in columns},
                           additionalProperties=False)
    doc["example"] = {"instances": rows}
