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
