"""A load generator for the serving tests: clients posting over all three protocols until stopped."""

from __future__ import annotations

import collections
import threading
import time

import httpx


class Load:
    """Clients sending requests over all three protocols until stopped; records every answer."""

    def __init__(self, url: str, row: list[float], threads: int = 3) -> None:
        self.url, self.row, self.answers, self._stop = url, row, [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        requests = [("/v1/models/digits:predict", {"instances": [self.row]}),
                    ("/v2/models/digits/infer", {"inputs": [{"name": "x", "shape": [1, len(self.row)],
                                                             "datatype": "FP64", "data": self.row}]}),
                    ("/invocations", {"instances": [self.row]})]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                path, body = requests[i % len(requests)]
                try:
                    response = client.post(path, json=body)
                    self.answers.append((time.monotonic(), response.status_code,
                                         response.headers.get("x-model-version")))
                except httpx.HTTPError as err:
                    self.answers.append((time.monotonic(), type(err).__name__, None))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for(self, version: str, share: float = 1.0, timeout: float = 60, streak: int = 30) -> None:
        """Waits until at least `share` of the last `streak` answers came from `version`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = [v for _, _, v in self.answers[-streak:]]
            if len(last) == streak and last.count(version) >= share * streak:
                return
            time.sleep(0.2)
        raise AssertionError(f"endpoint never settled on v{version}: {collections.Counter(last)}")
