"""The steps every training loop takes around its epochs, whatever the framework: resume from the
latest checkpoint, then after each epoch checkpoint, report and (asha_promotion) hold at a rung.

The loops (`torch_loop`, `tf_loop`) call these with a function that writes or reads their own
framework's state, so each loop still reads top to bottom with its Ray calls in sight.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable

import ray.train

from raylane.model.checkpoint import history_entry, read_history, write_history
from raylane.train import rungs
from raylane.train.loop_config import WorkerLoopConfig
from raylane.train.report import EpochReport


def worker_logging() -> None:
    """Sends this worker's raylane log records to its stderr, which Ray keeps in the worker's log
    file (and shows live with --verbose). A worker process has no handler of its own."""
    root = logging.getLogger("raylane")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[raylane] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def resume(restore: Callable[[str], int]) -> tuple[int, list[dict[str, float]]]:
    """Returns (first epoch to train, every epoch's metrics so far). With a checkpoint (a restarted
    worker group, or a resumed trial), `restore(directory)` loads the state and returns its epoch:
    training continues after it, never starts over."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, []
    with checkpoint.as_directory() as directory:
        epoch = restore(directory)
        return epoch + 1, read_history(directory)


class EpochClock:
    """Wall and CPU seconds since the epoch started."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def wall_s(self) -> float:
        return time.perf_counter() - self.wall

    def cpu_s(self) -> float:
        return time.process_time() - self.cpu


def end_epoch(cfg: WorkerLoopConfig, report: EpochReport, history: list[dict[str, float]],
              save: Callable[[str, int], None], clock: EpochClock) -> bool:
    """Checkpoints (rank 0, `save(directory, epoch)` writes the framework's state), reports the
    epoch, and returns False when the fit ends here: asha_promotion paused the trial at this rung.
    Under train.strategy fsdp `save` runs on every rank, since gathering the sharded state takes
    them all; rank 0's directory is still the only checkpoint."""
    if report.resumed:
        report.history = list(history)  # epochs before the checkpoint, for a killed driver's gaps
    history.append(history_entry(report.metrics()))
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        rank = ray.train.get_context().get_world_rank()
        if rank == 0 or cfg.strategy == "fsdp":
            save(directory, report.epoch)
        if rank == 0:
            write_history(directory, history)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        report.epoch_wall_s, report.epoch_cpu_s = clock.wall_s(), clock.cpu_s()
        ray.train.report(report.metrics(), checkpoint=checkpoint)  # a barrier: every rank reports
    return rungs.go_on(cfg.hold_key, cfg.hold_at, report.epoch)
