"""The `raylane` command line: every command's flags, the terminal's `[raylane]` lines, error exits.

    raylane run      --config pipelines/configs/digits_torch.yaml [--set train.epochs=5 ...]
    raylane serve    --config pipelines/configs/digits_torch.yaml
    raylane promote  digits 7 [--force]
    raylane rollback digits
    raylane history  digits
    raylane predict  --model digits@champion --input data/*.parquet --output scores/

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

PREDICT_HELP = """Score files with a registered model: Ray Data actors, each loading the MLflow model once.

    raylane predict --model digits@champion --input data/new.parquet --output scores/
    raylane predict --model digits/3 --input 'data/day=*/*.csv' --input more/ --output scores/ \\
        --probabilities --on-bad-rows drop --actors 4
    raylane predict --model digits@champion --output 's3://bucket/scores?endpoint_override=host:9000' \\
        --input 's3://bucket/new/?endpoint_override=host:9000' --gpus-per-actor 1

or as a job on a cluster (inputs and output where every node reads them, e.g. S3):

    ray job submit --working-dir . -- python -m pipelines.predict \\
        --model digits@champion --input s3://bucket/new/ --output s3://bucket/scores/

Inputs: Parquet or CSV (.csv, .csv.gz), each --input a file, a directory or a glob, local or a
URI; one format per job. The model comes from the MLflow registry (--tracking-uri, else the
config's tracking.tracking_uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db); Ray is the
cluster of --config's cluster.address or RAY_ADDRESS, else a local Ray with a CPU per core.

Output: a Parquet file per input file, <output>/<name>-<hash>.parquet, with the id column (--id-column,
default `id` when the files have one), `prediction`, and with --probabilities a
`probability_<class>` column per class. Rows keep their file's order; without an id column, pass
--id-column to join predictions back when rows are dropped.

Rerun the same command after a failure or a kill: the files already scored are skipped (and
listed), and a file that was being written is scored again; a file counts as scored only once its
output is complete. A rerun with another model version or other output options into the same
--output is refused.

Bad rows (a value not of its column's kind, the wrong number of fields) are checked as training
checks them: --on-bad-rows fail (default) stops naming file, line and column; drop skips and counts
them, and prints the count and examples at the end.

The terminal shows a progress bar (files, rows, rows/s); Ray's own output goes to a log file whose
path is printed, or live with --verbose.
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
                "rollback": rollback_command, "history": history_command, "predict": predict_command}
    if not argv or argv[0] not in commands:
        asked = not argv or argv[0] in ("-h", "--help")
        print("usage: raylane {run,serve,predict,promote,rollback,history} [--help] [options]\n\n"
              "  run       data -> train -> tune -> MLflow -> register -> serve the champion\n"
              "  serve     deploy the current champion from the registry, without training\n"
              "  predict   score Parquet/CSV files with a registered model (batch, on Ray actors)\n"
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


# -- raylane predict -------------------------------------------------------------------------------


def predict_command(argv: list[str] | None = None) -> int:
    """`raylane predict` / `python -m pipelines.predict`."""
    parser = _parser("predict", PREDICT_HELP)
    parser.add_argument("--model", "-m", required=True, metavar="NAME@ALIAS|NAME/VERSION",
                        help="registered model: digits@champion (an alias) or digits/3 (a version)")
    parser.add_argument("--input", "-i", dest="inputs", action="append", required=True, metavar="PATH",
                        help="Parquet or CSV: a file, a directory or a glob (quote it), local or a URI "
                             "such as s3://bucket/dir/?endpoint_override=host:9000 (repeatable)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="directory of the predictions, local or a URI: a Parquet file per input file")
    parser.add_argument("--format", choices=("auto", "parquet", "csv"), default="auto",
                        help="input format (default auto: .csv/.csv.gz are CSV, other files Parquet)")
    parser.add_argument("--id-column", metavar="NAME",
                        help="column copied to the output to join predictions back (default: id, when "
                             "every file has one)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write each class's probability, probability_<class>")
    parser.add_argument("--on-bad-rows", choices=("fail", "drop"), default="fail",
                        help="fail (default): stop at a bad row, naming file, line and column; drop: skip "
                             "bad rows, count them, print the count and examples at the end")
    parser.add_argument("--actors", type=_positive(int), metavar="N",
                        help="actors scoring in parallel, each with the model loaded once (default: one "
                             "per CPU of the cluster, or per --gpus-per-actor GPUs; at most one per file)")
    parser.add_argument("--batch-size", type=_positive(int), default=65_536, metavar="ROWS",
                        help="rows per call of the model's predict (default 65536)")
    parser.add_argument("--cpus-per-actor", type=_positive(float), default=1.0, metavar="N",
                        help="CPUs each actor reserves (default 1)")
    parser.add_argument("--gpus-per-actor", type=_positive(float, zero=True), default=0.0, metavar="N",
                        help="GPUs each actor reserves, e.g. 1 or 0.5 (default 0: CPU)")
    parser.add_argument("--config", "-c", help="YAML recipe for the cluster and tracking settings "
                        "(cluster.address, tracking.tracking_uri); unset: the built-in defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override one config field, e.g. --set cluster.address=auto (repeatable)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, else "
                        "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show Ray's and the actors' output live, and tracebacks on errors")
    args = parser.parse_args(argv)

    def score() -> int:
        from raylane import predict

        cfg = predict.config_from_flags(
            model=args.model, inputs=args.inputs, output=args.output, format=args.format,
            id_column=args.id_column, probabilities=args.probabilities, on_bad_rows=args.on_bad_rows,
            actors=args.actors, batch_size=args.batch_size, cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor)
        bar = _ProgressBar()
        try:
            result = predict.run(cfg, config_from_args(args), quiet=not args.verbose, on_progress=bar.show)
        finally:
            bar.close()
        _print_prediction(result)
        return 0

    return run_main(score, args.verbose)


def _positive(kind: type, zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < 0 or (value == 0 and not zero):
            least = "0 or more" if zero else "at least 1" if kind is int else "above 0"
            raise argparse.ArgumentTypeError(f"{text!r}: must be {least}")
        return value

    return parse


class _ProgressBar:
    """One line redrawn in place on a terminal (files, rows, rows/s); elsewhere a line every 10 s."""

    WIDTH = 24

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.drawn = False
        self.last = 0.0

    def show(self, p: object) -> None:
        import time

        rate = p.rows_done / p.seconds if p.seconds > 0 else 0.0
        share = (p.rows_done / p.rows_total if p.rows_total else
                 p.files_done / p.files_total if p.files_total else 1.0)
        bad = f", {p.bad_rows:,} bad" if p.bad_rows else ""
        text = (f"{p.files_done}/{p.files_total} files, {p.rows_done:,}"
                f"{f'/{p.rows_total:,}' if p.rows_total else ''} rows{bad}, {rate:,.0f} rows/s, "
                f"{p.seconds:.0f} s")
        if self.tty:
            filled = int(self.WIDTH * min(max(share, 0.0), 1.0))
            bar = "#" * filled + "." * (self.WIDTH - filled)
            print(f"\r[raylane] |{bar}| {text}\033[K", end="", flush=True)
            self.drawn = True
        elif time.monotonic() - self.last >= 10 or p.files_done == p.files_total:
            self.last = time.monotonic()
            print(f"[raylane]   {text}", flush=True)

    def close(self) -> None:
        if self.drawn:
            print(flush=True)
            self.drawn = False


def _print_prediction(result: object) -> None:
    name = f"{result.model.name} v{result.model.version}"
    if result.skipped:
        more = len(result.skipped) - 5
        shown = ", ".join(result.skipped[:5]) + (f" and {more} more" if more > 0 else "")
        print(f"skipped {len(result.skipped)} file{'s' * (len(result.skipped) > 1)} already scored: {shown}")
    if result.scored:
        rate = result.rows / result.seconds if result.seconds else 0.0
        print(f"scored {result.rows:,} rows from {len(result.scored)} file{'s' * (len(result.scored) > 1)} "
              f"with {name} in {result.seconds:.1f} s ({rate:,.0f} rows/s, {result.actors} actors) "
              f"-> {result.output}")
    elif not result.skipped:
        print("nothing to score")
    else:
        print(f"nothing left to score; predictions of {name} are in {result.output}")
    if result.bad_rows:
        print(f"dropped {result.bad_rows:,} bad row{'s' * (result.bad_rows > 1)} (--on-bad-rows drop), e.g.:")
        for line in result.bad_sample[:5]:
            print(f"  {line}")


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
