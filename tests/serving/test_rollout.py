"""Following the registry: a canary share per version, and `raylane promote` / `rollback` moving
the champion under continuous load with no failed request and no restart of the endpoint."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import httpx
import pytest
from raylane.config import CanaryConfig, ModelConfig, ServeConfig
from raylane.serving import deploy

from tests.load import Load

CANARY_PERCENT = 10


@pytest.fixture(scope="module")
def endpoint(registry, serve_port):
    cfg = ServeConfig(port=serve_port, canary=CanaryConfig(alias="challenger", percent=CANARY_PERCENT),
                      poll_interval_s=1.0)
    url = deploy.deploy(cfg, ModelConfig(name="digits"), registry["uri"])
    yield {**registry, "url": url, "cfg": cfg}
    deploy.remove("digits")  # the session's endpoint serves the next module's models alone


def raylane(*args: str, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylane", *args, "--tracking-uri", uri],
                          capture_output=True, text=True, timeout=120)


def test_canary_gets_its_percent_of_requests(endpoint) -> None:
    row = endpoint["rows"][0].tolist()
    with httpx.Client(base_url=endpoint["url"], timeout=30) as client:
        answers = [client.post("/v1/models/digits:predict", json={"instances": [row]}) for _ in range(1000)]
    versions = [a.headers["x-model-version"] for a in answers]
    share = 100 * versions.count(endpoint["challenger"]) / len(versions)
    assert abs(share - CANARY_PERCENT) <= 5, collections.Counter(versions)
    assert set(versions) == {endpoint["champion"], endpoint["challenger"]}


def test_promote_is_gated_and_recorded(endpoint) -> None:
    client, champion, challenger = endpoint["client"], endpoint["champion"], endpoint["challenger"]
    # Make the gate's comparison certain: the challenger scores below the champion.
    score = float(client.get_model_version("digits", champion).tags["test_accuracy"])
    client.set_model_version_tag("digits", challenger, "test_accuracy", f"{score - 0.05:.6f}")
    refused = raylane("promote", "digits", challenger, uri=endpoint["uri"])
    assert refused.returncode == 1 and "is below" in refused.stderr and "--force" in refused.stderr
    assert str(client.get_model_version_by_alias("digits", "champion").version) == champion
    missing = raylane("promote", "digits", "999", uri=endpoint["uri"])
    assert missing.returncode == 1 and "no version '999'" in missing.stderr


def test_promote_and_rollback_switch_versions_under_load_without_errors(endpoint) -> None:
    client, champion, challenger = endpoint["client"], endpoint["champion"], endpoint["challenger"]
    with Load(endpoint["url"], endpoint["rows"][0].tolist()) as load:
        time.sleep(2)
        promoted = raylane("promote", "digits", challenger, "--force", uri=endpoint["uri"])
        assert promoted.returncode == 0, promoted.stderr
        assert f"digits@champion -> v{challenger} (was v{champion})" in promoted.stdout
        load.wait_for(challenger)

        rolled = raylane("rollback", "digits", uri=endpoint["uri"])
        assert rolled.returncode == 0, rolled.stderr
        # Redeploying with the same settings switches in place too, instead of restarting replicas.
        deploy.deploy(endpoint["cfg"], ModelConfig(name="digits"), endpoint["uri"])
        load.wait_for(champion, share=0.7)  # the challenger alias still takes its canary share
    statuses = collections.Counter(status for _, status, _ in load.answers)
    assert set(statuses) == {200}, statuses
    assert len(load.answers) > 100
    history = json.loads(client.get_registered_model("digits").tags["raylane.champion.history"])
    assert [h["action"] for h in history][-2:] == ["promote (forced)", "rollback"]
    assert history[-1]["version"] == champion and history[-1]["previous"] == challenger
    version = client.get_model_version("digits", challenger)
    assert version.tags["raylane.promotion"].endswith("(forced)")
