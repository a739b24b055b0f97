"""Ray Tune stage: the search space from YAML, Optuna/random search, ASHA, one Ray Train run per trial.

Train V2 trainers cannot be handed to `Tuner`; each trial is a function that builds a
TorchTrainer whose `TuneReportCallback` forwards every epoch's report (and checkpoint path) to Tune.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from raylane import asha, builders, env, storage
from raylane._compat.ray import (
    controller_callback,
    kv_delete,
    kv_get,
    kv_put,
    trial_iteration,
    trial_stop_event,
)
from raylane.config import PipelineConfig, SearchDim, TuneConfig
from raylane.data import PreparedData
from raylane.errors import TrainingError
from raylane.storage import filesystem, path_exists
from raylane.task import ALL_EPOCH_METRICS, EPOCH
from raylane.train.report import EpochReport
from raylane.train.trainer import build_trainer

log = logging.getLogger(__name__)

# A trial's own driver does no work besides waiting on its trainer; it must not hold a CPU slot
# that the trainer's workers or Ray Data need (2-core machines deadlock otherwise).
TRIAL_DRIVER_CPUS = 0.01
# A finished or stopped trial's process runs the next trial: Tune starts no new process per trial
# (`run_trial` ends a stopped trial's fit at once, which Tune needs to hand the process on).
REUSE_TRIAL_PROCESSES = True


@dataclass(frozen=True)
class BestTrial:
    """The winning trial: its hyperparameters, best validation metrics and best checkpoint."""

    trial_id: str
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_path: str
    results_table: Any  # pandas.DataFrame, one row per trial
    results: Any = None  # the ray.tune.ResultGrid, every reported epoch of every trial


def search_space(cfg: TuneConfig) -> dict[str, Any]:
    """Returns the Tune param_space for the YAML search space."""
    return {name: _domain(dim) for name, dim in cfg.search_space.items()}


def _domain(dim: SearchDim) -> Any:
    if dim.loguniform is not None:
        return tune.loguniform(*dim.loguniform)
    if dim.uniform is not None:
        return tune.uniform(*dim.uniform)
    if dim.randint is not None:
        return tune.randint(*dim.randint)
    return tune.choice(dim.choice)


def run_trial(hyperparams: dict[str, Any], *, cfg: PipelineConfig, data: PreparedData,
              storage_path: str, controller_keys: str = "raylane:controller:",
              worker_env: dict[str, Any] | None = None, run_name: str = "") -> None:
    """The Tune trainable: one TorchTrainer whose epochs Tune sees as iterations.

    The trainer's run is named after the trial, so a trial started again (a resumed pipeline)
    finds its run's checkpoints and continues from the latest. A trial Tune stops (ASHA) ends its
    fit at once, so Tune can hand this process to the next trial (`reuse_actors`)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    # The trial's own process starts the Train controller, which takes Train's settings from this
    # process's environment; raylane.cluster.connect gives them to every Ray process, and this
    # covers a Ray that something else started (a test, a notebook).
    env.apply(env.TRAIN)
    trial_id = tune.get_context().get_trial_id()
    stop_event = trial_stop_event()
    controller = _ControllerHandle(f"{controller_keys}{trial_id}:{uuid.uuid4().hex}")
    trainer = build_trainer(
        cfg, hyperparams, data, name=f"trial-{trial_id}", storage_path=storage_path,
        callbacks=[TuneReportCallback(), controller], hold=asha.hold_config(cfg, trial_id),
        worker_env=worker_env, run_name=run_name, trial=trial_id,  # the workers' metric labels
    )
    reported_before = trial_iteration()
    with _stopped_with(stop_event, controller):
        try:
            result = trainer.fit()
        except Exception:
            if stop_event.is_set():
                return  # stopped by Tune: the fit was ended on purpose, nothing is lost
            raise
    if asha.paused_at_rung(trial_id, result.metrics or {}):
        # Its fit ended at a rung (asha_promotion): wait, without workers, until Tune has paused
        # the trial (it stops this process or hands it to another trial). A promotion runs this
        # function again, and the fit continues from the rung's checkpoint.
        stop_event.wait()
        return
    if trial_iteration() == reported_before and result.checkpoint is not None:
        # Resumed after its last epoch (killed between the final checkpoint and the end of the
        # trial): the loop had nothing left to report, but Tune still needs the trial's result.
        tune.report({**result.metrics, "checkpoint_path": result.checkpoint.path})


# (How long Tune waits for a stopped trial's thread before reusing its process: raylane.env.)
ABORT_WAIT_S = 5  # for a Train controller to abort before it is killed


class _ControllerHandle(controller_callback()):
    """Publishes the Train controller's actor handle under `key` in Ray's key-value store, from the
    controller's own process, so that the trial that started the fit can end it."""

    def __init__(self, key: str):
        self.key = key

    def after_controller_start(self, train_run_context: Any) -> None:
        import ray

        try:
            handle = ray.get_runtime_context().current_actor
            kv_put(self.key, ray.cloudpickle.dumps(handle))
        except Exception as err:  # the fit goes on; only an early stop would wait for it
            log.warning("cannot publish the Train controller (%s); a stopped trial will run its fit "
                        "to the end", err)

    def end(self) -> bool:
        """Ends the fit: the controller aborts (its workers, then its placement group), or is
        killed if it does not within seconds. False while the controller has not published itself."""
        import ray

        published = kv_get(self.key)
        if published is None:
            return False
        handle = ray.cloudpickle.loads(published)
        try:
            ray.get(handle.abort.remote(), timeout=ABORT_WAIT_S)
        except Exception:  # it exits while aborting (RayActorError), or is stuck (timeout)
            pass
        ray.kill(handle, no_restart=True)
        return True

    def forget(self) -> None:
        kv_delete(self.key)


@contextlib.contextmanager
def _stopped_with(stop: threading.Event, controller: _ControllerHandle) -> Iterator[None]:
    """While the block runs, kills the fit's controller once Tune sets the trial's `stop` event.

    A trial actor Tune reuses is not killed when ASHA stops its trial: without this, the fit would
    train on, and Tune would find the thread still busy when it hands the process on."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.2):
                # The controller may not have published itself yet (the fit is starting): retry.
                while not done.is_set():
                    try:
                        if controller.end():
                            return
                    except Exception as err:  # Ray unreachable for a moment: try again
                        log.warning("cannot end the stopped trial's fit yet: %s", err)
                    done.wait(0.5)
                return

    watcher = threading.Thread(target=watch, name="raylane-trial-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        controller.forget()


def search(cfg: PipelineConfig, data: PreparedData, run_name: str, storage_path: str,
           callbacks: list[Any] = (), resume: bool = False) -> BestTrial:
    """Runs the hyperparameter search and returns the best trial; TrainingError if none finished.

    With `resume`, an interrupted search of the same run continues (Tuner.restore): finished trials
    are not rerun, unfinished and errored ones resume from their latest checkpoints."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tc = cfg.tune
    # Where this search's trials publish their fits' controllers; cleared when it ends, whatever
    # became of the trials.
    controller_keys = f"raylane:controller:{uuid.uuid4().hex}:"
    if tc.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=cfg.train.epochs,
            grace_period=min(tc.grace_period, cfg.train.epochs), reduction_factor=tc.reduction_factor,
            # A trial at the full budget ends its fit itself, not killed in its teardown.
            stop_last_trials=False)
    elif tc.scheduler == "asha_promotion":
        scheduler = asha.PromotionASHA(
            metric=tc.metric, mode=tc.mode, max_t=cfg.train.epochs, grace_period=tc.grace_period,
            reduction_factor=tc.reduction_factor, max_concurrent=tc.max_concurrent_trials,
            num_samples=tc.num_samples)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, data=data,
                             storage_path=storage.join(storage_path, run_name, "trials"),
                             controller_keys=controller_keys, run_name=run_name,
                             # the model builder's code, uploaded from here for the Train workers
                             worker_env=builders.worker_runtime_env(cfg)),
        {"cpu": TRIAL_DRIVER_CPUS},
    )
    try:
        return _run_search(cfg, trainable, run_name, storage_path, callbacks, resume, scheduler)
    finally:
        _forget_controllers(controller_keys)
        asha.forget(scheduler)


def _forget_controllers(prefix: str) -> None:
    try:
        kv_delete(prefix, by_prefix=True)
    except Exception:  # Ray already down (the search was interrupted): nothing is left to clear
        pass


def _run_search(cfg: PipelineConfig, trainable: Any, run_name: str, storage_path: str,
                callbacks: list[Any], resume: bool, scheduler: Any) -> BestTrial:
    tc = cfg.tune
    experiment = storage.join(storage_path, run_name, "tune")
    if resume and tune.Tuner.can_restore(experiment):
        # The callbacks come back from the experiment state; they find their MLflow runs by tag.
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
        results = _finished(tuner.fit(), run_name)
        for callback in callbacks:  # trials that finished before the kill are not replayed to them
            if hasattr(callback, "catch_up"):
                callback.catch_up(results)
        return best_trial(results, tc, filesystem(storage_path))
    search_alg, max_concurrent = _search_alg(cfg), tc.max_concurrent_trials
    if isinstance(scheduler, asha.PromotionASHA):
        # Tune counts paused trials as running: the scheduler keeps the count of trials at once.
        search_alg, max_concurrent = asha.gated(search_alg, scheduler, cfg.train.seed), None
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(tc),
        tune_config=tune.TuneConfig(
            metric=tc.metric, mode=tc.mode, search_alg=search_alg, scheduler=scheduler,
            num_samples=tc.num_samples, max_concurrent_trials=max_concurrent,
            reuse_actors=REUSE_TRIAL_PROCESSES,
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=storage.join(storage_path, run_name),
            # Tune's own tables are off (they and Ray's output go to the run's log file): raylane's
            # compact lines instead.
            callbacks=[TrialProgress(tc.metric, tc.mode, cfg.train.epochs), *callbacks], verbose=0,
            # A trial whose own driver or Train controller died with its node is started again;
            # its trainer then continues from the run's latest checkpoint. Bounded like the workers.
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )
    return best_trial(_finished(tuner.fit(), run_name), tc, filesystem(storage_path))


def _finished(results: Any, run_name: str) -> Any:
    """Returns the results of a search that ran to the end. Tune answers Ctrl-C (SIGINT) by
    stopping and returning what it has: that is an interrupted run to resume, not one to register."""
    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished:
        raise TrainingError(f"the search was interrupted with {unfinished} trials unfinished; "
                            f"continue it with --resume {run_name}")
    return results


def _search_alg(cfg: PipelineConfig) -> Any:
    if cfg.tune.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.train.seed)
    from ray.tune.search import BasicVariantGenerator

    # Tune applies max_concurrent_trials to a generator it builds itself, not to one handed in.
    return BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=cfg.tune.max_concurrent_trials)


def best_trial(results: Any, tc: TuneConfig, fs: Any = None) -> BestTrial:
    """Returns the trial with the best epoch over all trials, and that epoch's checkpoint."""
    rows = []
    for result in results:
        if result.metrics_dataframe is None or tc.metric not in result.metrics_dataframe:
            continue
        frame = result.metrics_dataframe.dropna(subset=[tc.metric])
        if "checkpoint_path" not in frame:
            continue
        # Ray Train keeps only `checkpoints_to_keep` checkpoints, and on ties in the metric it may
        # keep a later epoch than the first best row: choose among checkpoints that still exist,
        # the latest epoch winning a tie.
        frame = frame[frame["checkpoint_path"].map(lambda p: isinstance(p, str) and path_exists(p, fs))]
        if frame.empty:
            continue
        ordered = frame.sort_values([tc.metric, EPOCH], ascending=[tc.mode == "min", False])
        rows.append((result, ordered.iloc[0]))
    if not rows:
        errors = [str(r.error) for r in results if r.error]
        raise TrainingError(
            "no trial reported a checkpoint" + (f"; first error: {errors[0]}" if errors else "")
        )
    pick = max if tc.mode == "max" else min
    result, best = pick(rows, key=lambda pair: pair[1][tc.metric])
    return BestTrial(
        trial_id=str(best.get("trial_id", "")),
        hyperparams=dict(result.config),
        metrics={k: best[k] for k in (EPOCH, *ALL_EPOCH_METRICS)
                 if k in best},
        checkpoint_path=str(best["checkpoint_path"]),
        results_table=results.get_dataframe(),
        results=results,
    )


TABLE_EVERY_S = 30  # how often the live trials' table is logged while a search runs
ERROR_LINES = 10  # of a failed trial's error, the last lines logged


class TrialProgress(tune.Callback):
    """Logs the search as it goes, since Tune's own output is off (`verbose=0`): a line when a
    trial starts, finishes, is stopped or fails (with its error's last lines), a table of the live
    trials every `every_s` seconds, and one of every trial at the end."""

    def __init__(self, metric: str, mode: str, epochs: int, every_s: float = TABLE_EVERY_S) -> None:
        self.metric, self.epochs, self.every_s = metric, epochs, every_s
        self.sign = 1 if mode == "max" else -1
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best metric, epochs done then)
        self.done: dict[str, int] = {}  # trial id -> epochs done
        self.last_table = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.done:  # promoted from a rung, or started again after a failure
            log.info("trial %s continues after epoch %d", trial.trial_id, self.done[trial.trial_id])
            return
        params = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        log.info("trial %s started: %s", trial.trial_id, ", ".join(params))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        report = EpochReport.of(result)
        if report is None:
            return
        done = self.done[trial.trial_id] = report.epoch + 1
        value = result.get(self.metric)
        best = self.best.get(trial.trial_id)
        if isinstance(value, int | float) and (best is None or self.sign * value > self.sign * best[0]):
            self.best[trial.trial_id] = (float(value), done)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = self.done.get(trial.trial_id, 0)
        how = "finished" if done >= self.epochs else "stopped by the scheduler"
        log.info("trial %s %s after %d/%d epochs; %s", trial.trial_id, how, done, self.epochs,
                 self._best_text(trial.trial_id))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tail = _error_tail(trial)
        log.warning("trial %s failed %s and starts again from its last checkpoint: %s", trial.trial_id,
                    self._when(trial.trial_id), tail[-1] if tail else "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.error("trial %s failed %s; the end of its error (all of it: %s):", trial.trial_id,
                  self._when(trial.trial_id), trial.error_file or trial.path)
        for line in _error_tail(trial):
            log.error("    %s", line)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        live = [t for t in trials if t.status in ("RUNNING", "PAUSED", "PENDING")]
        if live and time.time() - self.last_table >= self.every_s:
            self._table(trials, live, "trials now")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        def rank(trial: Any) -> float:  # the best first, trials without a metric last
            best = self.best.get(trial.trial_id)
            return -self.sign * best[0] if best else float("inf")

        self._table(trials, sorted(trials, key=rank), "trials at the end")

    def _table(self, trials: list, shown: list, title: str) -> None:
        self.last_table = time.time()
        counts = Counter(t.status.lower() for t in trials)
        log.info("%s: %s", title, ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        log.info("  %-12s %-11s %-7s %s", "trial", "status", "epochs", f"best {self.metric}")
        for t in shown:
            best = self.best.get(t.trial_id)
            epochs = f"{self.done.get(t.trial_id, 0)}/{self.epochs}"
            log.info("  %-12s %-11s %-7s %s", t.trial_id, t.status, epochs,
                     f"{best[0]:.4f} (epoch {best[1]})" if best else "-")

    def _when(self, trial_id: str) -> str:
        done = self.done.get(trial_id, 0)
        return f"after epoch {done}/{self.epochs}" if done else "before its first epoch ended"

    def _best_text(self, trial_id: str) -> str:
        best = self.best.get(trial_id)
        return f"best {self.metric} {best[0]:.4f} (epoch {best[1]})" if best else f"no {self.metric} reported"


def _error_tail(trial: Any, lines: int = ERROR_LINES) -> list[str]:
    """The last lines of a trial's error: Tune's error file beside the driver, else the stored copy."""
    text = None
    try:
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
        else:
            text = trial.get_error()
    except Exception as err:  # the error text is a courtesy; never fail the search over it
        text = f"(cannot read the trial's error: {err})"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text or "")  # Ray colours the worker's name
    return [line for line in plain.splitlines() if line.strip()][-lines:]
