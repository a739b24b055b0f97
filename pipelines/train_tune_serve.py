"""Data -> Ray Train -> Ray Tune -> MLflow -> champion gate -> Ray Serve, as a job entrypoint.

    python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml
    python -m pipelines.train_tune_serve --resume digits-20261125-101500
    python -m pipelines.train_tune_serve --config ... --run-name digits-nightly --resume-if-exists
    ray job submit --working-dir . -- \
        python -m pipelines.train_tune_serve --config pipelines/configs/digits_torch.yaml

The pipeline itself is library code (`raylane.pipeline.run`); `--help` lists every flag.
"""

from __future__ import annotations

import sys

from raylane.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
