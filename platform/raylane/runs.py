"""A pipeline run's identity in storage: its name, config, MLflow run and progress, for --resume.

    <storage_path>/<run_name>/run.json     this record, rewritten after each stage
    <storage_path>/<run_name>/data/        the prepared splits (complete when _RAYLANE_COMPLETE exists)
    <storage_path>/<run_name>/tune/        Tune's experiment state (Tuner.restore reads it)
    <storage_path>/<run_name>/trials/      one Ray Train run per trial, with its checkpoints

A run name is never reused by a new run: starting one whose directory exists is refused, and
`--resume NAME` continues it with the config it was started with.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import yaml

from raylane import storage
from raylane.config import PipelineConfig, config_from_dict
from raylane.errors import ConfigError

RECORD_FILE = "run.json"
# Sections that say where and how to serve or connect, not what is trained: a resumed run may change them.
RESUMABLE_CHANGES = ("cluster", "serve")


@dataclass(frozen=True)
class RunRecord:
    """What a later `--resume` needs to continue a pipeline run where it stopped."""

    run_name: str
    config: dict
    mlflow_run_id: str | None = None
    experiment_id: str | None = None
    registered_version: str | None = None
    promotion: str | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    resumes: int = 0

    def pipeline_config(self) -> PipelineConfig:
        return config_from_dict(self.config)


def new_run_name(cfg: PipelineConfig) -> str:
    return f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def start(storage_path: str, run_name: str, cfg: PipelineConfig) -> RunRecord:
    """Returns the record of a new run; ConfigError if the name is taken (runs are never overwritten)."""
    if storage.run_directory_exists(storage_path, run_name):
        raise ConfigError(f"--run-name {run_name!r} already exists under {storage_path}: continue it with "
                          f"--resume {run_name}, or choose another name (runs are never overwritten)")
    record = RunRecord(run_name=run_name, config=cfg.model_dump(mode="json"))
    save(storage_path, record)
    return record


def resume(storage_path: str, run_name: str, cfg: PipelineConfig | None) -> RunRecord:
    """Returns the record of an existing run, counting this resume. `cfg` (from --config/--set, if
    given) must describe the same run; ConfigError naming the fields that differ otherwise."""
    text = storage.read_text(storage.join(storage_path, run_name, RECORD_FILE))
    if text is None:
        raise ConfigError(f"--resume {run_name!r}: no run of that name under {storage_path} "
                          f"(known runs: {', '.join(known_runs(storage_path)) or 'none'})")
    record = RunRecord(**json.loads(text))
    if cfg is not None:
        changed = _differences(record.config, cfg.model_dump(mode="json"))
        if changed:
            raise ConfigError(
                f"--resume {run_name!r}: the config differs from the one the run started with "
                f"({'; '.join(changed[:5])}); resume without --config/--set to use the run's own, "
                "or start a new run")
        record = dataclasses.replace(record, config={
            **record.config, **{k: cfg.model_dump(mode="json")[k] for k in RESUMABLE_CHANGES}})
    record = dataclasses.replace(record, resumes=record.resumes + 1)
    save(storage_path, record)
    return record


def save(storage_path: str, record: RunRecord) -> None:
    storage.write_text(storage.join(storage_path, record.run_name, RECORD_FILE),
                       json.dumps(dataclasses.asdict(record), indent=2))


def update(storage_path: str, record: RunRecord, **changes: object) -> RunRecord:
    """Returns the record with `changes`, saved."""
    record = dataclasses.replace(record, **changes)
    save(storage_path, record)
    return record


def known_runs(storage_path: str) -> list[str]:
    """Returns the names of the runs under `storage_path` that can be resumed."""
    import posixpath

    import pyarrow.fs as pafs

    fs, root = storage.split(storage_path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except (FileNotFoundError, OSError):
        return []
    names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
    return sorted(n for n in names
                  if fs.get_file_info(posixpath.join(root, n, RECORD_FILE)).type == pafs.FileType.File)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Returns 'dotted.path: old -> new' for each field that differs, outside RESUMABLE_CHANGES."""
    found = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if not prefix and key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, path + ".")
        elif a != b:
            found.append(f"{path}: {yaml.safe_dump(a).strip().removesuffix('...').strip()} -> "
                         f"{yaml.safe_dump(b).strip().removesuffix('...').strip()}")
    return found
