"""The `raylane` command line: every command's flags, the terminal's `[raylane]` lines, error exits.

    raylane run      --config pipelines/configs/digits_torch.yaml [--set train.epochs=5 ...]
    raylane serve    --config pipelines/configs/digits_torch.yaml
    raylane promote  digits 7 [--force]
    raylane rollback digits
    raylane history  digits

The library logs; this module prints. A raylane error ends a command with one line on stderr and a
non-zero exit (2 for a bad config), with the traceback only under --verbose.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable

from raylane.config import PipelineConfig, TrackingConfig, load_config
from raylane.errors import ConfigError, RaylaneError

EXIT_CONFIG_ERROR = 2

RUN_HELP = """Data -> Ray Train (PyTorch DDP or TensorFlow) -> Ray Tune -> MLflow -> champion gate -> Serve.

Run it locally (starts a local Ray, serves until Ctrl-C):

    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml
    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml \\
        --set train.epochs=5 --set tune.num_samples=8

A run has a name (--run-name, default <model>-<timestamp>, printed first). If it is stopped or
killed, continue it where it stopped: prepared data is reused, finished trials are not rerun,
unfinished ones resume from their checkpoints, and the same MLflow run carries on:

    python -m pipelines.train_tune_serve --resume digits-20261125-101500

or on a cluster (deploys the endpoint detached and exits; the endpoint outlives the job):

    ray job submit --working-dir . -- \\
        python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml

A job that is retried runs the very same command again (a KubeRay RayJob's retries, a cron
rerun). With --resume-if-exists the command names its run: it continues that run if storage_path
holds it, exactly as --resume would, and starts it under that name otherwise:

    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml \\
        --run-name digits-nightly --resume-if-exists

The terminal shows one line per stage, the trials as they report, the summary and the endpoint;
Ray's and the workers' own output goes to the run's log file (its path is printed), or live
with --verbose.
"""

SERVE_HELP = """Deploy the current champion from the MLflow registry on Ray Serve, without training.

    python -m pipelines.serve --config pipelines/configs/digits_torch.yaml
    raylane serve --config pipelines/configs/digits_torch.yaml

On a local Ray it serves until Ctrl-C; on a cluster (RAY_ADDRESS set, as under `ray job submit`)
it deploys the application detached and exits.

One endpoint serves several models, each with its own replicas, alias and canary. On a cluster,
each `raylane serve` adds its config's model (model.name) or updates it; the others keep serving:

    RAY_ADDRESS=... raylane serve --set model.name=digits
    RAY_ADDRESS=... raylane serve --set model.name=wine --set serve.num_replicas=2
    RAY_ADDRESS=... raylane serve --remove wine
"""

PROMOTE_HELP = """Move a registry alias (default: champion), through the same gate as the pipeline.

    raylane promote digits 7            # refused unless v7's test metric beats the champion's
                                        # (test_accuracy higher, or for regression test_mae lower)
    raylane promote digits 7 --force    # recorded as forced
    raylane rollback digits             # back to the champion before the current one
    raylane history digits              # every move, as the versions record them, and who made it

Each move is recorded on the version it moved the alias to; `rollback` goes by those records and
refuses when the model's history tag says otherwise (--repair-history: go by the records and
rewrite the tag). Who made a move is the MLflow user where the tracking server has auth
(MLFLOW_TRACKING_USERNAME/PASSWORD); elsewhere RAYLANE_USER or the login name, marked unverified.
"""


def main(argv: list[str] | None = None) -> int:
    """The `raylane` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": run_command, "serve": serve_command, "promote": promote_command,
                "rollback": rollback_command, "history": history_command}
    if not argv or argv[0] not in commands:
        asked = not argv or argv[0] in ("-h", "--help")
        print("usage: raylane {run,serve,promote,rollback,history} [--help] [options]\n\n"
              "  run       data -> train -> tune -> MLflow -> register -> serve the champion\n"
              "  serve     deploy the current champion from the registry, without training\n"
              "  promote   NAME VERSION: move the champion alias, gated on its test metric\n"
              "  rollback  NAME: move the champion alias back to the previous champion\n"
              "  history   NAME: the champion alias's moves, as the versions record them",
              file=sys.stdout if asked else sys.stderr)
        return 0 if argv and asked else EXIT_CONFIG_ERROR
    return commands[argv[0]](argv[1:])


# -- raylane run -----------------------------------------------------------------------------------


def run_command(argv: list[str] | None = None) -> int:
    """`raylane run` / `python -m pipelines.train_tune_serve`."""
    parser = _parser("run", RUN_HELP)
    _add_pipeline_arguments(parser)
    parser.add_argument("--run-name", help="name of this pipeline run: MLflow parent run, Tune "
                        "experiment and checkpoint folder (default: <model>-<timestamp>); letters, "
                        "digits, '-', '_' and '.', not starting with '.', at most 128 characters; an "
                        "existing name is refused, unless --resume-if-exists")
    parser.add_argument("--resume", metavar="RUN_NAME",
                        help="continue a stopped or killed run with its own config (found under "
                             "storage_path; --config/--set, if given, must describe the same run)")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="with --run-name NAME: continue run NAME if storage_path holds it (as "
                             "--resume NAME), else start it; so a retried job's same command is one run")
    args = parser.parse_args(argv)
    if args.resume_if_exists and args.resume:
        parser.error("--resume-if-exists and --resume do not go together: --resume NAME continues "
                     "NAME; --run-name NAME --resume-if-exists continues it or starts it")
    if args.resume_if_exists and not args.run_name:
        parser.error("--resume-if-exists needs --run-name NAME: the run to continue, or to start "
                     "if storage_path has none of that name")
    if args.resume and args.run_name and args.resume != args.run_name:
        parser.error("--resume names the run to continue; leave out --run-name")

    def run() -> int:
        from raylane import pipeline
        from raylane.serving import deploy

        cfg = config_from_args(args)  # a bad config fails here, before Ray starts
        overrides = overrides_from_args(args)
        given = cfg if args.config or overrides else None  # what a resumed run is checked against
        if args.resume:
            result = pipeline.resume(args.resume, cfg, given=given, overrides=overrides,
                                     from_file=bool(args.config), quiet=not args.verbose)
        elif args.resume_if_exists:
            result = pipeline.resume_if_exists(args.run_name, cfg, given=given, overrides=overrides,
                                               from_file=bool(args.config), quiet=not args.verbose)
        else:
            result = pipeline.run(cfg, args.run_name, quiet=not args.verbose)
        if result.endpoint is not None:
            deploy.keep_serving(on_cluster=result.on_cluster, block=not args.no_block)
        return 0

    return run_main(run, args.verbose)


# -- raylane serve ---------------------------------------------------------------------------------


def serve_command(argv: list[str] | None = None) -> int:
    """`raylane serve` / `python -m pipelines.serve`."""
    parser = _parser("serve", SERVE_HELP)
    _add_pipeline_arguments(parser)
    parser.add_argument("--remove", metavar="NAME",
                        help="take model NAME off the endpoint of the cluster (RAY_ADDRESS); the other "
                             "models keep serving")
    args = parser.parse_args(argv)

    def serve() -> int:
        from raylane import pipeline
        from raylane.serving import deploy

        if args.remove:
            pipeline.remove_model(config_from_args(args), args.remove, quiet=not args.verbose)
            return 0
        _, on_cluster = pipeline.serve_champion(config_from_args(args), quiet=not args.verbose)
        deploy.keep_serving(on_cluster=on_cluster, block=not args.no_block)
        return 0

    return run_main(serve, args.verbose)


# -- raylane promote / rollback --------------------------------------------------------------------


def promote_command(argv: list[str] | None = None) -> int:
    return _alias_command("promote", argv)


def rollback_command(argv: list[str] | None = None) -> int:
    return _alias_command("rollback", argv)


def history_command(argv: list[str] | None = None) -> int:
    return _alias_command("history", argv)


def _alias_command(command: str, argv: list[str] | None) -> int:
    parser = _parser(command, PROMOTE_HELP)
    parser.add_argument("name", help="registered model name, e.g. digits")
    if command == "promote":
        parser.add_argument("version", help="model version to make the alias point at")
        parser.add_argument("--force", action="store_true",
                            help="promote even if its test metric does not beat the current version's, "
                                 "or is measured differently (another task); recorded as forced")
    if command == "rollback":
        parser.add_argument("--repair-history", action="store_true",
                            help="when the model's history tag disagrees with the versions' own move "
                                 "records: roll back by the records and rewrite the tag from them")
    parser.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)

    def move() -> int:
        from raylane import registry
        from raylane.tracking import store

        store.configure_client()  # before MLflow is imported: it reads its settings then
        from mlflow import MlflowClient

        client = MlflowClient(store.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri)))
        if command == "history":
            return _show_history(client, args.name, args.alias)
        if command == "promote":
            done = registry.promote(client, args.name, args.version, args.alias, args.force)
        else:
            done = registry.rollback(client, args.name, args.alias, args.repair_history)
        was = f" (was v{done.previous})" if done.previous and done.previous != done.version else ""
        print(f"{args.name}@{args.alias} -> v{done.version}{was}: {done.reason}", flush=True)
        return 0

    return run_main(move, args.verbose)


def _show_history(client: object, name: str, alias: str) -> int:
    """Prints the alias's moves as the versions record them; 1 if the history tag disagrees."""
    from raylane import registry

    moves, problems = registry.checked_history(client, name, alias)
    for move in moves:
        seq = "old" if move.get("legacy") else move["seq"]  # from the tag alone, before records existed
        print(f"{seq:>4}  {move.get('at')}  v{move.get('previous')} -> v{move.get('version')}  "
              f"{move.get('action')}  by {registry.made_by(move)}: {move.get('reason')}")
    if not moves:
        print(f"no move of {name}@{alias} is recorded on its versions")
    for problem in problems:
        print(f"history tag {registry.history_tag(alias)!r} disagrees: {problem}", file=sys.stderr)
    return 1 if problems else 0


# -- shared ----------------------------------------------------------------------------------------


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"raylane {command}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML recipe, e.g. pipelines/configs/digits_torch.yaml "
                        "(unset: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override one field by its dotted path, e.g. --set train.epochs=5 "
                             "(repeatable; values are YAML)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--no-block", action="store_true",
                        help="return after deploying instead of serving until Ctrl-C (on a local Ray "
                             "the endpoint stops when the process exits: for scripts and tests)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show Ray's and the workers' output live, and tracebacks on errors")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """Returns the --set items, with --tracking-uri as one more."""
    extra = [f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else []
    return list(args.overrides) + extra


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Returns the validated config named by --config, --set and --tracking-uri."""
    return load_config(args.config, overrides_from_args(args))


class _ProgressHandler(logging.Handler):
    """Prints raylane's log records as `[raylane] ...` lines: INFO to stdout, warnings to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        try:
            print(f"[raylane] {record.getMessage()}", file=stream, flush=True)
        except Exception:  # a closed terminal must not fail the run
            self.handleError(record)


def show_progress() -> None:
    """Shows raylane's INFO and above in the terminal (once per process)."""
    root = logging.getLogger("raylane")
    if not any(isinstance(h, _ProgressHandler) for h in root.handlers):
        root.addHandler(_ProgressHandler())
    root.setLevel(logging.INFO)
    root.propagate = False


def run_main(main: Callable[[], int], verbose: bool) -> int:
    """Runs `main` with progress shown; a raylane error prints one line (traceback with --verbose)
    and exits non-zero."""
    show_progress()
    try:
        return main()
    except RaylaneError as err:
        if verbose:
            traceback.print_exc()
        print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
