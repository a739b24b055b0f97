"""Hostile request bodies over real HTTP (issue 20, items 1 and 2): a number beyond a 64-bit float
is a 400 naming its field on every protocol, a body with the wrong number of columns is refused
before it is parsed, a heavy body is parsed off the replica's event loop (health checks and small
predictions sent meanwhile are answered at once), and bodies of extreme sizes and shapes sent to
every inference route get no 5xx."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import time
from pathlib import Path

import httpx
import pytest
from raylane.config import ModelConfig, ServeConfig
from raylane.serving import deploy

HUGE = "1" * 400  # an exact JSON integer beyond any 64-bit float
HUGER = "9" * 5000  # beyond Python's own limit on converting digits to an int
MAX_BODY = 1_048_576
ROUTES = ("/v1/models/digits:predict", "/v2/models/digits/infer", "/invocations")


@pytest.fixture(scope="module")
def endpoint(registry, serve_port):
    cfg = ServeConfig(port=serve_port, max_body_bytes=MAX_BODY, max_batch_size=16)
    url = deploy.deploy(cfg, ModelConfig(name="digits"), registry["uri"])
    client = httpx.Client(base_url=url, timeout=60)
    columns = registry["prepared"].feature_columns
    yield {**registry, "url": url, "client": client, "columns": columns}
    client.close()
    deploy.remove("digits")  # the session's endpoint serves the next module's models alone


def row_with(value: str, width: int = 64) -> str:
    """A JSON row of `width` zeros with `value` written as it is at column 3 (pixel_0_3)."""
    return "[" + ",".join(value if i == 3 else "0" for i in range(width)) + "]"


def post(endpoint, path: str, body: str | bytes, content_type: str = "application/json") -> httpx.Response:
    return endpoint["client"].post(path, content=body, headers={"content-type": content_type})


# --- item 1: numbers beyond a float ---------------------------------------------------------------
def huge_number_cases(columns: list[str]) -> list[tuple[str, str, str, str]]:
    """(path, content type, body, the field the 400 must name) with a huge integer at pixel_0_3."""
    named = "{" + ",".join(f'"{c}": {HUGE if c == "pixel_0_3" else 0}' for c in columns) + "}"
    flat = row_with(HUGE)
    per_feature = ",".join(f'{{"name": "{c}", "shape": [1], "datatype": "FP64", "data": '
                           f'[{HUGE if c == "pixel_0_3" else 0}]}}' for c in columns)
    v2 = '{"inputs": [{"name": "x", "shape": SHAPE, "datatype": "FP64", "data": DATA}]}'
    csv = ",".join(columns) + "\n" + row_with(HUGE)[1:-1] + "\n"
    return [
        ("/v1/models/digits:predict", "application/json", '{"instances": [' + flat + "]}", "instances[0][3]"),
        ("/v1/models/digits:predict", "application/json", '{"instances": [' + row_with(HUGER) + "]}",
         "instances[0][3]"),
        ("/v1/models/digits:predict", "application/json", '{"instances": [' + named + "]}",
         "instances[0].pixel_0_3"),
        ("/v2/models/digits/infer", "application/json",
         v2.replace("SHAPE", "[1, 64]").replace("DATA", flat), "inputs[0].data[3]"),
        ("/v2/models/digits/infer", "application/json",
         v2.replace("SHAPE", "[1, 64]").replace("DATA", "[" + flat + "]"), "inputs[0].data[0][3]"),
        ("/v2/models/digits/infer", "application/json",
         v2.replace("SHAPE", "[1, 64]").replace("DATA", row_with(HUGER)), "inputs[0].data[3]"),
        ("/v2/models/digits/infer", "application/json", '{"inputs": [' + per_feature + "]}",
         "inputs[3].data[0]"),
        ("/invocations", "application/json", '{"instances": [' + flat + "]}", "instances[0][3]"),
        ("/invocations", "application/json",
         '{"dataframe_split": {"columns": ' + json.dumps(columns) + ', "data": [' + flat + "]}}",
         "dataframe_split.data[0][3]"),
        ("/invocations", "application/json", '{"dataframe_records": [' + named + "]}",
         "dataframe_records[0].pixel_0_3"),
        ("/invocations", "text/csv", csv, "pixel_0_3"),
    ]


def test_a_number_beyond_a_float_is_400_naming_its_field_on_every_protocol(endpoint) -> None:
    problems = []
    for path, content_type, body, field in huge_number_cases(endpoint["columns"]):
        response = post(endpoint, path, body, content_type)
        error = response.json().get("error", "") if response.headers.get("content-type", "").startswith(
            "application/json") else response.text
        if response.status_code != 400 or field not in error:
            problems.append((path, field, response.status_code, error[:200]))
    assert not problems, "\n".join(map(str, problems))
    version = endpoint["champion"]
    body = '{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": ' + row_with(HUGE) + "}]}"
    versioned = post(endpoint, f"/v2/models/digits/versions/{version}/infer", body)
    assert versioned.status_code == 400 and "inputs[0].data[3]" in versioned.json()["error"], versioned.text


# --- item 2: refused before parsing, parsed off the event loop ------------------------------------
def wide_bodies(columns: list[str], width: int = 100_000) -> list[tuple[str, str, str]]:
    """(path, content type, body) of one row of `width` columns, each under 1 MiB."""
    names = [f"c{i}" for i in range(width)]
    zeros = ",".join("0" for _ in range(width))
    return [
        ("/invocations", "text/csv", ",".join(f"{i}" for i in range(width)) + "\n" + zeros + "\n"),
        ("/invocations", "application/json",
         json.dumps({"dataframe_split": {"columns": list(range(width)), "data": [[0] * width]}})),
        ("/invocations", "application/json", json.dumps({"dataframe_split": {"columns": columns,
                                                                            "data": [[0] * width]}})),
        ("/invocations", "application/json",
         json.dumps({"dataframe_records": [dict.fromkeys(names[:60_000], 0)]})),
        ("/invocations", "application/json", '{"instances": [[' + zeros + "]]}"),
        ("/v1/models/digits:predict", "application/json", '{"instances": [[' + zeros + "]]}"),
        ("/v1/models/digits:predict", "application/json",
         json.dumps({"instances": [dict.fromkeys(names[:60_000], 0)]})),
        ("/v2/models/digits/infer", "application/json", json.dumps({"inputs": [
            {"name": "x", "shape": [1, width], "datatype": "FP64", "data": [0] * width}]})),
    ]


def test_a_wrong_column_count_is_400_naming_expected_and_got_before_parsing(endpoint) -> None:
    problems = []
    for path, content_type, body in wide_bodies(endpoint["columns"]):
        assert len(body) < MAX_BODY
        start = time.perf_counter()
        response = post(endpoint, path, body, content_type)
        took = time.perf_counter() - start
        error = response.json().get("error", "")
        if response.status_code != 400 or "64" not in error or not any(
                got in error for got in ("100000", "60000")):
            problems.append((path, body[:40], response.status_code, error[:200], round(took, 3)))
    assert not problems, "\n".join(map(str, problems))


def heavy_body() -> str:
    """The heaviest V1 body that passes the column check: as many 64-zero rows as fit under the
    body limit (about 520k values, each checked and converted on its own)."""
    row = row_with("0")
    return '{"instances": [' + ",".join([row] * ((MAX_BODY - 20) // (len(row) + 1))) + "]}"


def probe_latencies(endpoint, body: str, senders: int = 3, each: int = 2
                    ) -> tuple[list[float], list[float], list[int]]:
    """Sends heavy V1 requests (`senders` clients, `each` one after another) and, while they are in
    flight, a readiness check and a one-row V2 prediction at a time to the same replica; returns
    (heavy request seconds, seconds of the probes sent and answered while a heavy one was in
    flight past its upload, heavy statuses)."""
    row = endpoint["rows"][0].tolist()
    small = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": row}]}
    windows: list[tuple[float, float]] = []
    statuses: list[int] = []

    def send_heavy() -> None:
        with httpx.Client(base_url=endpoint["url"], timeout=120) as client:
            for _ in range(each):
                start = time.perf_counter()
                statuses.append(client.post(ROUTES[0], content=body,
                                            headers={"content-type": "application/json"}).status_code)
                windows.append((start, time.perf_counter()))

    probes: list[tuple[float, float]] = []
    with httpx.Client(base_url=endpoint["url"], timeout=60) as client:
        client.get("/v2/models/digits/ready")  # the connection, opened before the clock starts
        with concurrent.futures.ThreadPoolExecutor(senders) as pool:
            heavy = [pool.submit(send_heavy) for _ in range(senders)]
            while not all(f.done() for f in heavy):
                for request in (lambda: client.get("/v2/models/digits/ready"),
                                lambda: client.post("/v2/models/digits/infer", json=small)):
                    start = time.perf_counter()
                    assert request().status_code == 200
                    probes.append((start, time.perf_counter()))
                time.sleep(0.01)
            for f in heavy:
                f.result()
    # Only probes sent once a heavy body had surely arrived (a quarter of its time in) and answered
    # before it was, measure the replica while it parses.
    inside = [end - start for start, end in probes
              if any(s + (e - s) / 4 <= start and end <= e for s, e in windows)]
    return [e - s for s, e in windows], inside, statuses


def test_a_heavy_body_does_not_stall_the_replica(endpoint) -> None:
    body = heavy_body()
    assert MAX_BODY - 200 < len(body) <= MAX_BODY
    durations, inside, statuses = probe_latencies(endpoint, body)
    assert statuses == [200] * len(statuses)
    # The heavy requests must keep the replica busy long enough to matter, or the probes prove nothing.
    assert statistics.median(durations) > 0.3, durations
    assert len(inside) >= 5, (durations, inside)
    assert statistics.median(inside) < 0.1, (sorted(inside), durations)


# --- fuzz: extreme sizes and shapes ---------------------------------------------------------------
def extreme_bodies(columns: list[str]) -> list[tuple[str, bytes]]:
    """(content type, body) of extreme sizes and shapes, each at most the body limit."""
    width = len(columns)
    text = "x" * (MAX_BODY - 100)
    deep = b"[" * 100_000 + b"]" * 100_000
    wide = ",".join("0" for _ in range(200_000))
    row = row_with("0", width)
    rows = "[" + ",".join([row] * ((MAX_BODY - 2000) // (len(row) + 1))) + "]"
    mixed = json.dumps([[0, 1.5, "a", True, None, [1], {"a": 1}, -0.0, 1e308, -(10 ** 300)] * 7])
    bodies = [
        b"", b"null", b"[]", b"{}", b'""', b"0", text.encode(), deep, b"{" * 50_000,
        ('{"instances": [' + row_with(HUGER) + "]}").encode(),
        ('{"instances": [[' + wide + "]]}").encode(),
        ('{"instances": ' + rows + "}").encode(),
        ('{"instances": ' + mixed + "}").encode(),
        b'{"instances": []}', b'{"instances": [[]]}', b'{"instances": [{}]}',
        ('{"instances": [["' + text[:MAX_BODY // 2] + '"]]}').encode(),
        (b'{"inputs": [{"name": "x", "shape": [0, 64], "datatype": "FP64", "data": []}]}'),
        (b'{"inputs": [{"name": "x", "shape": [100000, 100000], "datatype": "FP64", "data": [0]}]}'),
        ('{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": ' + row_with(HUGER) + "}]}"
         ).encode(),
        ('{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "BYTES", "data": ' + mixed + "}]}"
         ).encode(),
        ('{"inputs": [' + ",".join('{"name": "x", "shape": [1], "datatype": "FP64", "data": [0]}'
                                   for _ in range(15_000)) + "]}").encode(),
        ('{"inputs": {"' + '": [0], "'.join(f"c{i}" for i in range(60_000)) + '": [0]}}').encode(),
        (b'{"dataframe_split": {"columns": [], "data": []}}'),
        ('{"dataframe_split": {"columns": ' + json.dumps(columns) + ', "data": ' + mixed + "}}").encode(),
        ('{"dataframe_records": [' + ",".join(["{}"] * 100_000) + "]}").encode(),
        ('{"dataframe_split": {"columns": ' + json.dumps(columns) + ', "data": ' + rows + "}}").encode(),
    ]
    csv = [
        b"", b"\n" * 500_000, (",".join(columns) + "\n").encode(), wide.encode(),
        (",".join(columns) + "\n" + ("x," * (width - 1) + "x\n") * 5000).encode(),
        (",".join(columns) + "\n" + row_with(HUGER)[1:-1] + "\n").encode(),
        (",".join(columns) + "\n" + '"' + text[:MAX_BODY // 2] + '"\n').encode(),
        b"x" * 200_000 + b"\n",  # a header field over csv's field limit
        ("\r".join(columns) + "\n").encode(),  # old-Mac line ends: a bare carriage return in the header
        (" ".join("1" * 308 for _ in range(3000))).encode(),  # digit runs just short of the huge-int scan
    ]
    return [("application/json", b) for b in bodies] + [("text/csv", b) for b in csv]


def test_extreme_bodies_on_every_inference_route_get_no_server_error(endpoint) -> None:
    bodies = extreme_bodies(endpoint["columns"])
    assert all(len(body) <= MAX_BODY for _, body in bodies)
    calls = [(path, content_type, body) for path in ROUTES for content_type, body in bodies]

    def send(call: tuple[str, str, bytes]) -> tuple[str, str, int, str]:
        path, content_type, body = call
        response = post(endpoint, path, body, content_type)
        return path, body[:60].decode(errors="replace"), response.status_code, response.text[:200]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, calls))
    server_errors = [a for a in answers if a[2] >= 500]
    assert not server_errors, "\n".join(map(str, server_errors))
    unexpected = [a for a in answers if a[2] not in (200, 400, 413, 415, 422)]
    assert not unexpected, "\n".join(map(str, unexpected))
    # The replica is still healthy and right afterwards.
    row = endpoint["rows"][:1].tolist()
    assert endpoint["client"].post(ROUTES[0], json={"instances": row}).status_code == 200
    assert endpoint["client"].get("/v2/models/digits/ready").status_code == 200


# --- item 7: the Serve application's arguments ----------------------------------------------------
@pytest.mark.parametrize(("args", "field"), [
    ({"version": "latest"}, "version"), ({"version": "3; drop"}, "version"), ({"version": True}, "version"),
    ({"version": "03"}, "version"), ({"alias": "latest"}, "alias"), ({"alias": "v3"}, "alias"),
    ({"alias": "a/b"}, "alias"), ({"model_name": "../digits"}, "model_name"),
    ({"model_name": ""}, "model_name"),
])
def test_serve_run_arguments_are_validated_naming_the_field(args, field) -> None:
    """As `serve run serve_apps.champion:app version=latest` passes them: refused, not floated."""
    from pydantic import ValidationError

    from serve_apps import champion

    with pytest.raises(ValidationError) as refused:
        champion.app({"model_name": "digits", "tracking_uri": "sqlite:///mlflow.db", **args})
    assert [e["loc"] for e in refused.value.errors()] == [(field,)], refused.value


def test_pinned_versions_and_the_shipped_serve_config_still_build() -> None:
    import yaml
    from raylane.serving.model import ServeArgs

    from serve_apps import champion

    for version in (3, "3", None):
        application = champion.app({"model_name": "digits", "tracking_uri": "sqlite:///mlflow.db",
                                    "version": version})
        assert application is not None
        assert ServeArgs.model_validate({"tracking_uri": "x", "version": version}).version == \
            (None if version is None else "3")
    config = yaml.safe_load(Path(champion.__file__).with_suffix(".yaml").read_text())
    for application in config["applications"]:
        if application["import_path"] == "serve_apps.champion:app":
            assert ServeArgs.model_validate(application["args"]).model_name == "digits"
