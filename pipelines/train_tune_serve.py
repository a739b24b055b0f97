"""Data -> Ray Train (PyTorch DDP) -> Ray Tune -> MLflow -> champion gate -> Ray Serve.

Run it locally (starts a local Ray, serves until Ctrl-C):

    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml
    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml \
        --set train.epochs=5 --set tune.num_samples=8

A run has a name (--run-name, default <model>-<timestamp>, printed first). If it is stopped or
killed, continue it where it stopped: prepared data is reused, finished trials are not rerun,
unfinished ones resume from their checkpoints, and the same MLflow run carries on:

    python -m pipelines.train_tune_serve --resume digits-20261125-101500

or on a cluster (deploys the endpoint detached and exits; the endpoint outlives the job):

    ray job submit --working-dir . -- \
        python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from raylane import cluster, data, progress, runs, tracking, tune
from raylane.cli import add_common_arguments, config_from_args, overrides_from_args, run_main
from raylane.serving import deploy
from raylane.storage import check_storage, join, local_copy, local_or_uri
from raylane.train.trainer import check_backend_installed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="raylane run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    parser.add_argument("--run-name", help="name of this pipeline run: MLflow parent run, Tune "
                        "experiment and checkpoint folder (default: <model>-<timestamp>); an existing "
                        "name is refused")
    parser.add_argument("--resume", metavar="RUN_NAME",
                        help="continue a stopped or killed run with its own config (found under "
                             "storage_path; --config/--set, if given, must describe the same run)")
    args = parser.parse_args(argv)
    if args.resume and args.run_name and args.resume != args.run_name:
        parser.error("--resume names the run to continue; leave out --run-name")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), args.verbose)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # a bad config fails here, before Ray starts
    storage_path = local_or_uri(cfg.storage_path)
    if args.resume:
        overrides = overrides_from_args(args)
        given = cfg if args.config or overrides else None
        record = runs.resume(storage_path, args.resume, given, overrides, from_file=bool(args.config))
        cfg = record.pipeline_config()
        progress.say(f"resuming run {record.run_name} (attempt {record.resumes + 1}): storage {storage_path}")
    else:
        record = None
        run_name = args.run_name or runs.new_run_name(cfg)
        runs.check_new(storage_path, run_name)
    check_backend_installed(cfg.train)
    experiment_id = tracking.configure(cfg.tracking)  # an unreachable MLflow server fails here
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking)

    on_cluster = cluster.connect(cfg)
    check_storage(storage_path)  # writable, and the same directory on every node, before any work
    if record is None:
        record = runs.start(storage_path, run_name, cfg)
        progress.say(f"run {run_name}: storage {storage_path} (if interrupted: --resume {run_name})")
    run_name = record.run_name
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    with progress.stage("data", cfg.data.source):
        prepared, reused = data.prepare_once(cfg.data, storage_path, join(storage_path, run_name, "data"))
        progress.say(f"  {'reused the prepared splits: ' if reused else ''}rows {prepared.num_rows}, "
                     f"{len(prepared.feature_columns)} features ({prepared.input_dim} encoded), "
                     f"{len(prepared.classes)} classes, "
                     f"digest {prepared.digest}")

    with tracking.pipeline_run(cfg, run_name, experiment_id, record.mlflow_run_id, record.resumes) as parent:
        progress.say(f"MLflow run {parent.info.run_id} (experiment {cfg.tracking.experiment!r}, "
                     f"{tracking_uri})")
        if record.mlflow_run_id is None:
            tracking.log_dataset(prepared)
            record = runs.update(storage_path, record, mlflow_run_id=parent.info.run_id,
                                 experiment_id=experiment_id)
        if record.registered_version is None:  # killed between registering and recording it?
            version = tracking.version_registered_by(cfg.model.name, parent.info.run_id)
            if version is not None:
                record = runs.update(storage_path, record, registered_version=version.version,
                                     promotion=version.tags.get("raylane.promotion", ""))
        if record.registered_version is None:
            with progress.stage("tune", f"{cfg.tune.num_samples} trials x {cfg.train.num_workers} workers"):
                logger = tracking.TrialRunLogger(tracking_uri, experiment_id, parent.info.run_id,
                                                 cfg.tracking.outage_timeout_s)
                best = tune.search(cfg, prepared, run_name, storage_path, callbacks=[logger],
                                   resume=args.resume is not None)
                tracking.log_tune_results(best.results_table)
            with progress.stage("register", f"best trial {best.trial_id} {best.hyperparams}"):
                with local_copy(best.checkpoint_path, storage_path) as checkpoint_dir:
                    val_score = best.metrics["val_mae" if prepared.task == "regression" else "val_accuracy"]
                    model = tracking.log_best_model(checkpoint_dir, prepared, best.hyperparams,
                                                    float(val_score), cfg.train.backend)
                promotion = tracking.register_if_better(cfg.model, model)
            record = runs.update(storage_path, record, registered_version=promotion.version,
                                 promotion=promotion.summary)
            progress.say(f"best params {best.hyperparams}; {model.val_metric} {model.val_score:.4f}, "
                         f"{model.test_metric} {model.test_score:.4f}")
        else:
            progress.say(f"training already finished in an earlier attempt: model {cfg.model.name} "
                         f"v{record.registered_version}")

    progress.say(f"model {cfg.model.name} v{record.registered_version}: {record.promotion}")
    progress.say(f"MLflow parent run {parent.info.run_id}")
    if not cfg.serve.enabled:
        return 0
    with progress.stage("serve", f"{cfg.model.name}@{cfg.model.champion_alias}"):
        url = deploy.deploy(cfg.serve, cfg.model, tracking_uri)
    deploy.announce(url, cfg.model)
    progress.say("try: " + deploy.curl_example(url, cfg.model, prepared.preprocessor.kinds))
    deploy.keep_serving(on_cluster=on_cluster, block=not args.no_block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
