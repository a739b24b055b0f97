"""The promotion rule of raylane's ASHA (`tune.scheduler: asha_promotion`), as pure logic."""

from __future__ import annotations

import math

from raylane.asha import PromotionASHA, rungs


def test_rungs_are_grace_times_powers_of_the_factor_then_the_budget() -> None:
    assert rungs(1, 3, 9) == [1, 3, 9]
    assert rungs(3, 2, 10) == [3, 6, 10]
    assert rungs(1, 3, 27) == [1, 3, 9, 27]
    assert rungs(5, 2, 3) == [3]  # a grace period past the budget: only the budget


def test_the_top_third_is_promotable_and_a_diverged_trial_never_is() -> None:
    asha = PromotionASHA(metric="val_loss", mode="min", max_t=9, grace_period=1, reduction_factor=3,
                         max_concurrent=2, num_samples=6)
    losses = {"a": 0.3, "b": float("nan"), "c": 0.9}
    asha.recorded[0] = {t: -v if math.isfinite(v) else -math.inf for t, v in losses.items()}
    assert asha._promotable(0) == {"a"}  # floor(3 / 3) = 1: the lowest loss
    asha.recorded[0].update({"d": -0.2, "e": -0.5, "f": -2.0})
    asha.promoted[0].add("a")
    assert asha._promotable(0) == {"d"}  # floor(6 / 3) = 2: d and a, and a went on already
