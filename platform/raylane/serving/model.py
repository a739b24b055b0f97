"""Loading a registered model for serving: whatever the framework, a LoadedModel looks the same."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field

from raylane import env
from raylane.config import ServingOptions
from raylane.drift import Reference

# MLflow column types -> Open Inference Protocol datatypes.
V2_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                "boolean": "BOOL", "string": "BYTES", "binary": "BYTES"}
MIN_REQUEST_PIXELS = 4_000_000
"""The fewest pixels a request's image may always declare (`request_pixel_limit`)."""
REQUEST_PIXELS_PER_INPUT_PIXEL = 64
"""How many times the model's own input (height x width) a request's image may declare."""


def request_pixel_limit(image_shape: tuple[int, int, int]) -> int:
    """Returns the most pixels an image sent to the endpoint may declare: 64x the model's input,
    and at least 4 megapixels (never above `raylane.images.MAX_PIXELS`, which the data stage
    allows). Above it, a 413 from the image's header, before any pixel is decoded: one decode
    peaks at 4-10 bytes a pixel, so with two at once per replica (`app.IMAGE_DECODES_AT_ONCE`) a
    replica's decoding holds at most ~80 MB for any model up to 250x250 pixels."""
    height, width, _ = image_shape
    return max(MIN_REQUEST_PIXELS, REQUEST_PIXELS_PER_INPUT_PIXEL * height * width)


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""A registered model's name, as the pipeline config takes it (`model.name`)."""
ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"
"""A registry alias as MLflow allows one: letters, digits, '_' and '-' (and not 'latest' or 'v<n>',
which MLflow reserves)."""


def _version_digits(value: Any) -> Any:
    """A version given as a YAML or JSON integer is the same version; a bool is not one."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _not_reserved(alias: str) -> str:
    if alias.lower() == "latest":
        raise ValueError("'latest' is reserved by MLflow for the newest version, which moves; pin one "
                         "with version=<n>")
    if alias[:1] in "vV" and alias[1:].isdigit():
        raise ValueError(f"{alias!r} is reserved by MLflow for version {alias[1:]}; set version={alias[1:]}")
    return alias


Version = Annotated[str, BeforeValidator(_version_digits), Field(pattern=r"^[1-9][0-9]{0,17}$")]
"""A registry version number: digits (3 or '3'), never 'latest' or an alias."""


class ServeArgs(ServingOptions):
    """Arguments of the Serve application (`serve run serve_apps.champion:app key=value ...`)."""

    model_name: str = Field(default="digits", pattern=MODEL_NAME_PATTERN)
    """Registered model to serve; also the {name} in the endpoint URLs."""
    alias: Annotated[str, AfterValidator(_not_reserved)] = Field(default="champion", pattern=ALIAS_PATTERN)
    """Registry alias whose version is served (when `version` is unset)."""
    version: Version | None = None
    """Exact version to serve, never switching (a registry version number, e.g. 3 or '3'); unset:
    the alias's version, followed as it moves."""
    tracking_uri: str = Field(default_factory=lambda: env.MLFLOW_TRACKING_URI.get() or "",
                              min_length=1)
    """MLflow tracking URI of the registry (an absolute sqlite path, or a server URL); required."""

    proxy: Literal["auto", "haproxy", "python"] = "auto"
    """The ingress in front of the replicas (the pipeline's `serve.proxy`). Behind HAProxy (this says
    'haproxy', or the replica's Ray runs with RAY_SERVE_ENABLE_HA_PROXY=1) each response leaves a
    replica in one write."""

    @property
    def follows(self) -> bool:
        return self.version is None and self.follow_alias


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer: name, version, input columns, classes and a predict function."""

    name: str
    version: str
    feature_columns: list[str]
    classes: list[Any]
    predict_proba: Callable[[np.ndarray], np.ndarray]
    """Probabilities for raw rows of an all-numeric model, as a float matrix in column order."""
    kinds: dict[str, str] = field(default_factory=dict)
    """Kind of each feature column (numeric, categorical, boolean); empty: all numeric."""
    encode: Callable[[Any], np.ndarray] | None = None
    """Raw columns by name (a DataFrame) -> network input; ValueError naming a bad value."""
    forward: Callable[[np.ndarray], np.ndarray] | None = None
    """Network input -> probabilities."""
    task: str = "classification"
    """'regression': `predict_proba` and `forward` give the predicted values as one column."""
    framework: str = "torch"
    input_datatypes: list[str] = field(default_factory=list)
    """V2 datatype of each feature column, from the MLflow signature."""
    example: list[list[Any]] = field(default_factory=list)
    """A few raw input rows from the logged input example (docs and warm-up)."""
    pyfunc: Any = None
    """The MLflow PyFuncModel, for its signature (the /invocations schema checks)."""
    image_shape: tuple[int, int, int] | None = None
    """An image model (its one feature column is an image): (height, width, channels) it takes."""
    load_seconds: float = 0.0
    drift: Reference | None = field(default=None, compare=False)
    """The drift reference live rows are compared with (raylane.drift); None: see `drift_note`."""
    drift_note: str = ""
    """Why a version has no drift reference."""

    @property
    def numeric_only(self) -> bool:
        return all(kind == "numeric" for kind in self.kinds.values())

    @property
    def is_image(self) -> bool:
        """Whether each row is one image (bytes or base64 text), as `image_shape` says."""
        return self.image_shape is not None

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def label_datatype(self) -> str:
        if self.regression:
            return "FP64"
        return "INT64" if all(isinstance(c, int | np.integer) for c in self.classes) else "BYTES"

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Class labels, or for regression the predicted values."""
        if self.regression:
            return probabilities[:, 0].astype(np.float64)
        return np.asarray(self.classes)[probabilities.argmax(axis=1)]

    def warm_up(self) -> None:
        """Runs the example through the network once, so the first real request is not the slow one."""
        if self.is_image and not self.example and self.forward is not None:  # no image to decode
            height, width, channels = self.image_shape
            self.forward(np.zeros((1, height * width * channels), dtype=np.float32))
            return
        if not self.numeric_only and self.encode is not None and self.forward is not None:
            import pandas as pd

            rows = self.example or [[None] * len(self.feature_columns)]
            self.forward(self.encode(pd.DataFrame(rows, columns=self.feature_columns)))
            return
        rows = np.asarray(self.example or [[0.0] * len(self.feature_columns)], dtype=np.float64)
        self.predict_proba(rows)


def load_version(tracking_uri: str, name: str, version: str) -> LoadedModel:
    """Returns one registered version, loaded through MLflow pyfunc and warmed up."""
    import mlflow.pyfunc

    env.apply(env.MLFLOW)
    mlflow.set_tracking_uri(tracking_uri)
    start = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    inner = pyfunc.unwrap_python_model()
    columns, image = list(inner.feature_columns), inner.preprocessor.is_image
    encode = inner.preprocessor.transform
    if image:  # a request's images are held to less than the data stage's (request_pixel_limit)
        encode = partial(encode, max_pixels=request_pixel_limit(inner.preprocessor.image_shape))
    model = LoadedModel(
        name=name, version=str(version), feature_columns=columns, classes=list(inner.classes),
        predict_proba=inner.predict_proba, kinds=dict(inner.preprocessor.kinds),
        encode=encode, forward=inner.forward, task=inner.task,
        framework=inner.framework,
        input_datatypes=_input_datatypes(pyfunc, columns), example=_example_rows(pyfunc, columns, image),
        pyfunc=pyfunc, image_shape=inner.preprocessor.image_shape,
        **_drift_reference(getattr(inner, "drift_reference", None), columns, inner.preprocessor.numeric_only),
    )
    model.warm_up()
    return replace(model, load_seconds=time.perf_counter() - start)


def _drift_reference(data: dict[str, Any] | None, columns: list[str], numeric_only: bool) -> dict[str, Any]:
    """LoadedModel's `drift` and `drift_note` from the logged reference: a version without one (or
    with one this raylane cannot read) still serves, and its drift route says why it has none."""
    if data is None:
        return {"drift_note": "it was logged before drift references (no drift_reference.json in the model)"}
    try:
        reference = Reference.from_dict(data)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        return {"drift_note": f"its drift_reference.json cannot be read ({type(err).__name__}: {err})"}
    if (reference.names != columns) if numeric_only else not set(reference.names) <= set(columns):
        return {"drift_note": "its drift_reference.json names other features than the model takes"}
    return {"drift": reference}


def _input_datatypes(pyfunc: Any, columns: list[str]) -> list[str]:
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return ["FP64"] * len(columns)
    types = dict(zip(schema.input_names(), (str(t.name if hasattr(t, "name") else t)
                                            for t in schema.input_types()), strict=False))
    return [V2_DATATYPES.get(types.get(c, "double"), "FP64") for c in columns]


def _example_rows(pyfunc: Any, columns: list[str], image: bool = False) -> list[list[Any]]:
    try:
        example = pyfunc.input_example
    except Exception:  # an example that fails to load only costs the docs their sample
        return []
    if example is None:
        return []
    try:
        import pandas as pd

        frame = example if isinstance(example, pd.DataFrame) else pd.DataFrame(example)
        frame = frame[columns].head(3).astype(object)
        rows = frame.where(frame.notna(), None).to_numpy().tolist()
    except (KeyError, ValueError, TypeError):
        return []
    return [[_base64(v) for v in row] for row in rows] if image else rows


def _base64(image: Any) -> Any:
    """An example image as one line of base64 text, as a JSON client sends it (MLflow gives back
    bytes, or base64 text with line breaks, depending on the signature)."""
    if isinstance(image, bytes | bytearray):
        return base64.b64encode(image).decode("ascii")
    return "".join(image.split()) if isinstance(image, str) else image
