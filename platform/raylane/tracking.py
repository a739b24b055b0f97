"""MLflow: one parent run per pipeline run, one nested run per trial, the model and the registry.

Everything here runs in the driver process (the Tune callback included), so a sqlite store only
ever has one writer, and training workers never open MLflow runs of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from raylane import progress, registry
from raylane.config import ModelConfig, PipelineConfig, TrackingConfig, to_yaml
from raylane.data import PreparedData
from raylane.errors import ModelNotFoundError, RaylaneError, TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRIAL_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_mae")
TEST_METRIC = "test_accuracy"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Returns the tracking URI to use, with a relative sqlite path made absolute."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def configure(cfg: TrackingConfig) -> str:
    """Points MLflow at the store and creates the experiment once; returns the experiment id."""
    import mlflow

    # The machines this runs on often have no route out; MLflow would otherwise try its telemetry.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    uri = resolve_tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment)  # creates a sqlite schema once
        if experiment is not None:
            return experiment.experiment_id
        return mlflow.create_experiment(cfg.experiment, artifact_location=_artifact_location(cfg, uri))
    except Exception as err:
        raise RaylaneError(f"tracking.tracking_uri {uri!r}: cannot reach the MLflow store: {err}") from err


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fails fast, naming the URI, when no MLflow server answers there (MLflow's own client would
    retry for minutes before giving up)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError:
        return  # something answers (a proxy, auth): let MLflow's own calls report what it says
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"tracking.tracking_uri {uri!r}: no MLflow server answers ({reason}); start "
                            "it (mlflow server ...) or point tracking.tracking_uri elsewhere") from err


def _artifact_location(cfg: TrackingConfig, uri: str) -> str | None:
    if cfg.artifact_location:
        return cfg.artifact_location
    if uri.startswith("sqlite:///"):  # next to the database, never relative to a worker's cwd
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


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
    tags = {"raylane.run_name": run_name, **_origin_tags()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        # feature_columns can exceed MLflow's param length; data/schema.json holds them instead.
        exclude = {"tune": {"search_space"}, "data": {"feature_columns"}}
        mlflow.log_params(_flatten(cfg.model_dump(mode="json", exclude=exclude)))
        mlflow.log_text(to_yaml(cfg), "config/pipeline.yaml")
        yield run


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
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        tags["ray.submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
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
        "trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "val_mae", "training_iteration")]
    mlflow.log_table(table[keep].reset_index(drop=True), "tune/results.json")


class TrialRunLogger(tune.Callback):
    """A Tune callback: one nested MLflow run per trial, one metric point per epoch, never twice.

    Tune calls it on its driver loop, which must never wait on MLflow: each event goes into an
    outbox that a writer thread sends in order. While the tracking server is unreachable the outbox
    keeps everything, retried with backoff, and `on_experiment_end` waits (up to
    `tracking.outage_timeout_s`) until it is written. A trial met again after a restart or a
    `--resume` finds its run by tag and continues it: epochs already logged are not logged again.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 outage_timeout_s: float = 600.0) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.outage_timeout_s = outage_timeout_s
        self._setup()

    def _setup(self) -> None:
        import collections
        import threading

        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.paused: set[str] = set()  # trials Tune paused (asha_promotion), until they run again
        self._outbox: collections.deque = collections.deque()
        self._wakeup = threading.Condition()
        self._writer: threading.Thread | None = None
        self.outage_started: float | None = None
        self.outages: list[float] = []  # seconds MLflow was unreachable, one entry per outage

    # Tune pickles its callbacks with the experiment state (for Tuner.restore); the outbox and the
    # writer thread are this process's only.
    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in (
            "tracking_uri", "experiment_id", "parent_run_id", "outage_timeout_s")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    # -- Tune's events: queue them, never block --------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("start", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = result.get("epoch")
        if epoch is None:
            return
        start = result.get("start_epoch", 0)
        stamp = int(result.get("timestamp", time.time()) * 1000)
        if start and epoch == start:  # the first epoch of a worker group resumed from a checkpoint
            # After a pause (a promotion by asha_promotion) that is the plan, not a restart.
            promoted = trial.trial_id in self.paused
            self.paused.discard(trial.trial_id)
            self._send("promoted" if promoted else "resumed", trial.trial_id, int(start))
            # Epochs up to the checkpoint, from the checkpoint itself: those whose reports died with
            # a killed driver are written now; those already on record are skipped as usual.
            for past in json.loads(result.get("history") or "[]"):
                self._send("epoch", trial.trial_id, int(past["epoch"]), stamp,
                           {k: float(past[k]) for k in TRIAL_METRICS if k in past})
        self._send("epoch", trial.trial_id, int(epoch), stamp,
                   {k: float(result[k]) for k in TRIAL_METRICS if k in result})

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # raylane's trials keep their checkpoints in Ray Train: Tune saves one only to pause it.
        self.paused.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("finish", trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("finish", trial.trial_id, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def catch_up(self, results: Any) -> None:
        """Writes what a killed driver may have left unwritten for the trials of a restored search
        (Tune does not replay finished trials): every epoch in Tune's records, and the end state."""
        for result in results:
            frame = result.metrics_dataframe
            trial_id = (result.metrics or {}).get("trial_id")
            if frame is None or "epoch" not in frame or not trial_id:
                continue
            for _, row in frame.dropna(subset=["epoch"]).sort_values("epoch").iterrows():
                stamp = int(row.get("timestamp", time.time()) * 1000)
                self._send("epoch", trial_id, int(row["epoch"]), stamp,
                           {k: float(row[k]) for k in TRIAL_METRICS if k in row and row[k] == row[k]})
            self._send("finish", trial_id, "FAILED" if result.error else "FINISHED")
        self.flush()

    def flush(self) -> None:
        """Waits until every queued event is in MLflow; TrackingError after `outage_timeout_s` of outage."""
        with self._wakeup:
            while self._outbox:
                if self._writer is None or not self._writer.is_alive():
                    raise TrackingError(f"the MLflow writer thread stopped with {len(self._outbox)} trial "
                                        "records unwritten")
                if self.outage_started and time.monotonic() - self.outage_started > self.outage_timeout_s:
                    raise TrackingError(
                        f"MLflow at {self.tracking_uri} unreachable for over {self.outage_timeout_s:.0f} s "
                        f"(tracking.outage_timeout_s); {len(self._outbox)} trial records not written")
                self._wakeup.wait(timeout=1.0)

    def _send(self, *event: Any) -> None:
        import threading

        with self._wakeup:
            self._outbox.append(event)
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_forever, name="mlflow-trial-writer",
                                                daemon=True)
                self._writer.start()
            self._wakeup.notify_all()

    # -- the writer thread -----------------------------------------------------------------------

    def _write_forever(self) -> None:
        backoff = 0.5
        while True:
            with self._wakeup:
                while not self._outbox:
                    self._wakeup.wait()
                event = self._outbox[0]
            try:
                self._write(*event)
            except Exception as err:  # the store is down or erroring: keep the event, try again
                if _refused(err):  # the store answered no: retrying cannot help
                    progress.say(f"MLflow refused a trial record ({err}); skipped")
                    with self._wakeup:
                        self._outbox.popleft()
                        self._wakeup.notify_all()
                    continue
                if self.outage_started is None:
                    self.outage_started = time.monotonic()
                    progress.say(f"MLflow unreachable ({type(err).__name__}); buffering trial metrics "
                                 "until it is back")
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            with self._wakeup:
                self._outbox.popleft()
                if self.outage_started is not None:
                    self.outages.append(time.monotonic() - self.outage_started)
                    self.outage_started = None
                    progress.say(f"MLflow back after {self.outages[-1]:.1f} s; buffered trial metrics "
                                 "written")
                self._wakeup.notify_all()

    def _write(self, kind: str, trial_id: str, *args: Any) -> None:
        from mlflow.entities import Metric

        if kind == "start":
            self._open_run(trial_id, args[0])
            return
        run_id = self.run_ids.get(trial_id) or self._open_run(trial_id, None)
        if kind == "promoted":
            self.client.set_tag(run_id, "raylane.promoted_at_epoch", args[0])
        elif kind == "resumed":
            restarts = self.restarts[trial_id] + 1  # counted once written: a retried write counts once
            self.client.set_tag(run_id, "raylane.restarts", restarts)
            self.client.set_tag(run_id, "raylane.resumed_at_epoch", args[0])
            self.restarts[trial_id] = restarts
        elif kind == "epoch":
            epoch, stamp, values = args
            if epoch <= self.last_epoch[trial_id]:
                return  # an epoch redone after a restart is already on record
            self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, epoch) for k, v in values.items()])
            self.last_epoch[trial_id] = epoch
        elif kind == "finish":
            self.client.set_tag(run_id, "raylane.epochs_completed", self.last_epoch[trial_id] + 1)
            self.client.set_tag(run_id, "raylane.restarts", self.restarts[trial_id])
            self.client.set_terminated(run_id, args[0])

    def _open_run(self, trial_id: str, config: dict | None) -> str:
        """Returns the trial's nested run: the one an earlier attempt created, else a new one."""
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        client = self.client
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                          f"and tags.`raylane.trial_id` = '{trial_id}'",
            max_results=1,
        )
        if found:
            run = found[0]
            history = client.get_metric_history(run.info.run_id, "val_loss")  # every task logs it
            self.last_epoch[trial_id] = max((m.step for m in history), default=-1)
            self.restarts[trial_id] = int(run.data.tags.get("raylane.restarts", 0))
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = client.create_run(
                self.experiment_id, run_name=f"trial-{trial_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, "raylane.trial_id": trial_id},
            )
            self.last_epoch[trial_id], self.restarts[trial_id] = -1, 0
        if config and not run.data.params:
            from mlflow.entities import Param

            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in config.items()])
        self.run_ids[trial_id] = run.info.run_id
        return run.info.run_id


def _refused(err: Exception) -> bool:
    """True when MLflow answered with a client error (bad value, deleted run), not an outage."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


# -- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedModel:
    """A model logged on the parent run, with its test metric."""

    model_uri: str
    run_id: str
    test_score: float
    """The gate's metric on the test split: accuracy, or mean absolute error for regression."""
    val_score: float
    params: dict[str, Any]
    test_metric: str = TEST_METRIC
    val_metric: str = "val_accuracy"


def log_best_model(checkpoint_dir: str, data: PreparedData, params: dict[str, Any],
                   val_score: float, framework: str = "torch") -> LoggedModel:
    """Logs the best checkpoint as a pyfunc model on the active run and returns its test metric:
    accuracy, or for regression the mean absolute error (`val_score`: the same on validation)."""
    import mlflow
    from mlflow.models import infer_signature

    from raylane.data import iter_raw_rows, raw_rows
    from raylane.mlflow_model import RaylaneClassifier, package_dir, write_preprocess

    example, _ = raw_rows(data.test, limit=5)
    with tempfile.TemporaryDirectory() as tmp:
        preprocess = write_preprocess(os.path.join(tmp, "preprocess.json"), data.preprocessor,
                                      data.classes, framework, data.task, data.target)
        model = RaylaneClassifier()
        outputs = (np.zeros(len(example)) if data.task == "regression" else
                   np.asarray(data.classes)[np.zeros(len(example), dtype=int)])
        params_schema = {} if data.task == "regression" else {"return_probabilities": False}
        signature = infer_signature(example, outputs, params=params_schema or None)
        if not data.preprocessor.numeric_only:
            signature = _typed_signature(signature, data.preprocessor)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts={"checkpoint": checkpoint_dir, "preprocess": preprocess},
            code_paths=[package_dir()],
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(framework),
        )
    loaded = mlflow.pyfunc.load_model(info.model_uri)  # evaluate what was logged, not the checkpoint
    total, rows = 0.0, 0
    for raw, labels in iter_raw_rows(data.test):  # in batches: a streamed test split may be large
        predictions = loaded.predict(raw)
        if data.task == "regression":
            total += float(np.abs(np.asarray(predictions, dtype=np.float64) - labels).sum())
        else:
            total += float((predictions == np.asarray(data.classes)[labels]).sum())
        rows += len(labels)
    test_score = total / max(rows, 1)
    if data.task == "regression":
        test_metric, val_metric = "test_mae", "val_mae"
    else:
        test_metric, val_metric = TEST_METRIC, "val_accuracy"
    mlflow.log_metrics({test_metric: test_score, f"best_{val_metric}": val_score})
    return LoggedModel(info.model_uri, mlflow.active_run().info.run_id, test_score, val_score, params,
                       test_metric, val_metric)


def _typed_signature(inferred: Any, preprocessor: Any) -> Any:
    """The signature of a model with categorical or boolean columns: numeric columns as doubles,
    the others as Any (MLflow would cast 'false' or null to a boolean True/False itself; the model's
    preprocessor types them, and a missing value is imputed), every column optional."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema([ColSpec("double" if c.kind == "numeric" else AnyType(), c.name, required=False)
                     for c in preprocessor.columns])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params)


def _pip_requirements(framework: str) -> list[str]:
    """Returns exact pins of what the served model imports, so it never asks for an unpinned build."""
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
    return [f"{name}=={v}" for name, v in pins.items()]


@dataclass(frozen=True)
class Promotion:
    """What the champion gate decided for a newly registered version."""

    version: str
    promoted: bool
    reason: str
    previous_version: str | None

    @property
    def summary(self) -> str:
        return f"{'promoted' if self.promoted else 'kept'}: {self.reason}"


def register_if_better(cfg: ModelConfig, model: LoggedModel) -> Promotion:
    """Registers the model; moves the champion alias to it only if its test metric is higher."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    version = mlflow.register_model(model.model_uri, cfg.name).version
    client.set_model_version_tag(cfg.name, version, model.test_metric, f"{model.test_score:.6f}")
    client.set_model_version_tag(cfg.name, version, model.val_metric, f"{model.val_score:.6f}")
    client.set_model_version_tag(cfg.name, version, registry.GATE_TAG, model.test_metric)
    client.set_model_version_tag(cfg.name, version, "raylane.run_id", model.run_id)
    client.set_model_version_tag(cfg.name, version, "raylane.params", json.dumps(model.params))
    current = _champion(client, cfg)
    if current is None:
        promoted, reason = True, f"no {cfg.champion_alias} yet; {model.test_metric}={model.test_score:.4f}"
    else:
        if registry.gate_metric(current) != model.test_metric:  # another task: not comparable
            promoted = False
            reason = (f"{cfg.champion_alias} v{current.version} is judged by "
                      f"{registry.gate_metric(current)}, this version by {model.test_metric}: not "
                      f"comparable; `raylane promote {cfg.name} <version> --force` to switch")
        else:
            old = registry.metric_of(current, model.test_metric)
            promoted = old is None or (model.test_score != old and
                                       not registry.worse(model.test_metric, model.test_score, old))
            verb = "beats" if promoted else "does not beat"
            reason = (f"{model.test_metric} {model.test_score:.4f} {verb} {cfg.champion_alias} "
                      f"v{current.version}'s " + ("(none recorded)" if old is None else f"{old:.4f}"))
    if promoted:
        registry.move_alias(client, cfg.name, cfg.champion_alias, str(version), "promote", reason)
    promotion = Promotion(str(version), promoted, reason, current.version if current else None)
    client.set_model_version_tag(cfg.name, version, "raylane.promotion", promotion.summary)
    mlflow.set_tags({"raylane.model_version": version, "raylane.promotion": promotion.summary})
    return promotion


def version_registered_by(name: str, run_id: str) -> Any | None:
    """Returns the version of model `name` that the pipeline run `run_id` registered, if any."""
    from mlflow import MlflowClient

    found = [v for v in MlflowClient().search_model_versions(f"name = '{name}'")
             if v.tags.get("raylane.run_id") == run_id]
    return found[0] if found else None


def _champion(client: Any, cfg: ModelConfig) -> Any | None:
    """Returns the current champion version, None if there is none; other registry errors raise,
    so a flaky store never makes the gate promote by default."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(cfg.name, cfg.champion_alias)
    except MlflowException as err:
        if registry.is_missing(err):
            return None
        raise


def champion_version(tracking_uri: str, name: str, alias: str) -> str:
    """Returns the version the alias points at; ModelNotFoundError naming what is missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = registry.alias_version(MlflowClient(tracking_uri), name, alias)
    except MlflowException as err:
        raise RaylaneError(f"cannot read model {name!r} from {tracking_uri}: {err}") from err
    if version is None:
        raise ModelNotFoundError(
            f"no version of model {name!r} has the alias {alias!r} in {tracking_uri}; "
            "run the pipeline first (raylane run) to register one")
    return version
