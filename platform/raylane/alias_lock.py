"""One mover of a registry alias at a time, over plain MLflow tags: Lamport's bakery.

MLflow's registry has no transaction and no compare-and-set over tags and aliases. Two things it
does give are enough for the bakery algorithm (Lamport, "A New Solution of Dijkstra's Concurrent
Programming Problem", 1974): a write to one tag key never overwrites another key, and one read of
a registered model returns all of its tags. Each mover writes only a key of its own:

1. It writes its ticket, the tag `raylane.<alias>.ticket.<id>`, as "choosing" (number 0).
2. It reads every ticket and writes its number: one more than the largest it read.
3. It waits until one read shows no other ticket choosing and none with a smaller (number, id);
   then it holds the alias. It deletes its ticket when done.

Why no two hold it at once. Say A entered after its last read R. If B's ticket was not in R, B
wrote it after R, and B's own read for a number came later still: it saw A's number (written
before R), so B took a larger one and waits for A, whose ticket stays until A is done. If B's
ticket was in R, R showed it chosen with a larger (number, id) than A's; B's waiting reads see A's
ticket with the smaller pair, so B waits for A. Equal numbers are ordered by the random ids.

A mover that dies leaves its ticket. While a mover waits and holds, a thread rewrites its ticket
every HEARTBEAT_S; a ticket that another mover sees unchanged for LEASE_S (on its own monotonic
clock: hosts' clocks need not agree) is taken as a dead mover's, skipped and deleted. A mover that
finds its own ticket gone takes a new one. The one way two movers can overlap is a process paused
for longer than LEASE_S (SIGSTOP, a frozen VM) that then carries on; `raylane.registry` re-reads
after every move to catch what that would overwrite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from raylane.errors import ModelNotFoundError, TrackingError

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
LEASE_S = 30.0
POLL_S = 0.1
WAIT_S = 300.0


def ticket_prefix(alias: str) -> str:
    return f"raylane.{alias}.ticket."


@contextlib.contextmanager
def alias_lock(client: Any, name: str, alias: str, *, owner: str = "", wait_s: float | None = None
               ) -> Iterator[None]:
    """Holds model `name`'s `alias` for this process: no other mover that takes this lock moves it
    meanwhile. TrackingError when others hold it for longer than `wait_s` (default WAIT_S)."""
    wait_s = WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        ticket = _Ticket(client, name, alias, owner)
        try:
            if _wait_for_turn(ticket, deadline, wait_s):
                yield
                return
        finally:
            ticket.close()
        logger.warning("raylane: the ticket for %s@%s was taken as a dead process's; taking a new one",
                       name, alias)


class _Ticket:
    """This process's ticket: a tag of its own, refreshed by a thread while it exists."""

    def __init__(self, client: Any, name: str, alias: str, owner: str) -> None:
        self.client, self.name, self.id = client, name, uuid.uuid4().hex[:12]
        self.key = ticket_prefix(alias) + self.id
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.number, self.beat = 0, 0
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None
        try:
            self._write()  # "choosing"
        except Exception as err:
            if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFoundError(f"model {name!r} is not in the registry") from err
            raise

    def choose(self, tickets: dict[str, dict]) -> None:
        """Takes the number one above every number in `tickets` (read after "choosing" was written)."""
        self.number = 1 + max((t["number"] for t in tickets.values()), default=0)
        self._write()
        self._heart = threading.Thread(target=self._beat, name="raylane-alias-ticket", daemon=True)
        self._heart.start()

    def close(self) -> None:
        self._stop.set()
        if self._heart is not None:
            self._heart.join()  # no heartbeat may land after the delete and bring the ticket back
        try:
            self.client.delete_registered_model_tag(self.name, self.key)
        except Exception as err:  # it goes stale and is removed by the next mover
            logger.warning("raylane: could not remove ticket %s of model %s: %s", self.key, self.name, err)

    def _write(self) -> None:
        value = {"number": self.number, "beat": self.beat, "owner": self.owner}
        self.client.set_registered_model_tag(self.name, self.key, json.dumps(value))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.beat += 1
            try:
                self._write()
            except Exception as err:  # a registry hiccup: the lease is several beats long
                logger.warning("raylane: could not refresh ticket %s: %s", self.key, err)


def _wait_for_turn(ticket: _Ticket, deadline: float, wait_s: float) -> bool:
    """Waits until `ticket` is first in line; False if its tag was removed meanwhile (taken as a
    dead process's), TrackingError past `deadline`."""
    ticket.choose(_live_tickets(ticket, {}))
    seen: dict[str, tuple[str, float]] = {}  # key -> (value, when this process first saw it)
    pause = POLL_S
    while True:
        tickets = _live_tickets(ticket, seen)
        if ticket.key not in tickets:
            return False
        ahead = {k: t for k, t in tickets.items()
                 if k != ticket.key and (t["number"] == 0 or (t["number"], k) < (ticket.number, ticket.key))}
        if not ahead:
            return True
        if time.monotonic() > deadline:
            owners = ", ".join(f"{t.get('owner', '?')} ({k})" for k, t in sorted(ahead.items()))
            raise TrackingError(f"model {ticket.name!r}: waited {wait_s:.0f} s for the movers ahead to "
                                f"finish: {owners}; if that process is gone, delete its tag")
        time.sleep(pause * random.uniform(0.5, 1.5))  # jittered, so waiting movers do not read in step
        pause = min(pause * 1.5, 1.0)


def _live_tickets(ticket: _Ticket, seen: dict[str, tuple[str, float]]) -> dict[str, dict]:
    """Returns the model's tickets by key, without the stale ones (deleted on the way)."""
    tags = ticket.client.get_registered_model(ticket.name).tags
    prefix = ticket.key[: -len(ticket.id)]
    now, live = time.monotonic(), {}
    for key, value in tags.items():
        if not key.startswith(prefix):
            continue
        first = seen.setdefault(key, (value, now))
        if first[0] != value:
            seen[key] = first = (value, now)
        if key != ticket.key and now - first[1] > LEASE_S:
            logger.warning("raylane: removing ticket %s of model %s, unchanged for %.0f s: %s",
                           key, ticket.name, LEASE_S, value)
            with contextlib.suppress(Exception):
                ticket.client.delete_registered_model_tag(ticket.name, key)
            continue
        try:
            parsed = json.loads(value)
            live[key] = {**parsed, "number": int(parsed["number"])}
        except (ValueError, KeyError, TypeError):
            continue  # not a ticket this raylane wrote
    return live
