"""Holding a worker at a rung: under `tune.scheduler: asha_promotion` a trial that reports a rung
epoch waits there until the scheduler decides. Promoted at once, it trains on; paused, its fit
ends there, with the rung epoch's checkpoint as its last, and no epoch past the rung is trained
unseen. A promotion later starts a fit that continues from that checkpoint.

The scheduler (raylane.asha) answers in Ray's key-value store, under the key the trial's loop
config names; every rank reads the same answer, so DDP's collectives stay in step.
"""

from __future__ import annotations

import time
from typing import Any

GO, PAUSE = b"go", b"pause"


def go_key(prefix: str, epochs_done: int) -> str:
    return f"{prefix}{epochs_done}"


def go_on(config: dict[str, Any], epoch: int) -> bool:
    """After `epoch` (0-based): False when the scheduler paused the trial at this rung."""
    done = epoch + 1
    if not config.get("hold_key") or done not in config.get("hold_at", ()):
        return True
    from ray.experimental import internal_kv

    key, waited = go_key(config["hold_key"], done), time.monotonic()
    while (answer := internal_kv._internal_kv_get(key)) is None:
        if time.monotonic() - waited > 60:
            print(f"[raylane] still waiting for the search's decision at the rung after epoch {epoch}",
                  flush=True)
            waited = time.monotonic()
        time.sleep(0.05)
    return answer != PAUSE
