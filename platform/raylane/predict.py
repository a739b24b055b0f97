"""Batch scoring: a registered model over local or S3 Parquet/CSV files, on a pool of Ray actors.

    cfg = PredictConfig(model="digits@champion", inputs=["s3://bucket/day=1/*.parquet"], output="scores")
    result = predict.run(cfg, load_config(None))     # `raylane predict` / `python -m pipelines.predict`

How it runs
- The driver resolves the model (`name@alias` or `name/version`) in the MLflow registry, lists the
  input files (a file, directory or glob; local, or `s3://...?endpoint_override=...` as everywhere in
  raylane), checks each file has the model's columns, and leaves out the files already scored. All
  of that before Ray starts: a bad flag costs no cluster.
- One Ray Data `map_batches` over the list of files, on a pool of actors (`actors`, each with
  `cpus_per_actor` and `gpus_per_actor`). Each actor loads the MLflow model once
  (`mlflow.pyfunc.load_model`) for the whole job; per file it reads chunks with the training data
  stage's reader (`raylane.data.rows.ReadFile`: the same typing, and bad rows named by file, line
  and column), predicts `batch_size` rows at a time with the model itself, and appends each batch
  to the file's output as it goes. Only a summary row per file comes back to the driver: an actor
  holds one chunk at a time, whatever the data's size, and no rows pass through the object store.
- Output: a Parquet file per input file, `<output>/<stem>-<hash of its path>.parquet`, with the
  id column (when the data has one), `prediction`, and with `probabilities` one
  `probability_<class>` column per class. It is written under `<output>/_tmp/` and moved to its
  name only when complete, so a file under its name is finished; a killed run leaves only temp
  files, which the next run deletes and redoes. `<output>/_RAYLANE_PREDICT.json` records the
  model version and output options: a rerun that would mix others into the same output is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raylane import env, progress, storage
from raylane.config import PipelineConfig
from raylane.data.rows import BAD_SAMPLE_SIZE, ERROR, ReadFile
from raylane.data.sources import configure_ray_data, filesystem, list_files, open_input
from raylane.errors import ConfigError, DataError, ModelNotFoundError, RaylaneError, TrackingError

log = logging.getLogger(__name__)

MANIFEST = "_RAYLANE_PREDICT.json"
TEMP_DIR = "_tmp"
PREDICTION = "prediction"
PROBABILITY_PREFIX = "probability_"
DEFAULT_ID_COLUMN = "id"
RESOURCE_UNIT = 0.0001
"""Ray counts CPUs and GPUs to 1/10000 of a unit, and refuses finer shares."""
CSV_SUFFIXES = (".csv", ".csv.gz")


FLAGS = {"model": "--model", "inputs": "--input", "output": "--output", "format": "--format",
         "id_column": "--id-column", "probabilities": "--probabilities", "on_bad_rows": "--on-bad-rows",
         "actors": "--actors", "batch_size": "--batch-size", "cpus_per_actor": "--cpus-per-actor",
         "gpus_per_actor": "--gpus-per-actor"}
"""The command line's flag of each PredictConfig field (errors name the flag a user typed)."""


class PredictConfig(BaseModel):
    """One batch-scoring job: which model, which files, where the predictions go, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model: str
    """Registered model: 'digits@champion' (an alias) or 'digits/3' (a version); 'models:/' optional."""
    inputs: list[str] = Field(min_length=1)
    """Parquet or CSV files: a file, a directory or a glob each; local or s3://bucket/...?options."""
    output: str
    """Directory of the predictions (local or a URI): a Parquet file per input file."""
    format: Literal["auto", "parquet", "csv"] = "auto"
    """Input format; 'auto': .csv/.csv.gz files are CSV, others Parquet (one format per job)."""
    id_column: str | None = None
    """Column copied to the output to join predictions back. Unset: 'id' when the files have one."""
    probabilities: bool = False
    """Also write each class's probability (classification models)."""
    on_bad_rows: Literal["fail", "drop"] = "fail"
    """As data.on_bad_rows: 'fail' stops naming file, line and column; 'drop' skips and counts."""
    actors: int | None = Field(default=None, ge=1)
    """Actors scoring in parallel, each with the model loaded once. Unset: one per CPU
    (per `gpus_per_actor` GPUs), at most one per file."""
    batch_size: int = Field(default=65_536, ge=1)
    """Rows per call of the model's predict."""
    cpus_per_actor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """CPUs each actor reserves."""
    gpus_per_actor: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """GPUs each actor reserves (0: CPU); the model runs on the GPU it is given."""

    @field_validator("cpus_per_actor", "gpus_per_actor")
    @classmethod
    def _a_share_ray_can_count(cls, value: float) -> float:
        if 0 < value < RESOURCE_UNIT:
            raise ValueError(f"{value:g} is below the smallest share Ray counts ({RESOURCE_UNIT:g})")
        return value


@dataclass(frozen=True)
class ModelVersion:
    """A registered version, resolved from what the user named."""

    name: str
    version: str
    asked: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class InputFile:
    """One file to score and the name of its output."""

    path: str
    source: str
    """The --input it came from: its filesystem (and a URI's options) reads the file."""
    output_name: str
    rows: int | None
    """Rows in the file, from a Parquet footer; None for CSV (unknown before reading)."""


@dataclass(frozen=True)
class Plan:
    """What a job will do, decided on the driver before Ray starts."""

    cfg: PredictConfig
    model: ModelVersion
    tracking_uri: str
    fmt: str
    feature_columns: list[str]
    id_column: str | None
    todo: list[InputFile]
    finished: list[InputFile]
    output: str


@dataclass(frozen=True)
class Progress:
    """Where a running job is: what the progress bar shows."""

    files_done: int
    files_total: int
    rows_done: int
    rows_total: int | None
    """Rows of the files to score, when known (Parquet footers); None with CSV."""
    bad_rows: int
    seconds: float


@dataclass(frozen=True)
class PredictResult:
    """What a job did."""

    model: ModelVersion
    output: str
    scored: list[str]
    """Input files scored by this run."""
    skipped: list[str]
    """Input files whose output an earlier run had finished."""
    rows: int
    bad_rows: int
    bad_sample: list[str] = field(default_factory=list)
    seconds: float = 0.0
    actors: int = 0


def config_from_flags(**flags: Any) -> PredictConfig:
    """Returns the validated job; ConfigError naming the flag (--batch-size, ...) otherwise."""
    try:
        return PredictConfig(**flags)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        flag = FLAGS.get(name, "predict")
        raise ConfigError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from None


def run(cfg: PredictConfig, pipeline: PipelineConfig, quiet: bool = False,
        on_progress: Callable[[Progress], None] | None = None) -> PredictResult:
    """Scores `cfg.inputs` with `cfg.model`; returns what was done. The registry and the cluster
    come from `pipeline` (tracking.tracking_uri, cluster.address or RAY_ADDRESS, else a local Ray
    with a CPU per core). `quiet`: Ray's output goes to a log file whose path is logged."""
    from raylane import cluster
    from raylane.tracking import store

    plan = plan_job(cfg, store.resolve_tracking_uri(pipeline.tracking))
    if not plan.todo:
        return PredictResult(plan.model, plan.output, [], [f.path for f in plan.finished], 0, 0)
    local = pipeline.cluster.model_copy(update={"num_cpus": pipeline.cluster.num_cpus or os.cpu_count()})
    pipeline = pipeline.model_copy(update={"cluster": local, "serve": pipeline.serve.model_copy(
        update={"enabled": False})})
    log_file = cluster.capture_tool_logs(None, also_import=("ray.data",)) if quiet else None
    cluster.connect(pipeline, log_file=log_file, training=False)
    return execute(plan, on_progress)


# -- the plan: model, files, what is finished -------------------------------------------------------


def plan_job(cfg: PredictConfig, tracking_uri: str) -> Plan:
    """Resolves the model and the files, and finds the outputs an earlier run finished."""
    from raylane.tracking import store

    store.configure_client()
    model = resolve_model(cfg.model, tracking_uri)
    columns = _feature_columns(model, tracking_uri)
    output = storage.local_or_uri(cfg.output)
    files, fmt = _list_inputs(cfg)
    id_column, rows = _check_files(cfg, files, fmt, columns)
    recorded = _read_manifest(output)
    expected = _manifest(model, cfg, id_column)
    if recorded is not None and recorded != expected:
        changed = [k for k in expected if recorded.get(k) != expected[k]]
        raise ConfigError(
            f"--output {cfg.output!r} holds predictions made with "
            + ", ".join(f"{k}={recorded.get(k)!r}" for k in changed) + "; this run has "
            + ", ".join(f"{k}={expected[k]!r}" for k in changed)
            + ": they would mix. Use a new --output, or the same model and options")
    done = set(storage.list_names(output))
    planned = [InputFile(path, source, output_name(path), rows.get(path)) for path, source in files]
    names = [f.output_name for f in planned]
    if len(set(names)) != len(names):
        raise DataError("--input: the same file is named twice")
    return Plan(cfg, model, tracking_uri, fmt, columns, id_column,
                todo=[f for f in planned if f.output_name not in done],
                finished=[f for f in planned if f.output_name in done], output=output)


def parse_model(text: str) -> tuple[str, str | None, str | None]:
    """Returns (name, alias, version) of 'name@alias' or 'name/version'; ConfigError otherwise."""
    ref = text.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if name and alias and "/" not in name:
            return name, alias, None
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ConfigError(f"--model: {text!r} names no version; give a registered model with an alias "
                      "(digits@champion) or a version number (digits/3)")


def resolve_model(text: str, tracking_uri: str) -> ModelVersion:
    """Returns the registered version `text` names; ModelNotFoundError naming what is missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from raylane.registry import is_missing

    name, alias, version = parse_model(text)
    client = MlflowClient(tracking_uri)
    try:
        registered = client.get_registered_model(name)
        if version is not None:
            client.get_model_version(name, version)
    except MlflowException as err:
        if not is_missing(err):
            raise TrackingError(f"cannot read model {name!r} from {tracking_uri}: {err}") from err
        if version is not None and _exists(client, name):
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            raise ModelNotFoundError(f"--model {text!r}: model {name!r} has no version {version} in "
                                     f"{tracking_uri} (versions: {', '.join(map(str, versions))})") from None
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise ModelNotFoundError(f"--model {text!r}: no registered model {name!r} in {tracking_uri} "
                                 f"(registered: {', '.join(known) or 'none'})") from None
    if alias is not None:
        aliases = dict(registered.aliases or {})
        if alias not in aliases:
            raise ModelNotFoundError(
                f"--model {text!r}: model {name!r} has no alias {alias!r} in {tracking_uri} (its aliases: "
                f"{', '.join(f'{a}->v{v}' for a, v in sorted(aliases.items())) or 'none'}); name a "
                f"version ({name}/3) or set the alias (raylane promote {name} VERSION --alias {alias})")
        version = str(aliases[alias])
    return ModelVersion(name, str(version), text)


def _exists(client: Any, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:
        return False


def _feature_columns(model: ModelVersion, tracking_uri: str) -> list[str]:
    """The raw columns the model takes, from its signature."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        signature = mlflow.models.get_model_info(model.uri).signature
    except Exception as err:
        raise ModelNotFoundError(f"--model {model.asked!r}: cannot read {model.uri}: {err}") from err
    if signature is None or not signature.inputs.has_input_names():
        raise ModelNotFoundError(f"--model {model.asked!r}: {model.uri} has no input signature with "
                                 "column names; raylane predict scores models raylane logged")
    images = [spec.name for spec in signature.inputs.inputs if _is_image_column(spec)]
    if images:
        raise ConfigError(f"--model {model.asked!r}: {model.uri} takes an image column ({images[0]!r}); "
                          "raylane predict does not score image models yet (tabular models only)")
    return list(signature.inputs.input_names())


def _is_image_column(spec: Any) -> bool:
    """An image column's signature: a required string (raylane logs every other column of a model
    with text columns as optional, and an all-numeric model's as numbers)."""
    from mlflow.types import DataType

    return getattr(spec, "type", None) == DataType.string and bool(getattr(spec, "required", False))


def _list_inputs(cfg: PredictConfig) -> tuple[list[tuple[str, str]], str]:
    """Returns (path, the --input naming it) of every file, and the format; DataError when none
    match or formats are mixed."""
    from raylane.images import IMAGE_EXTENSIONS

    _, out_root = storage.split(storage.local_or_uri(cfg.output))
    out_root = out_root.rstrip("/")
    files: dict[str, str] = {}
    for source in cfg.inputs:
        source = storage.local_or_uri(source)
        for path in list_files(source, "csv" if cfg.format == "csv" else "auto", field="--input"):
            inner = path.split("://", 1)[-1]
            if inner == out_root or inner.startswith(out_root + "/"):
                continue  # this job's own outputs (--output under an --input directory)
            if path.lower().endswith(IMAGE_EXTENSIONS):
                raise ConfigError(f"--input: {path} is an image file; raylane predict does not score "
                                  "image files yet (Parquet or CSV only)")
            files.setdefault(path, source)
    if not files:
        raise DataError(f"--input: no data files match {', '.join(map(repr, cfg.inputs))} outside "
                        f"--output {cfg.output!r}")
    if cfg.format != "auto":
        return list(files.items()), cfg.format
    csv = [p for p in files if p.lower().endswith(CSV_SUFFIXES)]
    if csv and len(csv) < len(files):
        other = next(p for p in files if p not in csv)
        raise DataError(f"--input: mixed formats: {csv[0]} is CSV, {other} is not; score one format "
                        "per job (or pass --format parquet|csv to read every file as one)")
    return list(files.items()), "csv" if csv else "parquet"


def _check_files(cfg: PredictConfig, files: list[tuple[str, str]], fmt: str,
                 columns: list[str]) -> tuple[str | None, dict[str, int]]:
    """Returns the id column and each Parquet file's row count; DataError naming a file that lacks
    a column the model takes (or the --id-column)."""
    rows: dict[str, int] = {}
    schemas = []
    for path, source in files:
        fs, _ = filesystem(source)
        schema, count = _schema(fs, path, fmt)
        if count is not None:
            rows[path] = count
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"--input: {path} has no column {missing[0]!r}, which model {cfg.model} takes "
                            f"({len(missing)} of its {len(columns)} columns missing); its columns are "
                            f"{', '.join(schema.names[:12])}{' ...' if len(schema.names) > 12 else ''}")
        schemas.append((path, schema))
    id_column = cfg.id_column
    if id_column in columns:
        raise ConfigError(f"--id-column {id_column!r} is a column the model takes; name a column that "
                          "identifies rows and is not a feature")
    if id_column is None and DEFAULT_ID_COLUMN not in columns \
            and all(DEFAULT_ID_COLUMN in s.names for _, s in schemas):
        id_column = DEFAULT_ID_COLUMN
    for path, schema in schemas:
        if id_column is not None and id_column not in schema.names:
            raise DataError(f"--id-column: {path} has no column {id_column!r}")
    return id_column, rows


def _schema(fs: pafs.FileSystem, path: str, fmt: str) -> tuple[pa.Schema, int | None]:
    local = path.split("://", 1)[-1]
    try:
        if fmt == "parquet":
            metadata = pq.read_metadata(local, filesystem=fs)
            return metadata.schema.to_arrow_schema(), metadata.num_rows
        import pyarrow.csv as pacsv

        with open_input(fs, local) as f:
            parse = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
            return pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 20),
                                  parse_options=parse).schema, None
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"--input: cannot read {path} as {fmt}: {err}") from err


def output_name(path: str) -> str:
    """Returns the output file's name for an input file: its stem and a hash of its full path
    (two inputs may share a name), the same on every run."""
    stem = posixpath.basename(path)
    for suffix in (*CSV_SUFFIXES, ".parquet", ".pq"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}.parquet"


def _manifest(model: ModelVersion, cfg: PredictConfig, id_column: str | None) -> dict[str, Any]:
    return {"model": model.name, "version": model.version, "probabilities": cfg.probabilities,
            "id_column": id_column}


def _read_manifest(output: str) -> dict[str, Any] | None:
    """The output's manifest; ConfigError when the output holds something else."""
    text = storage.read_text(storage.join(output, MANIFEST))
    if text is not None:
        return json.loads(text)
    fs, root = storage.split(output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"--output {output!r} is a file; give a directory")
    names = [n for n in storage.list_names(output) if not n.startswith(".")]
    if names:
        raise ConfigError(f"--output {output!r} exists and is not a raylane predict output (no {MANIFEST}; "
                          f"it holds {', '.join(sorted(names)[:3])}{' ...' if len(names) > 3 else ''}); "
                          "give a new or empty directory")
    return None


# -- the job on Ray ---------------------------------------------------------------------------------


def execute(plan: Plan, on_progress: Callable[[Progress], None] | None = None) -> PredictResult:
    """Scores the plan's files on the Ray this process is connected to; returns what was done."""
    import ray
    import ray.data

    configure_ray_data()
    _prepare_output(plan)
    actors = check_actors(plan.cfg, len(plan.todo))
    gpus = f", {plan.cfg.gpus_per_actor:g} GPU each" if plan.cfg.gpus_per_actor else ""
    progress.say(f"scoring {len(plan.todo)} {plan.fmt} file{'s' * (len(plan.todo) > 1)} with "
                 f"{plan.model.name} v{plan.model.version} on {actors} actor{'s' * (actors > 1)}{gpus} "
                 f"-> {plan.output}")
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    items = [{"index": i, "path": f.path, "source": f.source, "name": f.output_name}
             for i, f in enumerate(plan.todo)]
    scorer = ScoreFiles, {"job": _job(plan), "counter": counter}
    results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        scorer[0], fn_constructor_kwargs=scorer[1], batch_size=1, batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_cpus=plan.cfg.cpus_per_actor, num_gpus=plan.cfg.gpus_per_actor or None)
    rows_total = sum(f.rows for f in plan.todo) if all(f.rows is not None for f in plan.todo) else None
    start = time.monotonic()
    report = _Reporter(counter, len(plan.todo), rows_total, start, on_progress)
    summaries: list[dict[str, Any]] = []
    try:
        with report:
            for batch in results.iter_batches(batch_size=None, batch_format="pandas"):
                summaries += batch.to_dict("records")
    except Exception as err:
        raise _raylane_error(err) from err
    finally:
        ray.kill(counter)
    if on_progress is not None:  # the last line from the files' own summaries, not the counter (whose
        # last add.remote calls may not have arrived)
        on_progress(Progress(len(summaries), len(plan.todo), sum(int(s["rows"]) for s in summaries),
                             rows_total, sum(int(s["bad_rows"]) for s in summaries),
                             time.monotonic() - start))
    _delete_temp_dir(plan.output)
    bad_sample = [s for summary in summaries for s in json.loads(summary["bad_sample"])][:BAD_SAMPLE_SIZE]
    return PredictResult(
        plan.model, plan.output, scored=[s["path"] for s in summaries],
        skipped=[f.path for f in plan.finished], rows=sum(int(s["rows"]) for s in summaries),
        bad_rows=sum(int(s["bad_rows"]) for s in summaries), bad_sample=bad_sample,
        seconds=time.monotonic() - start, actors=actors)


def check_actors(cfg: PredictConfig, files: int) -> int:
    """Returns the actors to start: --actors, checked against the connected cluster's resources
    (ConfigError naming the flags, rather than Ray Data waiting forever for resources that are not
    there), or by default one per `cpus_per_actor` CPUs (or `gpus_per_actor` GPUs) of the cluster,
    at most one per file (an actor scores a file at a time)."""
    import ray

    return fit_actors(cfg, files, ray.cluster_resources())


def fit_actors(cfg: PredictConfig, files: int, resources: dict[str, float]) -> int:
    """check_actors on the given cluster resources."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    asked = f"--actors {cfg.actors} x " if cfg.actors else ""
    if cfg.gpus_per_actor and _how_many(gpus, cfg.gpus_per_actor) < (cfg.actors or 1):
        raise ConfigError(f"{asked}--gpus-per-actor {cfg.gpus_per_actor:g}: the cluster has {gpus:g} GPUs")
    if _how_many(cpus, cfg.cpus_per_actor) < (cfg.actors or 1):
        raise ConfigError(f"{asked}--cpus-per-actor {cfg.cpus_per_actor:g}: the cluster has {cpus:g} CPUs")
    if cfg.actors:
        return cfg.actors
    fit = _how_many(cpus, cfg.cpus_per_actor)  # a GPU actor takes its CPUs too
    if cfg.gpus_per_actor:
        fit = min(fit, _how_many(gpus, cfg.gpus_per_actor))
    return max(1, min(fit, files))


def _how_many(have: float, each: float) -> int:
    """How many shares of `each` fit in `have`, as Ray counts them (to 1/10000 of a unit), not
    as floats do: 1.0 // 0.1 is 9.0."""
    return round(have / RESOURCE_UNIT) // round(each / RESOURCE_UNIT)  # each: PredictConfig's >= 1 unit


def _prepare_output(plan: Plan) -> None:
    """Writes the manifest and deletes the temp files a killed run left."""
    fs, root = storage.split(plan.output)
    try:
        fs.create_dir(root, recursive=True)
        _delete_temp_dir(plan.output)
    except OSError as err:
        raise DataError(f"--output {plan.cfg.output!r}: cannot write there: {err}") from err
    storage.write_text(storage.join(plan.output, MANIFEST),
                       json.dumps(_manifest(plan.model, plan.cfg, plan.id_column), indent=1) + "\n")
    if plan.finished:
        log.info("skipped %d file%s scored by an earlier run: %s", len(plan.finished),
                 "s" * (len(plan.finished) > 1), ", ".join(f.path for f in plan.finished[:5])
                 + (" ..." if len(plan.finished) > 5 else ""))


@dataclass(frozen=True)
class _Job:
    """What every actor needs to score files: plain values, shipped once per actor."""

    model_uri: str
    model_label: str
    tracking_uri: str
    fmt: str
    id_column: str | None
    probabilities: bool
    on_bad_rows: str
    batch_size: int
    output: str
    cpus_per_actor: float = 1.0


def _job(plan: Plan) -> _Job:
    return _Job(plan.model.uri, f"{plan.model.name}/{plan.model.version}", plan.tracking_uri, plan.fmt,
                plan.id_column, plan.cfg.probabilities, plan.cfg.on_bad_rows, plan.cfg.batch_size,
                plan.output, plan.cfg.cpus_per_actor)


class ProgressCounter:
    """Rows and files done so far, counted by the actors as they go (a Ray actor in a job)."""

    def __init__(self) -> None:
        self.rows = self.bad = self.files = 0

    def add(self, rows: int, bad: int, files: int = 0) -> None:
        self.rows, self.bad, self.files = self.rows + rows, self.bad + bad, self.files + files

    def totals(self) -> tuple[int, int, int]:
        return self.rows, self.bad, self.files


class _Reporter:
    """Calls `on_progress` about twice a second from a thread while the job runs."""

    def __init__(self, counter: Any, files: int, rows_total: int | None, start: float,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.counter, self.files, self.rows_total, self.start = counter, files, rows_total, start
        self.on_progress, self.stop = on_progress, threading.Event()
        self.thread = threading.Thread(target=self._loop, name="raylane-predict-progress", daemon=True)

    def __enter__(self) -> _Reporter:
        if self.on_progress is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()  # the job's last line comes from the files' summaries (execute)
        if self.on_progress is not None:
            self.thread.join()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self._report()
            except Exception:  # the job's own error is what counts; the bar just stops
                return

    def _report(self) -> None:
        import ray

        rows, bad, files = ray.get(self.counter.totals.remote(), timeout=10)
        elapsed = time.monotonic() - self.start
        self.on_progress(Progress(files, self.files, rows, self.rows_total, bad, elapsed))


class ScoreFiles:
    """An actor of the pool: loads the model once, then scores whole files into their outputs."""

    def __init__(self, job: _Job, counter: Any) -> None:
        env.apply(env.MLFLOW)
        import mlflow.pyfunc

        mlflow.set_tracking_uri(job.tracking_uri)
        self.job, self.counter = job, counter
        self.model = mlflow.pyfunc.load_model(job.model_uri)
        self.inner = inner = self.model.unwrap_python_model()
        if not hasattr(inner, "preprocessor"):
            raise ModelNotFoundError(f"{job.model_uri} is not a model raylane logged (no preprocessor)")
        self.preprocessor, self.task = inner.preprocessor, inner.task
        self.classes = list(inner.classes)
        if getattr(inner, "framework", None) == "torch":  # the pyfunc sets 1 thread, for serving
            import torch

            torch.set_num_threads(max(1, int(job.cpus_per_actor)))
        if self.preprocessor.image_shape is not None:
            raise ConfigError(f"{job.model_uri} takes an image column; raylane predict does not score "
                              "image models yet (tabular models only)")
        self.out_fs, self.out_root = storage.split(job.output)
        self.with_probabilities = job.probabilities and self.task != "regression"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self.score_file(int(item.index), item.path, item.source, item.name)
                             for item in batch.itertuples()])

    def score_file(self, index: int, path: str, source: str, name: str) -> dict[str, Any]:
        """Scores one file into `<output>/_tmp/...`, then moves it to `<output>/<name>`."""
        fs, _ = filesystem(source)
        temp = posixpath.join(self.out_root, TEMP_DIR, f"{name}.{uuid.uuid4().hex}")
        self.out_fs.create_dir(posixpath.dirname(temp), recursive=True)
        rows = bad = 0
        sample: list[str] = []
        writer = None
        try:
            for chunk in self._chunks(fs, index, path):
                if writer is None:  # the id's type is known from the first chunk (a CSV file: all of it)
                    schema = self._schema(fs, path, chunk)
                    writer = pq.ParquetWriter(temp, schema, filesystem=self.out_fs)
                errors = chunk[ERROR].to_numpy()
                broken = pd.notna(errors)
                if broken.any():
                    if self.job.on_bad_rows == "fail":
                        raise DataError(f"--on-bad-rows fail: {errors[broken][0]}. Fix the data, or pass "
                                        "--on-bad-rows drop to skip such rows (counted and reported)")
                    sample += list(errors[broken][: BAD_SAMPLE_SIZE - len(sample)])
                    bad += int(broken.sum())
                    chunk = chunk[~broken]
                for start in range(0, len(chunk), self.job.batch_size):
                    part = chunk.iloc[start:start + self.job.batch_size]
                    writer.write_table(self._scored(part, schema))
                    rows += len(part)
                    self.counter.add.remote(len(part), 0)
                if broken.any():
                    self.counter.add.remote(0, int(broken.sum()))
            if writer is None:  # a file without rows: an output without rows
                writer = pq.ParquetWriter(temp, self._schema(fs, path, None), filesystem=self.out_fs)
            writer.close()
            self.out_fs.move(temp, posixpath.join(self.out_root, name))
        except BaseException:
            if writer is not None:
                writer.close()
            _delete_quietly(self.out_fs, temp)
            raise
        self.counter.add.remote(0, 0, 1)
        return {"path": path, "rows": rows, "bad_rows": bad, "bad_sample": json.dumps(sample)}

    def _chunks(self, fs: pafs.FileSystem, index: int, path: str) -> Iterator[pd.DataFrame]:
        """The file's typed rows, a chunk at a time, as the training data stage reads them."""
        reader = ReadFile(fs, self.job.fmt, self.preprocessor.kinds, None, self.job.id_column, self.task,
                          self.preprocessor.image_shape)
        yield from reader(pd.DataFrame({"index": [index], "path": [path]}))

    def _schema(self, fs: pafs.FileSystem, path: str, first: pd.DataFrame | None) -> pa.Schema:
        """The output's columns: the id, the prediction, the probabilities."""
        fields = []
        if self.job.id_column is not None:
            fields.append(pa.field(self.job.id_column, self._id_type(fs, path, first)))
        prediction = pa.float64() if self.task == "regression" else pa.array(np.asarray(self.classes)).type
        fields.append(pa.field(PREDICTION, prediction))
        if self.with_probabilities:
            fields += [pa.field(f"{PROBABILITY_PREFIX}{c}", pa.float64()) for c in self.classes]
        metadata = {"raylane.model": self.job.model_label, "raylane.source": path}
        return pa.schema(fields, metadata=metadata)

    def _id_type(self, fs: pafs.FileSystem, path: str, first: pd.DataFrame | None) -> pa.DataType:
        """The id column's type: the Parquet file's own where it is a number; in a CSV file (read
        whole) integers or numbers when every id is one; else text (the reader holds ids as text)."""
        if self.job.fmt == "parquet":
            found = pq.read_schema(path.split("://", 1)[-1], filesystem=fs).field(self.job.id_column).type
            return found if pa.types.is_integer(found) or pa.types.is_floating(found) else pa.string()
        if first is None:
            return pa.string()
        return csv_id_type(first[self.job.id_column])

    def _scored(self, part: pd.DataFrame, schema: pa.Schema) -> pa.Table:
        """The output rows of typed input rows: the model's own predict, once per batch."""
        frame = part[self.preprocessor.names]
        columns: dict[str, pa.Array] = {}
        if self.job.id_column is not None:
            ids = pa.array(part[self.job.id_column].to_numpy(dtype=object), type=pa.string(),
                           from_pandas=True)
            columns[self.job.id_column] = ids.cast(schema.field(self.job.id_column).type)
        if self.inner.preprocessor.numeric_only:
            # The path a Serve replica takes for an all-numeric model: the same imputation and
            # scaling as predict's, on the matrix, without checking again what the reader typed.
            probabilities = self.inner.predict_proba(frame.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            probabilities = np.asarray(self.model.predict(frame, params={"return_probabilities": True})
                                       if self.task != "regression" else self.model.predict(frame))
        predicted = (np.asarray(probabilities).reshape(len(frame), -1)[:, 0] if self.task == "regression"
                     else np.asarray(self.classes)[probabilities.argmax(axis=1)])  # as predict() does
        columns[PREDICTION] = pa.array(predicted, type=schema.field(PREDICTION).type)
        if self.with_probabilities:
            for k, c in enumerate(self.classes):
                columns[f"{PROBABILITY_PREFIX}{c}"] = pa.array(probabilities[:, k], type=pa.float64())
        return pa.table(columns, schema=schema)


_INTEGER = re.compile(r"-?(0|[1-9]\d*)")
_INT64 = (-(2**63), 2**63 - 1)


def csv_id_type(ids: pd.Series) -> pa.DataType:
    """The type of a CSV file's ids (text as read): int64 when every id is an integer written
    canonically (no leading zero, no '+', no spaces) that fits in int64; else text as given, so
    '007' or a 23-digit id comes back as written (never a float: ids are not quantities)."""
    text = ids.dropna().astype(str)
    if text.empty or not text.str.fullmatch(_INTEGER.pattern).all():
        return pa.string()
    digits = text.str.len() - text.str.startswith("-")
    if (digits > 19).any() or not all(_INT64[0] <= int(t) <= _INT64[1] for t in text[digits == 19]):
        return pa.string()
    return pa.int64()


def _delete_temp_dir(output: str) -> None:
    fs, root = storage.split(output)
    temp = posixpath.join(root, TEMP_DIR)
    if fs.get_file_info(temp).type == pafs.FileType.Directory:
        fs.delete_dir(temp)


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass  # the next run deletes the temp folder


def _raylane_error(err: BaseException) -> RaylaneError:
    """Returns the raylane error raised in an actor (Ray wraps it, or carries only its text)."""
    from ray.exceptions import RayTaskError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, RaylaneError):
            # Ray's as_instanceof_cause() class subclasses both: its str() is the whole traceback.
            cls = next(c for c in type(seen).__mro__
                       if issubclass(c, RaylaneError) and not issubclass(c, RayTaskError))
            cause = getattr(seen, "cause", None) or seen
            lines = str(cause).strip().splitlines()
            return cls(lines[-1] if lines else cls.__name__)
        for line in reversed(str(seen).splitlines()):
            for kind in (DataError, ModelNotFoundError, ConfigError, TrackingError):
                if f"{kind.__name__}: " in line:
                    return kind(line.split(f"{kind.__name__}: ", 1)[1].strip())
        seen = seen.__cause__ or seen.__context__
    text = str(err).strip().splitlines()
    return RaylaneError(f"batch scoring failed: {text[-1] if text else type(err).__name__}")
