"""MLflow tracking: the store, the pipeline's parent run, one nested run per trial, the logged model.

    store.py          which tracking URI, the server check, the experiment
    parent_run.py     the pipeline's parent run (resumable), its dataset and search results
    trial_logger.py   the Tune callback that writes each trial's nested run, through outages
    model_logging.py  the best checkpoint logged as a pyfunc model and scored on the test split

Which version becomes champion is `raylane.registry`'s decision, not this package's.
"""

from raylane.tracking.model_logging import LoggedModel, log_best_model
from raylane.tracking.parent_run import log_dataset, log_tune_results, pipeline_run
from raylane.tracking.store import (
    DEFAULT_TRACKING_URI,
    check_server,
    configure,
    configure_client,
    resolve_tracking_uri,
)
from raylane.tracking.trial_logger import TrialRunLogger

__all__ = ["DEFAULT_TRACKING_URI", "LoggedModel", "TrialRunLogger", "check_server", "configure",
           "configure_client", "log_best_model", "log_dataset", "log_tune_results", "pipeline_run",
           "resolve_tracking_uri"]
