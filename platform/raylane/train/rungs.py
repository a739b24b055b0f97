"""Holding a worker at a rung: under `tune.scheduler: asha_promotion` a trial that reports a rung
epoch waits there until the scheduler decides. Promoted at once, it trains on; paused, its fit
ends there, with the rung epoch's checkpoint as its last, and no epoch past the rung is trained
unseen. A promotion later starts a fit that continues from that checkpoint.

The scheduler (raylane.asha) answers in Ray's key-value store, under the key the trial's loop
config names; every rank reads the same answer, so DDP's collectives stay in step.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)
GO, PAUSE = b"go", b"pause"


def go_key(prefix: str, epochs_done: int) -> str:
    return f"{prefix}{epochs_done}"


def go_on(hold_key: str, hold_at: tuple[int, ...], epoch: int) -> bool:
    """After `epoch` (0-based): False when the scheduler paused the trial at this rung. `hold_at`:
    the epochs done after which to wait; `hold_key`: where the answer appears (none: never wait)."""
    done = epoch + 1
    if not hold_key or done not in hold_at:
        return True
    from raylane._compat.ray import kv_get

    key, waited = go_key(hold_key, done), time.monotonic()
    while (answer := kv_get(key)) is None:
        if time.monotonic() - waited > 60:
            log.warning("still waiting for the search's decision at the rung after epoch %d", epoch)
            waited = time.monotonic()
        time.sleep(0.05)
    return answer != PAUSE
