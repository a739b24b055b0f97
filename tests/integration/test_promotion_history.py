"""The promotion history is rebuilt from the versions' own move records, and `raylane rollback`
(the real CLI, a process of its own) refuses when the model's history tag disagrees with them: a
forged entry, a rewritten `by`, a reordered list. `by` is the MLflow user where the server has
auth (MLflow's basic-auth app, started here), whatever RAYLANE_USER claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from raylane import registry

from tests.mlflow_server import mlflow_server

HISTORY = registry.history_tag("champion")


def raylane(*args: str, uri: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylane", *args, "--tracking-uri", uri],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **env})


def add_versions(client: MlflowClient, name: str, source: str, scores: tuple[float, ...],
                 run_id: str | None = None) -> None:
    client.create_registered_model(name)
    for score in scores:
        version = client.create_model_version(name, source=source, run_id=run_id)
        client.set_model_version_tag(name, version.version, "test_accuracy", f"{score:.6f}")


@pytest.fixture
def store(tmp_path):
    """A sqlite registry: model `m` v1 (0.90), v2 (0.95), v3 (0.80); v1 then v2 promoted by the CLI,
    as alice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    add_versions(client, "m", str(tmp_path), (0.90, 0.95, 0.80))
    for version in ("1", "2"):
        done = raylane("promote", "m", version, uri=uri, RAYLANE_USER="alice")
        assert done.returncode == 0, done.stderr
    return uri, client


def tag_history(client: MlflowClient) -> list[dict]:
    return json.loads(client.get_registered_model("m").tags[HISTORY])


def forge(client: MlflowClient, history: list[dict]) -> None:
    client.set_registered_model_tag("m", HISTORY, json.dumps(history))


def champion(client: MlflowClient) -> str:
    return str(client.get_registered_model("m").aliases["champion"])


def test_each_move_is_recorded_on_its_version_with_who_made_it(store) -> None:
    uri, client = store
    history = tag_history(client)
    assert [(h["previous"], h["version"]) for h in history] == [(None, "1"), ("1", "2")]
    for entry in history:
        records = [json.loads(v) for k, v in client.get_model_version("m", entry["version"]).tags.items()
                   if k == registry.move_record_tag("champion", entry["id"])]
        assert records and records[0]["by"] == "alice" and records[0]["by_verified"] is False
        assert {k: v for k, v in records[0].items() if k != "alias"} == entry
    assert registry.rebuild_history(client, "m", "champion").moves == history


def test_an_honest_history_rolls_back_over_the_cli(store) -> None:
    uri, client = store
    rolled = raylane("rollback", "m", uri=uri)
    assert rolled.returncode == 0, rolled.stderr
    assert "m@champion -> v1 (was v2)" in rolled.stdout and champion(client) == "1"
    assert raylane("rollback", "m", uri=uri).returncode == 1  # nothing earlier than v1
    assert champion(client) == "1"


def never_champion(history: list[dict]) -> list[dict]:
    """An entry slipped in between: v3 (never champion) made champion, so `rollback` from v2 would
    land on v3."""
    forged = {**history[0], "id": "f0f0f0f0f0f0", "previous": "1", "version": "3", "seq": 2}
    return [history[0], forged, {**history[1], "previous": "3", "seq": 3}]


def rewritten_version(history: list[dict]) -> list[dict]:
    return [{**history[0], "version": "3"}, {**history[1], "previous": "3"}]


def rewritten_by(history: list[dict]) -> list[dict]:
    return [{**history[0], "by": "mallory"}, history[1]]


def reordered(history: list[dict]) -> list[dict]:
    return [history[1], history[0]]


@pytest.mark.parametrize(("forgery", "words"), [
    (never_champion, ["f0f0f0f0f0f0", "no version records"]),
    (rewritten_version, ["version: the tag says '3', v1's record says '1'"]),
    (rewritten_by, ["by: the tag says 'mallory', v1's record says 'alice'"]),
    (reordered, ["order"]),
])
def test_rollback_refuses_a_history_tag_the_versions_records_disagree_with(store, forgery, words) -> None:
    uri, client = store
    forge(client, forgery(tag_history(client)))
    refused = raylane("rollback", "m", uri=uri)
    assert refused.returncode == 1, refused.stdout
    assert "disagrees with the versions' own move records" in refused.stderr, refused.stderr
    for word in words:
        assert word in refused.stderr, refused.stderr
    assert "--repair-history" in refused.stderr and "Traceback" not in refused.stderr
    assert champion(client) == "2"  # not moved


def test_repair_history_rolls_back_by_the_versions_records_and_rewrites_the_tag(store) -> None:
    uri, client = store
    honest = tag_history(client)
    forge(client, never_champion(honest))
    rolled = raylane("rollback", "m", "--repair-history", uri=uri)
    assert rolled.returncode == 0, rolled.stderr
    assert "m@champion -> v1 (was v2)" in rolled.stdout and champion(client) == "1"
    history = tag_history(client)
    assert history[:2] == honest and history[2]["action"] == "rollback"
    assert registry.rebuild_history(client, "m", "champion").moves == history
    assert raylane("history", "m", uri=uri).returncode == 0


def test_history_shows_the_versions_records_and_the_disagreement(store) -> None:
    uri, client = store
    shown = raylane("history", "m", uri=uri)
    assert shown.returncode == 0, shown.stderr
    assert "v1 -> v2" in shown.stdout and "alice (unverified)" in shown.stdout
    forge(client, rewritten_by(tag_history(client)))
    shown = raylane("history", "m", uri=uri)
    assert shown.returncode == 1 and "by: the tag says 'mallory'" in shown.stderr
    assert "alice (unverified)" in shown.stdout  # what the versions record, not the tag


# --- a tracking server with MLflow's basic-auth app -----------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` with its own user database; users admin and alice."""
    from mlflow.server.auth.client import AuthServiceClient

    directory = tmp_path_factory.mktemp("auth")
    config = directory / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{directory / 'basic_auth.db'}\n"
                      "admin_username = admin\nadmin_password = admin-password-1234\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    with mlflow_server(directory, auth_config=config) as uri:
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="admin-password-1234")
        try:
            AuthServiceClient(uri).create_user("alice", "alice-password-1234")
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        yield uri


ALICE = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "alice-password-1234"}


def test_by_is_the_mlflow_user_when_the_server_has_auth_whatever_raylane_user_claims(
        auth_server, monkeypatch, tmp_path: Path) -> None:
    for key, value in ALICE.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(auth_server)
    experiment = client.create_experiment("history-auth")
    run = client.create_run(experiment)
    add_versions(client, "a", f"runs:/{run.info.run_id}/model", (0.90, 0.95), run_id=run.info.run_id)
    for version in ("1", "2"):
        done = raylane("promote", "a", version, uri=auth_server, RAYLANE_USER="mallory", **ALICE)
        assert done.returncode == 0, done.stderr
    history = json.loads(client.get_registered_model("a").tags[HISTORY])
    who = [(h["by"], h["by_verified"], h.get("claimed_by")) for h in history]
    assert who == [("alice", True, "mallory")] * 2
    shown = raylane("history", "a", uri=auth_server, **ALICE)
    assert "alice (claimed: mallory)" in shown.stdout, shown.stdout + shown.stderr
    rolled = raylane("rollback", "a", uri=auth_server, **ALICE)
    assert rolled.returncode == 0, rolled.stderr
    assert str(client.get_registered_model("a").aliases["champion"]) == "1"


def test_a_history_from_before_move_records_still_rolls_back(tmp_path) -> None:
    """A model promoted by an older raylane: its tag's entries have no `seq` and no version records
    them. They are kept (shown as old, unverified), and the next move and rollback work on them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    add_versions(client, "m", str(tmp_path), (0.90, 0.95, 0.97))
    old = [{"id": "aaa", "version": "1", "previous": None, "action": "promote", "reason": "first",
            "at": "2026-11-01T00:00:00Z", "by": "carol"},
           {"id": "bbb", "version": "2", "previous": "1", "action": "promote", "reason": "better",
            "at": "2026-11-02T00:00:00Z", "by": "carol"}]
    forge(client, old)
    client.set_registered_model_alias("m", "champion", "2")
    shown = raylane("history", "m", uri=uri)
    assert shown.returncode == 0, shown.stderr
    assert " old " in shown.stdout and "carol (unverified)" in shown.stdout
    rolled = raylane("rollback", "m", uri=uri)
    assert rolled.returncode == 0, rolled.stderr
    assert champion(client) == "1"
    promoted = raylane("promote", "m", "3", uri=uri)
    assert promoted.returncode == 0, promoted.stderr
    assert raylane("rollback", "m", uri=uri).returncode == 0 and champion(client) == "1"
