"""The preprocessor a model carries: what counts as a bad value, imputation, one-hot with unseen and
missing categories, and a JSON round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from raylane.preprocess import Preprocessor, coerce, column_stats, merge_stats

KINDS = {"age": "numeric", "city": "categorical", "member": "boolean"}


def fitted() -> Preprocessor:
    train = pd.DataFrame({"age": [20.0, 40.0, None, 60.0], "city": ["paris", "lyon", "paris", None],
                          "member": [1.0, 0.0, 1.0, 1.0]})
    halves = [column_stats(train.iloc[:2], KINDS), column_stats(train.iloc[2:], KINDS)]
    return Preprocessor.fit(KINDS, merge_stats(halves), max_categories=10)


def test_coerce_marks_values_not_of_the_kind_as_bad() -> None:
    typed, bad = coerce(pd.Series(["1.5", "abc", None, "inf", 3]), "numeric")
    assert bad.tolist() == [False, True, False, True, False]
    assert typed.iloc[0] == 1.5 and np.isnan(typed.iloc[2]) and typed.iloc[4] == 3.0
    typed, bad = coerce(pd.Series(["True", "no", "1", "maybe", None, False]), "boolean")
    assert bad.tolist() == [False, False, False, True, False, False]
    assert typed.iloc[:3].tolist() == [1.0, 0.0, 1.0]
    typed, bad = coerce(pd.Series([3.0, "3", " paris ", None]), "categorical")
    assert not bad.any() and typed.tolist() == ["3", "3", "paris", None]


def test_labels_ids_and_categories_read_the_same_from_any_file_type() -> None:
    from raylane.preprocess import class_value, text_or_none

    assert [class_value(v) for v in (1, 1.0, "1", " 1.0 ", np.int64(1))] == [1] * 5
    assert [class_value(v) for v in ("yes", 2.5, True)] == ["yes", 2.5, True]
    assert [text_or_none(v) for v in (12, 12.0, "12", "12.0", "007", None, np.nan)] == \
        ["12", "12", "12", "12", "007", None, None]


def test_class_values_convert_each_label_as_class_value_does() -> None:
    from raylane.preprocess import class_value, class_values

    whole = class_values(pd.Series([1.0, 0.0, 1.0, 2.0]))
    assert whole.dtype == np.int64 and whole.tolist() == [1, 0, 1, 2]
    assert class_values(pd.Series(["1", " 1.0 ", "2"])).tolist() == [1, 1, 2]
    mixed = pd.Series(["yes", 2.5, None, "yes", 3])
    assert class_values(mixed).tolist() == [class_value("yes"), 2.5, None, "yes", 3]
    assert class_values(pd.Series([], dtype=object)).tolist() == []
    assert class_values(pd.Series([str(2**70), "1"])).tolist() == [2**70, 1]  # past int64: objects


def test_the_typed_path_encodes_as_the_raw_path_does() -> None:
    pre = fitted()
    raw = pd.DataFrame({"age": [None, 40.0, "25"], "city": ["marseille", None, "lyon"],
                        "member": [None, "false", True]})
    typed = pd.DataFrame({c.name: coerce(raw[c.name], c.kind)[0] for c in pre.columns})
    assert np.array_equal(pre.transform_typed(typed), pre.transform(raw))
    assert pre.transform_typed(typed.iloc[:0]).shape == (0, 4)


def test_fit_uses_train_statistics_and_keeps_the_most_frequent_categories() -> None:
    pre = fitted()
    age, city, member = pre.columns
    assert age.fill == age.mean == pytest.approx(40.0) and age.std == pytest.approx(np.std([20, 40, 60]))
    assert city.categories == ["paris", "lyon"] and member.fill == pytest.approx(0.75)
    assert pre.width == 4 and pre.output_names() == ["age", "city=paris", "city=lyon", "member"]


def test_missing_and_unseen_values_encode_without_failing() -> None:
    pre = fitted()
    rows = pd.DataFrame({"age": [None, 40.0], "city": ["marseille", None], "member": [None, "false"]})
    x = pre.transform(rows)
    assert x.dtype == np.float32 and x.shape == (2, 4)
    assert x[0].tolist() == [0.0, 0.0, 0.0, 0.75]  # mean age, unseen city, member share
    assert x[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_a_bad_value_names_column_and_row() -> None:
    with pytest.raises(ValueError, match=r"column 'age', row 1: 'old' is not a number"):
        fitted().transform(pd.DataFrame({"age": [30, "old"], "city": ["a", "b"], "member": [True, False]}))


def test_json_round_trip_and_the_numeric_fast_path() -> None:
    pre = fitted()
    assert Preprocessor.from_dict(pre.to_dict()) == pre
    stats = {"a": {"n": 2, "sum": 2.0, "sumsq": 2.0}, "b": {"n": 2, "sum": 4.0, "sumsq": 10.0}}
    numeric = Preprocessor.fit({"a": "numeric", "b": "numeric"}, stats, 5)
    rows = np.array([[1.0, np.nan], [3.0, 4.0]])
    by_name = numeric.transform(pd.DataFrame(rows, columns=["a", "b"]))
    assert np.allclose(numeric.transform_numeric(rows), by_name)
