"""The model registry's aliases: the champion gate, `raylane promote` and `raylane rollback`.

There is one gate (`judge`), for the pipeline and for a move by hand: a version takes the alias
only when its test metric is strictly better than the current holder's (higher accuracy, lower
MAE); a tie keeps the current one. A version judged by another metric (another task) is not
comparable. A refused move by hand can be forced, and the override is recorded.

Every move is recorded on the version it moved the alias to, in a tag of its own
(`raylane.<alias>.move.<id>`: the move's id, sequence number, time, from and to version, action,
reason and who made it), and summed up in two more: the version's `raylane.promotion` (the last
decision, in words) and the registered model's `raylane.<alias>.history` (the last moves, in
order). A version can take an alias many times, so one tag per move; a write to one tag key never
overwrites another, so concurrent writers cannot lose a record. The history of an alias is rebuilt
from the versions' records (`rebuild_history`); the history tag is a summary checked against it,
and `rollback` goes by the records and refuses when the tag disagrees with them (`--repair-history`
rolls back by the records and rewrites the tag). A running endpoint that follows the alias
switches by itself.

Who made a move (`by`). Where the tracking server runs MLflow's basic-auth app, the user it
authenticated the client as (`by_verified: true`), with RAYLANE_USER kept as `claimed_by` if it
says otherwise; elsewhere RAYLANE_USER or the login name, `by_verified: false`. What this defends:
a history tag edited by hand, by a script or an older raylane cannot steer `rollback`, and
RAYLANE_USER cannot pose as another MLflow user. What it cannot: anyone allowed to edit the
registered model (MLflow's EDIT permission) can write a version's move record too, `by` included;
MLflow keeps no author of a tag, so the server's access log is the record of who wrote what.

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
2. Under it, the write: the holder, the history and the versions' records read afresh, the
   decision made afresh on them (`judge`; for a rollback, the records' previous holder), the move's
   record (with a unique id and the next sequence number) set on the version, the entry appended to
   the history as read, the alias set, the version's `raylane.promotion` tag set.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raylane import env
from raylane._compat import mlflow as mlflow_compat
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


def move_record_tag(alias: str, move_id: str) -> str:
    """The tag on a version that records one move of `alias` to it."""
    return f"raylane.{alias}.move.{move_id}"


def read_history(client: Any, name: str, alias: str) -> list[dict[str, Any]]:
    return _parse_history(client.get_registered_model(name).tags, alias)


def _parse_history(tags: dict[str, str], alias: str) -> list[dict[str, Any]]:
    try:
        return list(json.loads(tags.get(history_tag(alias), "[]")))
    except ValueError:
        return []


@dataclass(frozen=True)
class RebuiltHistory:
    """The moves of an alias as the versions record them, oldest first, and what does not fit."""

    moves: list[dict[str, Any]]
    """Each as the history tag lists it: the record without its `alias`."""
    problems: list[str] = field(default_factory=list)
    """Move-record tags that are not a record of a move to the version holding them."""


def rebuild_history(client: Any, name: str, alias: str) -> RebuiltHistory:
    """Returns the moves of `alias` as model `name`'s versions record them, ordered by sequence
    number (then time and id)."""
    prefix = move_record_tag(alias, "")
    moves, problems = [], []
    for version in _all_versions(client, name):
        for key, value in version.tags.items():
            if not key.startswith(prefix):
                continue
            record = _parse_record(value)
            if (record is None or record.get("id") != key[len(prefix):] or record.get("alias") != alias
                    or str(record.get("version")) != str(version.version)):
                problems.append(f"v{version.version}'s tag {key!r} is not a record of a move of {alias} "
                                f"to v{version.version}: {value[:160]!r}")
                continue
            if any(m["id"] == record["id"] for m in moves):
                problems.append(f"two versions record move {record['id']!r}; one is v{version.version}")
                continue
            moves.append({k: v for k, v in record.items() if k != "alias"})
    moves.sort(key=lambda m: (m["seq"], str(m.get("at")), m["id"]))
    return RebuiltHistory(moves, problems)


def _parse_record(value: str) -> dict[str, Any] | None:
    try:
        record = json.loads(value)
    except ValueError:
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        return None
    return record


def _all_versions(client: Any, name: str) -> list[Any]:
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            return versions


def legacy_entries(tag: list[dict[str, Any]], rebuilt: RebuiltHistory) -> list[dict[str, Any]]:
    """The history tag's moves from before moves were recorded on their versions (entries without
    `seq`, which no version records), as a leading run: kept as they are, unverified, each marked
    `legacy`. Only they let a model promoted before records existed roll back."""
    recorded = {m["id"] for m in rebuilt.moves}
    legacy = []
    for entry in tag:
        if not (isinstance(entry, dict) and "seq" not in entry and "version" in entry
                and entry.get("id") not in recorded):
            break
        legacy.append({**entry, "legacy": True})
    return legacy


def history_disagreements(tag: list[dict[str, Any]], rebuilt: RebuiltHistory) -> list[str]:
    """Returns where the history tag disagrees with the versions' records, one line each: an entry no
    version records, an entry that differs from its record, a recorded move the tag lacks (after the
    oldest entry it keeps: it drops the oldest to fit), another order; and the records that do not
    fit where they are. Its leading legacy entries (`legacy_entries`) are not disagreements."""
    problems = list(rebuilt.problems)
    recorded = {m["id"]: m for m in rebuilt.moves}
    skipped = len(legacy_entries(tag, rebuilt))
    tag = tag[skipped:]
    for number, entry in enumerate(tag, skipped + 1):
        move = recorded.get(entry.get("id")) if isinstance(entry, dict) else None
        if move is None:
            problems.append(f"tag entry {number} ({_describe(entry)}) is a move no version records")
            continue
        record = f"v{move['version']}'s record"
        differ = [f"{key}: the tag says {entry.get(key)!r}, {record} says {move.get(key)!r}"
                  for key in sorted(set(entry) | set(move)) if entry.get(key) != move.get(key)]
        if differ:
            problems.append(f"tag entry {number} (id {move['id']}) differs from its record: "
                            + "; ".join(differ))
    listed = [e["id"] for e in tag if isinstance(e, dict) and e.get("id") in recorded]
    ids = [m["id"] for m in rebuilt.moves]
    expected = ids[min(ids.index(i) for i in listed):] if listed else ids
    lacking = [i for i in expected if i not in listed]
    if lacking:
        problems.append("the tag lacks moves the versions record: "
                        + ", ".join(_describe(recorded[i]) for i in lacking))
    in_order = [i for i in expected if i in listed]
    if [i for i in listed if i in expected] != in_order or len(set(listed)) < len(listed):
        problems.append(f"the tag lists the moves in another order than their records: tag {listed}, "
                        f"records {in_order}")
    return problems


def checked_history(client: Any, name: str, alias: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Returns the moves of `alias` as the versions record them, and where the history tag disagrees
    with them (`history_disagreements`)."""
    rebuilt, tag = rebuild_history(client, name, alias), read_history(client, name, alias)
    return legacy_entries(tag, rebuilt) + rebuilt.moves, history_disagreements(tag, rebuilt)


def _describe(entry: Any) -> str:
    if not isinstance(entry, dict):
        return repr(entry)[:80]
    return (f"id {entry.get('id')!r}: v{entry.get('previous')} -> v{entry.get('version')}, "
            f"{entry.get('action')} by {entry.get('by')}")


@dataclass(frozen=True)
class AliasState:
    """What a mover reads under the alias lock, to decide on."""

    holder: Any | None
    """The version the alias points at (with its tags), None if the alias is unset."""
    history: list[dict[str, Any]]
    """The history tag, as it reads (a summary anyone with edit rights can rewrite)."""
    rebuilt: RebuiltHistory = field(default_factory=lambda: RebuiltHistory([]))
    """The moves as the versions record them."""


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
    repair_history: bool = False
    """Rewrite the history tag from the versions' records, instead of appending to it as read."""


def move_alias(client: Any, name: str, alias: str, decide: Callable[[AliasState], Decision]) -> Decision:
    """Returns what `decide` settled on, having moved the alias and recorded the move if it said so;
    the read, decision, write and compare hold the alias lock (see the module docstring). Errors
    `decide` raises (a refusal) come out as they are."""
    mine: list[dict[str, Any]] = []  # this call's entries, earlier attempts' included
    mover = identify_mover(client)
    with alias_lock(client, name, alias, owner=mover.by):
        state, decision = _read_state(client, name, alias), None
        for disagreement in history_disagreements(state.history, state.rebuilt):
            logger.warning("raylane: %s@%s: the history tag %r disagrees with the versions' records: %s",
                           name, alias, history_tag(alias), disagreement)
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
                entry = _entry(decision, mover, _next_seq(state, mine))
                mine.append(entry)
                # The records first: if they cannot be written, the alias has not moved either.
                record = move_record_tag(alias, entry["id"])
                client.set_model_version_tag(name, decision.version, record,
                                             json.dumps({**entry, "alias": alias}))
                base = (legacy_entries(state.history, state.rebuilt) + state.rebuilt.moves
                        if decision.repair_history else state.history)
                try:
                    _write_history(client, name, alias, base, mine)
                    client.set_registered_model_alias(name, alias, decision.version)
                except BaseException:  # the alias did not move: no record may say it did
                    _forget_record(client, name, decision.version, record)
                    raise
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


def _forget_record(client: Any, name: str, version: str, record: str) -> None:
    try:
        client.delete_model_version_tag(name, version, record)
    except Exception as err:  # the store is down, as the write that failed found: say what is left
        logger.warning("raylane: %s v%s keeps the record %r of a move that did not happen (%s): delete "
                       "that tag before the next rollback", name, version, record, err)


def _entry(decision: Decision, mover: Mover, seq: int) -> dict[str, Any]:
    """A move as the history records it; `id` tells it from every other move, `seq` orders it."""
    return {"id": uuid.uuid4().hex[:12], "seq": seq, "version": decision.version,
            "previous": decision.previous, "action": decision.action, "reason": decision.reason,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **mover.recorded()}


def _next_seq(state: AliasState, mine: list[dict[str, Any]]) -> int:
    """One above every recorded move's sequence number (read under the alias lock)."""
    return 1 + max((m["seq"] for m in state.rebuilt.moves + mine), default=0)


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
    return AliasState(alias_holder(client, name, alias), read_history(client, name, alias),
                      rebuild_history(client, name, alias))


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


def rollback(client: Any, name: str, alias: str = "champion", repair_history: bool = False) -> Move:
    """Moves the alias back to the version it pointed at before the current one, by the versions'
    move records. RaylaneError naming the disagreement when the history tag disagrees with them,
    unless `repair_history`: then by the records, and the tag is rewritten from them."""

    def decide(state: AliasState) -> Decision:
        if state.holder is None:
            raise ModelNotFoundError(f"model {name!r} has no {alias!r} alias to roll back")
        problems = history_disagreements(state.history, state.rebuilt)
        if problems and not repair_history:
            raise RaylaneError(_disagreement_message(name, alias, problems))
        current = str(state.holder.version)
        target = rollback_target(name, alias, current,
                                 legacy_entries(state.history, state.rebuilt) + state.rebuilt.moves)
        _get_version(client, name, target)
        reason = f"rolled back from v{current}" + ("; history tag rewritten from the versions' records"
                                                    if problems else "")
        return Decision(target, current, reason, "rollback", note=f"restored as {alias}: {reason}",
                        repair_history=bool(problems))

    decision = move_alias(client, name, alias, decide)
    return Move(str(decision.version), decision.previous, decision.reason)


def _disagreement_message(name: str, alias: str, problems: list[str]) -> str:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return (f"not rolling back {name}@{alias}: its history tag {history_tag(alias)!r} disagrees with the "
            f"versions' own move records ({len(problems)} disagreement(s)): "
            f"{' | '.join(problems[:3])}{more}. "
            "Something other than raylane wrote the tag (by hand, a script, an older raylane), so "
            f"rollback will not guess which to believe. `raylane history {name} --alias {alias}` shows "
            f"the versions' records; `raylane rollback {name} --alias {alias} --repair-history` rolls "
            "back by them and rewrites the tag from them. A record can be forged too, by anyone who may "
            "edit the model: check them, or set the alias with `raylane promote`")


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
        raise RaylaneError(f"no earlier {alias} of {name!r} is recorded on its versions to roll back to "
                           f"(`raylane history {name}`); use `raylane promote {name} <version>`")
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


@dataclass(frozen=True)
class Mover:
    """Who makes a move, and whether the tracking server vouches for it."""

    by: str
    verified: bool
    """True: the tracking server authenticated this client as `by` (MLflow's basic-auth app)."""
    claimed: str | None = None
    """RAYLANE_USER where it names someone other than the authenticated user: kept, not believed."""

    def recorded(self) -> dict[str, Any]:
        claimed = {"claimed_by": self.claimed} if self.claimed else {}
        return {"by": self.by, "by_verified": self.verified, **claimed}


def made_by(move: dict[str, Any]) -> str:
    """Who a recorded move says made it, in words: `alice`, `alice (claimed: bob)`, `bob (unverified)`."""
    claimed = f" (claimed: {move['claimed_by']})" if move.get("claimed_by") else ""
    return f"{move.get('by')}{claimed}" + ("" if move.get("by_verified") is True else " (unverified)")


def identify_mover(client: Any) -> Mover:
    """Returns who this process moves aliases as: the MLflow user where the tracking server has auth,
    else RAYLANE_USER or the login name, unverified."""
    claimed = env.RAYLANE_USER.get()
    user = mlflow_compat.authenticated_user(str(client.tracking_uri))
    if user is not None:
        return Mover(user, True, claimed if claimed and claimed != user else None)
    return Mover(claimed or _login(), False)


def _login() -> str:
    try:
        return getpass.getuser()
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
