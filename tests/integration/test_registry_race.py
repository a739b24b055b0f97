"""Pipelines and `raylane promote` racing for the champion alias: separate OS processes, one real
`mlflow server`, three rounds. The alias ends on the best version and no move is lost from the
history (`tests/concurrency.py` does the racing; a PostgreSQL-backed server is raced the same way)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from raylane import cli

from tests.concurrency import race_champion_gate
from tests.mlflow_server import mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("race")) as uri:
        yield uri


def test_racing_gates_leave_the_best_champion_and_every_move_in_the_history(server, capsys) -> None:
    # Scores of seed 18: each round's best beats the round before's, and the rest straddle it.
    result = race_champion_gate(server, processes=5, rounds=3, seed=18)
    assert not result.problems, result.report()
    # The history is one chain ending on the champion, so the race can be rolled back (by the CLI,
    # through the same lock).
    previous = str(result.history[-1]["previous"])
    assert cli.main(["rollback", result.model, "--tracking-uri", server]) == 0
    assert f"{result.model}@champion -> v{previous}" in capsys.readouterr().out
    assert MlflowClient(server).get_registered_model(result.model).aliases["champion"] == previous
