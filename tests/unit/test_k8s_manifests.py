"""deploy/k8s renders, and every resource it makes is what its API takes: checked offline, no cluster.

`kubectl kustomize` renders each kustomization. KubeRay's RayJob and RayService and the Prometheus
Operator's PodMonitor are validated against hand-written JSON Schemas of the fields raylane uses
(deploy/k8s/schema: additionalProperties false, so a misspelled or misplaced field fails), whose pod
templates refer to Kubernetes' own definitions; the built-in kinds against Kubernetes' OpenAPI
schemas as kubernetes-validate bundles them (strict: no unknown field). The RayService's serve
config is checked with Ray Serve's own ServeDeploySchema and held to serve_apps/champion.yaml.
None of this applies the manifests to a Kubernetes cluster.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ["secrets", "mlflow", "training", "training-gpu", "serving"]
KUBERNETES = "1.32.0"
"""The oldest Kubernetes the manifests are checked against (kubernetes-validate's schemas)."""
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RAY_KINDS = ("RayJob", "RayService")

Doc = dict[str, Any]


# -- rendering and validation -----------------------------------------------------------------------
def _kustomize(path: Path) -> list[Doc]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered (apt-get install kubectl)")
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {path}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[Doc]]:
    """Every kustomization's resources. The Secrets are made from the *.example files, in a copy."""
    out = {name: _kustomize(K8S / name) for name in KUSTOMIZATIONS if name != "secrets"}
    copy_root = tmp_path_factory.mktemp("k8s")
    for part in ("secrets", "site"):
        shutil.copytree(K8S / part, copy_root / part)
    for example in (copy_root / "secrets").glob("*.example"):
        shutil.copy(example, example.with_suffix(""))
    out["secrets"] = _kustomize(copy_root / "secrets")
    return out


def _all(rendered: dict[str, list[Doc]], kind: str | None = None) -> list[Doc]:
    return [doc for docs in rendered.values() for doc in docs if kind in (None, doc["kind"])]


def _one(rendered: dict[str, list[Doc]], name: str, kind: str) -> Doc:
    [doc] = [doc for doc in rendered[name] if doc["kind"] == kind]
    return doc


def _cluster(doc: Doc) -> Doc:
    """A RayJob's or a RayService's Ray cluster: `rayClusterSpec` in one, `rayClusterConfig` in the other."""
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def _groups(doc: Doc) -> list[Doc]:
    """A Ray cluster's head group and worker groups."""
    cluster = _cluster(doc)
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def _pods(doc: Doc) -> list[Doc]:
    """The pod templates of a Deployment, a RayJob or a RayService (none for other kinds)."""
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]]
    return [group["template"] for group in _groups(doc)] if doc["kind"] in RAY_KINDS else []


@pytest.fixture(scope="module")
def schema_errors():
    """`errors(doc)`: what the schema of the doc's kind finds wrong, as 'path: message' lines."""
    # kubernetes-validate keeps Kubernetes' definitions as one file per release; its strict set
    # refuses unknown fields. The CRD schemas refer to it by its $id.
    definitions = json.loads((files("kubernetes_validate") / "kubernetes-json-schema"
                              / f"v{KUBERNETES}-local-strict" / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    validators = {}
    for kind, path in [("RayJob", "kuberay-v1"), ("RayService", "kuberay-v1"),
                       ("PodMonitor", "monitoring-v1")]:
        schema = json.loads((K8S / "schema" / f"{path}.schema.json").read_text())
        Draft202012Validator.check_schema(schema)
        validators[kind] = Draft202012Validator(schema, registry=registry)

    def errors(doc: Doc) -> list[str]:
        found = validators[doc["kind"]].iter_errors(doc)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]

    return errors


def _builtin_errors(doc: Doc) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.absolute_path))}: {err.message}"]
    return []


# -- the schemas ------------------------------------------------------------------------------------
def test_every_kustomization_renders(rendered) -> None:
    kinds = {name: sorted(doc["kind"] for doc in docs) for name, docs in rendered.items()}
    assert kinds == {
        "secrets": ["Secret"] * 4,
        "mlflow": ["Deployment", "Service"],
        "training": ["RayJob"],
        "training-gpu": ["RayJob"],
        "serving": ["ConfigMap", "PodMonitor", "RayService"],
    }
    assert {doc["metadata"].get("namespace") for doc in _all(rendered)} == {"raylane"}


def test_kuberay_and_prometheus_resources_match_their_published_v1_api(rendered, schema_errors) -> None:
    checked = [doc for doc in _all(rendered) if doc["kind"] in ("RayJob", "RayService", "PodMonitor")]
    assert len(checked) == 4
    for doc in checked:
        assert schema_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_builtin_kinds_match_the_kubernetes_openapi_schema(rendered) -> None:
    builtin = [doc for doc in _all(rendered) if "." not in doc["apiVersion"].split("/")[0]]
    assert {doc["kind"] for doc in builtin} == {"Secret", "Deployment", "Service", "ConfigMap"}
    for doc in builtin:
        assert _builtin_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def _head(doc: Doc) -> Doc:
    return _cluster(doc)["headGroupSpec"]


def _rename(mapping: Doc, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _misspell_shutdown(job: Doc) -> None:
    _rename(job["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish")


def _move_backoff_into_the_cluster(job: Doc) -> None:
    job["spec"]["rayClusterSpec"]["backoffLimit"] = job["spec"].pop("backoffLimit")


def _num_cpus_as_a_number(job: Doc) -> None:
    _head(job)["rayStartParams"]["num-cpus"] = 0


def _backoff_as_a_string(job: Doc) -> None:
    job["spec"]["backoffLimit"] = "2"


def _unknown_submission_mode(job: Doc) -> None:
    job["spec"]["submissionMode"] = "K8sJob"


def _worker_group_without_min_replicas(job: Doc) -> None:
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"]


def _misspell_a_container_field(job: Doc) -> None:
    _rename(_head(job)["template"]["spec"]["containers"][0], "envFrom", "envFromm")


def _ray_job_cluster_field_in_a_ray_service(service: Doc) -> None:
    _rename(service["spec"], "rayClusterConfig", "rayClusterSpec")


def _serve_config_as_a_mapping(service: Doc) -> None:
    service["spec"]["serveConfigV2"] = yaml.safe_load(service["spec"]["serveConfigV2"])


def _secret_volume_named_like_a_config_map(service: Doc) -> None:
    _rename(_head(service)["template"]["spec"]["volumes"][0]["secret"], "secretName", "name")


def _misspell_the_scrape_port(monitor: Doc) -> None:
    _rename(monitor["spec"]["podMetricsEndpoints"][0], "port", "portName")


def _interval_in_words(monitor: Doc) -> None:
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"


BREAKAGES = [  # (kind, what breaks it, what its schema says)
    ("RayJob", _misspell_shutdown, "'shutdownAfterJobFinish' was unexpected"),
    ("RayJob", _move_backoff_into_the_cluster, "spec.rayClusterSpec: Additional properties"),
    ("RayJob", _num_cpus_as_a_number, "rayStartParams.num-cpus: 0 is not of type 'string'"),
    ("RayJob", _backoff_as_a_string, "spec.backoffLimit: '2' is not of type 'integer'"),
    ("RayJob", _unknown_submission_mode, "spec.submissionMode: 'K8sJob' is not one of"),
    ("RayJob", _worker_group_without_min_replicas, "'minReplicas' is a required property"),
    ("RayJob", _misspell_a_container_field, "'envFromm' was unexpected"),
    ("RayService", _ray_job_cluster_field_in_a_ray_service, "'rayClusterConfig' is a required property"),
    ("RayService", _serve_config_as_a_mapping, "spec.serveConfigV2: {"),
    ("RayService", _secret_volume_named_like_a_config_map, "'name' was unexpected"),
    ("PodMonitor", _misspell_the_scrape_port, "'portName' was unexpected"),
    ("PodMonitor", _interval_in_words, "'15 seconds' does not match"),
]


@pytest.mark.parametrize(("kind", "break_it", "expected"), BREAKAGES,
                         ids=[breakage.__name__.lstrip("_") for _, breakage, _ in BREAKAGES])
def test_schema_refuses_a_misspelled_misplaced_or_mistyped_field(rendered, schema_errors, kind, break_it,
                                                                  expected) -> None:
    broken = copy.deepcopy(_one(rendered, "training" if kind == "RayJob" else "serving", kind))
    break_it(broken)
    found = schema_errors(broken)
    assert any(expected in line for line in found), found


def test_strict_kubernetes_schemas_refuse_an_unknown_field(rendered) -> None:
    config_map = copy.deepcopy(_one(rendered, "serving", "ConfigMap"))
    _rename(config_map["metadata"], "labels", "label")
    assert _builtin_errors(config_map)
    deployment = copy.deepcopy(_one(rendered, "mlflow", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["port"] = 5000
    assert _builtin_errors(deployment)


# -- what the manifests say -------------------------------------------------------------------------
def _entrypoint(job: Doc) -> tuple[list[str], argparse.Namespace]:
    """The command a RayJob runs, and its pipeline flags (as `raylane run --help` lists them)."""
    argv = shlex.split(job["spec"]["entrypoint"])
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--config")
    parser.add_argument("--run-name")
    parser.add_argument("--resume-if-exists", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    return argv[:3], parser.parse_args(argv[3:])


def _image_workdir() -> str:
    return re.search(r"^WORKDIR (\S+)$", (ROOT / "deploy/docker/Dockerfile").read_text(), re.M).group(1)


def test_training_job_is_one_resumable_run_and_never_serves(rendered) -> None:
    from raylane.config import load_config

    job = _one(rendered, "training", "RayJob")
    command, flags = _entrypoint(job)
    assert command == ["python", "-m", "pipelines.train_tune_serve"]
    # A retried RayJob runs the same command on a new cluster: it must continue the same run.
    assert job["spec"]["backoffLimit"] >= 1 and flags.resume_if_exists
    assert flags.run_name == job["metadata"]["name"].removeprefix("raylane-train-")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    # The recipe is the image's copy of the repository's: the same file, and valid with the overrides.
    recipe = PurePosixPath(flags.config).relative_to(_image_workdir())
    cfg = load_config(ROOT / recipe, flags.overrides)
    assert cfg.serve.enabled is False  # the endpoint would die with the job's cluster
    assert cfg.storage_path.startswith("s3://")  # every pod of every attempt reads the run's state


def test_training_command_uses_only_flags_raylane_run_takes(rendered, capsys) -> None:
    from raylane.cli import run_command

    with pytest.raises(SystemExit):
        run_command(["--help"])
    takes = set(re.findall(r"(--[a-z][-a-z]*)", capsys.readouterr().out))
    given = {arg for arg in shlex.split(_one(rendered, "training", "RayJob")["spec"]["entrypoint"])
             if arg.startswith("--")}
    assert given - takes == set(), "flags of the RayJob's command that `raylane run` does not take"


def test_gpu_training_is_the_same_run_on_gpu_workers(rendered) -> None:
    from raylane.config import load_config

    cpu, gpu = _one(rendered, "training", "RayJob"), _one(rendered, "training-gpu", "RayJob")
    assert gpu["spec"]["entrypoint"] == cpu["spec"]["entrypoint"] + " --set train.use_gpu=true"
    _, flags = _entrypoint(gpu)
    assert load_config(ROOT / PurePosixPath(flags.config).relative_to(_image_workdir()),
                       flags.overrides).train.use_gpu
    [workers] = gpu["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def _site_images() -> dict[str, str]:
    site = yaml.safe_load((K8S / "site" / "kustomization.yaml").read_text())
    return {image["name"]: f"{image['newName']}:{image['newTag']}" for image in site["images"]}


def test_images_and_ray_version_are_those_constraints_pin(rendered) -> None:
    ray = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1) == f"rayproject/ray:{ray}-py311"
    assert f"BASE_IMAGE=rayproject/ray:{ray}-py311-gpu" in dockerfile  # the GPU build's argument
    ray_docs = [doc for doc in _all(rendered) if doc["kind"] in RAY_KINDS]
    assert {_cluster(doc)["rayVersion"] for doc in ray_docs} == {ray}
    images = _site_images()
    for name, docs in rendered.items():
        used = {c["image"] for doc in docs for pod in _pods(doc) for c in pod["spec"]["containers"]}
        assert used <= {images["raylane-gpu" if name == "training-gpu" else "raylane"]}, name


def test_image_installs_raylane_with_the_script_and_constraints_ci_uses() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "\tdeploy/install.sh $(BIN)/python torch,tf,dev" in recipe
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    assert re.search(r'^RUN .*deploy/install\.sh python "\$\{EXTRAS\}"$', dockerfile, re.M)
    assert '-c constraints.txt -e ".[$extras]"' in (ROOT / "deploy/install.sh").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "mlflow.db", "deploy/k8s/secrets/*.env", "deploy/k8s/secrets/tokens"} <= set(ignored)


def test_serve_config_is_a_valid_ray_serve_config_listening_beyond_the_pod(rendered) -> None:
    from ray.serve.schema import ServeDeploySchema

    service = _one(rendered, "serving", "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    host = config["http_options"]["host"]
    assert host not in LOOPBACK and not host.startswith("127."), "the Service's traffic would be refused"
    for template in _pods(service):
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == config["http_options"]["port"]  # KubeRay's Serve Service targets it


def test_serve_app_is_champion_yaml_with_only_the_pod_differences(rendered, monkeypatch) -> None:
    from raylane.serving.model import ServeArgs

    champion = yaml.safe_load((ROOT / "serve_apps" / "champion.yaml").read_text())
    config = yaml.safe_load(_one(rendered, "serving", "RayService")["spec"]["serveConfigV2"])
    assert config["proxy_location"] == champion["proxy_location"]
    assert config["http_options"] == {**champion["http_options"], "host": "0.0.0.0"}
    assert len(config["applications"]) == len(champion["applications"]) == 2  # a model and the gateway
    for app, reference in zip(config["applications"], champion["applications"], strict=True):
        assert {**app, "args": None} == {**reference, "args": None}
        args = dict(app["args"])
        auth = args.pop("auth")
        args.pop("allowed_hosts")  # the Service's names, where serve_apps/champion.yaml runs on a host
        assert args == {k: v for k, v in reference["args"].items() if k != "tracking_uri"}
        assert set(auth) == {"token_file"}
    # In the pods the registry comes from the raylane-mlflow Secret, as MLFLOW_TRACKING_URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert ServeArgs.model_validate(config["applications"][0]["args"]).tracking_uri == "http://mlflow:5000"


def _token_file(rendered: dict[str, list[Doc]]) -> PurePosixPath:
    config = yaml.safe_load(_one(rendered, "serving", "RayService")["spec"]["serveConfigV2"])
    return PurePosixPath(config["applications"][0]["args"]["auth"]["token_file"])


def test_token_file_is_a_secret_volume_on_every_serving_pod(rendered) -> None:
    token_file = _token_file(rendered)
    secrets = {s["metadata"]["name"]: s for s in rendered["secrets"]}
    for template in _pods(_one(rendered, "serving", "RayService")):
        [mount] = [m for m in template["spec"]["containers"][0]["volumeMounts"]
                   if token_file.is_relative_to(m["mountPath"])]
        # A subPath mount would keep the first version of the file: rotation would never arrive.
        assert "subPath" not in mount and mount["readOnly"] is True
        [volume] = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
        key = str(token_file.relative_to(mount["mountPath"]))
        assert "items" not in volume["secret"] and key in secrets[volume["secret"]["secretName"]]["data"]


def test_a_rotated_secret_volume_reaches_the_endpoint_without_a_restart(rendered, tmp_path) -> None:
    from raylane.config import AuthConfig
    from raylane.serving.auth import TokenAuth

    # A Secret volume as kubelet writes it: the files in a timestamped folder, `..data` a symlink
    # to it, swapped in one rename when the Secret changes, and each key a symlink through `..data`.
    token_file = _token_file(rendered)
    mount = tmp_path / "auth"
    mount.mkdir()
    key = token_file.name

    def publish(stamp: str, text: str) -> None:
        (mount / stamp).mkdir()
        (mount / stamp / key).write_text(text)
        (mount / "..data_tmp").symlink_to(stamp)
        os.replace(mount / "..data_tmp", mount / "..data")
        if not (mount / key).is_symlink():
            (mount / key).symlink_to(f"..data/{key}")

    publish("..2026_12_03_10_00_00.1", "old-token-0123456789\n")
    auth = TokenAuth(AuthConfig(token_file=str(mount / key)))
    assert auth.check("Bearer old-token-0123456789") is None
    publish("..2026_12_03_11_00_00.2", "# rotated\nnew-token-0123456789\n")
    auth.reload()  # what each replica does every serve.poll_interval_s
    assert auth.check("Bearer new-token-0123456789") is None
    assert auth.check("Bearer old-token-0123456789") == "invalid bearer token"


def test_every_secret_the_pods_read_is_one_deploy_k8s_secrets_makes(rendered) -> None:
    made = {s["metadata"]["name"]: set(s["data"]) for s in rendered["secrets"]}
    read: set[str] = set()
    for pod in (pod for doc in _all(rendered) for pod in _pods(doc)):
        read |= {v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v}
        read |= {source["secretRef"]["name"] for c in pod["spec"]["containers"]
                 for source in c.get("envFrom", []) if "secretRef" in source}
    assert read == set(made)
    assert "MLFLOW_TRACKING_URI" in made["raylane-mlflow"]
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"} <= made["raylane-mlflow-server"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= made["raylane-s3"]


def test_podmonitor_scrapes_the_metrics_port_of_every_ray_pod(rendered) -> None:
    monitor = _one(rendered, "serving", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    groups = [group for doc in _all(rendered) if doc["kind"] in RAY_KINDS for group in _groups(doc)]
    assert len(groups) == 6  # head and workers of training, training-gpu and serving
    for group in groups:
        pod = group["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        # Ray's metrics agent listens on --metrics-export-port, which KubeRay sets to 8080.
        assert ports[endpoint["port"]] == int(group["rayStartParams"].get("metrics-export-port", 8080))


def test_grafana_dashboard_config_map_is_the_dashboard_files(rendered) -> None:
    config_map = _one(rendered, "serving", "ConfigMap")
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}  # Grafana's sidecar looks for it
    grafana = ROOT / "serve_apps" / "grafana"
    dashboards = [grafana / "raylane-serving.json", grafana / "raylane-training.json"]
    assert config_map["data"] == {dashboard.name: dashboard.read_text() for dashboard in dashboards}
