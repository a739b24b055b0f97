"""`raylane predict` on the session's Ray: predictions equal to the MLflow model's own `predict`, row
for row, on Parquet and CSV, local and S3 (moto); bad rows under both policies; a rerun that skips
finished files and redoes a partial one; the command line as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
from raylane import cli, predict
from raylane.config import PipelineConfig, TrackingConfig
from raylane.errors import ConfigError, DataError, ModelNotFoundError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scoring(registry):
    """The champion loaded as a user loads it, and raw test rows with an id column."""
    import mlflow

    mlflow.set_tracking_uri(registry["uri"])
    uri = f"models:/digits/{registry['champion']}"
    columns = list(registry["prepared"].feature_columns)
    frame = pd.DataFrame(registry["rows"], columns=columns)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64) + 1000)
    return {"model": mlflow.pyfunc.load_model(uri), "frame": frame, "columns": columns,
            "pipeline": PipelineConfig(tracking=TrackingConfig(tracking_uri=registry["uri"]))}


def _run(scoring, inputs: list[str], output: str, **options) -> predict.PredictResult:
    cfg = predict.PredictConfig(model="digits@champion", inputs=inputs, output=output,
                                actors=options.pop("actors", 1), **options)
    return predict.run(cfg, scoring["pipeline"])


def _write_parts(frame: pd.DataFrame, directory: Path, fmt: str, parts: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, index in enumerate(np.array_split(np.arange(len(frame)), parts)):
        path = directory / f"part-{i}.{fmt}"
        part = frame.iloc[index]
        part.to_parquet(path) if fmt == "parquet" else part.to_csv(path, index=False)
        paths.append(path)
    return paths


def _check_equal(scoring, given: pd.DataFrame, scored: pd.DataFrame, probabilities: bool) -> None:
    """The output equals the logged model's own predict on the same raw rows."""
    model, columns = scoring["model"], scoring["columns"]
    assert list(scored["id"]) == list(given["id"])
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), model.predict(given[columns]))
    if probabilities:
        expected = model.predict(given[columns], params={"return_probabilities": True})
        got = scored[[f"probability_{c}" for c in range(10)]].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_parquet_and_csv_predictions_equal_the_models_own_predict_row_for_row(scoring, tmp_path) -> None:
    frame = scoring["frame"]
    for fmt in ("parquet", "csv"):
        inputs = _write_parts(frame, tmp_path / fmt, fmt, parts=3)
        given = str(tmp_path / fmt / "*.csv") if fmt == "csv" else str(tmp_path / fmt)  # a glob, a folder
        result = _run(scoring, [given], str(tmp_path / f"out-{fmt}"), probabilities=True, actors=2)
        assert result.rows == len(frame) and result.bad_rows == 0 and sorted(result.scored) == \
            sorted(str(p) for p in inputs)
        for path in inputs:
            given = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
            scored = pd.read_parquet(tmp_path / f"out-{fmt}" / predict.output_name(str(path)))
            _check_equal(scoring, given, scored, probabilities=True)
        assert scored["id"].dtype == np.int64  # whole-number ids stay numbers, from CSV too
        assert sorted(os.listdir(tmp_path / f"out-{fmt}")) == sorted(
            [predict.MANIFEST, *(predict.output_name(str(p)) for p in inputs)])


def test_s3_parquet_and_csv_in_and_out(scoring, tmp_path) -> None:
    from tests.s3_server import s3_bucket

    frame = scoring["frame"]
    with s3_bucket("scores") as s3:
        options, fs = s3["options"], s3["fs"]
        for fmt in ("parquet", "csv"):
            local = _write_parts(frame, tmp_path / fmt, fmt, parts=2)
            for path in local:
                pafs.copy_files(str(path), f"scores/in-{fmt}/{path.name}", destination_filesystem=fs)
            output = f"s3://scores/out-{fmt}?{options}"
            result = _run(scoring, [f"s3://scores/in-{fmt}/?{options}"], output)
            assert result.rows == len(frame)
            for path in local:
                given = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
                name = predict.output_name(f"s3://scores/in-{fmt}/{path.name}")
                with fs.open_input_file(f"scores/out-{fmt}/{name}") as f:
                    _check_equal(scoring, given, pd.read_parquet(f), probabilities=False)


def _with_bad_value(scoring, tmp_path: Path) -> tuple[Path, Path]:
    """Two CSV files; the second has 'abc' in its third data row (line 4), column 5."""
    good, bad = _write_parts(scoring["frame"], tmp_path / "bad-in", "csv", parts=2)
    lines = bad.read_text().splitlines()
    fields = lines[3].split(",")
    fields[5] = "abc"
    lines[3] = ",".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    return good, bad


def test_a_bad_row_fails_naming_file_line_and_column_or_is_dropped_and_counted(scoring, tmp_path) -> None:
    good, bad = _with_bad_value(scoring, tmp_path)
    column = pd.read_csv(good).columns[5]
    with pytest.raises(DataError) as failed:
        _run(scoring, [str(tmp_path / "bad-in")], str(tmp_path / "fail"))
    message = str(failed.value)
    assert f"{bad} line 4: column {column!r}: 'abc' is not a number" in message, message
    assert "--on-bad-rows drop" in message
    assert type(failed.value) is DataError and "Traceback" not in message  # not Ray's wrapper class
    assert predict.output_name(str(bad)) not in os.listdir(tmp_path / "fail")  # never counted as done

    result = _run(scoring, [str(tmp_path / "bad-in")], str(tmp_path / "drop"), on_bad_rows="drop")
    assert result.bad_rows == 1 and result.rows == len(scoring["frame"]) - 1
    assert result.bad_sample == [f"{bad} line 4: column {column!r}: 'abc' is not a number"]
    given = pd.read_csv(bad)
    given = given[pd.to_numeric(given[column], errors="coerce").notna()].astype({column: float})
    _check_equal(scoring, given.reset_index(drop=True),
                 pd.read_parquet(tmp_path / "drop" / predict.output_name(str(bad))), probabilities=False)


def test_a_rerun_skips_finished_files_and_redoes_a_partial_one(scoring, tmp_path) -> None:
    inputs = _write_parts(scoring["frame"], tmp_path / "in", "parquet", parts=3)
    output = tmp_path / "in" / "scores"  # under the --input directory: its files are not inputs
    _run(scoring, [str(tmp_path / "in")], str(output))
    finished = {p: (output / predict.output_name(str(p))).stat().st_mtime_ns for p in inputs}
    # What a run killed while writing the last file leaves: its output half-written under _tmp only.
    last = output / predict.output_name(str(inputs[-1]))
    last.unlink()
    (output / predict.TEMP_DIR).mkdir()
    (output / predict.TEMP_DIR / f"{last.name}.0123").write_bytes(b"PAR1 half a file")

    result = _run(scoring, [str(tmp_path / "in")], str(output))
    assert result.skipped == [str(p) for p in inputs[:-1]] and result.scored == [str(inputs[-1])]
    assert all((output / predict.output_name(str(p))).stat().st_mtime_ns == finished[p] for p in inputs[:-1])
    assert not (output / predict.TEMP_DIR).exists() or not os.listdir(output / predict.TEMP_DIR)
    _check_equal(scoring, pd.read_parquet(inputs[-1]), pd.read_parquet(last), probabilities=False)

    again = _run(scoring, [str(tmp_path / "in")], str(output))  # all done: Ray is not even used
    assert again.scored == [] and len(again.skipped) == 3
    with pytest.raises(ConfigError, match="would mix"):  # other options into the same output
        _run(scoring, [str(tmp_path / "in")], str(output), probabilities=True)


def test_clear_errors_before_any_scoring(scoring, registry, tmp_path) -> None:
    inputs = _write_parts(scoring["frame"], tmp_path / "in", "parquet", parts=1)
    pipeline = scoring["pipeline"]

    def plan(model: str = "digits@champion", **options) -> None:
        cfg = predict.PredictConfig(model=model, inputs=options.pop("inputs", [str(inputs[0])]),
                                    output=options.pop("output", str(tmp_path / "out")), **options)
        predict.run(cfg, pipeline)

    with pytest.raises(ModelNotFoundError, match="no registered model 'nope'.*registered: digits"):
        plan("nope@champion")
    with pytest.raises(ModelNotFoundError, match="has no alias 'gold'.*champion->v"):
        plan("digits@gold")
    with pytest.raises(ModelNotFoundError, match="has no version 99"):
        plan("digits/99")
    with pytest.raises(ConfigError, match="names no version"):
        plan("digits")
    with pytest.raises(DataError, match="--input: no data files match"):
        plan(inputs=[str(tmp_path / "in" / "*.csv")])
    scoring["frame"].head(3).to_csv(tmp_path / "in" / "extra.csv", index=False)
    with pytest.raises(DataError, match="mixed formats"):
        plan(inputs=[str(tmp_path / "in")])
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(ConfigError, match=r"cat\.png is an image file; raylane predict does not score"):
        plan(inputs=[str(tmp_path / "img")])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "report.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a raylane predict output"):
        plan(output=str(tmp_path / "taken"))


def test_the_command_line_scores_with_a_progress_line_and_ray_output_in_a_log_file(
        scoring, registry, ray_local, tmp_path) -> None:
    inputs = _write_parts(scoring["frame"], tmp_path / "in", "parquet", parts=2)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "pipelines.predict", "--model", f"digits/{registry['champion']}",
               "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--actors", "1",
               "--tracking-uri", registry["uri"], "--probabilities"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    terminal = done.stdout + done.stderr
    assert done.returncode == 0, terminal[-3000:]
    assert "Ray's output goes to" in terminal and "2/2 files" in terminal, terminal
    assert f"scored {len(scoring['frame'])} rows from 2 files" in terminal, terminal
    for path in inputs:
        _check_equal(scoring, pd.read_parquet(path),
                     pd.read_parquet(tmp_path / "out" / predict.output_name(str(path))), probabilities=True)
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "skipped 2 files already scored" in rerun.stdout, rerun.stdout

    bad_flag = subprocess.run([*command[:3], "--model", "digits"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert bad_flag.returncode == 2 and "--input" in bad_flag.stderr, bad_flag.stderr


def test_bad_flags_exit_2_naming_the_flag(registry, tmp_path, capsys) -> None:
    base = ["predict", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--tracking-uri",
            registry["uri"]]
    assert cli.main([*base, "--model", "digits"]) == 2
    assert "--model: 'digits' names no version" in capsys.readouterr().err
    for flag, value in (("--actors", "0"), ("--batch-size", "-5"), ("--gpus-per-actor", "x"),
                        ("--on-bad-rows", "skip")):
        with pytest.raises(SystemExit) as exited:
            cli.main([*base, "--model", "digits@champion", flag, value])
        assert exited.value.code == 2
        assert flag in capsys.readouterr().err


def test_ray_workers_report_the_gpus_ray_gave_them_and_other_processes_none(ray_local) -> None:
    """What the pyfunc model's device choice reads: [] in a worker given no GPU (which then keeps
    its model on the CPU even where CUDA is visible), None in the driver (a notebook's loop)."""
    from raylane.model import pyfunc

    assert pyfunc._ray_gpu_ids() is None
    assert ray_local.get(ray_local.remote(num_cpus=0)(pyfunc._ray_gpu_ids).remote()) == []
