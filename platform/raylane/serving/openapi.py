"""The OpenAPI document and the V2 model metadata, filled in from the served model's signature.

FastAPI describes the routes; this adds what only the loaded model knows: the input width and
feature names, the datatypes, real example rows, and the bearer scheme when auth is on. For an
image model: the image forms each protocol takes (base64 instances, a BYTES input, a base64
column) and the raw image/png and image/jpeg bodies of the three POST routes.
"""

# No `from __future__ import annotations`: FastAPI reads ModelMetadata's field types at runtime.
from typing import Any

from pydantic import BaseModel

from raylane.images import ACCEPTED_FORMATS
from raylane.serving.auth import OPEN_PATHS
from raylane.serving.model import LoadedModel, ServeArgs
from raylane.serving.protocols.images import IMAGE_MEDIA_TYPES
from raylane.serving.protocols.invocations import InvocationsRequest
from raylane.serving.protocols.v1 import V1ImagePredictRequest, V1PredictRequest
from raylane.serving.protocols.v2 import V2InferRequest, V2InferResponse

V2_KIND_DATATYPES = {"numeric": "FP64", "categorical": "BYTES", "boolean": "BOOL", "image": "BYTES"}
IMAGE_ROUTES = ("/v1/models/{name}:predict", "/v2/models/{name}/infer",
                "/v2/models/{name}/versions/{version}/infer", "/invocations")
"""The routes that take one image as the request body (image models only)."""
LARGEST_EXAMPLE = 64 * 1024
"""Example images above this many characters of base64 stay out of the document (a placeholder
instead): the docs are fetched by every browser that opens them."""


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


class DriftWindow(BaseModel):
    size: int
    """serve.drift_window: the last rows compared."""
    rows: int
    """Rows in the window now."""
    seen: int
    """Rows this replica answered for the version since it loaded it."""
    flags_from_rows: int
    """Nothing (no feature, nor the prediction) is flagged before the window holds this many rows:
    min(size, max(300, 30 x the widest histogram's bins)); the status is "filling" until then."""


class DriftFeature(BaseModel):
    kind: str
    psi: float | None
    """Population stability index against the reference (null: no present value in the window)."""
    missing_rate: float
    reference_missing_rate: float
    unseen_category_rate: float | None = None
    """Categorical features: share of rows whose value is none of the model's categories."""
    reference_unseen_category_rate: float | None = None


class DriftPrediction(BaseModel):
    psi: float | None
    bins: list[Any]
    """The classes (regression: ranges of the predicted value)."""
    shares: list[float]
    reference_shares: list[float]
    """The shares the model predicted on the test split."""
    over_threshold: bool


class DriftReport(BaseModel):
    """The serving version's live traffic, in this replica's window, against its drift reference."""

    model: str
    version: str
    replica: str
    """The replica that answered: each replica watches the rows it answered itself."""
    scope: str
    threshold: float
    """serve.drift_threshold."""
    status: str
    """ok, drifted, filling (too few rows yet), no_reference (a model logged before drift
    references) or off (serve.drift_window=0)."""
    message: str | None = None
    window: DriftWindow | None = None
    over_threshold: list[str] = []
    """The features whose PSI is over the threshold."""
    prediction: DriftPrediction | None = None
    features: dict[str, DriftFeature] = {}
    skipped: list[dict[str, Any]] = []
    """Features not watched (image columns), with why."""
    reference: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: str
    """What was wrong, naming the field or value."""


def _body(schema_name: str, *content_types: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name}"}
    content = {ct: {"schema": ref if ct == "application/json" else {"type": "string"}}
               for ct in content_types}
    return {"requestBody": {"required": True, "content": content}}


V1_PREDICT_EXTRA = _body("V1PredictRequest", "application/json")
V2_INFER_EXTRA = {**_body("V2InferRequest", "application/json"),
                  "responses": {"200": {"description": "Inference result", "content": {
                      "application/json": {"schema": {"$ref": "#/components/schemas/V2InferResponse"}}}}}}
INVOCATIONS_EXTRA = _body("InvocationsRequest", "application/json", "text/csv")


def input_datatype(model: LoadedModel) -> str:
    kinds = set(model.input_datatypes)
    return kinds.pop() if len(kinds) == 1 else "FP64"


def model_metadata(model: LoadedModel, held: dict[str, str]) -> ModelMetadata:
    image: dict[str, Any] = {}
    if model.is_image:  # one BYTES input: an image's bytes (binary data) or base64 text per row
        inputs = [TensorMetadata(name=model.feature_columns[0], datatype="BYTES", shape=[-1])]
        height, width, channels = model.image_shape
        image = {"image": {"height": height, "width": width, "channels": channels,
                           "formats": list(ACCEPTED_FORMATS), "content_types": list(IMAGE_MEDIA_TYPES)}}
    elif model.numeric_only:
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
                    "served_versions": held, **image},
    )


def schema(app: Any, args: ServeArgs, model: LoadedModel) -> dict[str, Any]:
    """Returns the OpenAPI document of `app` for the model the replica serves."""
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description,
                       routes=app.routes)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for cls in (V1PredictRequest, V2InferRequest, V2InferResponse, InvocationsRequest, ErrorResponse):
        doc = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(doc.pop("$defs", {}))
        components[cls.__name__] = doc
    # Under auth the document is public, so it shows zeros rather than rows of the real data.
    shown = model.example[:2] if args.auth is None else []
    if model.is_image:
        _describe_images(spec, model, shown)
    else:
        _describe_rows(components, model, shown or [[0.0] * len(model.feature_columns)])
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


def _describe_rows(components: dict[str, Any], model: LoadedModel, rows: list[list[Any]]) -> None:
    """The request schemas and examples of a model that takes rows of feature values."""
    columns, width = model.feature_columns, len(model.feature_columns)
    _tighten_v1(components.get("V1PredictRequest"), columns, rows, model.kinds)
    if model.numeric_only:
        inputs = [{"name": "features", "shape": [len(rows), width], "datatype": "FP64",
                   "data": [v for row in rows for v in row]}]
    else:
        inputs = [{"name": c, "shape": [len(rows)], "datatype": V2_KIND_DATATYPES[model.kinds[c]],
                   "data": [row[i] for row in rows]} for i, c in enumerate(columns)]
    components["V2InferRequest"]["example"] = {"id": "1", "inputs": inputs}
    components["InvocationsRequest"]["example"] = {"dataframe_split": {"columns": columns, "data": rows}}


def _describe_images(spec: dict[str, Any], model: LoadedModel, rows: list[list[Any]]) -> None:
    """The request schemas and examples of an image model, and the raw image bodies of its routes."""
    column, components = model.feature_columns[0], spec["components"]["schemas"]
    shown = rows[0][0] if rows and isinstance(rows[0][0], str) else ""
    example = shown if 0 < len(shown) <= LARGEST_EXAMPLE else "<base64 of a PNG or JPEG image>"
    text = {"type": "string", "contentEncoding": "base64", "description": "An image file, base64"}
    b64 = {"type": "object", "properties": {"b64": text}, "required": ["b64"], "additionalProperties": False}
    by_name = {"type": "object", "properties": {column: {"anyOf": [b64, text]}}, "required": [column],
               "additionalProperties": False}
    v1 = V1ImagePredictRequest.model_json_schema()
    row = {"type": "array", "items": {"anyOf": [b64, text]}, "minItems": 1, "maxItems": 1}
    v1["properties"]["instances"]["items"] = {"anyOf": [b64, by_name, text, row]}
    v1["example"] = {"instances": [{"b64": example}]}
    components["V1PredictRequest"] = v1
    components["V2InferRequest"]["example"] = {"id": "1", "inputs": [
        {"name": column, "shape": [1], "datatype": "BYTES", "data": [example]}]}
    components["InvocationsRequest"]["example"] = {"dataframe_split": {"columns": [column],
                                                                       "data": [[example]]}}
    height, width, channels = model.image_shape
    said = (f"\n\nThis model takes images ({', '.join(ACCEPTED_FORMATS)}; resized to {height}x{width}, "
            f"{channels} channel{'s' * (channels != 1)}): base64 text in JSON (V1 instances "
            f'{{"b64": ...}}, V2 one BYTES input of shape [n], a column {column!r} on /invocations), raw '
            "bytes through the V2 binary data extension, or one image as the body with Content-Type "
            "image/png or image/jpeg.")
    for path in IMAGE_ROUTES:
        operation = spec.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation["description"] = operation.get("description", "") + said
        content = operation.setdefault("requestBody", {"required": True}).setdefault("content", {})
        for media_type in IMAGE_MEDIA_TYPES:
            content[media_type] = {"schema": {"type": "string", "format": "binary"}}


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
