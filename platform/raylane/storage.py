"""Where checkpoints, Tune state and prepared datasets live: a local directory or a pyarrow URI."""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs


def local_or_uri(path: str) -> str:
    """Returns a URI unchanged, and a local path made absolute (workers run in other directories)."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def run_directory_exists(storage_path: str, run_name: str) -> bool:
    """Returns True if a pipeline run of this name already left state in storage."""
    if "://" in storage_path:
        fs, root = pafs.FileSystem.from_uri(storage_path)
    else:
        fs, root = pafs.LocalFileSystem(), storage_path
    return fs.get_file_info(posixpath.join(root, run_name)).type != pafs.FileType.NotFound
