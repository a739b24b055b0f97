"""A replica's response leaves in one socket write (raylane._compat.uvicorn), on a real uvicorn
server over 127.0.0.1: the first bytes a client receives hold the headers and the body, even
when the app sends the body well after the headers; HEAD, chunked and empty responses still work."""

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from raylane._compat.uvicorn import install_one_write_responses


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"x%d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif scope["path"] == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await asyncio.sleep(0.3)  # the window a killed replica used to leave headers without a body
        await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request):
    install_one_write_responses()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, http=request.param,
                                        log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_headers_and_body_arrive_together(server):
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        first = conn.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    assert first.endswith(b"\r\n\r\nhello"), first


def test_head_chunked_and_empty_responses(server):
    with httpx.Client(base_url=server, timeout=10) as client:
        for _ in range(2):  # and again on the same keep-alive connection
            assert client.get("/").text == "hello"
            head = client.head("/")
            assert head.status_code == 200 and head.headers["content-length"] == "5"
            assert client.get("/stream").text == "x0x1x2"
            empty = client.get("/empty")
            assert empty.status_code == 204 and empty.content == b""
