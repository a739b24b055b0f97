"""Ray Tune stage: the search space from YAML, Optuna/random search, ASHA, one Ray Train run per trial.

Train V2 trainers cannot be handed to `Tuner`; each trial is a function that builds a
TorchTrainer whose `TuneReportCallback` forwards every epoch's report (and checkpoint path) to Tune.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.train.v2._internal.execution.callback import ControllerCallback

from raylane import asha, storage
from raylane.cluster import TRAIN_POLL_ENV, TRAIN_POLL_S
from raylane.config import PipelineConfig, SearchDim, TuneConfig
from raylane.data import PreparedData
from raylane.errors import TrainingError
from raylane.storage import filesystem, path_exists
from raylane.train.trainer import build_trainer

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
              storage_path: str, controller_keys: str = "raylane:controller:") -> None:
    """The Tune trainable: one TorchTrainer whose epochs Tune sees as iterations.

    The trainer's run is named after the trial, so a trial started again (a resumed pipeline)
    finds its run's checkpoints and continues from the latest. A trial Tune stops (ASHA) ends its
    fit at once, so Tune can hand this process to the next trial (`reuse_actors`)."""
    from ray.train._internal.session import get_session
    from ray.tune.integration.ray_train import TuneReportCallback

    # The trial's own process starts the Train controller, which takes Train's settings from this
    # process's environment: on a cluster it is not the driver's (see raylane.cluster.connect).
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    # How long Tune waits for a stopped trial's thread before it gives this process to the next
    # trial (its default is 2 s); killing the fit's controller takes well under that.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(REUSE_WAIT_S))
    trial_id = tune.get_context().get_trial_id()
    session = get_session()
    controller = _ControllerHandle(f"{controller_keys}{trial_id}:{uuid.uuid4().hex}")
    trainer = build_trainer(
        cfg, hyperparams, data, name=f"trial-{trial_id}", storage_path=storage_path,
        callbacks=[TuneReportCallback(), controller], loop_extra=asha.hold_config(cfg, trial_id),
    )
    reported_before = session.iteration
    with _stopped_with(session.stop_event, controller):
        try:
            result = trainer.fit()
        except Exception:
            if session.stop_event.is_set():
                return  # stopped by Tune: the fit was ended on purpose, nothing is lost
            raise
    if asha.paused_at_rung(trial_id, result.metrics or {}):
        # Its fit ended at a rung (asha_promotion): wait, without workers, until Tune has paused
        # the trial (it stops this process or hands it to another trial). A promotion runs this
        # function again, and the fit continues from the rung's checkpoint.
        session.stop_event.wait()
        return
    if session.iteration == reported_before and result.checkpoint is not None:
        # Resumed after its last epoch (killed between the final checkpoint and the end of the
        # trial): the loop had nothing left to report, but Tune still needs the trial's result.
        tune.report({**result.metrics, "checkpoint_path": result.checkpoint.path})


# Seconds Tune waits for a stopped trial's thread to end before it gives up reusing the process.
REUSE_WAIT_S = 20
ABORT_WAIT_S = 5  # for a Train controller to abort before it is killed


class _ControllerHandle(ControllerCallback):
    """Publishes the Train controller's actor handle under `key` in Ray's key-value store, from the
    controller's own process, so that the trial that started the fit can end it."""

    def __init__(self, key: str):
        self.key = key

    def after_controller_start(self, train_run_context: Any) -> None:
        import ray
        from ray.experimental import internal_kv

        try:
            handle = ray.get_runtime_context().current_actor
            internal_kv._internal_kv_put(self.key, ray.cloudpickle.dumps(handle), overwrite=True)
        except Exception as err:  # the fit goes on; only an early stop would wait for it
            print(f"[raylane] cannot publish the Train controller ({err}); a stopped trial will "
                  "run its fit to the end", flush=True)

    def end(self) -> bool:
        """Ends the fit: the controller aborts (its workers, then its placement group), or is
        killed if it does not within seconds. False while the controller has not published itself."""
        import ray
        from ray.experimental import internal_kv

        published = internal_kv._internal_kv_get(self.key)
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
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(self.key)


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
                        print(f"[raylane] cannot end the stopped trial's fit yet: {err}", flush=True)
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
                             controller_keys=controller_keys),
        {"cpu": TRIAL_DRIVER_CPUS},
    )
    try:
        return _run_search(cfg, trainable, run_name, storage_path, callbacks, resume, scheduler)
    finally:
        _forget_controllers(controller_keys)
        asha.forget(scheduler)


def _forget_controllers(prefix: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(prefix, del_by_prefix=True)
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
            callbacks=list(callbacks), verbose=1,
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
        ordered = frame.sort_values([tc.metric, "epoch"], ascending=[tc.mode == "min", False])
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
        metrics={k: best[k] for k in ("epoch", "train_loss", "val_loss", "val_accuracy", "val_mae")
                 if k in best},
        checkpoint_path=str(best["checkpoint_path"]),
        results_table=results.get_dataframe(),
        results=results,
    )
