"""Racing champion gates: several OS processes register versions of one model and pass them
through the gate at the same moment, against one MLflow tracking server, round after round.

    result = race_champion_gate("http://127.0.0.1:5000", processes=5, rounds=3)
    assert not result.problems, result.report()

    python -m tests.concurrency http://127.0.0.1:5000 5 3     # the same from a shell; exit 1 on a problem

The tracking server is the caller's: `tests/integration/test_registry_race.py` starts one on sqlite; a
PostgreSQL-backed server (several hosts, `mlflow server --backend-store-uri postgresql+psycopg://...`)
is raced by calling this function with its URI. Each call uses a model name of its own, so it can
run against a server in use. Half the racers go through the pipeline's gate
(`raylane.registry.gate_new_version`), half through the CLI (`raylane promote NAME VERSION`).

What is checked (`RaceResult.problems`), each a way an unserialized gate fails:
- after each round the champion is the best version so far (scores are all different);
- every racer that says it moved the alias has its entry in the history, and no entry names a
  version whose racer says it did not move;
- the history is one chain: each entry's `previous` is the version the entry before it moved to,
  and the last entry is the champion (so `raylane rollback` works after the race);
- entries have distinct ids, no racer failed, and no lock ticket is left on the model.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ALIAS = "champion"
METRIC = "test_accuracy"
KINDS = ("pipeline", "cli")


@dataclass
class Racer:
    """What one racer registered and what its gate said."""

    round: int
    kind: str
    score: float
    version: str = ""
    promoted: bool = False
    error: str = ""


@dataclass
class RaceResult:
    """The racers, the champion after each round, the history at the end, and what is wrong."""

    model: str
    racers: list[Racer]
    champions: list[str]
    history: list[dict[str, Any]]
    leftover_tags: list[str]
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"model {self.model}: champions by round {self.champions}"]
        lines += [f"  round {r.round} {r.kind:8} v{r.version} score {r.score:.6f} "
                  f"{'promoted' if r.promoted else 'kept'} {r.error}" for r in self.racers]
        lines += [f"  history: {h.get('previous')} -> {h.get('version')} ({h.get('action')}, id "
                  f"{h.get('id')})" for h in self.history]
        return "\n".join(lines + [f"PROBLEM: {p}" for p in self.problems])


def race_champion_gate(tracking_uri: str, *, processes: int = 5, rounds: int = 3, seed: int | None = None,
                       kinds: tuple[str, ...] = KINDS, timeout_s: float = 300) -> RaceResult:
    """Races `processes` OS processes through the champion gate of a new model, `rounds` times, on the
    tracking server at `tracking_uri`; returns what happened with its problems listed."""
    from mlflow import MlflowClient

    if processes * rounds > 18:
        raise ValueError("the history tag keeps about 18 moves: race fewer processes x rounds")
    model = f"race-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri)
    client.create_registered_model(model)
    experiment_id = client.create_experiment(model)
    scores = _scores(random.Random(seed), processes, rounds)
    context = multiprocessing.get_context("spawn")
    start, end = context.Barrier(processes + 1), context.Barrier(processes + 1)
    results = context.Queue()
    workers = [context.Process(target=_racer, daemon=True,
                               args=(tracking_uri, model, experiment_id, kinds[i % len(kinds)],
                                     [scores[r][i] for r in range(rounds)], start, end, results))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    champions = []
    try:
        for _ in range(rounds):
            _wait_for(start, workers, timeout_s)  # every racer has registered its version
            _wait_for(end, workers, timeout_s)  # every racer's gate has answered
            holder = client.get_registered_model(model).aliases.get(ALIAS)
            champions.append(str(holder) if holder is not None else "")
        racers = [Racer(**results.get(timeout=timeout_s)) for _ in range(processes * rounds)]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    tags = client.get_registered_model(model).tags
    history = json.loads(tags.get(f"raylane.{ALIAS}.history", "[]"))
    leftover = sorted(k for k in tags if k.startswith(f"raylane.{ALIAS}.ticket."))
    result = RaceResult(model, sorted(racers, key=lambda r: (r.round, int(r.version or 0))), champions,
                        history, leftover)
    result.problems = _problems(result)
    return result


def _wait_for(barrier: Any, workers: list[Any], timeout_s: float) -> None:
    """Joins `barrier` once every racer waits at it; RuntimeError if one died or it takes too long."""
    deadline = time.monotonic() + timeout_s
    while barrier.n_waiting < len(workers):
        dead = [w.exitcode for w in workers if not w.is_alive()]
        if dead or time.monotonic() > deadline:
            barrier.abort()
            raise RuntimeError(f"racers died (exit codes {dead})" if dead else "racers did not arrive")
        time.sleep(0.05)
    barrier.wait(timeout=60)


def _scores(rng: random.Random, processes: int, rounds: int) -> list[list[float]]:
    """Distinct scores as the registry records them (6 decimals); each round's band overlaps the
    last one's, so some racers beat the champion and some do not."""
    seen: set[float] = set()
    scores = []
    for r in range(rounds):
        row = []
        while len(row) < processes:
            score = round(rng.uniform(0.50 + 0.1 * r, 0.75 + 0.1 * r), 6)
            if score not in seen:
                seen.add(score)
                row.append(score)
        scores.append(row)
    return scores


def _problems(result: RaceResult) -> list[str]:
    problems = [f"round {r.round} v{r.version or '?'} ({r.kind}) failed: {r.error}"
                for r in result.racers if r.error]
    best_score, best = float("-inf"), ""
    for round_, champion in enumerate(result.champions):
        for racer in result.racers:
            if racer.round == round_ and racer.version and racer.score > best_score:
                best_score, best = racer.score, racer.version
        if champion != best:
            problems.append(f"after round {round_} the champion is v{champion}, not the best so far v{best}")
    moved = [str(h.get("version")) for h in result.history]
    for racer in result.racers:
        if racer.promoted and racer.version not in moved:
            problems.append(f"v{racer.version} moved the alias (round {racer.round}), not in the history")
        if not racer.promoted and racer.version in moved:
            problems.append(f"v{racer.version} is in the history but its gate said it did not move")
    for before, entry in zip(result.history, result.history[1:], strict=False):
        if str(entry.get("previous")) != str(before.get("version")):
            problems.append(f"history entry {entry.get('id')} moved v{entry.get('previous')} -> "
                            f"v{entry.get('version')}, but the entry before it made v{before.get('version')} "
                            "the champion: the two moves overlapped")
    if result.history and result.champions and str(result.history[-1].get("version")) != result.champions[-1]:
        problems.append(f"the history ends on v{result.history[-1].get('version')}, the champion is "
                        f"v{result.champions[-1]}")
    ids = [h["id"] for h in result.history if h.get("id")]
    if len(ids) != len(set(ids)):
        problems.append(f"history entries share ids: {ids}")
    if result.leftover_tags:
        problems.append(f"lock tickets left on the model: {result.leftover_tags}")
    return problems


def _racer(tracking_uri: str, model: str, experiment_id: str, kind: str, scores: list[float],
           start: Any, end: Any, results: Any) -> None:
    """One racer process: each round, registers a version scoring `scores[round]`, waits for the
    others, then passes it through the gate at the same moment as they do."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import contextlib
    import io

    from mlflow import MlflowClient
    from raylane import cli, registry
    from raylane.config import ModelConfig

    client = MlflowClient(tracking_uri)
    for round_, score in enumerate(scores):
        racer = Racer(round_, kind, score)
        try:
            run = client.create_run(experiment_id)
            version = client.create_model_version(model, f"runs:/{run.info.run_id}/model",
                                                  run_id=run.info.run_id)
            racer.version = str(version.version)
            client.set_model_version_tag(model, racer.version, METRIC, registry.recorded(score))
            client.set_model_version_tag(model, racer.version, registry.GATE_TAG, METRIC)
        except Exception as err:
            racer.error = f"registering: {err!r}"
        start.wait()
        try:
            if racer.version and kind == "pipeline":
                racer.promoted = registry.gate_new_version(client, ModelConfig(name=model), racer.version,
                                                           METRIC, score).promoted
            elif racer.version:
                said = io.StringIO()
                with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                    code = cli.main(["promote", model, racer.version, "--tracking-uri", tracking_uri])
                racer.promoted = code == 0
                if code not in (0, 1) or (code == 1 and "PromotionRefused" not in said.getvalue()):
                    racer.error = f"raylane promote exited {code}: {said.getvalue().strip()}"
        except Exception as err:
            racer.error = f"gate: {err!r}"
        results.put(racer.__dict__)
        end.wait()


if __name__ == "__main__":  # python -m tests.concurrency http://mlflow:5000 [processes] [rounds]
    import sys

    race = race_champion_gate(sys.argv[1], processes=int(sys.argv[2]) if len(sys.argv) > 2 else 5,
                              rounds=int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    print(race.report())
    sys.exit(1 if race.problems else 0)
