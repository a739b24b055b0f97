"""Logging the best checkpoint as an MLflow pyfunc model, evaluated on the test split.

The logged model carries its preprocessing, its drift reference (`raylane.drift`, built while the
test split is scored) and the raylane package (`code_paths`), so it loads wherever its pinned
requirements are installed; `raylane.registry` decides what becomes champion.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raylane.data import PreparedData
from raylane.task import CLASSIFICATION, Task, task_named


@dataclass(frozen=True)
class LoggedModel:
    """A model logged on the parent run, with its scores."""

    model_uri: str
    run_id: str
    test_score: float
    """The gate's metric on the test split: accuracy, or mean absolute error for regression."""
    val_score: float
    params: dict[str, Any]
    task: Task = CLASSIFICATION

    @property
    def test_metric(self) -> str:
        return self.task.test_metric

    @property
    def val_metric(self) -> str:
        return self.task.val_metric


def log_best_model(checkpoint_dir: str, data: PreparedData, params: dict[str, Any],
                   val_score: float, framework: str = "torch", code: str | None = None,
                   requirements: list[str] = ()) -> LoggedModel:
    """Logs the best checkpoint as a pyfunc model on the active run and returns its test metric:
    accuracy, or for regression the mean absolute error (`val_score`: the same on validation).
    `code`: the model builder's package or module, carried inside the model (`code_paths`) so it
    loads where the user's repository is not."""
    import mlflow
    from mlflow.models import infer_signature

    from raylane.data import iter_raw_rows, raw_rows
    from raylane.drift import ReferenceBuilder
    from raylane.model.pyfunc import PREPROCESS_FILE, RaylaneClassifier, package_dir, write_preprocess

    task = task_named(data.task)
    regression = task.loss == "mse"
    example, _ = raw_rows(data.test, limit=5)
    with tempfile.TemporaryDirectory() as tmp:
        preprocess = write_preprocess(os.path.join(tmp, PREPROCESS_FILE), data.preprocessor,
                                      data.classes, framework, data.task, data.target)
        model = RaylaneClassifier()
        outputs = (np.zeros(len(example)) if regression else
                   np.asarray(data.classes)[np.zeros(len(example), dtype=int)])
        params_schema = {} if regression else {"return_probabilities": False}
        signature = infer_signature(example, outputs, params=params_schema or None)
        if not data.preprocessor.numeric_only:
            signature = _typed_signature(signature, data.preprocessor)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts={"checkpoint": checkpoint_dir, "preprocess": preprocess},
            code_paths=[package_dir(), *([code] if code else [])],
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(framework, data.preprocessor.kinds)
            + [_pinned(r) for r in requirements],
        )
    loaded = mlflow.pyfunc.load_model(info.model_uri)  # evaluate what was logged, not the checkpoint
    total, rows = 0.0, 0
    reference = ReferenceBuilder(data.preprocessor, data.classes, data.task, data.num_rows.get("test"))
    for encoded in _train_sample(data):
        reference.add_train(encoded)
    for raw, labels in iter_raw_rows(data.test):  # in batches: a streamed test split may be large
        predictions = loaded.predict(raw)
        reference.add(raw, predictions)
        if regression:
            total += float(np.abs(np.asarray(predictions, dtype=np.float64) - labels).sum())
        else:
            total += float((predictions == np.asarray(data.classes)[labels]).sum())
        rows += len(labels)
    test_score = total / max(rows, 1)
    _log_drift_reference(info.model_id, reference.build())
    mlflow.log_metrics({task.test_metric: test_score, f"best_{task.val_metric}": val_score})
    return LoggedModel(info.model_uri, mlflow.active_run().info.run_id, test_score, val_score, params, task)


def _train_sample(data: PreparedData) -> Iterator[np.ndarray]:
    """Batches of the train split's network input, about REFERENCE_ROWS rows drawn at random (the
    first ones of a split that small); none for an image model (no per-feature drift there)."""
    from raylane.drift import REFERENCE_ROWS

    kinds = set(data.preprocessor.kinds.values())
    if "image" in kinds or not kinds & {"numeric", "boolean"}:
        return
    rows, taken = data.num_rows.get("train") or 0, 0
    train = data.train.select_columns(["features"])
    if rows > REFERENCE_ROWS:  # one streaming pass, never the whole split in memory
        train = train.random_sample(REFERENCE_ROWS / rows, seed=0)
    for batch in train.iter_batches(batch_size=4096, batch_format="numpy"):
        features = batch["features"]
        yield np.stack(features) if features.dtype == object else features
        taken += len(features)
        if taken >= REFERENCE_ROWS:
            return


def _log_drift_reference(model_id: str, reference: dict[str, Any]) -> None:
    """Adds the drift reference (raylane.drift) to the logged model, next to preprocess.json: the
    endpoint's replicas compare their live traffic with it. Written after the model is logged, as
    its predicted-class shares come from scoring what was logged."""
    import json

    from mlflow import MlflowClient

    from raylane.drift import REFERENCE_FILE

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, REFERENCE_FILE)
        with open(path, "w") as f:
            json.dump(reference, f)
        MlflowClient().log_model_artifact(model_id, path, artifact_path="artifacts")


def _typed_signature(inferred: Any, preprocessor: Any) -> Any:
    """The signature of a model with categorical or boolean columns: numeric columns as doubles,
    the others as Any (MLflow would cast 'false' or null to a boolean True/False itself; the model's
    preprocessor types them, and a missing value is imputed), every column optional. An image
    column is a required string: base64 text, which `mlflow models serve` then passes through in
    every JSON format and CSV alike (a `binary` column is base64-decoded in dataframe_split and
    dataframe_records only, and an Any column fails in CSV); raw bytes pass too."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    kinds = {"numeric": "double", "image": "string"}
    inputs = Schema([ColSpec(kinds.get(c.kind, AnyType()), c.name, required=c.kind == "image")
                     for c in preprocessor.columns])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params)


def _pinned(requirement: str) -> str:
    """A builder's requirement (`model.requirements`) as given, or pinned to the installed version
    when it names a bare package that is installed here: the served model then gets what trained."""
    from importlib.metadata import PackageNotFoundError, version

    name = requirement.strip()
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return name  # a specifier, URL or extra: the user's own words
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name


def _pip_requirements(framework: str, kinds: dict[str, str] | None = None) -> list[str]:
    """Returns exact pins of what the served model imports, so it never asks for an unpinned build
    (Pillow where a column is an image: the model decodes images)."""
    from importlib.metadata import PackageNotFoundError, version

    import mlflow

    pins = {"mlflow": mlflow.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    if framework == "tensorflow":
        for dist in ("tensorflow-cpu", "tensorflow"):
            try:
                pins[dist] = version(dist)
                break
            except PackageNotFoundError:
                continue
        pins["keras"] = version("keras")
    else:
        pins["torch"] = version("torch").split("+")[0]
    if "image" in (kinds or {}).values():
        pins["pillow"] = version("pillow")
    return [f"{name}=={v}" for name, v in pins.items()]
