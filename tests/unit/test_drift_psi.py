"""The drift math without Ray: PSI, the reference's bins, and the window's incremental counts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from raylane.drift import (
    PSI_EPSILON,
    Reference,
    ReferenceBuilder,
    Window,
    bin_edges,
    psi,
    rows_to_flag,
    shares,
)
from raylane.preprocess import Column, Preprocessor


def test_psi_is_zero_for_equal_shares_and_matches_the_formula() -> None:
    expected = np.array([0.25, 0.25, 0.5])
    assert psi(expected, expected) == 0.0
    actual = np.array([0.5, 0.25, 0.25])
    by_hand = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert math.isclose(psi(actual, expected), by_hand)
    assert psi(actual, expected) == psi(expected, actual)  # symmetric


def test_an_empty_bin_counts_as_epsilon_and_both_empty_adds_nothing() -> None:
    actual, expected = np.array([1.0, 0.0, 0.0]), np.array([0.5, 0.5, 0.0])
    by_hand = 0.5 * math.log(1.0 / 0.5) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5)
    assert math.isclose(psi(actual, expected), by_hand)
    assert np.isfinite(psi(actual, expected))


def test_psi_runs_over_the_last_axis_and_shares_of_nothing_are_zero() -> None:
    counts = np.array([[10, 10, 0], [0, 0, 0]])
    assert shares(counts).tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    assert psi(shares(counts), np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])).shape == (2,)


def test_a_ten_percent_shift_of_a_normal_is_over_0_2_and_a_resample_is_not() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, 20_000)
    edges = bin_edges(train)
    expected = shares(np.bincount(np.searchsorted(edges, train), minlength=len(edges) + 1))

    def live_psi(values: np.ndarray) -> float:
        return float(psi(shares(np.bincount(np.searchsorted(edges, values), minlength=len(edges) + 1)),
                         expected))

    assert live_psi(rng.normal(0, 1, 1000)) < 0.05
    assert live_psi(rng.normal(1, 1, 1000)) > 0.2


def test_discrete_values_get_deduplicated_edges() -> None:
    pixels = np.array([0] * 80 + [3] * 10 + [16] * 10, dtype=float)
    assert bin_edges(pixels).tolist() == [0.0, 3.0]  # bins: <= 0, (0, 3], > 3


def _reference() -> Reference:
    pre = Preprocessor([Column("x", "numeric"), Column("city", "categorical", categories=["paris", "lyon"]),
                        Column("member", "boolean", fill=0.5)])
    rng = np.random.default_rng(1)
    raw = pd.DataFrame({"x": rng.normal(0, 1, 2000),
                        "city": rng.choice(["paris", "lyon", "nice"], 2000, p=[0.5, 0.4, 0.1]),
                        "member": rng.choice([True, False], 2000)})
    raw.loc[:99, "x"] = np.nan
    builder = ReferenceBuilder(pre, ["no", "yes"], "classification", rows=len(raw))
    builder.add(raw, np.where(raw["member"], "yes", "no"))
    data = builder.build()
    by_name = {f["name"]: f for f in data["features"]}
    assert math.isclose(by_name["x"]["missing_rate"], 0.05)
    assert len(by_name["x"]["edges"]) == 9 and math.isclose(sum(by_name["x"]["expected"]), 1.0)
    assert 0.08 < by_name["city"]["unseen_rate"] < 0.12  # nice is none of the model's categories
    assert data["prediction"]["labels"] == ["no", "yes"]
    return Reference.from_dict(data)


def test_the_window_counts_the_last_rows_only_and_flags_the_shifted_feature() -> None:
    reference, rng = _reference(), np.random.default_rng(2)

    def frame(n: int, shift: float = 0.0, city: str | None = None) -> pd.DataFrame:
        return pd.DataFrame({"x": rng.normal(shift, 1, n),
                             "city": [city] * n if city else rng.choice(["paris", "lyon", "nice"], n,
                                                                         p=[0.5, 0.4, 0.1]),
                             "member": rng.choice([True, False], n)})

    window = Window(reference, size=300)
    probabilities = np.tile([[0.2, 0.8]], (50, 1))
    for _ in range(10):  # 500 rows through a window of 300: only the last 300 count
        window.record([frame(50, shift=3.0)], probabilities)
    for _ in range(6):
        window.record([frame(50)], probabilities)
    summary = window.summary(threshold=0.2)
    assert summary["rows"] == 300 and summary["seen"] == 800
    assert summary["over_threshold"] == []  # the window now holds unshifted rows only
    assert summary["features"]["x"]["psi"] < 0.2
    assert summary["prediction"]["shares"] == [0.0, 1.0]  # every row predicted 'yes'
    for _ in range(6):
        window.record([frame(50, shift=2.0, city="berlin")], probabilities)
    summary = window.summary(threshold=0.2)
    assert summary["features"]["x"]["psi"] > 1.0
    assert summary["features"]["city"]["unseen_category_rate"] == 1.0
    assert summary["over_threshold"] == ["x", "city"]  # every city unseen: all in the other bin
    assert window.counts.sum() == 300 * 3  # each row counted once per feature


def test_matrix_codes_equal_frame_codes_for_numeric_rows() -> None:
    pre = Preprocessor([Column(f"p{i}", "numeric") for i in range(4)])
    rng = np.random.default_rng(3)
    raw = pd.DataFrame(rng.integers(0, 17, (500, 4)).astype(float), columns=pre.names)
    builder = ReferenceBuilder(pre, [0, 1], "classification")
    builder.add(raw, np.zeros(500, dtype=int))
    reference = Reference.from_dict(builder.build())
    rows = raw.to_numpy()[:50].copy()
    rows[0, 2] = np.nan
    by_name = reference.frame_codes(pd.DataFrame(rows, columns=pre.names))
    assert (reference.matrix_codes(rows) == by_name).all()
    assert reference.matrix_codes(rows)[0, 2] == reference.bins  # missing


def test_train_values_decoded_from_float32_fall_back_on_the_raw_values() -> None:
    """Bins from the train split's network input: float32 blurs 3 into 3.0000002 and 0 into 2e-7;
    the reference's edges are the raw values again, imputed values left out, constants kept."""
    pre = Preprocessor([Column("pixel", "numeric", fill=5.3, mean=5.3, std=4.7),
                        Column("blank", "numeric", fill=0.0, mean=0.0, std=1.0),
                        Column("member", "boolean", fill=0.25)])
    rng = np.random.default_rng(4)
    pixel = rng.integers(0, 17, 1000).astype(float)
    pixel[:100] = np.nan  # imputed: encoded as exactly 0
    member = rng.choice([1.0, 0.0], 1000, p=[0.25, 0.75])
    member[:50] = np.nan
    raw = pd.DataFrame({"pixel": pixel, "blank": np.zeros(1000), "member": member})
    builder = ReferenceBuilder(pre, [0, 1], "classification")
    builder.add_train(pre.transform_numeric(raw.to_numpy()))
    builder.add(pd.DataFrame({"pixel": pixel, "blank": 0.0, "member": member == 1.0}), np.zeros(1000, int))
    features = {f["name"]: f for f in builder.build()["features"]}
    edges = features["pixel"]["edges"]
    assert edges == [float(round(e)) for e in edges] and len(edges) >= 8
    assert math.isclose(sum(features["pixel"]["expected"]), 1.0)
    assert features["blank"]["edges"] == [0.0] and features["blank"]["expected"] == [1.0, 0.0]
    assert abs(features["member"]["expected"][1] - 0.25) < 0.05
    window = Window(Reference.from_dict(builder.build()), 900)
    window.record([raw.iloc[100:]], np.zeros((900, 2)))
    summary = window.summary(0.2)
    assert summary["features"]["pixel"]["psi"] < 0.01 and summary["features"]["member"]["psi"] < 0.01


def test_a_version_logged_before_drift_references_gets_a_clear_answer_not_an_error() -> None:
    from raylane.serving.drift_watch import DriftWatch
    from raylane.serving.model import LoadedModel, _drift_reference

    model = LoadedModel(name="digits", version="3", feature_columns=["a"], classes=[0, 1],
                        predict_proba=lambda rows: rows, **_drift_reference(None, ["a"], True))
    watch = DriftWatch("digits", 200, 0.2, metrics=None, replica="r1")
    watch.record(model, np.zeros((1, 1)), np.zeros((1, 2)))  # kept nowhere: no reference
    report = watch.report(model)
    assert report["status"] == "no_reference" and report["version"] == "3"
    assert "logged before drift references" in report["message"] and not watch.windows
    assert DriftWatch("digits", 0, 0.2, metrics=None, replica="r1").report(model)["status"] == "off"
    unreadable = _drift_reference({"format_version": 99}, ["a"], True)
    assert "cannot be read" in unreadable["drift_note"]


def _digits_window(size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """A window over a reference of 1200 sklearn digits (decile bins of 64 pixels, 10 classes),
    and the 597 other rows with their labels as live traffic."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(5).permutation(len(x))
    ref, live = order[:1200], order[1200:]
    pre = Preprocessor([Column(f"p{i}", "numeric") for i in range(x.shape[1])])
    builder = ReferenceBuilder(pre, list(range(10)), "classification")
    builder.add(pd.DataFrame(x[ref], columns=pre.names), y[ref])
    return lambda: Window(Reference.from_dict(builder.build()), size), x[live], y[live]


def test_unshifted_digits_flag_nothing_at_the_floor_and_a_shifted_pixel_is_flagged() -> None:
    """PSI noise is about (bins - 1) / rows: windows of 100 unshifted digits went over 0.2 half the
    time, so nothing is flagged before rows_to_flag (300 rows for 10 bins and 10 classes)."""
    new_window, x, y = _digits_window(1000)
    assert new_window().flags_from_rows == rows_to_flag(10, 1000) == 300
    assert rows_to_flag(10, 200) == 200 and rows_to_flag(51, 5000) == 1530
    rng = np.random.default_rng(6)
    for _ in range(8):  # several windows of unshifted rows, exactly at the floor
        pick = rng.choice(len(x), 300, replace=False)
        window = new_window()
        window.record(x[pick], np.eye(10)[y[pick]])
        summary = window.summary(threshold=0.2)
        assert summary["rows"] == 300 and summary["enough_rows"]
        over = {n: summary["features"][n]["psi"] for n in summary["over_threshold"]}
        assert over == {}, over
        assert not summary["prediction_over_threshold"], summary["prediction"]["psi"]

    shifted_pixel = int(np.argmax(x.std(axis=0)))
    rows = x[:300].copy()
    rows[:, shifted_pixel] += 8.0
    window = new_window()
    window.record(rows[:299], np.eye(10)[y[:299]])
    early = window.summary(threshold=0.2)
    assert not early["enough_rows"] and early["over_threshold"] == []  # filling: too few rows to tell
    assert early["features"][f"p{shifted_pixel}"]["psi"] > 1.0  # the PSI is reported all the same
    window.record(rows[299:], np.eye(10)[y[299:300]])
    assert window.summary(threshold=0.2)["over_threshold"] == [f"p{shifted_pixel}"]
