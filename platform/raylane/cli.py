"""Command-line plumbing shared by the pipelines: common flags, config loading, error exits.

    raylane run   --config pipelines/configs/digits_torch.yaml [--set train.epochs=5 ...]
    raylane serve --config pipelines/configs/digits_torch.yaml
    raylane promote digits 7 [--force]
    raylane rollback digits
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from raylane.config import PipelineConfig, load_config
from raylane.errors import ConfigError, RaylaneError

EXIT_CONFIG_ERROR = 2


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks on errors")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """Returns the --set items, with --tracking-uri as one more."""
    extra = [f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else []
    return list(args.overrides) + extra


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Returns the validated config named by --config, --set and --tracking-uri."""
    return load_config(args.config, overrides_from_args(args))


def run_main(main: Callable[[], int], verbose: bool) -> int:
    """Runs `main`; a raylane error prints one line (traceback with --verbose) and exits non-zero."""
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


def main(argv: list[str] | None = None) -> int:
    """The `raylane` console script: `raylane run ...` and `raylane serve ...`."""
    commands = {"run": "pipelines.train_tune_serve", "serve": "pipelines.serve"}
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("promote", "rollback"):
        from raylane import registry

        return registry.main(argv[0], argv[1:])
    if not argv or argv[0] not in commands:
        print("usage: raylane {run,serve,promote,rollback} [--help] [options]\n\n"
              "  run       data -> train -> tune -> MLflow -> register -> serve the champion\n"
              "  serve     deploy the current champion from the registry, without training\n"
              "  promote   NAME VERSION: move the champion alias, gated on its test metric\n"
              "  rollback  NAME: move the champion alias back to the previous champion",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else EXIT_CONFIG_ERROR
    import importlib

    module = importlib.import_module(commands[argv[0]])
    return module.main(argv[1:])
