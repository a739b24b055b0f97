"""Moving the champion alias: the pipeline's gate, `raylane promote` and `raylane rollback`.

Every move is recorded twice in the registry: on the version (`raylane.promotion`, the decision
and its reason) and on the registered model (`raylane.<alias>.history`, the ordered list of moves),
which is what `rollback` replays. A running endpoint that follows the alias switches by itself.

    raylane promote digits 7            # gated: refused if v7's test metric is worse than the champion's
                                        # (test_accuracy lower, or for regression test_mae higher)
    raylane promote digits 7 --force    # recorded as forced
    raylane rollback digits             # back to the champion before the current one
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from raylane.errors import ModelNotFoundError, RaylaneError

TEST_METRIC = "test_accuracy"
GATE_TAG = "raylane.gate_metric"  # which test metric a version is judged by
LOWER_IS_BETTER = {"test_mae"}


def gate_metric(version: Any) -> str:
    return version.tags.get(GATE_TAG, TEST_METRIC)


def worse(metric: str, new: float, old: float) -> bool:
    """True if `new` is worse than `old` on `metric` (higher accuracy, lower error is better)."""
    return new > old if metric in LOWER_IS_BETTER else new < old
HISTORY_LIMIT = 50
HISTORY_CHARS = 4_500


@dataclass(frozen=True)
class Move:
    """One move of an alias, as recorded."""

    version: str
    previous: str | None
    reason: str


def history_tag(alias: str) -> str:
    return f"raylane.{alias}.history"


def read_history(client: Any, name: str, alias: str) -> list[dict[str, Any]]:
    tags = client.get_registered_model(name).tags
    try:
        return list(json.loads(tags.get(history_tag(alias), "[]")))
    except ValueError:
        return []


def move_alias(client: Any, name: str, alias: str, version: str, action: str, reason: str) -> Move:
    """Points the alias at `version` and records the move on the version and the model."""
    previous = alias_version(client, name, alias)
    entry = {"version": str(version), "previous": previous, "action": action, "reason": reason,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": _who()}
    history = (read_history(client, name, alias) + [entry])[-HISTORY_LIMIT:]
    while len(json.dumps(history)) > HISTORY_CHARS and len(history) > 1:
        history.pop(0)  # MLflow stores a model tag in 5,000 characters; the oldest moves go first
    # The record first: if it cannot be written, the alias has not moved either.
    client.set_registered_model_tag(name, history_tag(alias), json.dumps(history))
    client.set_registered_model_alias(name, alias, version)
    return Move(str(version), previous, reason)


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if is_missing(err):
            return None
        raise


def metric_of(version: Any, metric: str | None = None) -> float | None:
    try:
        return float(version.tags[metric or gate_metric(version)])
    except (KeyError, ValueError):
        return None


def promote(client: Any, name: str, version: str, alias: str = "champion", force: bool = False) -> Move:
    """Moves the alias to `version` if its test metric is not below the current one's (or `force`)."""
    candidate = _get_version(client, name, version)
    current = alias_version(client, name, alias)
    if current == str(version):
        return Move(str(version), current, f"v{version} already is {alias}")
    metric = gate_metric(candidate)
    new = metric_of(candidate, metric)
    old = metric_of(client.get_model_version(name, current), metric) if current else None
    lower = "above" if metric in LOWER_IS_BETTER else "below"
    if current is None:
        reason = f"no {alias} yet"
    elif new is None:
        reason = f"v{version} has no {metric} tag to compare with {alias} v{current}"
    elif old is None or not worse(metric, new, old):
        reason = f"{metric} {new:.4f} is not {lower} {alias} v{current}'s " + \
            ("(none recorded)" if old is None else f"{old:.4f}")
    else:
        reason = f"{metric} {new:.4f} is {lower} {alias} v{current}'s {old:.4f}"
    refused = current is not None and (new is None or (old is not None and worse(metric, new, old)))
    if refused and not force:
        raise RaylaneError(f"not promoting {name} v{version} to {alias}: {reason} "
                           "(pass --force to promote it anyway; the override is recorded)")
    action = "promote (forced)" if refused else "promote"
    move = move_alias(client, name, alias, str(version), action, reason)
    client.set_model_version_tag(name, str(version), "raylane.promotion", f"promoted by hand: {reason}"
                                 + (" (forced)" if refused else ""))
    return move


def rollback(client: Any, name: str, alias: str = "champion") -> Move:
    """Moves the alias back to the version it pointed at before the current one."""
    stack: list[str] = []
    for entry in read_history(client, name, alias):
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(str(entry["version"]))
    current = alias_version(client, name, alias)
    if current is None:
        raise ModelNotFoundError(f"model {name!r} has no {alias!r} alias to roll back")
    if stack and stack[-1] != current:
        raise RaylaneError(f"{name}@{alias} is v{current}, but the last recorded move made it v{stack[-1]}: "
                           "it was moved outside raylane, so there is no recorded move to undo; "
                           f"use `raylane promote {name} <version>`")
    if stack:
        stack.pop()
    if not stack:
        raise RaylaneError(f"no earlier {alias} of {name!r} is recorded to roll back to "
                           f"(history tag {history_tag(alias)!r}); use `raylane promote {name} <version>`")
    target = stack[-1]
    _get_version(client, name, target)
    reason = f"rolled back from v{current}"
    move = move_alias(client, name, alias, target, "rollback", reason)
    client.set_model_version_tag(name, target, "raylane.promotion", f"restored as {alias}: {reason}")
    return move


def _get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if is_missing(err):
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}") from err
        raise


def is_missing(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(err).lower()


def _who() -> str:
    try:
        return os.environ.get("RAYLANE_USER") or getpass.getuser()
    except Exception:  # no user database entry in some containers
        return "unknown"


# --- the `raylane promote` / `raylane rollback` commands -----------------------------------------
def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"raylane {command}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="registered model name, e.g. digits")
    if command == "promote":
        parser.add_argument("version", help="model version to make the alias point at")
        parser.add_argument("--force", action="store_true",
                            help="promote even if its test metric is worse than the current version's, "
                                 "or measured differently (another task)")
    parser.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks on errors")
    return parser


def main(command: str, argv: list[str]) -> int:
    """`raylane promote NAME VERSION` and `raylane rollback NAME`."""
    from mlflow import MlflowClient

    from raylane.cli import run_main
    from raylane.config import TrackingConfig
    from raylane.tracking import resolve_tracking_uri

    args = _parser(command).parse_args(argv)

    def run() -> int:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
        client = MlflowClient(uri)
        if command == "promote":
            move = promote(client, args.name, args.version, args.alias, args.force)
        else:
            move = rollback(client, args.name, args.alias)
        was = f" (was v{move.previous})" if move.previous and move.previous != move.version else ""
        print(f"{args.name}@{args.alias} -> v{move.version}{was}: {move.reason}", flush=True)
        return 0

    return run_main(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
