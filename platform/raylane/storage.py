"""Where checkpoints, Tune state and prepared datasets live: a local directory or a pyarrow URI."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

from raylane.errors import StorageError

logger = logging.getLogger(__name__)


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


def create_text(path: str, text: str) -> bool:
    """Writes a small file at a local path or URI if none is there; returns False if one is (another
    writer got there first, even at the same moment). Atomic on local storage (a hard link to a
    complete temp file, else an exclusive create) and on S3 (a conditional put, If-None-Match: *);
    on other filesystems only checked, then written."""
    fs, inner = split(path)
    try:
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            return _create_local(inner, text.encode())
        if isinstance(fs, getattr(pafs, "S3FileSystem", ())):
            created = _put_if_absent(path, inner, text.encode())
            if created is not None:
                return created
        logger.warning("%s: this filesystem cannot create a file only if absent; two writers starting "
                       "at the same moment may both write it", path)
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            return False
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot create {path}: {err}") from err
    write_text(path, text)
    return True


def _create_local(path: str, data: bytes) -> bool:
    temp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(temp, "xb") as out:
        out.write(data)
    try:
        os.link(temp, path)  # fails if `path` exists; readers never see it half written
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links
        try:
            with open(path, "xb") as out:
                out.write(data)
            return True
        except FileExistsError:
            return False
    finally:
        os.unlink(temp)


def _put_if_absent(uri: str, key_path: str, data: bytes) -> bool | None:
    """Puts the S3 object at `key_path` ('bucket/key') only if absent; returns whether it did, None
    without boto3 (pyarrow's S3 filesystem sends no conditional headers). Credentials and endpoint
    as pyarrow reads them from `uri` (its query options), else boto3's own defaults."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        logger.warning("boto3 is not installed: pip install boto3 to create run records on S3 atomically")
        return None
    bucket, _, key = key_path.partition("/")
    client = boto3.client("s3", config=Config(s3={"addressing_style": _s3_addressing(uri)}),
                          **_s3_client_options(uri))
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as err:
        # 412: the object exists; 409: another conditional put of it is in flight (S3 says: retry,
        # and that one would then find the object).
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412):
            return False
        if status == 501 or err.response.get("Error", {}).get("Code") == "NotImplemented":
            logger.warning("%s: this S3 store does not take conditional puts (If-None-Match)", uri)
            return None  # an older MinIO or Ceph: checked, then written
        raise OSError(str(err)) from err
    except BotoCoreError as err:
        raise OSError(str(err)) from err


def _s3_client_options(uri: str) -> dict[str, str]:
    """Returns boto3.client's arguments for the options of a pyarrow S3 URI."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    options = {}
    if endpoint := query.get("endpoint_override"):
        options["endpoint_url"] = endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}"
    if region := query.get("region"):
        options["region_name"] = region
    access, secret = query.get("access_key"), query.get("secret_key")
    if parts.username:  # s3://KEY:SECRET@bucket/path
        access, secret = unquote(parts.username), unquote(parts.password or "")
    if access and secret:
        options.update(aws_access_key_id=access, aws_secret_access_key=secret)
        if token := query.get("session_token"):
            options["aws_session_token"] = token
    return options


def _s3_addressing(uri: str) -> str:
    """Returns how boto3 should address the bucket: as pyarrow does, by path with an endpoint
    override (MinIO, moto, Ceph), else as the SDK decides, unless virtual addressing is forced."""
    from urllib.parse import parse_qs, urlsplit

    query = {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}
    if query.get("force_virtual_addressing", "").lower() in ("1", "true"):
        return "virtual"
    return "path" if query.get("endpoint_override") else "auto"


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
