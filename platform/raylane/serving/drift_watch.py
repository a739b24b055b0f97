"""A replica's drift watch: one window of live rows per version it answers with, the
`raylane_drift_*` gauges set on a timer, and the answer of `GET /v2/models/{name}/drift`.

Each replica watches the rows it answered itself (Serve spreads requests over the replicas, so each
window is a sample of the whole traffic); the route names the replica that answered, and the
gauges carry Serve's `replica` tag. The model call only records its rows (`raylane.drift.Window.record`);
binning happens here, every EXPORT_INTERVAL_S while traffic comes, and when the route is asked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from raylane.drift import Window
from raylane.serving.metrics import ServingMetrics
from raylane.serving.model import LoadedModel

log = logging.getLogger("ray.serve")

EXPORT_INTERVAL_S = 5.0
"""How often a replica bins what it recorded and sets the drift gauges (only after new rows)."""
SCOPE = ("this replica's own window: each replica watches the rows it answered (the gauges "
         "raylane_drift_* carry Serve's replica tag for the others)")


class DriftWatch:
    """The windows of one replica, by version; off when `size` is 0 (serve.drift_window)."""

    def __init__(self, model_name: str, size: int, threshold: float, metrics: ServingMetrics,
                 replica: str) -> None:
        self.model_name, self.size, self.threshold = model_name, size, threshold
        self.metrics, self.replica = metrics, replica
        self.windows: dict[str, Window] = {}
        self._exported: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, model: LoadedModel, inputs: Any, outputs: np.ndarray) -> None:
        """Keeps a model call's rows and outputs for `model`'s window (nothing when drift is off or
        the version has no reference). `inputs`: raw rows of an all-numeric model, a list of raw
        frames (a typed model), or None (an image model: its predictions only)."""
        if model.drift is None or not self.size:
            return
        window = self.windows.get(model.version)
        if window is None:
            with self._lock:
                window = self.windows.setdefault(model.version, Window(model.drift, self.size))
        window.record(inputs, outputs)

    def report(self, model: LoadedModel) -> dict[str, Any]:
        """The drift route's answer for `model` (see the README's drift section for the fields)."""
        head: dict[str, Any] = {"model": model.name, "version": model.version, "replica": self.replica,
                                "scope": SCOPE, "threshold": self.threshold}
        if not self.size:
            return {**head, "status": "off", "message": "drift watching is off (serve.drift_window=0)"}
        if model.drift is None:
            return {**head, "status": "no_reference",
                    "message": f"version {model.version} of {model.name!r} has no drift reference: "
                               f"{model.drift_note}; a model logged by this raylane carries one "
                               "(drift_reference.json), retrain or re-log it to watch its drift"}
        window = self.windows.get(model.version)
        if window is None:  # no request yet: an empty window
            window = Window(model.drift, self.size)
        summary = window.summary(self.threshold)
        status = ("filling" if not summary["enough_rows"] else
                  "drifted" if summary["over_threshold"] or summary["prediction_over_threshold"] else "ok")
        reference = model.drift
        return {**head, "status": status,
                "window": {"size": self.size, "rows": summary["rows"], "seen": summary["seen"],
                           "flags_from_rows": summary["flags_from_rows"]},
                "over_threshold": summary["over_threshold"],
                "prediction": {**summary["prediction"],
                               "over_threshold": summary["prediction_over_threshold"]},
                "features": summary["features"],
                "skipped": reference.skipped,
                "reference": {"source": reference.source, "rows": reference.rows}}

    def export(self, held: dict[str, str]) -> None:
        """Sets the gauges of each window that took rows since the last export; forgets the windows
        of versions this replica no longer holds."""
        for version in [v for v in self.windows if v not in held]:
            with self._lock:
                self.windows.pop(version, None)
            self._exported.pop(version, None)
        for version, window in list(self.windows.items()):
            if self._exported.get(version) == window.seen:
                continue
            self._exported[version] = window.seen
            self.metrics.drift(version, window.summary(self.threshold))

    def start(self, held: Callable[[], dict[str, str]]) -> threading.Thread | None:
        """Starts the daemon thread that calls `export` every EXPORT_INTERVAL_S (none when off)."""
        if not self.size:
            return None

        def loop() -> None:
            while True:
                time.sleep(EXPORT_INTERVAL_S)
                try:
                    self.export(held())
                except Exception as err:  # the gauges must never take serving down
                    log.warning("raylane: drift export failed: %s", err)

        thread = threading.Thread(target=loop, name="raylane-drift-export", daemon=True)
        thread.start()
        return thread
