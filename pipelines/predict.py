"""Score Parquet/CSV files with a registered model, on Ray Data actors (batch prediction).

    python -m pipelines.predict --model digits@champion --input data/new/ --output scores/
    ray job submit --working-dir . -- python -m pipelines.predict \
        --model digits@champion --input s3://bucket/new/ --output s3://bucket/scores/

The same as `raylane predict` (`raylane.predict.run`): the model is loaded once per actor, the
predictions are written a Parquet file per input file, and a rerun skips the files already
scored; `--help` lists every flag.
"""

from __future__ import annotations

import sys

from raylane.cli import predict_command


def main(argv: list[str] | None = None) -> int:
    return predict_command(argv)


if __name__ == "__main__":
    sys.exit(main())
