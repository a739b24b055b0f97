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


def path_exists(path: str) -> bool:
    """Returns True if a local path or a pyarrow URI names an existing file or directory."""
    try:
        if "://" in path:
            fs, inner = pafs.FileSystem.from_uri(path)
        else:
            fs, inner = pafs.LocalFileSystem(), path
        return fs.get_file_info(inner).type != pafs.FileType.NotFound
    except (OSError, ValueError):
        return False
