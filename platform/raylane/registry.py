"""The model registry's aliases: the champion gate, `raylane promote` and `raylane rollback`.

There is one gate (`judge`), for the pipeline and for a move by hand: a version takes the alias
only when its test metric is strictly better than the current holder's (higher accuracy, lower
MAE); a tie keeps the current one. A version judged by another metric (another task) is not
comparable. A refused move by hand can be forced, and the override is recorded.

Every move is recorded twice in the registry: on the version (`raylane.promotion`, the decision
and its reason) and on the registered model (`raylane.<alias>.history`, the ordered list of moves),
which is what `rollback` replays. A running endpoint that follows the alias switches by itself.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raylane import env
from raylane.config import ModelConfig
from raylane.errors import ModelNotFoundError, PromotionRefused, RaylaneError, TrackingError
from raylane.task import CLASSIFICATION, task_judged_by

if TYPE_CHECKING:
    from raylane.tracking.model_logging import LoggedModel

GATE_TAG = "raylane.gate_metric"  # which test metric a version is judged by
PROMOTION_TAG = "raylane.promotion"
RUN_ID_TAG = "raylane.run_id"
HISTORY_LIMIT = 50
HISTORY_CHARS = 4_500


@dataclass(frozen=True)
class Move:
    """One move of an alias, as recorded."""

    version: str
    previous: str | None
    reason: str


def history_tag(alias: str) -> str:
    return f"raylane.{alias}.history"


def read_history(client: Any, name: str, alias: str) -> list[dict[str, Any]]:
    tags = client.get_registered_model(name).tags
    try:
        return list(json.loads(tags.get(history_tag(alias), "[]")))
    except ValueError:
        return []


def move_alias(client: Any, name: str, alias: str, version: str, action: str, reason: str) -> Move:
    """Points the alias at `version` and records the move on the version and the model."""
    previous = alias_version(client, name, alias)
    entry = {"version": str(version), "previous": previous, "action": action, "reason": reason,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": _who()}
    history = (read_history(client, name, alias) + [entry])[-HISTORY_LIMIT:]
    while len(json.dumps(history)) > HISTORY_CHARS and len(history) > 1:
        history.pop(0)  # MLflow stores a model tag in 5,000 characters; the oldest moves go first
    # The record first: if it cannot be written, the alias has not moved either.
    client.set_registered_model_tag(name, history_tag(alias), json.dumps(history))
    client.set_registered_model_alias(name, alias, version)
    return Move(str(version), previous, reason)


def alias_holder(client: Any, name: str, alias: str) -> Any | None:
    """Returns the version the alias points at, None if it is unset; other registry errors raise,
    so a flaky store never makes the gate promote by default."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if is_missing(err):
            return None
        raise


def alias_version(client: Any, name: str, alias: str) -> str | None:
    holder = alias_holder(client, name, alias)
    return None if holder is None else str(holder.version)


def gate_metric(version: Any) -> str:
    """The test metric a registered version is judged by (older versions: test_accuracy)."""
    return version.tags.get(GATE_TAG, CLASSIFICATION.test_metric)


def recorded(score: float) -> str:
    """A score as the registry records it on a version (and the gate then compares it)."""
    return f"{score:.6f}"


def metric_of(version: Any, metric: str | None = None) -> float | None:
    try:
        return float(version.tags[metric or gate_metric(version)])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on a candidate for an alias, and why, in words a reviewer can read."""

    allowed: bool
    reason: str


def judge(alias: str, candidate: str, metric: str, score: float | None, holder: Any | None) -> Verdict:
    """The champion gate: may version `candidate`, scoring `score` on `metric`, take `alias` from
    `holder` (the registry's current version, None if the alias is unset)? Only if strictly better."""
    if holder is None:
        return Verdict(True, f"no {alias} yet" + ("" if score is None else f"; {metric}={score:.4f}"))
    current = f"{alias} v{holder.version}"
    if gate_metric(holder) != metric:
        return Verdict(False, f"{current} is judged by {gate_metric(holder)}, v{candidate} by {metric}: "
                              "not comparable")
    if score is None:
        return Verdict(False, f"v{candidate} has no {metric} tag to compare with {current}")
    old = metric_of(holder, metric)
    if old is None:
        return Verdict(True, f"{metric} {score:.4f} beats {current}'s (none recorded)")
    task = task_judged_by(metric) or CLASSIFICATION
    if task.better(score, old):
        return Verdict(True, f"{metric} {score:.4f} beats {current}'s {old:.4f}")
    if score == old:
        return Verdict(False, f"{metric} {score:.4f} does not beat {current}'s {old:.4f} (a tie keeps "
                              f"v{holder.version})")
    side = "below" if task.higher_is_better else "above"
    return Verdict(False, f"{metric} {score:.4f} is {side} {current}'s {old:.4f}, so it does not beat it")


def promote(client: Any, name: str, version: str, alias: str = "champion", force: bool = False) -> Move:
    """Moves the alias to `version` if the gate allows it (or `force`); PromotionRefused otherwise."""
    candidate = _get_version(client, name, version)
    holder = alias_holder(client, name, alias)
    if holder is not None and str(holder.version) == str(version):
        return Move(str(version), str(version), f"v{version} already is {alias}")
    metric = gate_metric(candidate)
    verdict = judge(alias, str(version), metric, metric_of(candidate, metric), holder)
    if not verdict.allowed and not force:
        raise PromotionRefused(f"not promoting {name} v{version} to {alias}: {verdict.reason} "
                               "(pass --force to promote it anyway; the override is recorded)")
    forced = not verdict.allowed
    move = move_alias(client, name, alias, str(version), "promote (forced)" if forced else "promote",
                      verdict.reason)
    client.set_model_version_tag(name, str(version), PROMOTION_TAG, f"promoted by hand: {verdict.reason}"
                                 + (" (forced)" if forced else ""))
    return move


def rollback(client: Any, name: str, alias: str = "champion") -> Move:
    """Moves the alias back to the version it pointed at before the current one."""
    stack: list[str] = []
    for entry in read_history(client, name, alias):
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(str(entry["version"]))
    current = alias_version(client, name, alias)
    if current is None:
        raise ModelNotFoundError(f"model {name!r} has no {alias!r} alias to roll back")
    if stack and stack[-1] != current:
        raise RaylaneError(f"{name}@{alias} is v{current}, but the last recorded move made it v{stack[-1]}: "
                           "it was moved outside raylane, so there is no recorded move to undo; "
                           f"use `raylane promote {name} <version>`")
    if stack:
        stack.pop()
    if not stack:
        raise RaylaneError(f"no earlier {alias} of {name!r} is recorded to roll back to "
                           f"(history tag {history_tag(alias)!r}); use `raylane promote {name} <version>`")
    target = stack[-1]
    _get_version(client, name, target)
    reason = f"rolled back from v{current}"
    move = move_alias(client, name, alias, target, "rollback", reason)
    client.set_model_version_tag(name, target, PROMOTION_TAG, f"restored as {alias}: {reason}")
    return move


def _get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if is_missing(err):
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}") from err
        raise


def is_missing(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(err).lower()


def _who() -> str:
    try:
        return env.RAYLANE_USER.get() or getpass.getuser()
    except Exception:  # no user database entry in some containers
        return "unknown"


@dataclass(frozen=True)
class Promotion:
    """What the champion gate decided for a newly registered version."""

    version: str
    promoted: bool
    reason: str
    previous_version: str | None

    @property
    def summary(self) -> str:
        return f"{'promoted' if self.promoted else 'kept'}: {self.reason}"


def register_if_better(cfg: ModelConfig, model: LoggedModel) -> Promotion:
    """Registers a logged model (`raylane.tracking.LoggedModel`) with its scores; the gate decides
    whether it takes the champion alias. Recorded on the version and the active MLflow run."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    # MLflow prints "Successfully registered model ..." to stderr itself: into MLflow's own log
    # (the run's log file) with the rest of its output instead.
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            version = str(mlflow.register_model(model.model_uri, cfg.name).version)
    finally:
        if said.getvalue().strip():
            logging.getLogger("mlflow").info(said.getvalue().strip())
    tags = {model.test_metric: recorded(model.test_score), model.val_metric: recorded(model.val_score),
            GATE_TAG: model.test_metric, RUN_ID_TAG: model.run_id, "raylane.params": json.dumps(model.params)}
    for key, value in tags.items():
        client.set_model_version_tag(cfg.name, version, key, value)
    holder = alias_holder(client, cfg.name, cfg.champion_alias)
    # Judged by the score as recorded, as `promote` judges it: a tie is a tie in both.
    score = float(tags[model.test_metric])
    verdict = judge(cfg.champion_alias, version, model.test_metric, score, holder)
    reason = verdict.reason
    if holder is not None and gate_metric(holder) != model.test_metric:
        reason += f"; `raylane promote {cfg.name} {version} --force` to switch"
    if verdict.allowed:
        move_alias(client, cfg.name, cfg.champion_alias, version, "promote", reason)
    promotion = Promotion(version, verdict.allowed, reason, holder.version if holder else None)
    client.set_model_version_tag(cfg.name, version, PROMOTION_TAG, promotion.summary)
    mlflow.set_tags({"raylane.model_version": version, PROMOTION_TAG: promotion.summary})
    return promotion


def version_registered_by(name: str, run_id: str) -> Any | None:
    """Returns the version of model `name` that the pipeline run `run_id` registered, if any."""
    from mlflow import MlflowClient

    found = [v for v in MlflowClient().search_model_versions(f"name = '{name}'")
             if v.tags.get(RUN_ID_TAG) == run_id]
    return found[0] if found else None


def champion_version(tracking_uri: str, name: str, alias: str) -> str:
    """Returns the version the alias points at; ModelNotFoundError naming what is missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = alias_version(MlflowClient(tracking_uri), name, alias)
    except MlflowException as err:
        raise TrackingError(f"cannot read model {name!r} from {tracking_uri}: {err}") from err
    if version is None:
        raise ModelNotFoundError(
            f"no version of model {name!r} has the alias {alias!r} in {tracking_uri}; "
            "run the pipeline first (raylane run) to register one")
    return version
