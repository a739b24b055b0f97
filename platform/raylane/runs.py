"""A pipeline run's identity in storage: its name, config, MLflow run and progress, for --resume.

    <storage_path>/<run_name>/run.json     this record, rewritten after each stage
    <storage_path>/<run_name>/data/        the prepared splits (complete when _RAYLANE_COMPLETE exists)
    <storage_path>/<run_name>/tune/        Tune's experiment state (Tuner.restore reads it)
    <storage_path>/<run_name>/trials/      one Ray Train run per trial, with its checkpoints
    <storage_path>/<run_name>/logs/        Ray's and the other tools' output (local storage)

A run name is never reused by a new run: starting one whose directory holds anything but its logs
is refused, and `--resume NAME` continues it with the config it was started with. The record is
created once (an exclusive create; a conditional put on S3), so of two starts of one name only one
runs. A name is one folder under storage_path (`check_name`); what a record says is checked
against its folder here and against MLflow by `raylane.tracking.check_resumed_run` before a resume.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from dataclasses import dataclass

import yaml

from raylane import storage
from raylane.config import PipelineConfig, _apply_override, config_from_dict
from raylane.errors import ConfigError

RECORD_FILE = "run.json"
LOGS_DIR = "logs"
# Sections that say where and how to serve or connect, not what is trained: a resumed run may change them.
RESUMABLE_CHANGES = ("cluster", "serve", "storage_path")
# A run's name is one folder under storage_path: nothing that walks out of it ('..', '/', an
# absolute path or URI) or hides in it (a leading dot).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "a run name is letters, digits, '-', '_' and '.', not starting with '.', at most 128 characters"


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


def check_name(run_name: str, flag: str = "--run-name") -> str:
    """Returns `run_name` if it is a run name (NAME_RULE); ConfigError naming `flag` otherwise."""
    if not isinstance(run_name, str) or not NAME_PATTERN.fullmatch(run_name):
        raise ConfigError(f"{flag} {run_name!r}: {NAME_RULE}")
    return run_name


def check_new(storage_path: str, run_name: str) -> None:
    """ConfigError if a run of this name already exists (runs are never overwritten). Its `logs/`
    alone is not a run: the output of this run's start goes there before the run is recorded."""
    check_name(run_name)
    names = storage.list_names(storage.join(storage_path, run_name))
    if [n for n in names if n != LOGS_DIR and not n.startswith(f"{RECORD_FILE}.")]:  # .tmp: a cut write
        raise ConfigError(f"--run-name {run_name!r} already exists under {storage_path}: continue it with "
                          f"--resume {run_name}, or choose another name (runs are never overwritten)")


def exists(storage_path: str, run_name: str) -> bool:
    """Whether `storage_path` holds the record of a run named `run_name` (one --resume continues)."""
    check_name(run_name)
    return storage.read_text(storage.join(storage_path, run_name, RECORD_FILE)) is not None


def start(storage_path: str, run_name: str, cfg: PipelineConfig) -> RunRecord:
    """Returns the record of a new run, saved; ConfigError if the name is taken, also when another
    start of the same name passed `check_new` at the same time (only one of them creates it)."""
    check_new(storage_path, run_name)
    record = RunRecord(run_name=run_name, config=cfg.model_dump(mode="json"))
    if not storage.create_text(storage.join(storage_path, run_name, RECORD_FILE), _json(record)):
        raise ConfigError(f"--run-name {run_name!r} was taken by a concurrent start under {storage_path} "
                          "just now: choose another name, or continue that run with "
                          f"--resume {run_name} once it has stopped")
    return record


def resume(storage_path: str, run_name: str, cfg: PipelineConfig | None,
           overrides: list[str] = (), from_file: bool = False) -> RunRecord:
    """Returns the record of an existing run, counting this resume.

    `cfg` is the config the user gave with --config/--set, if any: with --config it must describe
    the same run; with --set alone only the overridden fields are compared. ConfigError names the
    fields that differ. The `serve` and `cluster` sections may change. ConfigError, too, when the
    record names another run than its folder's (its name decides where later writes go)."""
    check_name(run_name, "--resume")
    text = storage.read_text(storage.join(storage_path, run_name, RECORD_FILE))
    if text is None:
        raise ConfigError(f"--resume {run_name!r}: no run of that name under {storage_path} "
                          f"(known runs: {', '.join(known_runs(storage_path)) or 'none'}; a run kept "
                          "elsewhere needs --set storage_path=...)")
    try:
        record = RunRecord(**json.loads(text))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--resume {run_name!r}: its {RECORD_FILE} is unreadable: {err}") from err
    if record.run_name != run_name:
        raise ConfigError(f"--resume {run_name!r}: its {RECORD_FILE} does not match its folder (run_name: "
                          f"the record says {record.run_name!r}, its folder is {run_name!r}); refusing "
                          "a record edited or copied from another run: restore it, or start a new run")
    if cfg is not None:
        given = cfg.model_dump(mode="json")
        # The recorded config as this raylane reads it: a run recorded by an earlier release
        # (fields added since, fields moved) compares by meaning, not by its stored spelling.
        changed = _differences(record.pipeline_config().model_dump(mode="json"), given)
        if not from_file:  # --set without --config: only what was set is the user's statement
            paths = tuple(item.split("=", 1)[0].strip() for item in overrides)
            changed = [c for c in changed if c.split(":")[0].startswith(paths)]
        if changed:
            raise ConfigError(
                f"--resume {run_name!r}: the config differs from the one the run started with "
                f"({'; '.join(changed[:5])}); resume without --config/--set to use the run's own, "
                "or start a new run")
        if from_file:
            config = {**record.config, **{k: given[k] for k in RESUMABLE_CHANGES}}
        else:
            config = copy.deepcopy(record.config)
            for item in overrides:
                _apply_override(config, item)
        record = dataclasses.replace(record, config=config_from_dict(config).model_dump(mode="json"))
    record = dataclasses.replace(record, resumes=record.resumes + 1)
    save(storage_path, record)
    return record


def save(storage_path: str, record: RunRecord) -> None:
    storage.write_text(storage.join(storage_path, check_name(record.run_name), RECORD_FILE), _json(record))


def _json(record: RunRecord) -> str:
    return json.dumps(dataclasses.asdict(record), indent=2)


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
