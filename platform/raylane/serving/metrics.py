"""Prometheus metrics of the endpoint, exported by Ray's metrics agent beside Serve's own.

Every Ray node serves them at http://<node>:<metrics-export-port>/metrics (`ray start
--metrics-export-port=8080`; a local Ray started by raylane prints its address). Ray prefixes the
names with `ray_`; Serve adds the deployment, replica and application tags.

    ray_raylane_requests_total{model, version, protocol, status}   counter
    ray_raylane_request_seconds_bucket{model, protocol, le}        histogram of the replica-side time
    ray_raylane_batch_rows_bucket{model, version, le}              rows per model call (batching)
    ray_raylane_model_load_seconds{model, version}                 gauge, time to load + warm up

Drift (raylane.drift), each replica over its own window of live rows, set every few seconds
(serving.drift_watch.EXPORT_INTERVAL_S) while traffic comes, not per request:

    ray_raylane_drift_psi{model, version, feature}                 population stability index
    ray_raylane_drift_missing_rate{model, version, feature}        share of missing values
    ray_raylane_drift_unseen_category_rate{model, version, feature}  categorical features only
    ray_raylane_drift_prediction_psi{model, version}               predicted classes (or values)
    ray_raylane_drift_features_over_threshold{model, version}      features over serve.drift_threshold
    ray_raylane_drift_window_rows{model, version}                  rows in the window (its fill)
"""

from __future__ import annotations

LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def protocol_of(path: str) -> str:
    """Returns the protocol label of a request path."""
    if path.startswith("/v1/"):
        return "v1"
    if path.startswith("/v2/"):
        return "v2" if path.endswith("/infer") else "v2-meta"
    if path == "/invocations":
        return "mlflow"
    return "other"


class ServingMetrics:
    """The replica's metric objects; created once per replica process."""

    def __init__(self, model: str) -> None:
        from ray.serve import metrics

        self.model = model
        self.requests = metrics.Counter(
            "raylane_requests", description="Requests answered, by model version, protocol and status.",
            tag_keys=("model", "version", "protocol", "status"))
        self.latency = metrics.Histogram(
            "raylane_request_seconds", description="Replica-side request time in seconds.",
            boundaries=LATENCY_BUCKETS, tag_keys=("model", "protocol"))
        self.batch_rows = metrics.Histogram(
            "raylane_batch_rows", description="Rows per model call after dynamic batching.",
            boundaries=BATCH_BUCKETS, tag_keys=("model", "version"))
        self.load_seconds = metrics.Gauge(
            "raylane_model_load_seconds", description="Seconds to load and warm up a model version.",
            tag_keys=("model", "version"))

        self.drift_psi = metrics.Gauge(
            "raylane_drift_psi", description="Population stability index of a feature over the replica's "
            "drift window against the model's reference.", tag_keys=("model", "version", "feature"))
        self.drift_missing = metrics.Gauge(
            "raylane_drift_missing_rate", description="Share of missing values of a feature in the drift "
            "window.", tag_keys=("model", "version", "feature"))
        self.drift_unseen = metrics.Gauge(
            "raylane_drift_unseen_category_rate", description="Share of the drift window's rows whose "
            "categorical value is none of the model's categories.", tag_keys=("model", "version", "feature"))
        self.drift_prediction_psi = metrics.Gauge(
            "raylane_drift_prediction_psi", description="Population stability index of the predicted classes "
            "(regression: values) against the test split's.", tag_keys=("model", "version"))
        self.drift_over = metrics.Gauge(
            "raylane_drift_features_over_threshold", description="Features whose PSI is over "
            "serve.drift_threshold.", tag_keys=("model", "version"))
        self.drift_rows = metrics.Gauge(
            "raylane_drift_window_rows", description="Rows in the replica's drift window.",
            tag_keys=("model", "version"))

    def request(self, version: str, protocol: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"model": self.model, "version": version, "protocol": protocol,
                                "status": str(status)})
        self.latency.observe(seconds, tags={"model": self.model, "protocol": protocol})

    def batch(self, version: str, rows: int) -> None:
        self.batch_rows.observe(rows, tags={"model": self.model, "version": version})

    def loaded(self, version: str, seconds: float) -> None:
        self.load_seconds.set(seconds, tags={"model": self.model, "version": version})

    def drift(self, version: str, summary: dict) -> None:
        """Sets the drift gauges from a window's summary (raylane.drift.Window.summary)."""
        tags = {"model": self.model, "version": version}
        for feature, entry in summary["features"].items():
            labelled = {**tags, "feature": feature}
            if entry["psi"] is not None:
                self.drift_psi.set(entry["psi"], tags=labelled)
            self.drift_missing.set(entry["missing_rate"], tags=labelled)
            if "unseen_category_rate" in entry:
                self.drift_unseen.set(entry["unseen_category_rate"], tags=labelled)
        if summary["prediction"]["psi"] is not None:
            self.drift_prediction_psi.set(summary["prediction"]["psi"], tags=tags)
        self.drift_over.set(len(summary["over_threshold"]), tags=tags)
        self.drift_rows.set(summary["rows"], tags=tags)
