"""The model registry's aliases: the champion gate, `raylane promote` and `raylane rollback`.

There is one gate (`judge`), for the pipeline and for a move by hand: a version takes the alias
only when its test metric is strictly better than the current holder's (higher accuracy, lower
MAE); a tie keeps the current one. A version judged by another metric (another task) is not
comparable. A refused move by hand can be forced, and the override is recorded.

Every move is recorded twice in the registry: on the version (`raylane.promotion`, the decision
and its reason) and on the registered model (`raylane.<alias>.history`, the ordered list of moves),
which is what `rollback` replays. A running endpoint that follows the alias switches by itself.

Moves at the same time. Two pipelines can finish together on one registered model, and a person
can promote or roll back meanwhile: separate processes, one tracking server. MLflow has no
transaction over tags and aliases, so "read the holder, judge, append to the history, set the
alias" done by two at once can lose a history entry (both rewrite the list they read) or leave
the alias on the worse version (both judged against the old holder; the last write wins), and
two first writes of one tag can collide in the store and fail a pipeline outright. Checking
after one's write cannot catch that alone: a writer that read before another's check and writes
after it overwrites it unseen. So every move (`move_alias`: the pipeline, `promote` and `rollback`)
is a compare-and-set in three steps:

1. The alias lock (`raylane.alias_lock`: a ticket per mover, each in a tag key of its own), so the
   next two steps of two movers of one alias never interleave.
2. Under it, the write: the holder and the history read afresh, the decision made afresh on them
   (`judge`; for a rollback, the history's previous holder), the move's entry (with a unique id)
   appended to the history as read, the alias set, the version's `raylane.promotion` tag set.
3. The compare: the alias and the history read again. The alias must be the version set and the
   history must hold this call's entries. If not, a writer outside the lock came between (the
   MLflow UI, an older raylane, a process paused past the lock's lease): the move is decided again
   on what is there, with this call's lost entries merged back, up to MOVE_ATTEMPTS times with
   jittered backoff, then TrackingError.

Guaranteed, for movers that go through `move_alias` on one tracking store (sqlite, or PostgreSQL
behind `mlflow server`): the moves of an alias happen one at a time, each judged against the version
it replaces, so when pipelines race the alias ends on the best of their versions and the holder
before them (of equal scores, the first to move keeps it); every move is in the history in the order
it happened, and the history's last entry is the holder, so `rollback` works after a race. Not
guaranteed: a move made outside raylane is not ordered with these. One that lands between a mover's
write and its compare is judged against; one that lands elsewhere stands, and `rollback` reports it.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raylane import env
from raylane.alias_lock import alias_lock
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
MOVE_ATTEMPTS = 5

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    """One move of an alias, as recorded."""

    version: str
    previous: str | None
    reason: str


def history_tag(alias: str) -> str:
    return f"raylane.{alias}.history"


def read_history(client: Any, name: str, alias: str) -> list[dict[str, Any]]:
    return _parse_history(client.get_registered_model(name).tags, alias)


def _parse_history(tags: dict[str, str], alias: str) -> list[dict[str, Any]]:
    try:
        return list(json.loads(tags.get(history_tag(alias), "[]")))
    except ValueError:
        return []


@dataclass(frozen=True)
class AliasState:
    """What a mover reads under the alias lock, to decide on."""

    holder: Any | None
    """The version the alias points at (with its tags), None if the alias is unset."""
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class Decision:
    """A mover's decision on an `AliasState`: the version the alias is to point at, and why."""

    version: str | None
    """None: leave the alias where it is."""
    previous: str | None
    """The holder it was decided against."""
    reason: str
    action: str = "promote"
    note: str = ""
    """Recorded on the moved version (`raylane.promotion`); nothing when empty."""


def move_alias(client: Any, name: str, alias: str, decide: Callable[[AliasState], Decision]) -> Decision:
    """Returns what `decide` settled on, having moved the alias and recorded the move if it said so;
    the read, decision, write and compare hold the alias lock (see the module docstring). Errors
    `decide` raises (a refusal) come out as they are."""
    mine: list[dict[str, Any]] = []  # this call's entries, earlier attempts' included
    with alias_lock(client, name, alias, owner=_who()):
        state, decision = _read_state(client, name, alias), None
        for attempt in range(MOVE_ATTEMPTS):
            if decision is None or not _points_at(state, decision.version):
                try:
                    decision = decide(state)
                except BaseException:
                    _keep_records(client, name, alias, state.history, mine)
                    raise
                if decision.version is None:
                    _keep_records(client, name, alias, state.history, mine)
                    return decision
                mine.append(_entry(decision))
                # The record first: if it cannot be written, the alias has not moved either.
                _write_history(client, name, alias, state.history, mine)
                client.set_registered_model_alias(name, alias, decision.version)
                if decision.note:
                    client.set_model_version_tag(name, decision.version, PROMOTION_TAG, decision.note)
            else:  # the alias stands, the history lost an entry
                _write_history(client, name, alias, state.history, mine)
            holder, history = _alias_and_history(client, name, alias)
            if holder == decision.version and not _missing(history, mine):
                return decision
            logger.warning("raylane: %s@%s changed under this move to v%s (now v%s, %d of its history "
                           "entries missing): something outside raylane's lock moved it; trying again",
                           name, alias, decision.version, holder, len(_missing(history, mine)))
            time.sleep(random.uniform(0.1, 0.5) * 2**attempt)
            state = _read_state(client, name, alias)
    raise TrackingError(f"{name}@{alias} kept changing under raylane's move ({MOVE_ATTEMPTS} attempts): "
                        "something outside raylane moves it or rewrites its history tag "
                        f"{history_tag(alias)!r}; stop that and try again")


def _entry(decision: Decision) -> dict[str, Any]:
    """A move as the history records it; `id` tells it from every other move."""
    return {"id": uuid.uuid4().hex[:12], "version": decision.version, "previous": decision.previous,
            "action": decision.action, "reason": decision.reason,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": _who()}


def _keep_records(client: Any, name: str, alias: str, history: list[dict[str, Any]],
                  entries: list[dict[str, Any]]) -> None:
    """Merges back the entries of this call's earlier moves that a writer outside the lock dropped:
    those moves happened."""
    if _missing(history, entries):
        _write_history(client, name, alias, history, entries)


def _points_at(state: AliasState, version: str | None) -> bool:
    return state.holder is not None and str(state.holder.version) == version


def _alias_and_history(client: Any, name: str, alias: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The version the alias points at and the history, in one read (the compare)."""
    model = client.get_registered_model(name)
    holder = model.aliases.get(alias)
    return None if holder is None else str(holder), _parse_history(model.tags, alias)


def _read_state(client: Any, name: str, alias: str) -> AliasState:
    return AliasState(alias_holder(client, name, alias), read_history(client, name, alias))


def _missing(history: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = {h.get("id") for h in history}
    return [e for e in entries if e["id"] not in ids]


def _write_history(client: Any, name: str, alias: str, history: list[dict[str, Any]],
                   entries: list[dict[str, Any]]) -> None:
    """Writes `history` with `entries` merged in (those it lacks, appended), oldest moves dropped
    first to fit MLflow's tag size."""
    merged = (history + _missing(history, entries))[-HISTORY_LIMIT:]
    while len(json.dumps(merged)) > HISTORY_CHARS and len(merged) > 1:
        merged.pop(0)  # MLflow stores a model tag in 5,000 characters; the oldest moves go first
    client.set_registered_model_tag(name, history_tag(alias), json.dumps(merged))


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
    version = str(version)
    candidate = _get_version(client, name, version)
    metric = gate_metric(candidate)

    def decide(state: AliasState) -> Decision:
        previous = None if state.holder is None else str(state.holder.version)
        if previous == version:
            return Decision(None, previous, f"v{version} already is {alias}")
        verdict = judge(alias, version, metric, metric_of(candidate, metric), state.holder)
        if not verdict.allowed and not force:
            raise PromotionRefused(f"not promoting {name} v{version} to {alias}: {verdict.reason} "
                                   "(pass --force to promote it anyway; the override is recorded)")
        forced = " (forced)" if not verdict.allowed else ""
        return Decision(version, previous, verdict.reason, f"promote{forced}",
                        note=f"promoted by hand: {verdict.reason}{forced}")

    decision = move_alias(client, name, alias, decide)
    return Move(version, decision.previous, decision.reason)


def rollback(client: Any, name: str, alias: str = "champion") -> Move:
    """Moves the alias back to the version it pointed at before the current one."""

    def decide(state: AliasState) -> Decision:
        if state.holder is None:
            raise ModelNotFoundError(f"model {name!r} has no {alias!r} alias to roll back")
        current = str(state.holder.version)
        target = rollback_target(name, alias, current, state.history)
        _get_version(client, name, target)
        reason = f"rolled back from v{current}"
        return Decision(target, current, reason, "rollback", note=f"restored as {alias}: {reason}")

    decision = move_alias(client, name, alias, decide)
    return Move(str(decision.version), decision.previous, decision.reason)


def rollback_target(name: str, alias: str, current: str, history: list[dict[str, Any]]) -> str:
    """Returns the version before `current` by the recorded moves; RaylaneError if none is recorded,
    or if the last recorded move is not what made `current` the holder."""
    stack: list[str] = []
    for entry in history:
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(str(entry["version"]))
    if stack and stack[-1] != current:
        raise RaylaneError(f"{name}@{alias} is v{current}, but the last recorded move made it v{stack[-1]}: "
                           "it was moved outside raylane, so there is no recorded move to undo; "
                           f"use `raylane promote {name} <version>`")
    if stack:
        stack.pop()
    if not stack:
        raise RaylaneError(f"no earlier {alias} of {name!r} is recorded to roll back to "
                           f"(history tag {history_tag(alias)!r}); use `raylane promote {name} <version>`")
    return stack[-1]


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
    # Judged by the score as recorded, as `promote` judges it: a tie is a tie in both.
    promotion = gate_new_version(client, cfg, version, model.test_metric, float(tags[model.test_metric]))
    client.set_model_version_tag(cfg.name, version, PROMOTION_TAG, promotion.summary)
    mlflow.set_tags({"raylane.model_version": version, PROMOTION_TAG: promotion.summary})
    return promotion


def gate_new_version(client: Any, cfg: ModelConfig, version: str, metric: str, score: float) -> Promotion:
    """The champion gate on a version just registered with its `metric` `score`: it takes
    `cfg.champion_alias` if strictly better than the holder, decided under the alias lock."""
    alias = cfg.champion_alias

    def decide(state: AliasState) -> Decision:
        verdict = judge(alias, version, metric, score, state.holder)
        reason = verdict.reason
        if state.holder is not None and gate_metric(state.holder) != metric:
            reason += f"; `raylane promote {cfg.name} {version} --force` to switch"
        previous = None if state.holder is None else str(state.holder.version)
        return Decision(version if verdict.allowed else None, previous, reason)

    decision = move_alias(client, cfg.name, alias, decide)
    return Promotion(version, decision.version is not None, decision.reason, decision.previous)


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
