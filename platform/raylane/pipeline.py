"""The pipeline as library code: data -> search (Ray Train in Ray Tune) -> register -> serve.

    import raylane
    result = raylane.run(raylane.load_config("pipelines/configs/digits_torch.yaml"))
    result.endpoint, result.version, result.promotion

Each stage is a function of its own, so a notebook can run one at a time; `run` calls them in
order. A run has a name and a record in storage (`raylane.runs`): if it stops, `resume` continues
it where it stopped (prepared data reused, finished trials kept, the same MLflow run), and
`resume_if_exists` continues it or starts it, for a job whose retries repeat one command.
The job entrypoints in `pipelines/` and the `raylane` CLI are thin shells around `run`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from raylane import builders, cluster, data, env, progress, registry, runs, tracking, tune
from raylane.config import PipelineConfig
from raylane.errors import ConfigError, StorageError
from raylane.serving import deploy
from raylane.storage import check_storage, join, local_copy, local_or_uri
from raylane.train.trainer import check_backend_installed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    """What a pipeline run produced."""

    run_name: str
    mlflow_run_id: str
    model_name: str
    version: str
    """The model version this run registered."""
    promotion: str
    """The champion gate's decision and why."""
    endpoint: str | None
    """The endpoint's base URL, None when `serve.enabled` is false."""
    on_cluster: bool
    """True when the job joined an existing Ray cluster (the endpoint then outlives it)."""


def run(cfg: PipelineConfig, run_name: str | None = None, *, resume_from: runs.RunRecord | None = None,
        quiet: bool = False) -> PipelineResult:
    """Runs the whole pipeline on `cfg` and returns what it produced; the endpoint keeps serving
    as long as Ray does. `run_name`: a new run's name (default <model>-<timestamp>; an existing name
    is refused). `resume_from`: the record of a stopped run to continue (`resume`). `quiet`: other
    tools' output (Ray, Tune, MLflow) goes to the run's log file and the workers' to Ray's session
    logs, not the terminal (the CLI's default)."""
    storage_path = local_or_uri(cfg.storage_path)
    if resume_from is None:
        run_name = run_name or runs.new_run_name(cfg)
        runs.check_new(storage_path, run_name)
    else:
        run_name = runs.check_name(resume_from.run_name, "--resume")
    check_backend_installed(cfg.train)
    builders.check_builder(cfg)  # model.builder imports and takes model.params: before any work
    cluster.apply_settings(cfg)
    log_file = _capture_logs(cfg, storage_path, run_name) if quiet else None
    experiment_id = tracking.configure(cfg.tracking)  # an unreachable MLflow server fails here
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking)
    if resume_from is not None:  # the record is in shared storage: its ids must be this run's
        tracking.check_resumed_run(resume_from, tracking_uri, experiment_id, cfg.model.name)

    on_cluster = cluster.connect(cfg, log_file=log_file)
    check_storage(storage_path)  # writable, and the same directory on every node, before any work
    record = resume_from or runs.start(storage_path, run_name, cfg)
    if resume_from is None:
        progress.say(f"run {run_name}: storage {storage_path} (if interrupted: --resume {run_name})")

    prepared = prepare_data(cfg, storage_path, run_name)
    # The builder's network, built once here: its output must fit the data, before any trial.
    builders.check_output(builders.model_spec(cfg, prepared, builders.probe_params(cfg)))
    with tracking.pipeline_run(cfg, run_name, experiment_id, record.mlflow_run_id, record.resumes) as parent:
        run_id = parent.info.run_id
        progress.say(f"MLflow run {run_id} (experiment {cfg.tracking.experiment!r}, {tracking_uri})")
        if record.mlflow_run_id is None:
            tracking.log_dataset(prepared)
            record = runs.update(storage_path, record, mlflow_run_id=run_id, experiment_id=experiment_id)
        mlflow_ids = (tracking_uri, experiment_id, run_id)
        record = _train_and_register(cfg, prepared, record, storage_path, mlflow_ids,
                                     resume=resume_from is not None)

    progress.say(f"model {cfg.model.name} v{record.registered_version}: {record.promotion}")
    progress.say(f"MLflow parent run {run_id}")
    endpoint = serve(cfg, tracking_uri, prepared) if cfg.serve.enabled else None
    return PipelineResult(run_name, run_id, cfg.model.name, str(record.registered_version),
                          str(record.promotion), endpoint, on_cluster)


def resume(run_name: str, cfg: PipelineConfig, *, given: PipelineConfig | None = None,
           overrides: list[str] = (), from_file: bool = False, quiet: bool = False) -> PipelineResult:
    """Continues the stopped run `run_name` (found under `cfg.storage_path`) with its own config.
    `given`: a config the user stated for it (with --config: it must describe the same run; with
    --set alone, `overrides`, only the overridden fields are compared)."""
    storage_path = local_or_uri(cfg.storage_path)
    record = runs.resume(storage_path, run_name, given, overrides, from_file=from_file)
    progress.say(f"resuming run {record.run_name} (attempt {record.resumes + 1}): storage {storage_path}")
    return run(record.pipeline_config(), resume_from=record, quiet=quiet)


def resume_if_exists(run_name: str, cfg: PipelineConfig, *, given: PipelineConfig | None = None,
                     overrides: list[str] = (), from_file: bool = False,
                     quiet: bool = False) -> PipelineResult:
    """Continues the run `run_name` if `cfg.storage_path` holds it (as `resume`), else starts a run
    of that name on `cfg` (as `run`): the same command run twice is one run, as a retried job needs."""
    storage_path = local_or_uri(cfg.storage_path)
    if runs.exists(storage_path, run_name):
        return resume(run_name, cfg, given=given, overrides=overrides, from_file=from_file, quiet=quiet)
    progress.say(f"no run {run_name} under {storage_path} yet: starting it")
    return run(cfg, run_name, quiet=quiet)


def prepare_data(cfg: PipelineConfig, storage_path: str, run_name: str) -> data.PreparedData:
    """The data stage: the prepared splits of this run, reused when an earlier attempt made them."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    with progress.stage("data", cfg.data.source):
        prepared, reused = data.prepare_once(cfg.data, storage_path, join(storage_path, run_name, "data"))
        progress.say(f"  {'reused the prepared splits: ' if reused else ''}rows {prepared.num_rows}, "
                     f"{len(prepared.feature_columns)} features ({prepared.input_dim} encoded), "
                     f"{len(prepared.classes)} classes, digest {prepared.digest}")
    return prepared


def search(cfg: PipelineConfig, prepared: data.PreparedData, run_name: str, storage_path: str,
           tracking_uri: str, experiment_id: str, parent_run_id: str, resume: bool = False) -> tune.BestTrial:
    """The search stage: Ray Tune over Ray Train fits, each trial a nested MLflow run; the best trial."""
    trial_runs = tracking.TrialRunLogger(tracking_uri, experiment_id, parent_run_id,
                                         cfg.tracking.outage_timeout_s)
    best = tune.search(cfg, prepared, run_name, storage_path, callbacks=[trial_runs], resume=resume)
    tracking.log_tune_results(best.results_table)
    return best


def register(cfg: PipelineConfig, prepared: data.PreparedData, best: tune.BestTrial,
             storage_path: str) -> registry.Promotion:
    """The register stage: the best checkpoint logged as an MLflow model, scored on the test split,
    registered, and made champion if the gate allows it."""
    task = cfg.task
    with progress.stage("register", f"best trial {best.trial_id} {best.hyperparams}"):
        with local_copy(best.checkpoint_path, storage_path) as checkpoint_dir:
            model = tracking.log_best_model(checkpoint_dir, prepared, best.hyperparams,
                                            float(best.metrics[task.val_metric]), cfg.train.backend,
                                            code=builders.code_location(cfg),
                                            requirements=cfg.model.requirements)
        promotion = registry.register_if_better(cfg.model, model)
    progress.say(f"best params {best.hyperparams}; {model.val_metric} {model.val_score:.4f}, "
                 f"{model.test_metric} {model.test_score:.4f}")
    return promotion


def serve(cfg: PipelineConfig, tracking_uri: str, prepared: Any = None, version: str | None = None) -> str:
    """The serve stage: the alias's version deployed on Ray Serve; returns the endpoint's base URL.
    `prepared`: the run's data, for a ready-to-paste request; `version`: the alias's, to name it."""
    model, alias = cfg.model.name, cfg.model.champion_alias
    with progress.stage("serve", f"{model} v{version} ({alias})" if version else f"{model}@{alias}"):
        url = deploy.deploy(cfg.serve, cfg.model, tracking_uri)
    deploy.announce(url, cfg.model)
    if prepared is not None:
        progress.say("try: " + deploy.curl_example(url, cfg.model, prepared.preprocessor.kinds))
    return url


def serve_champion(cfg: PipelineConfig, quiet: bool = False) -> tuple[str, bool]:
    """Deploys the version `model.champion_alias` names, without training; returns (the endpoint's
    base URL, whether it runs on an existing cluster). ModelNotFoundError when there is none.
    `quiet`: other tools' output goes to a log file (in a temporary folder), not the terminal."""
    cluster.apply_settings(cfg)
    log_file = cluster.capture_tool_logs(None, also_import=("ray.serve",)) if quiet else None
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking)
    version = registry.champion_version(tracking_uri, cfg.model.name, cfg.model.champion_alias)
    on_cluster = cluster.connect(cfg, log_file=log_file, training=False)
    return serve(cfg, tracking_uri, version=version), on_cluster


def remove_model(cfg: PipelineConfig, name: str, quiet: bool = False) -> None:
    """Takes model `name` off the endpoint of the cluster `cfg` names (or RAY_ADDRESS); the other
    models keep serving. ConfigError without a cluster, or when the model is not served there."""
    if not (cfg.cluster.address or env.RAY_ADDRESS.get()):
        raise ConfigError("--remove: needs the cluster the endpoint runs on (set RAY_ADDRESS or "
                          "cluster.address); a local `raylane serve` stops with Ctrl-C")
    cluster.apply_settings(cfg)
    log_file = cluster.capture_tool_logs(None, also_import=("ray.serve",)) if quiet else None
    cluster.connect(cfg, log_file=log_file, training=False)
    with progress.stage("serve", f"remove {name}"):
        deploy.remove(name)
    progress.say(f"{name} is no longer served; still served: {', '.join(deploy.served_models()) or 'none'}")


def _train_and_register(cfg: PipelineConfig, prepared: data.PreparedData, record: runs.RunRecord,
                        storage_path: str, mlflow_ids: tuple[str, str, str], resume: bool) -> runs.RunRecord:
    """Searches and registers the best model, unless an earlier attempt of this run already did;
    returns the run's record with the version it registered. `mlflow_ids`: the tracking URI, the
    experiment id and the parent run id."""
    tracking_uri, experiment_id, run_id = mlflow_ids
    record = _registered_before(cfg, record, run_id, storage_path)
    if record.registered_version is not None:
        progress.say(f"training already finished in an earlier attempt: model {cfg.model.name} "
                     f"v{record.registered_version}")
        return record
    with progress.stage("tune", f"{cfg.tune.num_samples} trials x {cfg.train.num_workers} workers"):
        best = search(cfg, prepared, record.run_name, storage_path, tracking_uri, experiment_id, run_id,
                      resume=resume)
    promotion = register(cfg, prepared, best, storage_path)
    return runs.update(storage_path, record, registered_version=promotion.version,
                       promotion=promotion.summary)


def _capture_logs(cfg: PipelineConfig, storage_path: str, run_name: str) -> str:
    """Sends other tools' output to the run's log file; returns its path. StorageError naming
    `storage_path` when the folder cannot be made there."""
    try:
        # Ray Serve configures its logger when imported: import it first when the run serves.
        return cluster.capture_tool_logs(_log_dir(storage_path, run_name),
                                         also_import=("ray.serve",) if cfg.serve.enabled else ())
    except StorageError as err:
        raise StorageError(f"storage_path {storage_path!r}: {err}") from err


def _registered_before(cfg: PipelineConfig, record: runs.RunRecord, run_id: str,
                       storage_path: str) -> runs.RunRecord:
    """The record, with the version this run registered if an earlier attempt was killed between
    registering it and recording it."""
    if record.registered_version is not None:
        return record
    version = registry.version_registered_by(cfg.model.name, run_id)
    if version is None:
        return record
    return runs.update(storage_path, record, registered_version=version.version,
                       promotion=version.tags.get(registry.PROMOTION_TAG, ""))


def _log_dir(storage_path: str, run_name: str) -> str | None:
    """Where other tools' output goes (`ray.log`): the run's `logs/` on local storage, else (a URI)
    a temporary directory; `raylane.cluster.connect` prints the path."""
    return None if "://" in storage_path else join(storage_path, run_name, runs.LOGS_DIR)
