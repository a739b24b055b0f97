"""The library's structure: no import circles, every module says what it owns, the library logs
instead of printing, and what a logged model loads needs neither Ray nor the training code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "raylane"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The raylane modules `path` imports anywhere in its body (lazy imports inside functions too:
    a circle closed at call time is a circle all the same)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    return {t for t in targets if t in modules and t != name}


def test_no_import_circle_inside_raylane() -> None:
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert not circles, "import circles inside raylane:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_every_module_opens_with_a_docstring_saying_what_it_owns() -> None:
    missing = [name for name, path in _modules().items()
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"modules without an opening docstring: {missing}"


def test_library_code_logs_and_only_the_cli_prints() -> None:
    printing = []
    for name, path in _modules().items():
        if name == "raylane.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{name}:{node.lineno}")
    assert not printing, f"print() in library code (use logging.getLogger(__name__)): {printing}"


def test_a_logged_model_loads_and_predicts_where_import_ray_fails(tmp_path) -> None:
    """A Serve replica, `mlflow.pyfunc.load_model` and `mlflow models serve` load only
    `raylane.model` (and what it needs): proven in a process where `import ray` raises. A tabular
    model needs no Pillow either (only image models pin it): blocked too."""
    import mlflow
    import torch
    from raylane.model.checkpoint import save_torch_state
    from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec
    from raylane.model.pyfunc import RaylaneClassifier, package_dir, write_preprocess
    from raylane.preprocess import Column, Preprocessor

    columns = [f"x{i}" for i in range(4)]
    preprocessor = Preprocessor([Column(c, "numeric", fill=0.0, mean=0.0, std=1.0) for c in columns])
    spec = ModelSpec(TORCH_MLP, "torch", InputSpec(4), OutputSpec("classification", 3),
                     {"hidden_size": 8, "num_layers": 1})
    network = spec.build()
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_torch_state(str(checkpoint), network, torch.optim.Adam(network.parameters()), 0, spec)
    preprocess = write_preprocess(str(tmp_path / "preprocess.json"), preprocessor, ["a", "b", "c"], "torch")
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=RaylaneClassifier(), code_paths=[package_dir()],
                             artifacts={"checkpoint": str(checkpoint), "preprocess": preprocess})

    script = textwrap.dedent(f"""
        import sys, importlib.abc
        class NoRay(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in ("ray", "PIL") or name.startswith(("ray.", "PIL.")):
                    raise ImportError(name + " is blocked in this process")
        sys.meta_path.insert(0, NoRay())
        import mlflow, numpy as np, pandas as pd
        model = mlflow.pyfunc.load_model({str(model_dir)!r})
        frame = pd.DataFrame(np.arange(12, dtype=float).reshape(3, 4), columns={columns!r})
        print(",".join(str(p) for p in model.predict(frame)))
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith((
            "ray.", "raylane.train", "raylane.serving", "raylane.tracking", "raylane.data", "raylane.tune")))
        print("LOADED", loaded)
    """)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions, loaded = done.stdout.strip().splitlines()[-2:]
    assert len(predictions.split(",")) == 3 and set(predictions.split(",")) <= {"a", "b", "c"}
    assert loaded == "LOADED []", loaded


@pytest.mark.parametrize("name", ["run", "load_config", "PipelineConfig", "PipelineResult"])
def test_the_curated_api_is_reachable_from_the_package(name) -> None:
    import raylane

    assert getattr(raylane, name) is not None and name in raylane.__all__


def test_a_model_logged_before_the_model_package_still_loads(tmp_path) -> None:
    """Versions registered by an earlier raylane pickle `raylane.mlflow_model.RaylaneClassifier`,
    and their files carry no format version: a rollback to one must still serve."""
    import json

    import mlflow
    import numpy as np
    import pandas as pd
    import torch
    from raylane import mlflow_model
    from raylane.model.checkpoint import SPEC_FILE, save_torch_state
    from raylane.model.network import TORCH_MLP, InputSpec, ModelSpec, OutputSpec

    columns = ["a", "b", "c"]
    spec = ModelSpec(TORCH_MLP, "torch", InputSpec(3), OutputSpec("classification", 2),
                     {"hidden_size": 4, "num_layers": 1, "dropout": 0.0})
    network = spec.build()
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_torch_state(str(checkpoint), network, torch.optim.Adam(network.parameters()), 0, spec)
    old_spec = {"input_dim": 3, "num_classes": 2, "hidden_size": 4, "num_layers": 1, "dropout": 0.0}
    (checkpoint / SPEC_FILE).write_text(json.dumps(old_spec))  # no format_version then
    preprocess = tmp_path / "preprocess.json"  # the oldest layout: numeric columns, no version
    preprocess.write_text(json.dumps({"feature_columns": columns, "mean": [0.0] * 3, "std": [1.0] * 3,
                                      "classes": [3, 7]}))
    cls = mlflow_model.RaylaneClassifier
    home = cls.__module__
    cls.__module__ = "raylane.mlflow_model"  # pickled by the path old versions name
    try:
        mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=cls(),
                                 artifacts={"checkpoint": str(checkpoint), "preprocess": str(preprocess)})
    finally:
        cls.__module__ = home
    assert b"raylane.mlflow_model" in (tmp_path / "model" / "python_model.pkl").read_bytes()
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    predictions = model.predict(pd.DataFrame(np.ones((2, 3)), columns=columns))
    assert set(predictions.tolist()) <= {3, 7} and len(predictions) == 2
