"""Where checkpoints, Tune state and prepared datasets live: a local directory or a pyarrow URI."""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

from raylane.errors import StorageError


def local_or_uri(path: str) -> str:
    """Returns a URI unchanged, and a local path made absolute (workers run in other directories)."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def join(storage_path: str, *parts: str) -> str:
    """Returns `storage_path` with `parts` appended, keeping a URI's query options (endpoint_override=...)
    at the end where pyarrow reads them."""
    if "://" not in storage_path:
        return posixpath.join(storage_path, *parts)
    base, sep, query = storage_path.partition("?")
    return posixpath.join(base, *parts) + sep + query


def split(storage_path: str) -> tuple[pafs.FileSystem, str]:
    """Returns the pyarrow filesystem of a local path or URI and the path inside it."""
    if "://" in storage_path:
        return pafs.FileSystem.from_uri(storage_path)
    return pafs.LocalFileSystem(), storage_path


def list_names(path: str) -> list[str]:
    """Returns the names of the entries in the directory at a local path or URI ([] if none)."""
    fs, inner = split(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    return [posixpath.basename(info.path) for info in fs.get_file_info(pafs.FileSelector(inner))]


def read_text(path: str) -> str | None:
    """Returns the text of the file at a local path or URI, None if there is none."""
    fs, inner = split(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_text(path: str, text: str) -> None:
    """Writes a small file at a local path or URI, whole or not at all (temp file, then rename)."""
    fs, inner = split(path)
    temp = f"{inner}.{uuid.uuid4().hex}.tmp"
    try:
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        with fs.open_output_stream(temp) as out:
            out.write(text.encode())
        fs.move(temp, inner)
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot write {path}: {err}") from err


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


def check_storage(storage_path: str) -> None:
    """Fails early, naming the path, if the storage path cannot hold checkpoints for this cluster:
    not writable, or (a local path on several nodes) not the same directory on every node, where
    Ray Train would only fail at the end, when checkpoints written on one node are read on another."""
    fs, root = split(storage_path)
    probe = posixpath.join(root, f".raylane-probe-{uuid.uuid4().hex}")
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"raylane")
    except (OSError, ValueError) as err:
        raise StorageError(f"storage_path {storage_path!r} is not writable: {err}") from err
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            blind = _nodes_not_seeing(probe)
            if blind:
                raise StorageError(
                    f"storage_path {storage_path!r} is local to this node: the Ray nodes at {blind} do "
                    "not see the files written there. Use storage every node shares: s3://bucket/path "
                    "(or another pyarrow URI), or a directory mounted at the same path on every node")
    finally:
        try:
            fs.delete_file(probe)
        except OSError:
            pass


def _nodes_not_seeing(path: str) -> list[str]:
    """Returns the addresses of the other alive Ray nodes on which `path` does not exist."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        return []
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not others:
        return []

    @ray.remote(num_cpus=0)
    def exists(p: str) -> bool:
        return os.path.exists(p)

    checks = [exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
              .remote(path) for n in others]
    return [n["NodeManagerAddress"] for n, seen in zip(others, ray.get(checks, timeout=120), strict=True)
            if not seen]
