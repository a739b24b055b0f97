"""`raylane promote` / `rollback` on a real MLflow registry (sqlite): the gate, the recorded history,
its size bound, and refusing to undo a move raylane did not make."""

from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow import MlflowClient
from raylane import alias_lock, registry
from raylane.errors import RaylaneError


@pytest.fixture
def client(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("m")
    for accuracy in (0.90, 0.95, 0.80):
        version = client.create_model_version("m", source=str(tmp_path))
        client.set_model_version_tag("m", version.version, "test_accuracy", str(accuracy))
    return client


def champion(client) -> str:
    return str(client.get_model_version_by_alias("m", "champion").version)


def test_gate_history_and_rollback(client) -> None:
    registry.promote(client, "m", "1")
    registry.promote(client, "m", "2")
    with pytest.raises(RaylaneError, match="is below champion v2's 0.9500"):
        registry.promote(client, "m", "3")
    move = registry.promote(client, "m", "3", force=True)
    assert move.previous == "2" and champion(client) == "3"
    assert registry.rollback(client, "m").version == "2"
    assert registry.rollback(client, "m").version == "1"
    with pytest.raises(RaylaneError, match="no earlier champion"):
        registry.rollback(client, "m")
    actions = [h["action"] for h in registry.read_history(client, "m", "champion")]
    assert actions == ["promote", "promote", "promote (forced)", "rollback", "rollback"]


def test_history_stays_within_mlflow_tag_size(client) -> None:
    for i in range(120):
        registry.promote(client, "m", "1" if i % 2 else "2", force=True)
    tag = client.get_registered_model("m").tags[registry.history_tag("champion")]
    assert len(tag) <= 5000 and json.loads(tag)[-1]["version"] == "1"  # the last of the 120 moves
    moves, disagreements = registry.checked_history(client, "m", "champion")
    assert len(moves) == 120 and not disagreements  # the tag keeps the newest; the versions keep all


def test_rollback_refuses_after_a_move_outside_raylane(client) -> None:
    registry.promote(client, "m", "1")
    registry.promote(client, "m", "2")
    client.set_registered_model_alias("m", "champion", "3")  # e.g. in the MLflow UI
    with pytest.raises(RaylaneError, match="moved outside raylane"):
        registry.rollback(client, "m")
    assert champion(client) == "3"


class Version:
    """A registered version as the gate sees it: a number and its tags."""

    def __init__(self, version: str, **tags: str) -> None:
        self.version, self.tags = version, tags


@pytest.mark.parametrize(("metric", "new", "old", "allowed", "words"), [
    ("test_accuracy", 0.98, 0.95, True, "beats champion v2's 0.9500"),
    ("test_accuracy", 0.95, 0.95, False, "a tie keeps v2"),
    ("test_accuracy", 0.80, 0.95, False, "is below champion v2's 0.9500"),
    ("test_mae", 1.5, 2.0, True, "beats champion v2's 2.0000"),
    ("test_mae", 2.0, 2.0, False, "a tie keeps v2"),
    ("test_mae", 2.5, 2.0, False, "is above champion v2's 2.0000"),
])
def test_the_gate_promotes_only_a_strictly_better_score(metric, new, old, allowed, words) -> None:
    holder = Version("2", **{metric: str(old), registry.GATE_TAG: metric})
    verdict = registry.judge("champion", "3", metric, new, holder)
    assert verdict.allowed is allowed and words in verdict.reason


def test_the_gate_on_a_first_version_another_task_and_a_missing_score() -> None:
    assert registry.judge("champion", "1", "test_accuracy", 0.9, None).allowed
    other_task = Version("2", test_mae="2.0", **{registry.GATE_TAG: "test_mae"})
    verdict = registry.judge("champion", "3", "test_accuracy", 0.99, other_task)
    assert not verdict.allowed and "not comparable" in verdict.reason
    holder = Version("2", test_accuracy="0.9")
    assert not registry.judge("champion", "3", "test_accuracy", None, holder).allowed
    assert registry.judge("champion", "3", "test_accuracy", 0.5, Version("2")).allowed  # none recorded


def test_promote_by_hand_refuses_a_tie_unless_forced(client) -> None:
    version = client.create_model_version("m", source="unused")
    client.set_model_version_tag("m", version.version, "test_accuracy", "0.95")
    registry.promote(client, "m", "2")
    with pytest.raises(RaylaneError, match="a tie keeps v2"):
        registry.promote(client, "m", version.version)
    assert registry.promote(client, "m", version.version, force=True).version == str(version.version)


def test_a_move_waits_for_the_mover_holding_the_alias(client) -> None:
    registry.promote(client, "m", "1")
    done = threading.Event()
    with alias_lock.alias_lock(client, "m", "champion"):
        mover = threading.Thread(target=lambda: (registry.promote(client, "m", "2"), done.set()))
        mover.start()
        assert not done.wait(1.5) and champion(client) == "1"
    assert done.wait(30) and champion(client) == "2"
    mover.join()
    assert not [k for k in client.get_registered_model("m").tags if ".ticket." in k]


def test_a_dead_movers_ticket_is_skipped_once_its_lease_is_over(client, monkeypatch) -> None:
    monkeypatch.setattr(alias_lock, "LEASE_S", 1.0)
    dead = alias_lock.ticket_prefix("champion") + "deadbeef0000"
    client.set_registered_model_tag("m", dead, json.dumps({"number": 1, "beat": 0, "owner": "gone:1"}))
    started = time.monotonic()
    registry.promote(client, "m", "1")
    assert champion(client) == "1" and 1.0 <= time.monotonic() - started < 20
    assert dead not in client.get_registered_model("m").tags


class MovedOutside:
    """A client on which something outside raylane sets the alias right after raylane's first
    alias write, and rewrites the history without raylane's entry (an older raylane, say)."""

    def __init__(self, client, version: str) -> None:
        self.client, self.version, self.struck = client, version, False

    def set_registered_model_alias(self, name, alias, version) -> None:
        self.client.set_registered_model_alias(name, alias, version)
        if not self.struck:
            self.struck = True
            self.client.set_registered_model_alias(name, alias, self.version)
            self.client.set_registered_model_tag(name, registry.history_tag(alias), "[]")

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_move_overwritten_outside_the_lock_is_judged_again_and_its_record_kept(client) -> None:
    registry.promote(client, "m", "3")  # 0.80
    move = registry.promote(MovedOutside(client, "1"), "m", "2")  # 0.95; meanwhile v1 (0.90) is set
    assert champion(client) == "2" and move.previous == "1"
    history = registry.read_history(client, "m", "champion")
    assert [(h["previous"], h["version"]) for h in history] == [("3", "2"), ("1", "2")]
    assert len({h["id"] for h in history}) == 2
    moves, disagreements = registry.checked_history(client, "m", "champion")
    assert moves[1:] == history and not disagreements  # the entry wiped from the tag is on v3
