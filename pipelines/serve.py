"""Deploy the current champion from the MLflow registry on Ray Serve, without training.

    python -m pipelines.serve --config pipelines/configs/digits_torch.yaml
    raylane serve --config pipelines/configs/digits_torch.yaml

On a local Ray it serves until Ctrl-C; on a cluster (RAY_ADDRESS set, as under `ray job submit`)
it deploys the application detached and exits.
"""

from __future__ import annotations

import argparse
import sys

from raylane import cluster, progress, tracking
from raylane.cli import add_common_arguments, config_from_args, run_main
from raylane.serving import deploy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raylane serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return run_main(lambda: run(args), args.verbose)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking)
    version = tracking.champion_version(tracking_uri, cfg.model.name, cfg.model.champion_alias)
    on_cluster = cluster.connect(cfg)
    with progress.stage("serve", f"{cfg.model.name} v{version} ({cfg.model.champion_alias})"):
        url = deploy.deploy(cfg.serve, cfg.model, tracking_uri)
    deploy.announce(url, cfg.model)
    deploy.keep_serving(on_cluster=on_cluster, block=not args.no_block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
