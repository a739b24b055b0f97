"""raylane: a Ray-native, end-to-end ML platform.

Ray Data prepares the data, Ray Train trains, Ray Tune searches, MLflow tracks and registers,
Ray Serve serves the champion. Importing this package has no side effects and imports neither
Ray nor a training framework; the names below load their modules on first use.

    import raylane
    raylane.show_progress()            # the `[raylane] ...` stage lines, as the CLI prints them
    cfg = raylane.load_config("pipelines/configs/digits_torch.yaml", ["train.epochs=5"])
    result = raylane.run(cfg)          # data -> search -> register -> serve
    result.endpoint, result.version, result.promotion
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "PipelineConfig": "raylane.config",
    "load_config": "raylane.config",
    "PipelineResult": "raylane.pipeline",
    "run": "raylane.pipeline",
    "resume": "raylane.pipeline",
    "serve_champion": "raylane.pipeline",
    "Task": "raylane.task",
    "RaylaneError": "raylane.errors",
    "show_progress": "raylane.cli",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'raylane' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
