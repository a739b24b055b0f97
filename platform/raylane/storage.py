"""Where checkpoints, Tune state and prepared datasets live: a local directory or a pyarrow URI."""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterator

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


def filesystem(storage_path: str) -> pafs.FileSystem:
    """Returns the pyarrow filesystem of a storage path (local, or the URI's, query options included)."""
    return pafs.FileSystem.from_uri(storage_path)[0] if "://" in storage_path else pafs.LocalFileSystem()


def path_exists(path: str, fs: pafs.FileSystem | None = None) -> bool:
    """Returns True if `path` (inside `fs`, or a local path) names an existing file or directory.

    Ray Train reports checkpoint paths inside the storage filesystem, without a URI scheme."""
    try:
        return (fs or pafs.LocalFileSystem()).get_file_info(path).type != pafs.FileType.NotFound
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def local_copy(path: str, storage_path: str) -> Iterator[str]:
    """Yields a local directory holding the checkpoint at `path` (copied when storage is remote)."""
    fs = filesystem(storage_path)
    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory() as local:
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield local
