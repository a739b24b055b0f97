"""The storage check the pipeline runs before any work: an unusable storage_path fails at once,
naming the path, instead of when the first checkpoint is written."""

from __future__ import annotations

import os

import pytest
from raylane.errors import StorageError
from raylane.storage import check_storage


def test_writable_local_path_passes_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "runs"
    check_storage(str(target))
    assert target.is_dir() and os.listdir(target) == []


def test_unwritable_path_fails_naming_it(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match=f"storage_path '{blocker}/runs' is not writable"):
        check_storage(str(blocker / "runs"))


def test_create_text_creates_once_and_never_half_written(tmp_path) -> None:
    from raylane.storage import create_text

    path = str(tmp_path / "run" / "run.json")
    assert create_text(path, "first") is True
    assert create_text(path, "second") is False
    assert (tmp_path / "run" / "run.json").read_text() == "first"
    assert os.listdir(tmp_path / "run") == ["run.json"]


@pytest.mark.parametrize(("uri", "options", "addressing"), [
    ("s3://b/p", {}, "auto"),
    ("s3://b/p?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1",
     {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}, "path"),
    ("s3://b/p?endpoint_override=https://minio.example&access_key=AK&secret_key=SK&session_token=T",
     {"endpoint_url": "https://minio.example", "aws_access_key_id": "AK", "aws_secret_access_key": "SK",
      "aws_session_token": "T"}, "path"),
    ("s3://AK:S%2FK@b/p?force_virtual_addressing=true",
     {"aws_access_key_id": "AK", "aws_secret_access_key": "S/K"}, "virtual"),
])
def test_the_conditional_put_reaches_s3_as_pyarrow_does(uri, options, addressing) -> None:
    from raylane.storage import _s3_addressing, _s3_client_options

    assert _s3_client_options(uri) == options and _s3_addressing(uri) == addressing
