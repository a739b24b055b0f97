"""Ray's unpublished APIs that raylane uses, each behind one small named function.

Tested with Ray 2.60.0. `tests/unit/test_compat_ray.py` checks that every symbol below is still
where this module reaches for it, and names the one a newer release moved. Ray Train and Tune are
imported inside the functions: Tune's trial scheduler and the training workers
(`raylane.train.rungs`) import this module, and a worker must not pay for Tune.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

RAY_TESTED = "2.60.0"

# Every private symbol used here, as (module, attribute): what the compatibility tests check.
KV = "ray.experimental.internal_kv"
TRAIN_SESSION = "ray.train._internal.session"
CONTROLLER_CALLBACK = "ray.train.v2._internal.execution.callback"
TUNE_CONTROLLER = "ray.tune.execution.tune_controller"
DRIVER = "ray._private.worker"
PY_MODULES = "ray._private.runtime_env.py_modules"
SYMBOLS = (
    (PY_MODULES, "upload_py_modules_if_needed"),
    (KV, "_internal_kv_get"),
    (KV, "_internal_kv_put"),
    (KV, "_internal_kv_del"),
    (TRAIN_SESSION, "get_session"),
    (CONTROLLER_CALLBACK, "ControllerCallback"),
    (TUNE_CONTROLLER, "TuneController._set_trial_status"),
    (DRIVER, "print_to_stdstream"),
    (DRIVER, "global_worker"),
)


# -- Ray's key-value store ------------------------------------------------------------------------
# The GCS's key-value store, which every process of the job reaches without an actor. Ray has no
# public one (its own Serve, Tune and runtime_env keep state there through these same functions);
# the public alternative, a named actor, costs a process and a queued actor call per read, and the
# workers waiting at a rung read every 50 ms.

def upload_py_modules(paths: list[str]) -> list[str]:
    """Uploads local packages or module files to the cluster and returns their `gcs://` URIs:
    what `ray.init(runtime_env={"py_modules": ...})` does, for a Ray that is already up. An
    actor's runtime env accepts URIs only (a local path is refused there). Ray keeps such an
    upload 10 minutes unless a job references it; already uploaded content is not sent again."""
    import os
    import tempfile

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    env = upload_py_modules_if_needed({"py_modules": list(paths)}, include_gitignore=True,
                                      scratch_dir=tempfile.gettempdir(),
                                      logger=logging.getLogger(__name__))
    return [os.fspath(uri) for uri in env["py_modules"]]


def kv_get(key: str) -> bytes | None:
    """Returns the value stored under `key`, None if there is none.

    Wraps `ray.experimental.internal_kv._internal_kv_get` (no public key-value store in Ray)."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key)


def kv_put(key: str, value: bytes) -> None:
    """Stores `value` under `key`, replacing what was there.

    Wraps `ray.experimental.internal_kv._internal_kv_put` (no public key-value store in Ray)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True)


def kv_delete(key: str, *, by_prefix: bool = False) -> None:
    """Deletes `key`, or with `by_prefix` every key that starts with it.

    Wraps `ray.experimental.internal_kv._internal_kv_del` (no public key-value store in Ray)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, del_by_prefix=by_prefix)


# -- Tune's function trainable --------------------------------------------------------------------

def _trial_session() -> Any:
    from ray.train._internal.session import get_session

    session = get_session()
    if session is None:
        raise RuntimeError("raylane._compat.ray: called outside a Tune trial's function trainable")
    return session


def trial_stop_event() -> threading.Event:
    """Returns the event Tune sets when it stops or pauses the calling trial.

    Wraps `ray.train._internal.session.get_session().stop_event`: Tune's public context
    (`ray.tune.get_context()`) gives a trial its id, directory and resources, but no way to learn
    that Tune stopped it; a trial that runs a Train fit needs that to end the fit at once."""
    return _trial_session().stop_event


def trial_iteration() -> int:
    """Returns how many results the calling trial has reported to Tune in this process.

    Wraps `ray.train._internal.session.get_session().iteration`; no public API counts a
    trial's reports (`tune.get_context()` does not)."""
    return _trial_session().iteration


# -- Ray Train's controller -----------------------------------------------------------------------

def controller_callback() -> type:
    """Returns the base class of a Train callback whose hooks run in the Train controller's process.

    Wraps `ray.train.v2._internal.execution.callback.ControllerCallback` for its
    `after_controller_start` hook. The public `ray.train.UserCallback` also runs in the controller
    but only after a report or an error: nothing public runs there when the fit starts, and a trial
    needs the controller's handle from then on to end its fit early."""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return ControllerCallback


# -- Tune's controller, as a scheduler sees it ----------------------------------------------------

def mark_trial_paused(tune_controller: Any, trial: Any) -> None:
    """Marks a trial that has no running actor (a restored search's PENDING trial) as PAUSED.

    Wraps `TuneController._set_trial_status`, which Tune lets schedulers call (it is on the list
    of the controller wrapper they are handed). The public `pause_trial` pauses a running trial
    through its actor, saving a checkpoint; a trial restored PENDING has no actor to ask."""
    from ray.tune.experiment import Trial

    tune_controller._set_trial_status(trial, Trial.PAUSED)


# -- the driver's terminal ------------------------------------------------------------------------

def send_cluster_messages_to(log: logging.Logger) -> None:
    """Logs the messages Ray's raylet and GCS push to this driver to `log`, not to stdout.

    Those are the `(raylet) ...` lines: worker-pool warnings ("N PYTHON worker processes have
    been started"), worker deaths, memory pressure. `ray.init(log_to_driver=False)` keeps the
    workers' output off the terminal but not these, and no setting does. Replaces
    `ray._private.worker.print_to_stdstream`, which the driver's error-listener thread
    (`listen_error_messages`) looks up for each message, with one that diverts the messages it
    marks as the raylet's; anything else (the workers' output under `log_to_driver`) passes on."""
    from ray._private import worker

    original = worker.print_to_stdstream
    if getattr(original, "raylane_log", None) is not None:
        original.raylane_log = log
        return

    def to_log(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            original(data, ignore_prefix)
            return
        for line in data.get("lines", ()):
            to_log.raylane_log.warning("(raylet) %s", line)

    to_log.raylane_log = log
    worker.print_to_stdstream = to_log


# -- which kind of process this is ----------------------------------------------------------------

def is_ray_worker() -> bool:
    """True in a process Ray started to run tasks and actors (Serve replicas, Train workers, Ray
    Data actors); False in a driver (a script or notebook that called ray.init) and in a process
    without Ray. Ray publishes no way to tell a driver from a worker; its own code reads the
    global worker's mode, as this does."""
    import sys

    ray = sys.modules.get("ray")  # a process that never imported Ray is no Ray worker
    if ray is None or not ray.is_initialized():
        return False
    from ray._private import worker

    return worker.global_worker.mode == ray.WORKER_MODE
