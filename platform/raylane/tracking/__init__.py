"""MLflow tracking: the store, the pipeline's parent run, one nested run per trial, the logged model.

    store.py          which tracking URI, the server check, the experiment
    parent_run.py     the pipeline's parent run (resumable), its dataset and search results
    trial_logger.py   the Tune callback that writes each trial's nested run, through outages
    model_logging.py  the best checkpoint logged as a pyfunc model and scored on the test split

Which version becomes champion is `raylane.registry`'s decision, not this package's. The names
below load their module on first use: a command that only needs the store imports no Ray Tune.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "DEFAULT_TRACKING_URI": "store", "check_server": "store", "configure": "store",
    "configure_client": "store", "resolve_tracking_uri": "store",
    "log_dataset": "parent_run", "log_tune_results": "parent_run", "pipeline_run": "parent_run",
    "check_resumed_run": "parent_run", "RUN_NAME_TAG": "parent_run",
    "TrialRunLogger": "trial_logger",
    "LoggedModel": "model_logging", "log_best_model": "model_logging",
}
__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'raylane.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raylane.tracking.{_NAMES[name]}"), name)
