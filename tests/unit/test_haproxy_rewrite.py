"""raylane-haproxy's rewrite of Ray's HAProxy config (pure text; the served behaviour is tested in
tests/serving/test_haproxy.py and test_multi_model.py). The config below has the shape Ray 2.60's
template gives (serve/_private/haproxy_templates.py)."""

from __future__ import annotations

from raylane.serving.haproxy import rewrite

CONFIG = """global
    stats socket /tmp/haproxy-serve/x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind {host}:8000
    acl is_http-raylane-digits2 path_beg /v2/models/digits2/
    acl is_http-raylane-digits2 path /v2/models/digits2
    acl is_http-raylane-digits path_beg /v2/models/digits/
    acl is_http-raylane-digits path /v2/models/digits
    acl is_http-raylane path_beg /
    acl is_http-raylane path /
    http-request set-var-fmt(txn.serve_app) raylane-digits if is_http-raylane-digits
    use_backend http-raylane-digits2 if is_http-raylane-digits2
    use_backend http-raylane-digits if is_http-raylane-digits
    use_backend http-raylane if is_http-raylane
    default_backend default_backend
listen stats
  bind *:8404
"""


def test_listeners_bind_to_the_frontend_host_and_stats_to_loopback() -> None:
    local = rewrite(CONFIG.format(host="127.0.0.1"))
    assert "bind 127.0.0.1:9101" in local and "bind 127.0.0.1:8404" in local
    assert "mode 600 level admin" in local
    public = rewrite(CONFIG.format(host="*"))
    assert "bind :9101" in public  # serve.host 0.0.0.0: metrics too, deliberately
    assert "bind 127.0.0.1:8404" in public  # the stats page has no auth: never public


def test_v1_and_invocations_move_under_each_models_prefix_before_rays_rules() -> None:
    out = rewrite(CONFIG.format(host="127.0.0.1"))
    lines = [line.strip() for line in out.splitlines()]
    moved = [line for line in lines if line.startswith("http-request set-path")]
    assert "http-request set-path /v2/models/digits/_%[path] if { path /v1/models/digits:predict }" in moved
    assert "http-request set-path /v2/models/digits2/_%[path] if { path /v1/models/digits2 }" in moved
    # ?model= wins over the header, as in the gateway; no default pick with two models
    first_header = next(i for i, line in enumerate(moved) if "req.hdr" in line)
    assert all("url_param(model) -m str" not in line for line in moved[first_header:])
    assert not any("!{ req.hdr(x-model-name) -m found }" in line for line in moved)
    # after Ray's ACLs, before the first rule that uses them
    assert lines.index(moved[0]) > lines.index("acl is_http-raylane-digits path /v2/models/digits")
    first_use = next(i for i, line in enumerate(lines) if line.startswith("http-request set-var"))
    assert lines.index(moved[-1]) < first_use


def test_one_model_takes_invocations_without_a_pick_and_other_shapes_pass_unchanged() -> None:
    one = "\n".join(line for line in CONFIG.format(host="127.0.0.1").splitlines() if "digits2" not in line)
    assert "!{ req.hdr(x-model-name) -m found }" in rewrite(one)
    assert rewrite("global\n    maxconn 10\n") == "global\n    maxconn 10\n"
