"""cluster.yaml is a launcher config that Ray's own validation accepts."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_ray_validation() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs; raises on a schema error
    assert config["head_node_type"] in config["available_node_types"]


def test_cluster_installs_raylane_on_every_node() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert config["file_mounts"]["~/raylane"] == "."
    assert any("pip install" in c and "raylane" in c for c in config["setup_commands"])
