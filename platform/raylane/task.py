"""What a model is judged by: the task's metric names, their direction and the loss it trains on.

    task = task_named("classification")
    task.val_metric, task.test_metric      # "val_accuracy", "test_accuracy"
    task.better(0.97, 0.95)                # True: higher accuracy wins; for regression lower MAE wins

Every stage names a metric through a `Task`: the workers' reports, Tune's search metric, the trial
runs in MLflow, the logged model's test score and the champion gate. Importing this module imports
nothing but the standard library, so workers, the serving side and the CLI all share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
EPOCH = "epoch"


@dataclass(frozen=True)
class Task:
    """A learning task: what the network's loss is and which metrics say how good a model is."""

    name: Literal["classification", "regression"]
    val_metric: str
    """The validation score each epoch reports (and Tune optimises unless tune.metric says otherwise)."""
    test_metric: str
    """The score on the test split that the champion gate compares."""
    higher_is_better: bool
    loss: Literal["cross_entropy", "mse"]
    """cross-entropy over the classes, or the mean squared error of the standardized label."""

    @property
    def mode(self) -> Literal["max", "min"]:
        """Tune's mode for the validation score."""
        return "max" if self.higher_is_better else "min"

    @property
    def search_metrics(self) -> tuple[str, ...]:
        """The metrics a search may optimise for this task: its score first, then the loss."""
        return (self.val_metric, VAL_LOSS)

    def better(self, new: float, old: float) -> bool:
        """True when `new` is strictly better than `old` on this task's scores."""
        return new > old if self.higher_is_better else new < old


CLASSIFICATION = Task("classification", "val_accuracy", "test_accuracy", higher_is_better=True,
                      loss="cross_entropy")
REGRESSION = Task("regression", "val_mae", "test_mae", higher_is_better=False, loss="mse")
TASKS = {task.name: task for task in (CLASSIFICATION, REGRESSION)}
# Every metric an epoch can report, whatever the task: what the trial tables and MLflow look for.
ALL_EPOCH_METRICS = (TRAIN_LOSS, VAL_LOSS, *(t.val_metric for t in TASKS.values()))


def task_named(name: str) -> Task:
    """Returns the task called `name`; ValueError naming the accepted ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; one of {', '.join(TASKS)}") from None


def metric_mode(metric: str) -> Literal["max", "min"]:
    """Returns "max" for a score where higher is better (accuracy), "min" for a loss or an error."""
    for task in TASKS.values():
        if metric in (task.val_metric, task.test_metric):
            return task.mode
    return "min"


def task_judged_by(test_metric: str) -> Task | None:
    """Returns the task whose test metric is `test_metric`, None for one raylane does not know."""
    return next((t for t in TASKS.values() if t.test_metric == test_metric), None)
