"""One nested MLflow run per Tune trial, written from the driver by a thread that survives outages.

Everything here runs in the driver process (Tune calls its callbacks there), so a sqlite store only
ever has one writer, and training workers never open MLflow runs of their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune

from raylane.errors import TrackingError
from raylane.task import EPOCH, VAL_LOSS
from raylane.train.report import EpochReport

logger = logging.getLogger(__name__)


class TrialRunLogger(tune.Callback):
    """A Tune callback: one nested MLflow run per trial, one metric point per epoch, never twice.

    Tune calls it on its driver loop, which must never wait on MLflow: each event goes into an
    outbox that a writer thread sends in order. While the tracking server is unreachable the outbox
    keeps everything, retried with backoff, and `on_experiment_end` waits (up to
    `tracking.outage_timeout_s`) until it is written. A trial met again after a restart or a
    `--resume` finds its run by tag and continues it: epochs already logged are not logged again.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 outage_timeout_s: float = 600.0) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.outage_timeout_s = outage_timeout_s
        self._setup()

    def _setup(self) -> None:
        import collections
        import threading

        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.paused: set[str] = set()  # trials Tune paused (asha_promotion), until they run again
        self._outbox: collections.deque = collections.deque()
        self._wakeup = threading.Condition()
        self._writer: threading.Thread | None = None
        self.outage_started: float | None = None
        self.outages: list[float] = []  # seconds MLflow was unreachable, one entry per outage

    # Tune pickles its callbacks with the experiment state (for Tuner.restore); the outbox and the
    # writer thread are this process's only.
    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in (
            "tracking_uri", "experiment_id", "parent_run_id", "outage_timeout_s")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    # -- Tune's events: queue them, never block --------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("start", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        report = EpochReport.of(result)
        if report is None:
            return
        stamp = int(result.get("timestamp", time.time()) * 1000)
        if report.resumed:  # the first epoch of a worker group resumed from a checkpoint
            # After a pause (a promotion by asha_promotion) that is the plan, not a restart.
            promoted = trial.trial_id in self.paused
            self.paused.discard(trial.trial_id)
            self._send("promoted" if promoted else "resumed", trial.trial_id, report.start_epoch)
            # Epochs up to the checkpoint, from the checkpoint itself: those whose reports died with
            # a killed driver are written now; those already on record are skipped as usual.
            for past in filter(None, map(EpochReport.of, report.history or [])):
                self._send("epoch", trial.trial_id, past.epoch, stamp, past.scores())
        self._send("epoch", trial.trial_id, report.epoch, stamp, report.scores())

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # raylane's trials keep their checkpoints in Ray Train: Tune saves one only to pause it.
        self.paused.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("finish", trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("finish", trial.trial_id, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def catch_up(self, results: Any) -> None:
        """Writes what a killed driver may have left unwritten for the trials of a restored search
        (Tune does not replay finished trials): every epoch in Tune's records, and the end state."""
        for result in results:
            frame = result.metrics_dataframe
            trial_id = (result.metrics or {}).get("trial_id")
            if frame is None or EPOCH not in frame or not trial_id:
                continue
            for _, row in frame.dropna(subset=[EPOCH]).sort_values(EPOCH).iterrows():
                stamp = int(row.get("timestamp", time.time()) * 1000)
                report = EpochReport.of(row, nan_is_missing=True)
                self._send("epoch", trial_id, report.epoch, stamp, report.scores())
            self._send("finish", trial_id, "FAILED" if result.error else "FINISHED")
        self.flush()

    def flush(self) -> None:
        """Waits until every queued event is in MLflow; TrackingError after `outage_timeout_s` of outage."""
        with self._wakeup:
            while self._outbox:
                if self._writer is None or not self._writer.is_alive():
                    raise TrackingError(f"the MLflow writer thread stopped with {len(self._outbox)} trial "
                                        "records unwritten")
                if self.outage_started and time.monotonic() - self.outage_started > self.outage_timeout_s:
                    raise TrackingError(
                        f"MLflow at {self.tracking_uri} unreachable for over {self.outage_timeout_s:.0f} s "
                        f"(tracking.outage_timeout_s); {len(self._outbox)} trial records not written")
                self._wakeup.wait(timeout=1.0)

    def _send(self, *event: Any) -> None:
        import threading

        with self._wakeup:
            self._outbox.append(event)
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_forever, name="mlflow-trial-writer",
                                                daemon=True)
                self._writer.start()
            self._wakeup.notify_all()

    # -- the writer thread -----------------------------------------------------------------------

    def _write_forever(self) -> None:
        backoff = 0.5
        while True:
            with self._wakeup:
                while not self._outbox:
                    self._wakeup.wait()
                event = self._outbox[0]
            try:
                self._write(*event)
            except Exception as err:  # the store is down or erroring: keep the event, try again
                if _refused(err):  # the store answered no: retrying cannot help
                    logger.warning("MLflow refused a trial record (%s); skipped", err)
                    with self._wakeup:
                        self._outbox.popleft()
                        self._wakeup.notify_all()
                    continue
                if self.outage_started is None:
                    self.outage_started = time.monotonic()
                    logger.warning("MLflow unreachable (%s); buffering trial metrics until it is back",
                                   type(err).__name__)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            with self._wakeup:
                self._outbox.popleft()
                if self.outage_started is not None:
                    self.outages.append(time.monotonic() - self.outage_started)
                    self.outage_started = None
                    logger.info("MLflow back after %.1f s; buffered trial metrics written",
                                self.outages[-1])
                self._wakeup.notify_all()

    def _write(self, kind: str, trial_id: str, *args: Any) -> None:
        from mlflow.entities import Metric

        if kind == "start":
            self._open_run(trial_id, args[0])
            return
        run_id = self.run_ids.get(trial_id) or self._open_run(trial_id, None)
        if kind == "promoted":
            self.client.set_tag(run_id, "raylane.promoted_at_epoch", args[0])
        elif kind == "resumed":
            restarts = self.restarts[trial_id] + 1  # counted once written: a retried write counts once
            self.client.set_tag(run_id, "raylane.restarts", restarts)
            self.client.set_tag(run_id, "raylane.resumed_at_epoch", args[0])
            self.restarts[trial_id] = restarts
        elif kind == "epoch":
            epoch, stamp, values = args
            if epoch <= self.last_epoch[trial_id]:
                return  # an epoch redone after a restart is already on record
            self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, epoch) for k, v in values.items()])
            self.last_epoch[trial_id] = epoch
        elif kind == "finish":
            self.client.set_tag(run_id, "raylane.epochs_completed", self.last_epoch[trial_id] + 1)
            self.client.set_tag(run_id, "raylane.restarts", self.restarts[trial_id])
            self.client.set_terminated(run_id, args[0])

    def _open_run(self, trial_id: str, config: dict | None) -> str:
        """Returns the trial's nested run: the one an earlier attempt created, else a new one."""
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        client = self.client
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                          f"and tags.`raylane.trial_id` = '{trial_id}'",
            max_results=1,
        )
        if found:
            run = found[0]
            history = client.get_metric_history(run.info.run_id, VAL_LOSS)  # every task logs it
            self.last_epoch[trial_id] = max((m.step for m in history), default=-1)
            self.restarts[trial_id] = int(run.data.tags.get("raylane.restarts", 0))
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = client.create_run(
                self.experiment_id, run_name=f"trial-{trial_id}",
                tags={"mlflow.parentRunId": self.parent_run_id, "raylane.trial_id": trial_id},
            )
            self.last_epoch[trial_id], self.restarts[trial_id] = -1, 0
        if config and not run.data.params:
            from mlflow.entities import Param

            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in config.items()])
        self.run_ids[trial_id] = run.info.run_id
        return run.info.run_id


def _refused(err: Exception) -> bool:
    """True when MLflow answered with a client error (bad value, deleted run), not an outage."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429
