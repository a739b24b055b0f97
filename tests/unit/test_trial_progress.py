"""raylane's own lines about a Tune search (Tune's output is off): fed the events Tune sends."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from raylane.tune import TrialProgress


def trial(trial_id: str, tmp_path, status: str = "RUNNING", error: str | None = None) -> SimpleNamespace:
    error_file = None
    if error is not None:
        error_file = tmp_path / f"{trial_id}-error.txt"
        error_file.write_text(error)
    return SimpleNamespace(trial_id=trial_id, config={"lr": 0.0123456, "hidden_size": 64}, status=status,
                           error_file=str(error_file) if error_file else None, path=str(tmp_path),
                           get_error=lambda: None)


@pytest.fixture(autouse=True)
def _capture_directly(caplog: pytest.LogCaptureFixture):
    """The CLI may have turned off propagation of raylane's loggers in this process: listen on it."""
    logger = logging.getLogger("raylane.tune")
    logger.addHandler(caplog.handler)
    yield
    logger.removeHandler(caplog.handler)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    unique = {id(r): r for r in caplog.records if r.name == "raylane.tune"}  # heard once or twice
    return [r.getMessage() for r in unique.values()]


def test_a_trial_is_one_line_when_it_starts_and_one_when_the_scheduler_stops_it(tmp_path, caplog) -> None:
    progress = TrialProgress("val_accuracy", "max", epochs=10)
    t = trial("a1", tmp_path)
    with caplog.at_level(logging.INFO, logger="raylane.tune"):
        progress.on_trial_start(0, [t], t)
        for epoch, accuracy in enumerate([0.5, 0.8, 0.7]):
            progress.on_trial_result(0, [t], t, {"epoch": epoch, "val_accuracy": accuracy})
        progress.on_trial_complete(0, [t], t)
    assert messages(caplog) == [
        "trial a1 started: lr=0.0123, hidden_size=64",
        "trial a1 stopped by the scheduler after 3/10 epochs; best val_accuracy 0.8000 (epoch 2)",
    ]


def test_a_promoted_trial_continues_instead_of_starting_again(tmp_path, caplog) -> None:
    progress = TrialProgress("val_loss", "min", epochs=4)
    t = trial("p1", tmp_path)
    progress.on_trial_start(0, [t], t)
    progress.on_trial_result(0, [t], t, {"epoch": 0, "val_loss": 0.9})
    caplog.clear()  # the first start is heard too where an earlier test let raylane log INFO
    with caplog.at_level(logging.INFO, logger="raylane.tune"):
        progress.on_trial_start(0, [t], t)
    assert messages(caplog) == ["trial p1 continues after epoch 1"]


def test_a_failed_trial_shows_the_last_lines_of_its_error(tmp_path, caplog) -> None:
    progress = TrialProgress("val_accuracy", "max", epochs=10)
    frames = "\n".join(f"  frame {n}" for n in range(20))
    traceback = frames + "\n\x1b[36mValueError\x1b[39m: the loss diverged\n"  # coloured, as Ray writes it
    t = trial("e1", tmp_path, status="ERROR", error="Failure # 1\n" + traceback)
    with caplog.at_level(logging.INFO, logger="raylane.tune"):
        progress.on_trial_error(0, [t], t)
    lines = messages(caplog)
    assert lines[0].startswith("trial e1 failed before its first epoch ended") and "e1-error.txt" in lines[0]
    assert len(lines) == 1 + 10 and lines[-1] == "    ValueError: the loss diverged"
    assert all(r.levelno == logging.ERROR for r in caplog.records if r.name == "raylane.tune")


def test_the_end_table_ranks_trials_by_their_best_metric(tmp_path, caplog) -> None:
    progress = TrialProgress("val_loss", "min", epochs=2)
    trials = [trial(name, tmp_path, status="TERMINATED") for name in ("worse", "none", "better")]
    progress.on_trial_result(0, trials, trials[0], {"epoch": 1, "val_loss": 0.7})
    progress.on_trial_result(0, trials, trials[2], {"epoch": 1, "val_loss": 0.2})
    with caplog.at_level(logging.INFO, logger="raylane.tune"):
        progress.on_experiment_end(trials)
    rows = [line.split()[0] for line in messages(caplog)[2:]]
    assert messages(caplog)[0] == "trials at the end: 3 terminated"
    assert rows == ["better", "worse", "none"]
