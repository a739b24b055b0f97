"""Ray's unpublished APIs behind `raylane._compat.ray` are still where raylane reaches for them.

Each test names the symbol a newer Ray moved, and the release raylane was tested with. No Ray is
started: the key-value store and the trial session are used for real by tests/integration/test_tune.py.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from raylane._compat import ray as compat

PLATFORM = Path(__file__).resolve().parents[2] / "platform" / "raylane"


def moved(symbol: str, what: str = "") -> str:
    return (f"ray {ray.__version__} moved {symbol}{what} (raylane tested {compat.RAY_TESTED}): "
            "update raylane/_compat/ray.py")


def find(module: str, attribute: str) -> object:
    """The symbol, or a failure that says which release moved it."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        pytest.fail(moved(f"{module}.{attribute}"))
    for name in attribute.split("."):
        if not hasattr(found, name):
            pytest.fail(moved(f"{module}.{attribute}"))
        found = getattr(found, name)
    return found


def takes(function: object, *params: str) -> bool:
    return set(params) <= set(inspect.signature(function).parameters)


def test_internal_kv_get_reads_a_key() -> None:
    get = find(compat.KV, "_internal_kv_get")
    assert takes(get, "key"), moved(f"{compat.KV}._internal_kv_get", "'s key argument")


def test_internal_kv_put_overwrites() -> None:
    put = find(compat.KV, "_internal_kv_put")
    assert takes(put, "key", "value", "overwrite"), moved(f"{compat.KV}._internal_kv_put", "'s overwrite")


def test_internal_kv_del_deletes_by_prefix() -> None:
    delete = find(compat.KV, "_internal_kv_del")
    assert takes(delete, "key", "del_by_prefix"), moved(f"{compat.KV}._internal_kv_del", "'s del_by_prefix")


def test_train_session_gives_the_trial_stop_event_and_iteration() -> None:
    find(compat.TRAIN_SESSION, "get_session")
    session_class = find(compat.TRAIN_SESSION, "_TrainSession")
    source = inspect.getsource(session_class)
    for attribute in ("stop_event", "iteration"):
        symbol = f"{compat.TRAIN_SESSION}._TrainSession.{attribute}"
        assert re.search(rf"self\.{attribute}\b", source), moved(symbol)


def test_controller_callback_runs_after_the_controller_starts() -> None:
    base = find(compat.CONTROLLER_CALLBACK, "ControllerCallback")
    assert compat.controller_callback() is base
    assert hasattr(base, "after_controller_start"), moved(
        f"{compat.CONTROLLER_CALLBACK}.ControllerCallback.after_controller_start")


def test_tune_controller_lets_schedulers_set_a_trial_status() -> None:
    find(compat.TUNE_CONTROLLER, "TuneController._set_trial_status")
    wrapped = inspect.getsource(find(compat.TUNE_CONTROLLER, "TuneController._wrapped"))
    # Schedulers get a wrapper of the controller that warns on any method not on its list.
    assert '"_set_trial_status"' in wrapped, moved(
        f"{compat.TUNE_CONTROLLER}.TuneController._set_trial_status", " off the schedulers' list")


def test_driver_error_listener_prints_through_print_to_stdstream() -> None:
    find(compat.DRIVER, "print_to_stdstream")
    listener = inspect.getsource(find(compat.DRIVER, "listen_error_messages"))
    # Replacing the module's function reaches the listener only while it looks the name up per message.
    assert "print_to_stdstream(" in listener and '"pid": "raylet"' in listener, moved(
        f"{compat.DRIVER}.listen_error_messages", "'s use of print_to_stdstream")


def test_raylet_messages_go_to_the_log_and_the_rest_passes_on(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from ray._private import worker

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    compat.send_cluster_messages_to(logging.getLogger("test.raylet"))
    with caplog.at_level(logging.WARNING, logger="test.raylet"):
        worker.print_to_stdstream({"lines": ["8 PYTHON worker processes"], "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["hello"], "pid": 123, "is_err": False}, ignore_prefix=False)
    assert [r.getMessage() for r in caplog.records] == ["(raylet) 8 PYTHON worker processes"]
    assert [d["lines"] for d in printed] == [["hello"]]


@pytest.mark.parametrize("module, attribute", compat.SYMBOLS, ids=lambda part: part)
def test_every_wrapped_symbol_exists(module: str, attribute: str) -> None:
    find(module, attribute)


def test_a_worker_is_told_from_a_driver_by_the_global_workers_mode() -> None:
    worker = find(compat.DRIVER, "global_worker")
    assert hasattr(worker, "mode") and hasattr(ray, "WORKER_MODE"), moved(
        f"{compat.DRIVER}.global_worker", ".mode")
    assert compat.is_ray_worker() is False  # pytest is a driver (or has no Ray at all)


def test_nothing_outside_compat_reaches_into_ray_private_apis() -> None:
    private = re.compile(r"\bray\.(\w+\.)*_(private|internal)\b|internal_kv|_set_trial_status")
    offenders = [f"{path.relative_to(PLATFORM)}:{number}: {line.strip()}"
                 for path in PLATFORM.rglob("*.py") if "_compat" not in path.parts
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if private.search(line)]
    assert not offenders, "import these through raylane._compat.ray:\n" + "\n".join(offenders)


def test_importing_the_wall_imports_neither_train_nor_tune() -> None:
    # Training workers import it (raylane.train.rungs); they must not pay for Tune.
    code = ("import sys, raylane._compat.ray; "
            "print(sorted(m for m in sys.modules if m.startswith(('ray.train', 'ray.tune'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
