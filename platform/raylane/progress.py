"""One line per pipeline stage, with its duration, so long work is never silent."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


def say(message: str) -> None:
    print(f"[raylane] {message}", file=sys.stdout, flush=True)


@contextlib.contextmanager
def stage(name: str, detail: str = "") -> Iterator[None]:
    say(f"▶ {name}" + (f": {detail}" if detail else ""))
    start = time.monotonic()
    yield
    say(f"✔ {name} ({time.monotonic() - start:.1f} s)")
