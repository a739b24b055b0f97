"""Drift: the reference a logged model carries, and the window of live traffic compared with it.

    builder = ReferenceBuilder(preprocessor, classes, task, rows=n)    # at model logging
    builder.add_train(encoded_rows)                                   # a sample of the train split
    builder.add(raw_frame, predicted_labels)                          # per batch of the test split
    reference = builder.build()                                       # -> drift_reference.json
    window = Window(Reference.from_dict(reference), size=1000)        # in each Serve replica
    window.record(rows_or_frames, probabilities)                      # per model call: a list append
    window.summary(threshold=0.2)                                     # PSI, missing, unseen rates

The reference (`drift_reference.json`, next to preprocess.json in the logged model) holds, per feature:
    numeric      bin edges: the deciles of the reference values, deduplicated (a discrete feature,
                 such as a pixel, gets fewer bins), bins closed on the right, open-ended below the
                 first edge and above the last; the share of the values in each bin
    boolean      the shares of false and true
    categorical  the share of each of the model's categories (the train's most frequent
                 `data.max_categories`) and, as one more bin, of every other value (what the model
                 treats as unseen: never in train, or cut by max_categories)
    every kind   the missing rate (missing values are not binned: the PSI compares present values)
and the predicted classes' shares on the test split (regression: bins of the predicted value).
Image columns are skipped. Numeric and boolean bins and shares come from a sample of the train
split, decoded from its network input (`ReferenceBuilder.add_train`). The train split is stored
encoded only, so missing values are already imputed there and categories beyond the cut lumped
with missing ones: the missing rates and the categorical shares come from the test split's raw
values, as clients send them (drawn from the same rows; the logged model is scored on them in the
same pass).

Population stability index: PSI = sum over bins (a - e) * ln(a / e), a the live share, e the
reference share, both floored at PSI_EPSILON (an empty bin). Under 0.1: no change; 0.1-0.2: some;
over 0.2: a shift worth an alarm (the usual reading, `serve.drift_threshold`).

The window costs a request almost nothing: `record` keeps a reference to the batch's rows and
probabilities; `fold` (before a summary, and on the replica's metrics timer) bins them all at once,
vectorised, into a ring of the last `size` rows' bin codes with their counts kept incrementally.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raylane.preprocess import Preprocessor, coerce

REFERENCE_FILE = "drift_reference.json"
FORMAT_VERSION = 1
REFERENCE_ROWS = 20_000
"""At most about this many test rows make the feature reference (a random sample of a large split)."""
QUANTILES = np.linspace(0.1, 0.9, 9)
"""A numeric feature's bin edges: its deciles (fewer where values repeat)."""
PSI_EPSILON = 1e-4
"""The share an empty bin counts as, so that ln(a / e) stays finite."""
MIN_ROWS = 300
"""The fewest rows a window flags anything from (unless the window is smaller): see `rows_to_flag`."""
ROWS_PER_BIN = 30
"""Rows per bin of the widest histogram (a feature's or the prediction's) before anything is flagged."""


def rows_to_flag(bins: int, size: int) -> int:
    """The rows a window of `size` must hold before any feature or the prediction is flagged:
    min(size, max(MIN_ROWS, ROWS_PER_BIN * bins)), `bins` the widest histogram compared.

    An unshifted sample of n rows over k bins has a PSI of about (k - 1) / n from noise alone (its
    expectation; single samples spread around it, and a window watches many features): with
    decile bins of the digits pixels, windows of 100 unshifted rows went over 0.2 in 30 of 50
    samples (median max PSI 0.21), windows of 200 rows in none. 300 rows and 30 per bin keep that
    noise under 0.03-0.05, far below the usual 0.2 threshold. A window smaller than this flags
    once it is full (serve.drift_window's own choice, checked to be at least 20 rows)."""
    return min(size, max(MIN_ROWS, ROWS_PER_BIN * bins))


def psi(actual: np.ndarray, expected: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """Returns the population stability index over the last axis: `actual` and `expected` are
    shares per bin (each row summing to 1); a bin empty on both sides adds nothing."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    return ((a - e) * np.log(a / e)).sum(axis=-1)


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts per bin (last axis) as shares; all zeros where there is nothing counted."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def bin_edges(values: np.ndarray) -> np.ndarray:
    """The deciles of `values` (present ones), each once: values that occur (not interpolated), so
    the bins of a discrete feature hold its values."""
    if not values.size:
        return np.zeros(0)
    return np.unique(np.quantile(values, QUANTILES, method="inverted_cdf"))


# --- the reference, at model logging ------------------------------------------------------------------
class ReferenceBuilder:
    """Gathers the test split batch by batch: a bounded random sample of the raw features, the
    counts of every predicted class (a sample of the predicted values for regression)."""

    def __init__(self, preprocessor: Preprocessor, classes: list[Any], task: str, rows: int | None = None,
                 seed: int = 0) -> None:
        self.preprocessor, self.classes, self.task = preprocessor, list(classes), task
        self.keep = min(1.0, REFERENCE_ROWS / rows) if rows else 1.0
        self.rng = np.random.default_rng(seed)
        self.frames: list[pd.DataFrame] = []
        self.values: list[np.ndarray] = []
        self.class_counts = np.zeros(len(self.classes), dtype=np.int64)
        self.kept = self.train_kept = 0
        self.train: list[np.ndarray] = []

    def add(self, raw: pd.DataFrame, predicted: np.ndarray) -> None:
        """Adds a batch of raw feature columns and what the model predicted for them (labels or values)."""
        sampled = self.rng.random(len(raw)) < self.keep
        if self.kept < REFERENCE_ROWS * 1.2:  # the bound holds even when the row count was wrong
            columns = [c.name for c in self.preprocessor.columns if c.kind != "image"]
            self.frames.append(raw.loc[sampled, columns].reset_index(drop=True))
            self.kept += int(sampled.sum())
        if self.task == "regression":
            self.values.append(np.asarray(predicted, dtype=np.float64)[sampled])
        else:
            index = pd.Index(self.classes).get_indexer(pd.Index(np.asarray(predicted)))
            self.class_counts += np.bincount(index[index >= 0], minlength=len(self.classes))

    def add_train(self, encoded: np.ndarray) -> None:
        """Adds rows of the train split's network input (a bounded sample): the numeric and boolean
        features' bins and shares are taken from them (see `_train_values`)."""
        if self.train_kept < REFERENCE_ROWS:
            self.train.append(np.asarray(encoded)[:REFERENCE_ROWS - self.train_kept])
            self.train_kept += len(self.train[-1])

    def _train_values(self, column: Any) -> np.ndarray | None:
        """A numeric or boolean column's present raw values in the train sample, decoded from the
        network input (None without one, or for another kind). An imputed value encodes as exactly
        0 (numeric: the train mean, standardized) or as the train share of true (boolean): those
        are left out, but where every value is 0 the column is constant and they all stay. Decoded
        values are rounded to 6 significant digits of the column's largest, which gives back what
        float32 blurred (3 and 0, not 3.0000002 and 2e-7), so edges fall on the values clients send."""
        if not self.train or column.kind not in ("numeric", "boolean"):
            return None
        at = 0
        for c in self.preprocessor.columns:
            if c is column:
                break
            at += c.width
        encoded = np.concatenate(self.train)[:, at].astype(np.float64)
        if column.kind == "boolean":
            return encoded[(encoded == 0.0) | (encoded == 1.0)]
        present = encoded[encoded != 0.0] if (encoded != 0.0).any() else encoded
        values = present * column.std + column.mean
        largest = float(np.abs(values).max()) if values.size else 0.0
        return np.round(values, 6 - int(np.ceil(np.log10(max(largest, 1e-12)))))

    def build(self) -> dict[str, Any]:
        """Returns the reference as plain JSON (the module docstring says what it holds)."""
        sample = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame()
        features, skipped = [], []
        for column in self.preprocessor.columns:
            if column.kind == "image":
                skipped.append({"name": column.name, "kind": "image",
                                "why": "an image column: no per-feature drift (the prediction's is kept)"})
                continue
            raw = sample[column.name] if len(sample) else pd.Series([], dtype=object)
            features.append(_feature_reference(column, raw, self._train_values(column)))
        if self.task == "regression":
            values = np.concatenate(self.values) if self.values else np.zeros(0)
            edges = bin_edges(values[np.isfinite(values)])
            codes = np.searchsorted(edges, values, side="left")
            prediction = {"kind": "values", "edges": edges.tolist(), "rows": int(values.size),
                          "expected": shares(np.bincount(codes, minlength=len(edges) + 1)).tolist()}
        else:
            prediction = {"kind": "classes", "labels": self.classes, "rows": int(self.class_counts.sum()),
                          "expected": shares(self.class_counts).tolist()}
        return {"format_version": FORMAT_VERSION, "source": "test split (raw values, as clients send them)",
                "rows": len(sample), "features": features, "skipped": skipped, "prediction": prediction}


def _feature_reference(column: Any, values: pd.Series, train: np.ndarray | None = None) -> dict[str, Any]:
    """One feature's reference from its raw test values; a numeric or boolean feature's bins and
    shares from its `train` values where given (the missing rate always from the raw values)."""
    typed, _ = coerce(values, column.kind)
    rows = max(len(typed), 1)
    if column.kind == "categorical":
        index = {category: i for i, category in enumerate(column.categories)}
        present = [v for v in typed if v is not None]
        codes = np.array([index.get(v, len(index)) for v in present], dtype=np.int64)
        counts = np.bincount(codes, minlength=len(index) + 1)
        return {"name": column.name, "kind": "categorical", "categories": list(column.categories),
                "expected": shares(counts).tolist(), "missing_rate": (len(typed) - len(present)) / rows,
                "unseen_rate": float(counts[-1]) / rows}
    numbers = typed.to_numpy(dtype=np.float64, na_value=np.nan)
    present = numbers[~np.isnan(numbers)] if train is None else train
    missing = float(np.isnan(numbers).sum()) / rows
    if column.kind == "boolean":
        counts = np.bincount((present != 0).astype(np.int64), minlength=2)
        return {"name": column.name, "kind": "boolean", "expected": shares(counts).tolist(),
                "true_rate": float(shares(counts)[1]), "missing_rate": missing}
    edges = bin_edges(present)
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return {"name": column.name, "kind": "numeric", "edges": edges.tolist(),
            "expected": shares(counts).tolist(), "missing_rate": missing}


# --- the reference, in a replica ----------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A drift reference ready to bin live rows: one code per feature and row, MISSING (= `bins`)
    for a missing value."""

    names: list[str]
    kinds: list[str]
    expected: np.ndarray
    """[features, bins] reference shares, zero-padded to the widest feature."""
    missing_rate: np.ndarray
    unseen_rate: np.ndarray
    """The reference share of values outside a categorical feature's categories (0 for the others)."""
    edges: np.ndarray
    """[features, deciles] numeric edges padded with +inf (a row of +inf for a feature not numeric)."""
    categories: dict[str, dict[str, int]]
    prediction: dict[str, Any]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    source: str = ""

    @property
    def bins(self) -> int:
        return self.expected.shape[1]

    @property
    def prediction_bins(self) -> int:
        return len(self.prediction["expected"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        """ValueError for a reference of a format this raylane does not read."""
        if int(data.get("format_version", 0)) != FORMAT_VERSION:
            raise ValueError(f"drift reference format {data.get('format_version')!r}; this raylane reads "
                             f"{FORMAT_VERSION}")
        features = data["features"]
        width = max([len(f["expected"]) for f in features] + [1])
        deciles = max([len(f.get("edges", [])) for f in features] + [1])
        expected = np.zeros((len(features), width))
        edges = np.full((len(features), deciles), np.inf)
        for i, f in enumerate(features):
            expected[i, :len(f["expected"])] = f["expected"]
            edges[i, :len(f.get("edges", []))] = f.get("edges", [])
        return cls(names=[f["name"] for f in features], kinds=[f["kind"] for f in features],
                   expected=expected, edges=edges,
                   missing_rate=np.array([f["missing_rate"] for f in features], dtype=np.float64),
                   unseen_rate=np.array([f.get("unseen_rate", 0.0) for f in features], dtype=np.float64),
                   categories={f["name"]: {c: j for j, c in enumerate(f["categories"])}
                               for f in features if f["kind"] == "categorical"},
                   prediction=data["prediction"], skipped=list(data.get("skipped", [])),
                   rows=int(data.get("rows", 0)), source=str(data.get("source", "")))

    def matrix_codes(self, rows: np.ndarray) -> np.ndarray:
        """Bin codes [n, features] of an all-numeric model's raw rows (NaN: missing), in one
        vectorised comparison with every feature's edges."""
        rows = np.asarray(rows, dtype=np.float64)
        codes = (rows[:, :, None] > self.edges[None, :, :]).sum(axis=2)
        return np.where(np.isnan(rows), self.bins, codes)

    def frame_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Bin codes [n, features] of raw columns by name (a typed model's rows)."""
        codes = np.empty((len(frame), len(self.names)), dtype=np.int64)
        for i, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)):
            typed, _ = coerce(frame[name], kind)
            if kind == "categorical":
                index, unseen = self.categories[name], len(self.categories[name])
                codes[:, i] = [self.bins if v is None else index.get(v, unseen) for v in typed]
                continue
            numbers = typed.to_numpy(dtype=np.float64, na_value=np.nan)
            binned = (numbers != 0) if kind == "boolean" else \
                np.searchsorted(self.edges[i][np.isfinite(self.edges[i])], numbers, side="left")
            codes[:, i] = np.where(np.isnan(numbers), self.bins, binned)
        return codes

    def prediction_codes(self, outputs: np.ndarray) -> np.ndarray:
        """The predicted class's index per row (regression: the predicted value's bin)."""
        if self.prediction["kind"] == "values":
            return np.searchsorted(np.asarray(self.prediction["edges"]), outputs[:, 0], side="left")
        return outputs.argmax(axis=1)


# --- the window -----------------------------------------------------------------------------------------
class Window:
    """The last `size` rows a replica answered for one model version, as bin codes with their counts."""

    def __init__(self, reference: Reference, size: int) -> None:
        self.reference, self.size = reference, size
        features = len(reference.names)
        self.codes = np.zeros((size, features), dtype=np.int64)
        self.predicted = np.zeros(size, dtype=np.int64)
        self.counts = np.zeros((features, reference.bins + 1), dtype=np.int64)  # the last bin: missing
        self.predicted_counts = np.zeros(reference.prediction_bins, dtype=np.int64)
        self._offsets = np.arange(features) * (reference.bins + 1)
        self.filled = self.at = self.seen = 0
        self._pending: deque[tuple[Any, np.ndarray]] = deque()
        self._pending_rows = 0
        self._lock, self._fold_lock = threading.Lock(), threading.Lock()

    # --- on the request path: keep references, nothing else ---------------------------------------
    def record(self, inputs: Any, outputs: np.ndarray) -> None:
        """Keeps a model call's rows (an all-numeric matrix, a list of frames, or None for an image
        model) and its outputs, to be binned at the next `fold`; older ones beyond `size` rows are
        dropped unbinned (they would leave the window anyway)."""
        with self._lock:
            self._pending.append((inputs, outputs))
            self._pending_rows += len(outputs)
            self.seen += len(outputs)
            while self._pending_rows - len(self._pending[0][1]) >= self.size:
                self._pending_rows -= len(self._pending.popleft()[1])

    # --- off the request path -------------------------------------------------------------------------
    def fold(self) -> None:
        """Bins what was recorded since the last fold into the window."""
        with self._fold_lock:
            with self._lock:
                pending, self._pending, self._pending_rows = self._pending, deque(), 0
            if not pending:
                return
            outputs = np.concatenate([o for _, o in pending])[-self.size:]
            self._add(self._input_codes([i for i, _ in pending], len(outputs)),
                      self.reference.prediction_codes(outputs))

    def _input_codes(self, inputs: list[Any], rows: int) -> np.ndarray:
        """The bin codes of the last `rows` rows of `inputs`: all at once where they are all
        matrices (an all-numeric model) or all frames, else one entry at a time."""
        if not self.reference.names or any(i is None for i in inputs):  # an image model: no features
            return np.zeros((rows, len(self.reference.names)), dtype=np.int64)
        if all(isinstance(i, np.ndarray) for i in inputs):
            return self.reference.matrix_codes(np.concatenate(inputs)[-rows:])
        if all(isinstance(i, list) for i in inputs):
            return self.reference.frame_codes(pd.concat([f for frames in inputs for f in frames],
                                                        ignore_index=True).iloc[-rows:])
        return np.concatenate([self._input_codes([i], len(i) if isinstance(i, np.ndarray) else
                                                 sum(len(f) for f in i)) for i in inputs])[-rows:]

    def _add(self, codes: np.ndarray, predicted: np.ndarray) -> None:
        n, width = len(predicted), self.counts.shape[1]
        slots = (self.at + np.arange(n)) % self.size
        leaving = slots[slots < self.filled]
        if self.reference.names:
            self.counts -= np.bincount((self.codes[leaving] + self._offsets).ravel(),
                                       minlength=self.counts.size).reshape(self.counts.shape)
            self.counts += np.bincount((codes + self._offsets).ravel(),
                                       minlength=self.counts.size).reshape(-1, width)
        self.predicted_counts -= np.bincount(self.predicted[leaving], minlength=self.predicted_counts.size)
        self.predicted_counts += np.bincount(predicted, minlength=self.predicted_counts.size)
        self.codes[slots], self.predicted[slots] = codes, predicted
        self.at, self.filled = (self.at + n) % self.size, min(self.size, self.filled + n)

    @property
    def flags_from_rows(self) -> int:
        """The rows this window must hold before it flags anything (`rows_to_flag`)."""
        return rows_to_flag(max(self.reference.bins, self.reference.prediction_bins), self.size)

    def summary(self, threshold: float) -> dict[str, Any]:
        """Returns the window against the reference: per feature PSI, missing and unseen rates;
        the prediction's shares and PSI; the features over `threshold`. Nothing is flagged (and
        `enough_rows` is false: the route's status "filling") until the window holds
        `flags_from_rows` rows (`rows_to_flag` of the widest histogram, features' or prediction's)."""
        self.fold()
        with self._fold_lock:
            counts, predicted, rows = self.counts.copy(), self.predicted_counts.copy(), self.filled
        ref, bins = self.reference, self.reference.bins
        present = counts[:, :bins]
        feature_psi = psi(shares(present), ref.expected)
        missing = counts[:, bins] / max(rows, 1)
        features: dict[str, dict[str, Any]] = {}
        for i, (name, kind) in enumerate(zip(ref.names, ref.kinds, strict=True)):
            entry = {"kind": kind, "psi": round(float(feature_psi[i]), 6) if present[i].sum() else None,
                     "missing_rate": round(float(missing[i]), 6),
                     "reference_missing_rate": round(float(ref.missing_rate[i]), 6)}
            if kind == "categorical":
                unseen = len(ref.categories[name])
                entry["unseen_category_rate"] = round(float(counts[i, unseen]) / max(rows, 1), 6)
                entry["reference_unseen_category_rate"] = round(float(ref.unseen_rate[i]), 6)
            features[name] = entry
        floor = self.flags_from_rows
        enough = rows >= floor
        over = [name for name, f in features.items()
                if enough and f["psi"] is not None and f["psi"] > threshold]
        live = shares(predicted)
        prediction = {"psi": round(float(psi(live, ref.prediction["expected"])), 6) if rows else None,
                      "bins": _prediction_bins(ref.prediction), "shares": [round(float(s), 6) for s in live],
                      "reference_shares": [round(float(s), 6) for s in ref.prediction["expected"]]}
        return {"rows": rows, "seen": self.seen, "enough_rows": enough, "flags_from_rows": floor,
                "features": features,
                "prediction": prediction, "over_threshold": over,
                "prediction_over_threshold": bool(enough and rows and prediction["psi"] > threshold)}


def _prediction_bins(prediction: dict[str, Any]) -> list[Any]:
    if prediction["kind"] == "classes":
        return list(prediction["labels"])
    edges = prediction["edges"]
    if not edges:
        return ["all"]
    return [f"<= {edges[0]:g}"] + [f"({a:g}, {b:g}]" for a, b in zip(edges, edges[1:], strict=False)] + \
        [f"> {edges[-1]:g}"]
