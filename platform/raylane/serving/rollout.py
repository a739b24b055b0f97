"""Which model versions a replica serves, and how it follows the registry without a restart.

A replica holds the champion and, with a canary configured, a second version. A background thread
checks the aliases every `poll_interval_s`; when one moves, the new version is loaded and warmed up
beside the old one and only then swapped in, one reference assignment, so no request ever sees a
half-loaded model and requests in flight finish on the version they started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from raylane import registry
from raylane.errors import ModelNotFoundError
from raylane.serving.model import LoadedModel, ServeArgs, load_version

log = logging.getLogger("ray.serve")


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """Returns the version the alias points at, None when the alias is not set."""
    from mlflow import MlflowClient

    return registry.alias_version(MlflowClient(tracking_uri), name, alias)


class TrafficSplit:
    """Sends `percent` of the calls to the canary, spread evenly (error diffusion, not coin flips),
    so even a short run of requests gets the configured share."""

    def __init__(self, percent: float) -> None:
        self.share, self._credit, self._lock = percent / 100.0, 0.0, threading.Lock()

    def canary_turn(self) -> bool:
        with self._lock:
            self._credit += self.share
            if self._credit >= 1.0 - 1e-9:
                self._credit -= 1.0
                return True
            return False


class ModelSlot:
    """The champion (and canary) a replica answers with; swapped atomically when an alias moves."""

    def __init__(self, args: ServeArgs, on_load: Callable[[LoadedModel], None] | None = None) -> None:
        self.args, self._on_load = args, on_load or (lambda m: None)
        version = args.version or alias_version(args.tracking_uri, args.model_name, args.alias)
        if version is None:
            raise ModelNotFoundError(
                f"no version of model {args.model_name!r} has the alias {args.alias!r} in "
                f"{args.tracking_uri}; run the pipeline first (raylane run) to register one")
        self.champion: LoadedModel = self._load(version)
        self.canary: LoadedModel | None = None
        self.split = TrafficSplit(args.canary.percent if args.canary else 0.0)
        if args.canary:
            self.canary = self._load_alias(args.canary.alias)
        self._refresh_lock = threading.Lock()

    # --- answering -------------------------------------------------------------------------------
    def pick(self) -> LoadedModel:
        """Returns the model that answers the next request (champion, or canary for its share)."""
        canary = self.canary
        if canary is not None and canary.version != self.champion.version and self.split.canary_turn():
            return canary
        return self.champion

    def find(self, version: str) -> LoadedModel | None:
        """Returns the loaded model with this version, None if this replica does not hold it."""
        for model in (self.champion, self.canary):
            if model is not None and model.version == version:
                return model
        return None

    def loaded(self) -> dict[str, str]:
        """Returns {version: role} for the versions held."""
        held = {self.champion.version: self.args.alias if self.args.version is None else "pinned"}
        if self.canary is not None and self.args.canary is not None:
            held.setdefault(self.canary.version, self.args.canary.alias)
        return held

    # --- following the registry --------------------------------------------------------------------
    def refresh(self) -> bool:
        """Checks the aliases once; loads and swaps in what moved. Returns True if anything changed."""
        with self._refresh_lock:  # the poller and a deploy-time check never load the same version twice
            return self._refresh()

    def _refresh(self) -> bool:
        changed = False
        if self.args.follows:
            version = alias_version(self.args.tracking_uri, self.args.model_name, self.args.alias)
            if version is not None and version != self.champion.version:
                self.champion = self._reuse_or_load(version)
                changed = True
                log.info("raylane: %s now serves version %s (%s)", self.args.model_name, version,
                         self.args.alias)
        if self.args.canary is not None and self.args.follow_alias:
            version = alias_version(self.args.tracking_uri, self.args.model_name, self.args.canary.alias)
            current = self.canary.version if self.canary else None
            if version != current:
                self.canary = self._reuse_or_load(version) if version else None
                changed = True
        return changed

    def follow(self, also: Callable[[], None] | None = None) -> threading.Thread:
        """Starts the daemon thread that calls `refresh` (and `also`) every poll interval."""
        def loop() -> None:
            while True:
                time.sleep(self.args.poll_interval_s)
                for step in filter(None, (also, self.refresh)):  # one failing never skips the other
                    try:
                        step()
                    except Exception as err:  # the registry being down must not take serving down
                        log.warning("raylane: registry check failed: %s", err)

        thread = threading.Thread(target=loop, name="raylane-registry-follower", daemon=True)
        thread.start()
        return thread

    def _reuse_or_load(self, version: str) -> LoadedModel:
        return self.find(version) or self._load(version)

    def _load_alias(self, alias: str) -> LoadedModel | None:
        version = alias_version(self.args.tracking_uri, self.args.model_name, alias)
        return self._reuse_or_load(version) if version else None

    def _load(self, version: str) -> LoadedModel:
        model = load_version(self.args.tracking_uri, self.args.model_name, version)  # loads + warms up
        self._on_load(model)
        return model
