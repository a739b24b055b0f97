"""Deploy the current champion from the MLflow registry on Ray Serve, without training.

    python -m pipelines.serve --config pipelines/configs/digits_torch.yaml
    ray job submit --working-dir . -- python -m pipelines.serve --config pipelines/configs/digits_torch.yaml

On a local Ray it serves until Ctrl-C; on a cluster it deploys detached and exits
(`raylane.pipeline.serve_champion`); `--help` lists every flag.
"""

from __future__ import annotations

import sys

from raylane.cli import serve_command


def main(argv: list[str] | None = None) -> int:
    return serve_command(argv)


if __name__ == "__main__":
    sys.exit(main())
