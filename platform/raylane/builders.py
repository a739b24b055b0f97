"""The model builder a config names, checked before any work starts.

    builder = check_builder(cfg)                    # before Ray: imports, signature, params, search
    spec = model_spec(cfg, prepared, trial_params)  # the network one trial builds
    check_output(spec)                              # after the data stage: the output width

Every problem is a ConfigError naming `model.builder` or `model.params` (exit code 2), raised on
the driver, so a wrong builder never costs a Ray cluster, a trial or a failed worker group.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
from typing import Any

from raylane import env
from raylane._compat.ray import upload_py_modules
from raylane.config import HYPERPARAMETERS, PipelineConfig
from raylane.errors import ConfigError
from raylane.model.network import BUILTIN_BUILDERS, InputSpec, ModelSpec, OutputSpec, resolve_builder

SIGNATURE = "build(inputs, outputs, **params)"


def builder_path(cfg: PipelineConfig) -> str:
    """The configured builder, or the built-in MLP of the backend."""
    return cfg.model.builder or BUILTIN_BUILDERS[cfg.train.backend]


def check_builder(cfg: PipelineConfig) -> Any:
    """Returns the builder function after checking that it imports, takes (inputs, outputs) and
    accepts every model.params entry and every value the search may give one."""
    path = builder_path(cfg)
    builder = _import(path)
    accepted, required = _keyword_params(path, builder)
    given = dict(cfg.model.params)
    searched = {name: dim for name, dim in cfg.tune.search_space.items() if name not in HYPERPARAMETERS}
    missing = [name for name in required if name not in given and name not in searched]
    if missing:
        raise ConfigError(f"model.params: model builder {path!r} requires {', '.join(missing)} "
                          "(no default); give them under model.params")
    for name in [*given, *searched]:
        if accepted is not None and name not in accepted:
            where = "model.params" if name in given else "tune.search_space"
            raise ConfigError(f"{where}.{name}: not a parameter of model builder {path!r}; it accepts "
                              f"{', '.join(accepted) or 'no params'}"
                              + ("" if where == "model.params" else
                                 f" (or a train field: {', '.join(HYPERPARAMETERS)})"))
    signature = _signature(builder)
    for name, value in given.items():
        _check_value(path, signature, f"model.params.{name}", name, value)
    for name, dim in searched.items():
        for value in dim.choice if dim.choice is not None else _bounds(dim):
            _check_value(path, signature, f"tune.search_space.{name}", name, value)
    return builder


def code_location(cfg: PipelineConfig) -> str | None:
    """The builder's code as a path to ship: its top-level package's directory, or its module's
    file; None for raylane's own builders (raylane travels by itself). Call after `check_builder`."""
    top = builder_path(cfg).partition(":")[0].split(".")[0]
    if top == "raylane":
        return None
    module = importlib.import_module(top)
    locations = list(getattr(module, "__path__", None) or [])
    if locations:
        return os.path.abspath(locations[0])
    return os.path.abspath(module.__file__) if getattr(module, "__file__", None) else None


def worker_runtime_env(cfg: PipelineConfig) -> dict[str, Any]:
    """The runtime env the Train workers need to import the builder, on top of the job's.

    Nothing when they can import it already (`worker_code`), or when the job's own runtime env
    carries it (`raylane.cluster.connect` started or joined Ray with it: the job keeps it for its
    whole life). Otherwise Ray was started by something else (a notebook's or a test's `ray.init`):
    the code is uploaded from here and the workers get its URI. Ray keeps such an upload for 10
    minutes unless a job references it, so a long run on a multi-node cluster is safer with the
    code in that `ray.init`'s runtime env (see README)."""
    import ray

    code = worker_code(cfg)
    if not code or ray.get_runtime_context().runtime_env.get("py_modules"):
        return {}
    return {"py_modules": upload_py_modules(code)}


def worker_code(cfg: PipelineConfig) -> list[str]:
    """What Ray's workers need shipped to import the builder (runtime_env py_modules): its code,
    unless it is an installed package (the nodes then have it) or the working directory of the
    submitted job this driver runs in (`ray job submit --working-dir`, which ships it already)."""
    location = code_location(cfg)
    if location is None:
        return []
    installed = {os.path.abspath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    if any(location.startswith(root + os.sep) for root in installed):
        return []
    if env.RAY_JOB_SUBMISSION_ID.get() and location.startswith(os.path.abspath(os.getcwd()) + os.sep):
        return []
    return [location]


def model_spec(cfg: PipelineConfig, prepared: Any, trial_params: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of the network a trial builds: the data's shapes, model.params with the trial's
    searched values on top."""
    image = getattr(prepared, "image_shape", None)
    inputs = (InputSpec(prepared.input_dim, *image) if image else InputSpec(prepared.input_dim))
    regression = prepared.task == "regression"
    outputs = OutputSpec(prepared.task, 1 if regression else len(prepared.classes),
                         [] if regression else _plain(prepared.classes))
    searched = {k: v for k, v in (trial_params or {}).items() if k not in HYPERPARAMETERS}
    params = {**cfg.model.params, **searched}
    return ModelSpec(builder_path(cfg), cfg.train.backend, inputs, outputs, params)


def check_output(spec: ModelSpec) -> None:
    """Builds the network once on the driver and runs two zero rows through it: ConfigError when it
    is not a model of the backend or its output is not [rows, classes] (regression: [rows, 1])."""
    try:
        network = spec.build()
    except Exception as err:
        raise ConfigError(f"model.builder {spec.builder!r} failed for inputs {_shape(spec)} and "
                          f"{spec.outputs.size} outputs: {type(err).__name__}: {err}") from err
    try:
        width = _output_width(spec, network)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"model.builder {spec.builder!r}: the model fails on input of shape "
                          f"[2, {', '.join(map(str, spec.inputs.shape(spec.framework)))}]: "
                          f"{type(err).__name__}: {err}") from err
    if width != spec.outputs.size:
        want = "1 value (regression)" if spec.outputs.task == "regression" else \
            f"{spec.outputs.size} classes {_preview(spec.outputs.classes)}"
        got = f"{width} values per row" if isinstance(width, int) else f"shape {width} for 2 rows"
        raise ConfigError(f"model.builder {spec.builder!r}: the model outputs {got}; the data has "
                          f"{want}: end with one value per output, [rows, outputs.size]")


def _import(path: str) -> Any:
    module, _, _ = path.partition(":")
    if module.split(".")[0] == "__main__":
        raise ConfigError(f"model.builder {path!r}: a builder in the script or notebook being run "
                          "cannot reach the workers or the logged model; define it in a .py module "
                          "and name it as 'module:function'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append("")  # the working directory, as under `python -m`; a console script lacks it
    try:
        builder = resolve_builder(path)
    except ModuleNotFoundError as err:
        if err.name and not module.startswith(err.name):  # the module imports something missing
            raise ConfigError(f"model.builder {path!r}: importing {module!r} failed: {err}") from err
        missing = f"module {err.name!r} not found" if err.name else str(err)
        raise ConfigError(f"model.builder {path!r}: {missing} (is it importable from the working "
                          "directory or an installed package?)") from err
    except AttributeError as err:
        raise ConfigError(f"model.builder {path!r}: {module!r} has no {path.partition(':')[2]!r}") from err
    except Exception as err:  # the user's module itself fails to import
        raise ConfigError(f"model.builder {path!r}: importing {module!r} failed: "
                          f"{type(err).__name__}: {err}") from err
    if not callable(builder):
        raise ConfigError(f"model.builder {path!r}: not a function ({type(builder).__name__}); "
                          f"expected {SIGNATURE}")
    return builder


def _keyword_params(path: str, builder: Any) -> tuple[list[str] | None, list[str]]:
    """(the keyword parameters the builder accepts, None for any as it takes **params; those
    without a default, which model.params must give); ConfigError
    when it cannot be called as build(inputs, outputs, **params)."""
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.builder {path!r}: cannot read its signature ({err})") from err
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    if len(positional) < 2 and not varargs:
        raise ConfigError(f"model.builder {path!r}: takes ({', '.join(p.name for p in parameters)}); "
                          f"expected {SIGNATURE}: the input spec and the output spec first")
    required = [p.name for p in positional[2:] if p.default is p.empty] + \
        [p.name for p in parameters if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None, required
    keywords = [p.name for p in positional[2:]] + [p.name for p in parameters if p.kind == p.KEYWORD_ONLY]
    return keywords, required


def _check_value(path: str, signature: inspect.Signature, where: str, name: str, value: Any) -> None:
    """ConfigError when `value` does not fit the builder's annotation of `name` (when it has one
    that pydantic understands: int, float, Annotated constraints, Literal...)."""
    from pydantic import TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    parameter = signature.parameters.get(name)
    if parameter is None or parameter.annotation is parameter.empty or isinstance(parameter.annotation, str):
        return
    try:
        TypeAdapter(parameter.annotation).validate_python(value, strict=isinstance(value, float))
    except PydanticSchemaGenerationError:
        return
    except ValidationError as err:
        problem = err.errors()[0]["msg"]
        raise ConfigError(f"{where}: {value!r}: {problem[0].lower()}{problem[1:]} "
                          f"(model builder {path!r})") from None


def _signature(builder: Any) -> inspect.Signature:
    """The builder's signature with string annotations (`from __future__ import annotations`)
    evaluated where they can be."""
    try:
        return inspect.signature(builder, eval_str=True)
    except Exception:  # an annotation that does not evaluate: then it is not checked
        return inspect.signature(builder)


def probe_params(cfg: PipelineConfig) -> dict[str, Any]:
    """One value of each searched model param (its first choice or its lower bound): with
    model.params, what `check_output` builds (a required param may be given by the search only)."""
    return {name: (dim.choice[0] if dim.choice is not None else _bounds(dim)[0])
            for name, dim in cfg.tune.search_space.items() if name not in HYPERPARAMETERS}


def _bounds(dim: Any) -> list[Any]:
    if dim.randint is not None:
        return [dim.randint[0], dim.randint[1] - 1]
    return list(dim.loguniform or dim.uniform)


def _output_width(spec: ModelSpec, network: Any) -> int | list[int]:
    """The width of the network's output for two zero rows, or its whole shape when not 2-D."""
    if spec.framework == "torch":
        import torch

        if not isinstance(network, torch.nn.Module):
            raise ConfigError(f"model.builder {spec.builder!r} returned a {type(network).__name__}; "
                              "train.backend torch needs a torch.nn.Module")
        with torch.no_grad():
            network.eval()
            out = network(torch.zeros((2, *spec.inputs.shape("torch"))))
        return int(out.shape[-1]) if out.ndim == 2 else list(out.shape)
    import keras

    if not isinstance(network, keras.Model):
        raise ConfigError(f"model.builder {spec.builder!r} returned a {type(network).__name__}; "
                          "train.backend tensorflow needs a Keras model")
    import numpy as np

    out = network(np.zeros((2, *spec.inputs.shape("tensorflow")), dtype=np.float32), training=False)
    return int(out.shape[-1]) if len(out.shape) == 2 else list(out.shape)


def _shape(spec: ModelSpec) -> str:
    return "[" + ", ".join(map(str, spec.inputs.shape(spec.framework))) + "]"


def _preview(classes: list[Any]) -> str:
    return f"({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''})" if classes else ""


def _plain(classes: list[Any]) -> list[Any]:
    """Class labels as JSON values (numpy scalars become Python ones)."""
    return [c.item() if hasattr(c, "item") else c for c in classes]
