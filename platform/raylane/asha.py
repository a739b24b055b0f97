"""Promotion-based ASHA (`tune.scheduler: asha_promotion`): a trial that reaches a rung waits there
until it is among the best of that rung, and only then trains on.

Ray's ASHA (`tune.scheduler: asha`) decides when a trial reaches a rung: it stops the trial if it
is below the rung's cutoff so far, else the trial trains on. The first trials to reach a rung
have nothing to be compared with and train on, so a search spends a good part of its budget on
whatever it happened to start first. The algorithm of the ASHA paper (Li et al., 2020) instead
pauses every trial at each rung and promotes one only when it is in the top 1/reduction_factor of
the trials recorded there: the compute of synchronous successive halving, without its waits.

Rungs are at grace_period x reduction_factor^k epochs, and at train.epochs. A paused trial's
Ray Train fit is ended; promoted, the trial runs again and its fit continues from its latest
checkpoint (`raylane.tune.run_trial`). When no trial runs, none can be promoted and no new trial
can start, the paused trials are ended: the search is over.

Tune starts every trial its search algorithm creates, and counts a paused trial as live. So this
scheduler also limits how many trials run at once: the search algorithm creates a trial only
when a slot is free and no paused trial is waiting to be promoted into it (`gated`).

A trial's workers wait after each rung epoch until the scheduler decides (`raylane.train.rungs`):
promoted at once, they train on; paused, their fit ends there, so no epoch past the rung is
trained unseen, and the trial waits without workers until Tune pauses it. The rung records are
saved with the search algorithm's state, so a resumed search (`--resume`) goes on with them, its
paused trials still paused.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from raylane._compat.ray import kv_delete, kv_get, kv_put, mark_trial_paused
from raylane.train import rungs as hold
from raylane.train.report import EpochReport

# The scheduler of each search in this process, by search id: the search algorithm asks it for a
# free slot. (A restored search unpickles its own copies; they find each other through this.)
_SCHEDULERS: dict[str, PromotionASHA] = {}
_RESTORED: dict[str, dict] = {}  # rung records read back before their scheduler saw a trial
_STATE = ("recorded", "promoted", "waiting")


def hold_key(trial_id: str) -> str:
    """Where the scheduler tells a trial's workers to go on past a rung (+ epochs done)."""
    return f"raylane:rung:{trial_id}:"


def hold_config(cfg: Any, trial_id: str) -> dict[str, Any]:
    """The workers' loop settings for holding at the rungs; none unless asha_promotion."""
    tc = cfg.tune
    if tc.scheduler != "asha_promotion":
        return {}
    return {"hold_at": rungs(tc.grace_period, tc.reduction_factor, cfg.train.epochs)[:-1],
            "hold_key": hold_key(trial_id)}


def rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """Epochs at which trials are compared: grace x rf^k below max_t, then max_t."""
    milestones, rung = [], max(1, min(grace_period, max_t))
    while rung < max_t:
        milestones.append(rung)
        rung *= reduction_factor
    return [*milestones, max_t]


class PromotionASHA(FIFOScheduler):
    """Promotion-based ASHA over the epochs a trial has completed (its reports' `epoch` + 1: a
    trial continued from a checkpoint goes on counting where it stopped)."""

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: int,
                 max_concurrent: int, num_samples: int) -> None:
        super().__init__()
        self._metric, self._mode, self.sign = metric, mode, 1.0 if mode == "max" else -1.0
        self.milestones = rungs(grace_period, reduction_factor, max_t)
        self.rf, self.max_concurrent, self.num_samples = reduction_factor, max_concurrent, num_samples
        self.search_id = uuid.uuid4().hex
        self.recorded: list[dict[str, float]] = [{} for _ in self.milestones]  # rung -> trial -> score
        self.promoted: list[set[str]] = [set() for _ in self.milestones]  # went on past the rung
        self.waiting: dict[str, int] = {}  # paused trial -> the rung it waits at
        self.trials: dict[str, Trial] = {}
        self.checked_restore = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its scheduler before any trial runs
        state = self.__dict__.copy()
        state["trials"] = {}
        return state

    # -- Tune's events ---------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the metric and mode were given at construction

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        _SCHEDULERS[self.search_id] = self
        if self.search_id in _RESTORED:
            self.set_rung_state(_RESTORED.pop(self.search_id))
        self.trials[trial.trial_id] = trial

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        report = EpochReport.of(result)
        if self._metric not in result or report is None:
            return TrialScheduler.CONTINUE
        done = report.epoch + 1
        decision = self._decide(trial, done, result)
        if done in self.milestones[:-1]:
            # The trial's workers wait after this epoch for an answer: every result there gets
            # one. (Tune must hand results over one at a time, as it does by default: a buffered
            # rung result would never be decided while its workers wait.)
            answer = hold.PAUSE if decision == TrialScheduler.PAUSE else hold.GO
            kv_put(hold.go_key(hold_key(trial.trial_id), done), answer)
        return decision

    def _decide(self, trial: Trial, done: int, result: dict) -> str:
        rung = self._rung_reached(trial.trial_id, done)
        if rung is None or rung == len(self.milestones) - 1:
            return TrialScheduler.CONTINUE  # between rungs, or at the full budget: it ends itself
        score = self.sign * float(result[self._metric])
        self.recorded[rung][trial.trial_id] = score if math.isfinite(score) else -math.inf
        if done > self.milestones[rung]:
            # Past the rung without holding there (a resumed search's trial that was running when
            # the search stopped): its workers are not waiting, so pausing it now would lose the
            # epochs they go on reporting. Recorded for the others' comparisons; it trains on.
            self.promoted[rung].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        if trial.trial_id in self._promotable(rung):  # already among the best: no need to wait
            self.promoted[rung].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        self.waiting[trial.trial_id] = rung
        return TrialScheduler.PAUSE

    # The trials' rung answers stay until the search ends (`forget`): a worker still reading one
    # must find it.
    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self.waiting.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.waiting.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.waiting.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A trial to promote when a slot is free (highest rung first), else a new trial (Tune
        starts those itself). With nothing running, nothing to promote and no trial left to
        create, the trials still waiting are ended."""
        if not self.checked_restore:
            # A restored search's trials come back PENDING, the paused ones too: they stay paused.
            self.checked_restore = True
            for trial_id in self.waiting:
                if (trial := self.trials.get(trial_id)) is not None and trial.status == Trial.PENDING:
                    mark_trial_paused(tune_controller, trial)
        if self._running() >= self.max_concurrent:
            return None
        promote = self._next_promotion()
        if promote is not None:
            trial_id, rung = promote
            self.waiting.pop(trial_id)
            self.promoted[rung].add(trial_id)
            return self.trials[trial_id]
        for trial in self.trials.values():
            if trial.status == Trial.PENDING:
                return trial
        if self._running() == 0 and len(self.trials) >= self.num_samples and self.waiting:
            for trial_id in list(self.waiting):
                tune_controller.stop_trial(self.trials[trial_id])
        return None

    def rung_state(self) -> dict:
        return {name: getattr(self, name) for name in _STATE}

    def set_rung_state(self, state: dict) -> None:
        for name in _STATE:
            setattr(self, name, state[name])

    def full(self) -> bool:
        """True when the search algorithm must not create a trial now."""
        return self._running() >= self.max_concurrent or self._next_promotion() is not None

    def debug_string(self) -> str:
        counts = ", ".join(f"{m}: {len(r)} ({len(p)} promoted)"
                           for m, r, p in zip(self.milestones, self.recorded, self.promoted, strict=True))
        return f"Promotion-based ASHA, rungs at epochs {counts}; {len(self.waiting)} trials waiting."

    # -- the rule --------------------------------------------------------------------------------

    def _rung_reached(self, trial_id: str, done: int) -> int | None:
        """The rung this report completes: the highest milestone <= done not yet recorded for the
        trial (a fit continued from a later checkpoint than its rung still records there)."""
        for rung in range(len(self.milestones) - 1, -1, -1):
            if done >= self.milestones[rung]:
                return None if trial_id in self.recorded[rung] else rung
        return None

    def _promotable(self, rung: int) -> set[str]:
        """The trials in the top 1/rf of those recorded at `rung`, not promoted yet."""
        recorded = self.recorded[rung]
        top = sorted(recorded, key=recorded.get, reverse=True)[:math.floor(len(recorded) / self.rf)]
        return set(top) - self.promoted[rung]

    def _next_promotion(self) -> tuple[str, int] | None:
        for rung in range(len(self.milestones) - 2, -1, -1):
            recorded = self.recorded[rung]
            for trial_id in sorted(self._promotable(rung), key=recorded.get, reverse=True):
                if self.waiting.get(trial_id) == rung and self.trials[trial_id].status == Trial.PAUSED:
                    return trial_id, rung
        return None

    def _running(self) -> int:
        return sum(trial.status in (Trial.PENDING, Trial.RUNNING) for trial in self.trials.values())


def paused_at_rung(trial_id: str, metrics: dict) -> bool:
    """Whether a trial's fit ended because this scheduler paused the trial at a rung."""
    report = EpochReport.of(metrics)
    if report is None:
        return False
    key = hold.go_key(hold_key(trial_id), report.epoch + 1)
    return kv_get(key) == hold.PAUSE


def _forget_keys(trial_id: str) -> None:
    try:
        kv_delete(hold_key(trial_id), by_prefix=True)
    except Exception:  # Ray already down: nothing is left to clear
        pass


def _full(search_id: str) -> bool:
    scheduler = _SCHEDULERS.get(search_id)
    return scheduler is not None and scheduler.full()


def _rung_state(search_id: str) -> dict | None:
    scheduler = _SCHEDULERS.get(search_id)
    return scheduler.rung_state() if scheduler is not None else None


def _set_rung_state(search_id: str, state: dict | None) -> None:
    if state is None:
        return
    if search_id in _SCHEDULERS:
        _SCHEDULERS[search_id].set_rung_state(state)
    else:
        _RESTORED[search_id] = state


class _GatedSearcher(ConcurrencyLimiter):
    """A searcher (Optuna) that suggests a trial only when the scheduler has a free slot."""

    def __init__(self, searcher: Any, search_id: str, num_samples: int) -> None:
        super().__init__(searcher, max_concurrent=num_samples)
        self.search_id = search_id

    def suggest(self, trial_id: str) -> dict | None:
        if _full(self.search_id):
            return None
        return super().suggest(trial_id)

    def get_state(self) -> dict:  # saved with the experiment: the scheduler's rungs go with it
        return {**super().get_state(), "raylane_rungs": _rung_state(self.search_id)}

    def set_state(self, state: dict) -> None:
        state = dict(state)
        _set_rung_state(self.search_id, state.pop("raylane_rungs", None))
        super().set_state(state)


class _GatedGenerator(BasicVariantGenerator):
    """Random search that creates a trial only when the scheduler has a free slot."""

    def __init__(self, search_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.search_id = search_id

    def next_trial(self) -> Any:
        if _full(self.search_id):
            return None
        return super().next_trial()

    def get_state(self) -> dict:
        return {**super().get_state(), "raylane_rungs": _rung_state(self.search_id)}

    def set_state(self, state: dict) -> None:
        state = dict(state)
        _set_rung_state(self.search_id, state.pop("raylane_rungs", None))
        super().set_state(state)


def gated(search_alg: Any, scheduler: PromotionASHA, random_state: int) -> Any:
    """The search algorithm for `scheduler`: it creates trials only into free slots."""
    if isinstance(search_alg, BasicVariantGenerator):  # random search: the same draws, unlimited
        return _GatedGenerator(scheduler.search_id, random_state=random_state)
    return _GatedSearcher(search_alg, scheduler.search_id, scheduler.num_samples)


def forget(scheduler: Any) -> None:
    """After a search: its schedulers (a restored search's unpickled one too; one search runs at
    a time in a process) and their keys."""
    if not isinstance(scheduler, PromotionASHA):
        return
    for known in [*_SCHEDULERS.values(), scheduler]:
        for trial_id in known.trials:
            _forget_keys(trial_id)
    _SCHEDULERS.clear()
    _RESTORED.clear()
