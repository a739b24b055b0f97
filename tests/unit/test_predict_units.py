"""raylane predict's pure parts: CSV id typing, flag names in errors, the actor count against the
cluster's resources, and the error a Ray-wrapped actor error becomes."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from raylane import predict
from raylane.errors import ConfigError, DataError, TrackingError


@pytest.mark.parametrize(("ids", "expected"), [
    (["1", "2", "-30", "0"], pa.int64()),
    (["9223372036854775807", "-9223372036854775808"], pa.int64()),
    (["1", None, "3"], pa.int64()),
    (["007", "8"], pa.string()),                       # a leading zero is kept as written
    (["12345678901234567890123"], pa.string()),        # 23 digits: never a float
    (["9223372036854775808"], pa.string()),            # one past int64
    (["1.5", "2"], pa.string()),                       # never float64 for ids
    (["1e3"], pa.string()), (["+5"], pa.string()), ([" 5"], pa.string()), (["-0", "-01"], pa.string()),
    (["a1", "2"], pa.string()), ([None, None], pa.string()), ([], pa.string()),
])
def test_csv_ids_are_int64_only_when_every_id_is_a_canonical_int64(ids, expected) -> None:
    assert predict.csv_id_type(pd.Series(ids, dtype=object)) == expected


def test_every_config_field_has_its_flag_and_errors_name_it() -> None:
    assert set(predict.FLAGS) == set(predict.PredictConfig.model_fields)
    with pytest.raises(ConfigError, match=r"^--input: "):
        predict.config_from_flags(model="digits@champion", inputs=[], output="out")
    with pytest.raises(ConfigError, match=r"^--batch-size: "):
        predict.config_from_flags(model="digits@champion", inputs=["x"], output="out", batch_size=0)


def _cfg(**options) -> predict.PredictConfig:
    return predict.PredictConfig(model="digits@champion", inputs=["x"], output="out", **options)


def test_actors_are_checked_against_the_clusters_resources() -> None:
    two_cpus = {"CPU": 2.0}
    with pytest.raises(ConfigError, match=r"^--actors 8 x --cpus-per-actor 1: the cluster has 2 CPUs"):
        predict.fit_actors(_cfg(actors=8), 10, two_cpus)
    with pytest.raises(ConfigError, match=r"--cpus-per-actor 4: the cluster has 2 CPUs"):
        predict.fit_actors(_cfg(cpus_per_actor=4), 10, two_cpus)
    with pytest.raises(ConfigError, match=r"--gpus-per-actor 1: the cluster has 0 GPUs"):
        predict.fit_actors(_cfg(gpus_per_actor=1), 10, two_cpus)
    with pytest.raises(ConfigError, match=r"--actors 3 x --gpus-per-actor 1: the cluster has 2 GPUs"):
        predict.fit_actors(_cfg(actors=3, gpus_per_actor=1), 10, {"CPU": 8.0, "GPU": 2.0})
    assert predict.fit_actors(_cfg(actors=2), 10, two_cpus) == 2
    assert predict.fit_actors(_cfg(), 10, {"CPU": 5.0}) == 5
    assert predict.fit_actors(_cfg(), 3, {"CPU": 5.0}) == 3
    assert predict.fit_actors(_cfg(gpus_per_actor=0.5), 10, {"CPU": 8.0, "GPU": 2.0}) == 4
    # Shares are counted as Ray counts them, not as floats (1.0 // 0.1 == 9.0, 0.1 * 10 > 1.0):
    # ten actors of a tenth of a GPU share one GPU.
    one_gpu = {"CPU": 16.0, "GPU": 1.0}
    assert predict.fit_actors(_cfg(gpus_per_actor=0.1), 10, one_gpu) == 10
    assert predict.fit_actors(_cfg(actors=10, gpus_per_actor=0.1), 10, one_gpu) == 10
    assert predict.fit_actors(_cfg(gpus_per_actor=0.3), 10, one_gpu) == 3
    with pytest.raises(ConfigError, match=r"--actors 11 x --gpus-per-actor 0.1: the cluster has 1 GPUs"):
        predict.fit_actors(_cfg(actors=11, gpus_per_actor=0.1), 10, one_gpu)
    assert predict.fit_actors(_cfg(cpus_per_actor=0.1), 40, {"CPU": 3.0}) == 30
    # A GPU actor takes its CPUs too: the default count is what both allow.
    assert predict.fit_actors(_cfg(gpus_per_actor=0.01), 40, one_gpu) == 16


JOB = {"model": "digits@champion", "inputs": ["x"], "output": "out"}


def test_shares_ray_cannot_count_are_refused_naming_the_flag() -> None:
    for flag, field in (("--cpus-per-actor", "cpus_per_actor"), ("--gpus-per-actor", "gpus_per_actor")):
        with pytest.raises(ConfigError, match=rf"^{flag}: .*below the smallest share Ray counts \(0.0001\)"):
            predict.config_from_flags(**JOB, **{field: 0.00005})
        with pytest.raises(ConfigError, match=rf"^{flag}: .*finite"):
            predict.config_from_flags(**JOB, **{field: float("inf")})
    assert _cfg(cpus_per_actor=0.0001, gpus_per_actor=0.0001).gpus_per_actor == 0.0001


def test_a_torch_model_takes_the_gpu_only_where_it_was_given_one() -> None:
    from raylane.model.pyfunc import torch_device

    def no_cuda() -> bool:
        return False

    def cuda() -> bool:
        return True

    def never_asked() -> bool:
        raise AssertionError("CUDA was asked in a worker given no GPU")

    assert torch_device(None, no_cuda) == "cpu" and torch_device([0], no_cuda) == "cpu"
    assert torch_device(None, cuda) == "cuda"  # not a Ray worker: a user's loop, mlflow models serve
    assert torch_device([0], cuda) == "cuda"  # a Ray worker given a GPU
    assert torch_device([], never_asked) == "cpu"  # a worker given none: Ray 2.60 no longer hides GPUs


def test_a_ray_wrapped_actor_error_becomes_the_plain_raylane_error_with_its_message() -> None:
    from ray.exceptions import RayTaskError

    for kind in (DataError, ConfigError, TrackingError):
        cause = kind("f.csv line 4: column 'x': 'abc' is not a number")
        wrapped = RayTaskError("ScoreFiles.__call__", "Traceback (most recent call last):\n  ...\n"
                               f"{kind.__name__}: {cause}", cause).as_instanceof_cause()
        assert isinstance(wrapped, kind) and isinstance(wrapped, RayTaskError)
        got = predict._raylane_error(wrapped)
        assert type(got) is kind and str(got) == str(cause)
    text_only = RuntimeError("... raylane.errors.TrackingError: cannot read model 'm'")
    got = predict._raylane_error(text_only)
    assert type(got) is TrackingError and str(got) == "cannot read model 'm'"


def test_an_image_column_is_told_by_its_signature() -> None:
    from mlflow.types.schema import AnyType, ColSpec

    assert predict._is_image_column(ColSpec("string", "image", required=True))
    assert not predict._is_image_column(ColSpec(AnyType(), "colour", required=False))
    assert not predict._is_image_column(ColSpec("double", "x", required=True))
