"""A replica's HTTP responses leave in one socket write: status line, headers and first body bytes
(a patch of uvicorn's response cycles; raylane tested uvicorn 0.55.0).

Behind HAProxy, a replica killed between writing a response's headers and its body leaves the
client with a cut response (HAProxy logs `SD--`), and no proxy may replay a response that has
started. Ray Serve hands the ASGI `http.response.start` and `http.response.body` messages to the
replica's uvicorn server one at a time, and uvicorn writes each with its own `transport.write`,
so the window between the two is as wide as the hop between them. Holding the headers until the
first body bytes closes it: a replica dies either before anything of the response was written
(HAProxy sees an empty response and replays the request on another replica) or after the whole
of a small response was handed to the kernel.

uvicorn has no setting or hook for this, so `install_one_write_responses()` wraps the private
`RequestResponseCycle.send` of its httptools and h11 protocols in this process only; it relies on
the cycle's `transport` and `response_started` attributes. Everything else about uvicorn is
unchanged. `tests/unit/test_compat_serving.py` checks what the patch relies on is still there.
"""

from __future__ import annotations

from typing import Any

TESTED = "0.55.0"
CYCLE_MODULES = ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl")
_HELD = "_raylane_held_head"


class _Recorder:
    """Stands in for the transport while uvicorn writes the status line and headers."""

    def __init__(self, transport: Any) -> None:
        self._transport, self.data = transport, []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Prepend:
    """Stands in for the transport while uvicorn writes the first body message: the held head
    goes out with the first write, or alone before a close or when no body bytes follow."""

    def __init__(self, transport: Any, head: bytes) -> None:
        self._transport, self.head = transport, head

    def write(self, data: bytes) -> None:
        self._transport.write(self.flush() + data)

    def flush(self) -> bytes:
        head, self.head = self.head, b""
        return head

    def close(self) -> None:
        if self.head:
            self._transport.write(self.flush())
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _one_write(send: Any) -> Any:
    async def patched(self: Any, message: Any) -> None:
        transport = self.transport
        if message.get("type") == "http.response.start" and not self.response_started:
            self.transport = recorder = _Recorder(transport)
            try:
                await send(self, message)
            finally:
                self.transport = transport
            setattr(self, _HELD, b"".join(recorder.data))
            return
        head = getattr(self, _HELD, b"")
        if not head:
            return await send(self, message)
        setattr(self, _HELD, b"")
        self.transport = prepend = _Prepend(transport, head)
        try:
            await send(self, message)
        finally:
            self.transport = transport
            if prepend.head and not transport.is_closing():  # HEAD, or an empty first body message
                transport.write(prepend.flush())

    patched.__raylane_one_write__ = True
    return patched


def response_cycles() -> list[type]:
    """Returns uvicorn's importable `RequestResponseCycle` classes (httptools needs its extra)."""
    cycles = []
    for module in CYCLE_MODULES:
        try:
            cycles.append(__import__(module, fromlist=["RequestResponseCycle"]).RequestResponseCycle)
        except ImportError:
            continue
    return cycles


def install_one_write_responses() -> None:
    """Makes this process's uvicorn write each response's head with its first body bytes.
    Idempotent; a no-op where uvicorn's HTTP protocols are not importable."""
    for cycle in response_cycles():
        if not getattr(cycle.send, "__raylane_one_write__", False):
            cycle.send = _one_write(cycle.send)
