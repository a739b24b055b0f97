"""Data -> Ray Train (PyTorch DDP) -> Ray Tune -> MLflow -> champion gate -> Ray Serve.

Run it locally (starts a local Ray, serves until Ctrl-C):

    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml
    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml \
        --set train.epochs=5 --set tune.num_samples=8

or on a cluster (deploys the endpoint detached and exits; the endpoint outlives the job):

    ray job submit --working-dir . -- \
        python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from raylane import cluster, data, progress, tracking, tune
from raylane.cli import add_common_arguments, config_from_args, run_main
from raylane.errors import ConfigError
from raylane.serving import deploy
from raylane.storage import check_storage, local_copy, local_or_uri, run_directory_exists
from raylane.train.trainer import check_backend_installed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="raylane run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    parser.add_argument("--run-name", help="name of this pipeline run: MLflow parent run, Tune "
                        "experiment and checkpoint folder (default: <model>-<timestamp>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), args.verbose)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # a bad config fails here, before Ray starts
    check_backend_installed(cfg.train)
    run_name = args.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = local_or_uri(cfg.storage_path)
    if run_directory_exists(storage_path, run_name):
        raise ConfigError(f"--run-name {run_name!r} already exists under {storage_path}; "
                          "choose another name (runs are never overwritten)")
    progress.say(f"run {run_name}: storage {storage_path}")

    on_cluster = cluster.connect(cfg)
    check_storage(storage_path)  # writable, and the same directory on every node, before any work
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    experiment_id = tracking.configure(cfg.tracking)
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking)

    with progress.stage("data", cfg.data.source):
        prepared = data.prepare(cfg.data, storage_path)
        progress.say(f"  rows {prepared.num_rows}, {prepared.input_dim} features, "
                     f"{len(prepared.classes)} classes, digest {prepared.digest}")

    with tracking.pipeline_run(cfg, run_name, experiment_id) as parent:
        progress.say(f"MLflow run {parent.info.run_id} (experiment {cfg.tracking.experiment!r}, "
                     f"{tracking_uri})")
        tracking.log_dataset(prepared)
        with progress.stage("tune", f"{cfg.tune.num_samples} trials x {cfg.train.num_workers} workers"):
            logger = tracking.TrialRunLogger(tracking_uri, experiment_id, parent.info.run_id)
            best = tune.search(cfg, prepared, run_name, storage_path, callbacks=[logger])
            tracking.log_tune_results(best.results_table)
        with progress.stage("register", f"best trial {best.trial_id} {best.hyperparams}"):
            with local_copy(best.checkpoint_path, storage_path) as checkpoint_dir:
                model = tracking.log_best_model(checkpoint_dir, prepared, best.hyperparams,
                                                float(best.metrics["val_accuracy"]), cfg.train.backend)
            promotion = tracking.register_if_better(cfg.model, model)

    progress.say(f"best params {best.hyperparams}; val_accuracy {model.val_accuracy:.4f}, "
                 f"test_accuracy {model.test_accuracy:.4f}")
    progress.say(f"model {cfg.model.name} v{promotion.version}: "
                 f"{'now' if promotion.promoted else 'not'} {cfg.model.champion_alias} ({promotion.reason})")
    progress.say(f"MLflow parent run {parent.info.run_id}")

    if not cfg.serve.enabled:
        return 0
    with progress.stage("serve", f"{cfg.model.name}@{cfg.model.champion_alias}"):
        url = deploy.deploy(cfg.serve, cfg.model, tracking_uri)
    deploy.announce(url, cfg.model)
    progress.say("try: " + deploy.curl_example(url, cfg.model, prepared.input_dim))
    deploy.keep_serving(on_cluster=on_cluster, block=not args.no_block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
