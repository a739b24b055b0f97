"""One log line per pipeline stage, with its duration, so long work is never silent.

The library logs (`logging.getLogger(__name__)` everywhere); the CLI's handler
(`raylane.cli.show_progress`) prints the records as `[raylane] ...` lines.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

logger = logging.getLogger("raylane")


def say(message: str) -> None:
    logger.info(message)


@contextlib.contextmanager
def stage(name: str, detail: str = "") -> Iterator[None]:
    say(f"▶ {name}" + (f": {detail}" if detail else ""))
    start = time.monotonic()
    yield
    say(f"✔ {name} ({time.monotonic() - start:.1f} s)")
