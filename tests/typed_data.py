"""A customer table with the usual trouble: numeric, categorical and boolean columns, missing
values, an id column, and optionally broken rows appended to the last file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = {"age": "numeric", "city": "categorical", "member": "boolean", "income": "numeric"}
# (line as written, what is wrong with it): appended after the clean rows of the last file
BAD_LINES = [
    ("9001,abc,paris,True,10.0,yes", "column 'age': 'abc' is not a number"),
    ("9002,41.0,lyon,maybe,11.0,no", "column 'member': 'maybe' is not true/false"),
    ("9003,42.0,lyon", "has 3 fields, the header has 6"),
    ("9004,43.0,lyon,False,12.0,", "column 'label': the label is missing"),
]


def customers(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Rows whose label depends on every feature kind, with 5% of ages and 3% of cities missing."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, n).round(1)
    city = rng.choice(["paris", "lyon", "nice"], n)
    member = rng.choice([True, False], n)
    income = rng.normal(50, 15, n).round(2)
    score = (age - 40) / 10 + 1.5 * (city == "paris") - 1.0 * (city == "nice") + 1.0 * member
    frame = pd.DataFrame({"id": np.arange(n), "age": age, "city": city, "member": member,
                          "income": income, "label": np.where(score > 0.5, "yes", "no")})
    frame.loc[rng.choice(n, n // 20, replace=False), "age"] = np.nan
    frame.loc[rng.choice(n, n // 33, replace=False), "city"] = None
    return frame


def write_csv(directory: Path, frame: pd.DataFrame, files: int = 2, bad: bool = False) -> list[Path]:
    """Writes `frame` as `files` CSV files; with `bad`, appends BAD_LINES to the last one."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        path = directory / f"part-{i}.csv"
        frame.iloc[part].to_csv(path, index=False)
        paths.append(path)
    if bad:
        with paths[-1].open("a") as f:
            f.writelines(line + "\n" for line, _ in BAD_LINES)
    return paths


def spending(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """The same customers with a number to predict instead of a class: `spend`, a function of
    every feature kind plus noise (no `label` column)."""
    frame = customers(n, seed).drop(columns=["label"])
    rng = np.random.default_rng(seed + 1)
    age = frame["age"].fillna(40.0)
    frame["spend"] = (20 + 3 * (age - 40) / 10 + 10 * (frame["city"] == "paris")
                      - 5 * (frame["city"] == "nice") + 6 * frame["member"] + 0.1 * frame["income"]
                      + rng.normal(0, 1, n)).round(2)
    return frame
