"""An image model over real HTTP: PNG digits as KServe V1 base64 instances, Open Inference BYTES
(base64 JSON, hand-built binary and the real `tritonclient`), a raw image/png or image/jpeg body,
and a base64 column on /invocations (checked against MLflow's own scoring code). Every form
answers what `mlflow.pyfunc.load_model(...).predict` answers for the same images; bad images get
a 400 naming the problem, a decompression bomb a fast 413 that leaves the replica healthy.

The model is trained in-process in seconds (plain PyTorch on sklearn's digits upscaled to 16x16
PNGs), then logged by `tracking.log_best_model` and registered as the pipeline does."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from raylane.config import ModelConfig, ServeConfig
from raylane.serving import deploy

NAME = "digit-images"
SIZE = 16
SAMPLE = 40  # test images sent per request


def encode(pixels: np.ndarray, image_format: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, image_format)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bomb(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header declares width x height pixels (a valid CRC): about 70 bytes."""
    png = encode(np.zeros((1, 1), dtype=np.uint8))
    ihdr = bytearray(png[16:29])  # after the signature (8), the chunk's length (4) and type (4)
    struct.pack_into(">II", ihdr, 0, width, height)
    return png[:16] + bytes(ihdr) + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]


def digit_pngs() -> tuple[list[bytes], np.ndarray]:
    """sklearn's 8x8 digits as 16x16 grayscale PNG files, with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for image in digits.images:
        small = Image.fromarray((image * (255 / 16)).astype(np.uint8), "L")
        pngs.append(encode(np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BILINEAR))))
    return pngs, digits.target.astype(np.int64)


def train_image_model(pngs: list[bytes], labels: np.ndarray, directory: Path) -> tuple[object, str]:
    """Fits the preprocessor on the train images, trains a small MLP on them with plain PyTorch;
    returns (preprocessor, checkpoint directory) in the training loops' format."""
    import torch
    from raylane.model.checkpoint import save_torch_state
    from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec
    from raylane.preprocess import Column, Preprocessor

    raw = Column("image", "image", image_size=[SIZE, SIZE], channels=1, channel_mean=[0.0], channel_std=[1.0])
    pixels = raw.pixels(pd.Series(pngs, dtype=object)).reshape(-1, 1) / 255.0
    stats = {"image": {"n": len(pixels), "sum": pixels.sum(axis=0).tolist(),
                       "sumsq": (pixels * pixels).sum(axis=0).tolist()}}
    preprocessor = Preprocessor.fit({"image": "image"}, stats, 0, image_shape=(SIZE, SIZE, 1))
    spec = ModelSpec(TORCH_MLP, "torch", InputSpec(SIZE * SIZE, height=SIZE, width=SIZE, channels=1),
                     OutputSpec("classification", 10, list(range(10))), {"hidden_size": 32, "num_layers": 1})
    torch.manual_seed(0)
    net = spec.build()
    x = spec.inputs.batch(torch.from_numpy(preprocessor.transform(pd.DataFrame({"image": pngs}))), "torch")
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.005)
    for _ in range(15):
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            optimizer.step()
    checkpoint = directory / "checkpoint"
    checkpoint.mkdir()
    save_torch_state(str(checkpoint), net, optimizer, 14, spec)
    return preprocessor, str(checkpoint)


@pytest.fixture(scope="module")
def endpoint(ray_local, serve_port, tmp_path_factory):
    import mlflow
    import ray.data
    from raylane import registry, tracking

    tmp = tmp_path_factory.mktemp("images")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("images")
    pngs, labels = digit_pngs()
    train, test = slice(0, 1400), slice(1400, None)
    preprocessor, checkpoint = train_image_model(pngs[train], labels[train], tmp)
    # What log_best_model reads of the prepared data: the test split's raw images and labels.
    data = SimpleNamespace(
        test=ray.data.from_pandas(pd.DataFrame({"raw:image": pngs[test], "label": labels[test]})),
        task="classification", preprocessor=preprocessor, classes=list(range(10)), target={},
        num_rows={"test": len(labels[test])})
    with mlflow.start_run(run_name="images"):
        logged = tracking.log_best_model(checkpoint, data, {"hidden_size": 32}, 0.0, "torch")
        promotion = registry.register_if_better(ModelConfig(name=NAME), logged)
    images, truth = pngs[test][:SAMPLE], labels[test][:SAMPLE]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{promotion.version}")
    expected = model.predict(pd.DataFrame({"image": images})).tolist()
    url = deploy.deploy(ServeConfig(port=serve_port, max_batch_size=16, batch_wait_timeout_s=0.01),
                        ModelConfig(name=NAME), uri)
    client = httpx.Client(base_url=url, timeout=60)
    yield {"client": client, "url": url, "uri": uri, "model": model, "images": images, "truth": truth,
           "expected": expected, "version": promotion.version, "test_accuracy": logged.test_score}
    client.close()
    deploy.remove(NAME)  # the session's endpoint serves the next module's models alone


def test_the_model_is_accurate_and_pins_pillow(endpoint) -> None:
    import mlflow

    assert endpoint["test_accuracy"] > 0.8
    assert np.mean(np.asarray(endpoint["expected"]) == endpoint["truth"]) > 0.8
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}/{endpoint['version']}"))
    from importlib.metadata import version

    assert f"pillow=={version('pillow')}" in requirements.read_text().split()
    inputs = endpoint["model"].metadata.get_input_schema().to_dict()
    assert inputs == [{"type": "string", "name": "image", "required": True}]


# --- KServe V1 -------------------------------------------------------------------------------------
def test_v1_b64_instances_answer_what_the_model_answers(endpoint) -> None:
    texts = [b64(png) for png in endpoint["images"]]
    forms = [
        [{"b64": t} for t in texts],                # KServe's convention for binary data
        [{"image": {"b64": t}} for t in texts],     # ... for a named input
        [{"image": t} for t in texts],              # by column name, as a typed model takes rows
        texts,                                      # the text alone
    ]
    for instances in forms:
        response = endpoint["client"].post(f"/v1/models/{NAME}:predict", json={"instances": instances})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == endpoint["expected"]
        assert response.headers["x-model-version"] == endpoint["version"]
    both = endpoint["client"].post(f"/v1/models/{NAME}:predict", json={
        "instances": [{"b64": texts[0]}], "return_probabilities": True}).json()
    probabilities = both["probabilities"]
    assert both["predictions"] == endpoint["expected"][:1]
    assert len(probabilities[0]) == 10 and int(np.argmax(probabilities[0])) == endpoint["expected"][0]


# --- Open Inference Protocol ----------------------------------------------------------------------
def v2_outputs(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def test_v2_bytes_as_base64_json_and_as_binary_data(endpoint) -> None:
    images, client = endpoint["images"], endpoint["client"]
    texts = [b64(png) for png in images]
    for shape, data in (([len(texts)], texts), ([len(texts), 1], [[t] for t in texts])):
        body = {"id": "img", "inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": data}]}
        outputs = v2_outputs(client.post(f"/v2/models/{NAME}/infer", json=body))
        assert outputs["predictions"]["data"] == endpoint["expected"]
        assert outputs["probabilities"]["shape"] == [len(texts), 10]
    # The binary data extension by hand: each BYTES element is a 4-byte little-endian length, then the bytes.
    raw = b"".join(struct.pack("<I", len(png)) + png for png in images)
    head = json.dumps({"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    response = client.post(f"/v2/models/{NAME}/versions/{endpoint['version']}/infer", content=head + raw,
                           headers={"Inference-Header-Content-Length": str(len(head)),
                                    "content-type": "application/octet-stream"})
    assert v2_outputs(response)["predictions"]["data"] == endpoint["expected"]


def test_v2_metadata_says_bytes_and_tritonclient_sends_images(endpoint) -> None:
    metadata = endpoint["client"].get(f"/v2/models/{NAME}").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["parameters"]["image"]["height"] == SIZE
    triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
    client = triton.InferenceServerClient(endpoint["url"].removeprefix("http://"))
    assert client.get_model_metadata(NAME)["inputs"][0]["datatype"] == "BYTES"
    images = endpoint["images"][:16]
    for binary, values in ((True, images), (False, [b64(png).encode() for png in images])):
        tensor = triton.InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
        result = client.infer(NAME, [tensor], outputs=[triton.InferRequestedOutput("predictions")])
        assert result.as_numpy("predictions").tolist() == endpoint["expected"][:16]
    client.close()


# --- raw image bodies -------------------------------------------------------------------------------
def test_one_png_or_jpeg_as_the_body_on_each_protocol(endpoint) -> None:
    client, png = endpoint["client"], endpoint["images"][0]
    jpeg = encode(np.asarray(Image.open(io.BytesIO(png))), "JPEG")
    for image, content_type in ((png, "image/png"), (jpeg, "image/jpeg")):
        expected = endpoint["model"].predict(pd.DataFrame({"image": [image]})).tolist()
        headers = {"content-type": content_type}
        v1 = client.post(f"/v1/models/{NAME}:predict", content=image, headers=headers)
        assert v1.status_code == 200 and v1.json() == {"predictions": expected}, v1.text
        v2 = client.post(f"/v2/models/{NAME}/infer", content=image, headers=headers)
        assert v2_outputs(v2)["predictions"] == {"name": "predictions", "datatype": "INT64", "shape": [1],
                                                 "data": expected}
        scored = client.post("/invocations", content=image, headers=headers)
        assert scored.status_code == 200 and scored.json() == {"predictions": expected}, scored.text


# --- MLflow scoring protocol --------------------------------------------------------------------------
def test_invocations_base64_column_answers_what_mlflow_models_serve_answers(endpoint) -> None:
    from mlflow.pyfunc import scoring_server

    texts = [b64(png) for png in endpoint["images"][:8]]
    bodies = [
        {"dataframe_split": {"columns": ["image"], "data": [[t] for t in texts]}},
        {"dataframe_records": [{"image": t} for t in texts]},
        {"instances": [{"image": t} for t in texts]},
        {"instances": texts},
        {"inputs": {"image": texts}},
    ]
    model = endpoint["model"]
    requests = [(json.dumps(body), "application/json") for body in bodies]
    requests.append(("image\n" + "\n".join(texts) + "\n", "text/csv"))
    for body, content_type in requests:
        ours = endpoint["client"].post("/invocations", content=body, headers={"content-type": content_type})
        assert ours.status_code == 200, (body[:80], ours.text)
        stock = scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
        assert stock.status == 200, stock.response
        assert ours.json() == json.loads(stock.response) == {"predictions": endpoint["expected"][:8]}


# --- bad images -----------------------------------------------------------------------------------------
def bad_images() -> list[tuple[bytes, str]]:
    gray = np.zeros((SIZE, SIZE), dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    palette = io.BytesIO()
    Image.fromarray(noise).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(palette, "PNG")
    return [
        (b"this is not an image", "not an image"),
        (palette.getvalue()[:len(palette.getvalue()) // 2], "not an image: truncated or corrupt PNG data"),
        (encode(gray, "GIF"), "unsupported image format 'GIF'"),
        (encode(np.zeros((SIZE, SIZE, 4), dtype=np.uint8), mode="RGBA"), "image has 4 channels (RGBA)"),
    ]


@pytest.mark.parametrize(("image", "problem"), bad_images())
def test_a_bad_image_is_400_naming_the_problem_on_every_protocol(endpoint, image, problem) -> None:
    client = endpoint["client"]
    attempts = {
        "v1 b64": client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"b64": b64(image)}]}),
        "v1 body": client.post(f"/v1/models/{NAME}:predict", content=image,
                               headers={"content-type": "image/png"}),
        "v2 json": client.post(f"/v2/models/{NAME}/infer", json={"inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(image)]}]}),
        "invocations": client.post("/invocations", json={"dataframe_split": {
            "columns": ["image"], "data": [[b64(image)]]}}),
    }
    for how, response in attempts.items():
        assert response.status_code == 400, (how, response.text)
        error = response.json()["error"]
        assert problem in error and "row 0" in error, (how, response.text)
    assert attempts["invocations"].json()["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize("size", [(30_000, 30_000), (8_000, 8_000)])
def test_a_decompression_bomb_is_413_fast_and_the_replica_stays_healthy(endpoint, size) -> None:
    client, image = endpoint["client"], bomb(*size)
    assert len(image) < 100
    raw = struct.pack("<I", len(image)) + image
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    start = time.perf_counter()
    attempts = [
        client.post(f"/v1/models/{NAME}:predict", content=image, headers={"content-type": "image/png"}),
        client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"b64": b64(image)}]}),
        client.post(f"/v2/models/{NAME}/infer", content=head + raw,
                    headers={"Inference-Header-Content-Length": str(len(head))}),
        client.post("/invocations", json={"dataframe_records": [{"image": b64(image)}]}),
    ]
    assert time.perf_counter() - start < 10  # refused from the header: nothing is decoded
    for response in attempts:
        assert response.status_code == 413, response.text
        assert f"{size[0] * size[1] / 1e6:,.1f} megapixels" in response.json()["error"], response.text
    assert client.get("/v2/health/ready").status_code == 200
    one = {"instances": [{"b64": b64(endpoint["images"][0])}]}
    after = client.post(f"/v1/models/{NAME}:predict", json=one)
    assert after.status_code == 200 and after.json()["predictions"] == endpoint["expected"][:1]


def test_a_real_image_far_larger_than_the_model_needs_is_413_and_the_replica_stays_healthy(endpoint) -> None:
    """A request's image may declare 64x the model's 16x16 input and at least 4 megapixels: a
    6-megapixel photo (a few KB of one color here) is refused from its header, though the data
    stage would read it; one just under the limit decodes, several at once (two at a time)."""
    client = endpoint["client"]
    large = encode(np.full((2_000, 3_000), 128, dtype=np.uint8))
    assert len(large) < 100_000
    for response in (
        client.post(f"/v1/models/{NAME}:predict", content=large, headers={"content-type": "image/png"}),
        client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"b64": b64(large)}]}),
        client.post("/invocations", json={"dataframe_records": [{"image": b64(large)}]}),
    ):
        assert response.status_code == 413, response.text
        assert "3000x2000 pixels (6.0 megapixels); the limit is 4 megapixels" in response.json()["error"]
    under = encode(np.full((1_900, 2_000), 128, dtype=np.uint8))
    expected = endpoint["model"].predict(pd.DataFrame({"image": [under]})).tolist()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post(f"/v1/models/{NAME}:predict", content=under,
                                                      headers={"content-type": "image/png"}), range(6)))
    assert all(a.status_code == 200 and a.json()["predictions"] == expected for a in answers)
    assert client.get("/v2/health/ready").status_code == 200


def test_v1_json_without_a_content_type_is_read_as_json(endpoint) -> None:
    body = json.dumps({"instances": [{"b64": b64(png)} for png in endpoint["images"][:4]]})
    response = endpoint["client"].post(f"/v1/models/{NAME}:predict", content=body)
    assert "content-type" not in response.request.headers  # httpx sends none for raw content
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == endpoint["expected"][:4]


def test_numbers_for_an_image_model_are_400_saying_it_takes_images(endpoint) -> None:
    client, row = endpoint["client"], [0.0] * SIZE * SIZE
    v1 = client.post(f"/v1/models/{NAME}:predict", json={"instances": [row]})
    v2 = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [
        {"name": "x", "shape": [1, SIZE * SIZE], "datatype": "FP32", "data": row}]})
    scored = client.post("/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[0.5]]}})
    for response in (v1, v2, scored):
        assert response.status_code == 400, response.text
        assert "takes images" in response.json()["error"] or "not an image" in response.json()["error"]
    assert "a list of 256 values is not an image" in v1.json()["error"]
    assert "datatype 'FP32'" in v2.json()["error"] and "BYTES" in v2.json()["error"]
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 9}}]}).encode()
    binary = client.post(f"/v2/models/{NAME}/infer", content=head + struct.pack("<I", 5) + b"abcde",
                         headers={"Inference-Header-Content-Length": str(len(head))})
    assert binary.status_code == 400 and "not an image" in binary.json()["error"], binary.text


# --- parsing, without a server ---------------------------------------------------------------------
def image_model() -> object:
    from raylane.serving.model import LoadedModel

    return LoadedModel(name=NAME, version="1", feature_columns=["image"], classes=list(range(10)),
                       predict_proba=lambda rows: rows, kinds={"image": "image"}, image_shape=(SIZE, SIZE, 1))


def test_v1_image_forms_and_what_is_not_one() -> None:
    from raylane.serving.errors import InvalidInput
    from raylane.serving.protocols.images import v1_images

    frame = v1_images([{"b64": "QQ=="}, {"image": {"b64": "Qg=="}}, {"image": "Qw=="}, "RA==", ["RQ=="]],
                      image_model())
    assert frame["image"].tolist() == ["QQ==", "Qg==", "Qw==", "RA==", "RQ=="]
    for row, said in (([1.0, 2.0], "a list of 2 values"), ({"pixels": "x"}, "an object with keys ['pixels']"),
                      (None, "null"), ({"image": 3}, "an object with keys ['image']")):
        with pytest.raises(InvalidInput, match=r"instances\[1\]: " + said.replace("[", r"\[") +
                           r" is not an image; this model takes images \(16x16, 1 channel\)"):
            v1_images([{"b64": "QQ=="}, row], image_model())


@pytest.mark.parametrize(("binary", "size", "fragment"), [
    (struct.pack("<I", 3) + b"ab", 6, "element 0 declares 3 bytes; only 2 remain"),
    (struct.pack("<I", 1) + b"a" + b"\x01\x00", 7, "element 1 is cut short"),
    (struct.pack("<I", 1) + b"a", 4, "binary_data_size 4 does not match the 5 bytes"),
])
def test_v2_binary_bytes_elements_that_do_not_add_up_are_400(binary, size, fragment) -> None:
    from raylane.serving.errors import InvalidInput
    from raylane.serving.protocols.images import bytes_elements

    with pytest.raises(InvalidInput, match=fragment):
        bytes_elements(binary, size, "inputs[0]")
    assert bytes_elements(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0), 10, "x") == [b"ab", b""]


# --- docs ---------------------------------------------------------------------------------------------
def test_openapi_describes_the_image_inputs(endpoint) -> None:
    spec = endpoint["client"].get("/openapi.json").json()
    for path in ("/v1/models/{name}:predict", "/v2/models/{name}/infer", "/invocations"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert {"image/png", "image/jpeg", "application/json"} <= set(content), path
        assert "takes images" in spec["paths"][path]["post"]["description"]
    schemas = spec["components"]["schemas"]
    forms = schemas["V1PredictRequest"]["properties"]["instances"]["items"]["anyOf"]
    assert any(form.get("required") == ["b64"] for form in forms)
    assert schemas["V2InferRequest"]["example"]["inputs"][0]["datatype"] == "BYTES"
    example = schemas["V1PredictRequest"]["example"]["instances"][0]["b64"]
    assert Image.open(io.BytesIO(base64.b64decode(example))).format == "PNG"


def test_schemathesis_fuzz_of_the_image_endpoint_finds_no_server_errors(endpoint, tmp_path) -> None:
    cli = shutil.which("st", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.fail("schemathesis is missing: install the dev extra (pip install -e .[dev])")
    command = [cli, "run", f"{endpoint['url']}/openapi.json", "--checks", "not_a_server_error",
               "--max-examples", "10", "--phases", "examples,coverage,fuzzing", "--seed", "1",
               "--request-timeout", "30", "--include-method", "POST"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
