"""The pipeline's parent MLflow run: config, origin, dataset and search results, resumable.

One logical run is one MLflow run: `--resume` reopens the same run instead of starting another,
once `check_resumed_run` has found that the run's record in storage names that run.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pandas as pd

from raylane import env
from raylane.config import PipelineConfig, to_yaml
from raylane.data import PreparedData
from raylane.errors import ConfigError, TrackingError
from raylane.task import ALL_EPOCH_METRICS, EPOCH

if TYPE_CHECKING:
    from raylane.runs import RunRecord

RUN_NAME_TAG = "raylane.run_name"
"""The tag on a pipeline's parent MLflow run that names its raylane run."""
# What MLflow answers for an id that names no run or no version (a malformed one included).
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@contextlib.contextmanager
def pipeline_run(cfg: PipelineConfig, run_name: str, experiment_id: str,
                 resume_run_id: str | None = None, resumes: int = 0) -> Iterator[Any]:
    """Yields the active parent MLflow run, with the config, git commit and job id recorded; with
    `resume_run_id`, that run again (a resumed pipeline keeps one MLflow run)."""
    import mlflow

    if resume_run_id is not None:
        try:
            run = mlflow.start_run(run_id=resume_run_id)
        except Exception as err:
            raise TrackingError(f"--resume {run_name!r}: its MLflow run {resume_run_id} is not in "
                                f"{mlflow.get_tracking_uri()}: {err}") from err
        with run:
            mlflow.set_tags({"raylane.resumes": resumes, **_origin_tags()})
            yield run
        return
    tags = {RUN_NAME_TAG: run_name, **_origin_tags()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        # feature_columns can exceed MLflow's param length; data/schema.json holds them instead.
        exclude = {"tune": {"search_space"}, "data": {"feature_columns"}}
        mlflow.log_params(_flatten(cfg.model_dump(mode="json", exclude=exclude)))
        mlflow.log_text(to_yaml(cfg), "config/pipeline.yaml")
        yield run


def check_resumed_run(record: RunRecord, tracking_uri: str, experiment_id: str, model_name: str) -> None:
    """ConfigError naming the field, what the record says and what MLflow holds, unless the record
    of the run to resume names its own MLflow run (one that exists, is tagged with the run's name
    and belongs to `experiment_id`) and a version of `model_name` registered from that run.

    Anyone who can write to shared storage can edit run.json; these ids decide which MLflow run a
    resume logs to and which version it deploys without training."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id, version = record.mlflow_run_id, record.registered_version

    def refuse(field: str, found: str) -> NoReturn:
        raise ConfigError(f"--resume {record.run_name!r}: its run.json does not match MLflow ({field}: the "
                          f"record says {getattr(record, field)!r}, {found}); refusing to resume on it: "
                          "restore the record, or start a new run")

    if record.experiment_id is not None and str(record.experiment_id) != experiment_id:
        refuse("experiment_id", f"the configured tracking.experiment's id is {experiment_id!r}")
    if run_id is None:
        if version is not None:
            refuse("registered_version", "but it records no MLflow run to have registered it")
        return
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(str(run_id))
    except MlflowException as err:
        if err.error_code not in _NOT_FOUND:
            raise TrackingError(f"--resume {record.run_name!r}: cannot read MLflow run {run_id} from "
                                f"{tracking_uri}: {err}") from err
        refuse("mlflow_run_id", f"no such MLflow run in {tracking_uri}")
    if run.data.tags.get(RUN_NAME_TAG) != record.run_name:
        refuse("mlflow_run_id", f"its {RUN_NAME_TAG} tag is {run.data.tags.get(RUN_NAME_TAG)!r}")
    if run.info.experiment_id != experiment_id:
        refuse("mlflow_run_id", f"it belongs to experiment {run.info.experiment_id!r}, not the configured "
                                f"tracking.experiment's {experiment_id!r}")
    if run.info.lifecycle_stage != "active":
        refuse("mlflow_run_id", f"that MLflow run is {run.info.lifecycle_stage}")
    if version is None:
        return
    try:
        source = client.get_model_version(model_name, str(version)).run_id
    except MlflowException as err:
        if err.error_code not in _NOT_FOUND:
            raise TrackingError(f"--resume {record.run_name!r}: cannot read model {model_name!r} "
                                f"v{version} from {tracking_uri}: {err}") from err
        refuse("registered_version", f"model {model_name!r} has no such version")
    if source != run_id:
        refuse("registered_version", f"model {model_name!r} v{version} was registered from MLflow run "
                                     f"{source}, not {run_id}")


def _origin_tags() -> dict[str, str]:
    tags: dict[str, str] = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import ray

        if ray.is_initialized():
            tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
    except Exception:  # a tag is not worth failing a run for
        pass
    if submission_id := env.RAY_JOB_SUBMISSION_ID.get():
        tags["ray.submission_id"] = submission_id
    return tags


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_dataset(data: PreparedData) -> None:
    """Records the data source, its content digest and split sizes on the active run."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    try:
        source = resolve_dataset_source(data.source)
    except Exception:  # an unrecognised URI scheme: record it as plain text
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(url=data.source)
    dataset = MetaDataset(source=source, name=Path(data.source.rstrip("/")).name, digest=data.digest)
    mlflow.log_input(dataset, context="training")
    mlflow.log_params({f"data.rows.{k}": v for k, v in data.num_rows.items()})
    mlflow.log_param("data.bad_rows_dropped", data.bad_rows)
    mlflow.log_text(data.schema_json(), "data/schema.json")
    if data.bad_rows:
        mlflow.log_text("\n".join(data.bad_sample) + "\n", "data/bad_rows_sample.txt")
    if data.drift:
        mlflow.log_text("\n".join(data.drift) + "\n", "data/schema_drift.txt")


def log_tune_results(table: pd.DataFrame) -> None:
    """Records the Tune results table (one row per trial) on the active run."""
    import mlflow

    keep = [c for c in table.columns if c.startswith("config/") or c in (
        "trial_id", EPOCH, *ALL_EPOCH_METRICS, "training_iteration")]
    mlflow.log_table(table[keep].reset_index(drop=True), "tune/results.json")
