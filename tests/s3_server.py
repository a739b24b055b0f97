"""An S3-compatible server (moto) on 127.0.0.1 for the tests that read or write `s3://` URIs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.fs as pafs

from tests.conftest import AWS, free_port


@contextlib.contextmanager
def s3_bucket(bucket: str) -> Iterator[dict]:
    """Starts moto with one bucket; yields {"options": URI query string, "fs": its filesystem}.
    A URI is `s3://{bucket}/path?{options}`."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.3)
        # Objects stay under pyarrow's multipart threshold with allow_delayed_open (moto 5.2 answers
        # pyarrow's CompleteMultipartUpload in a way the AWS SDK rejects; real S3 does not need it).
        options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1&allow_delayed_open=true"
        os.environ.update(AWS)  # (conftest sets them before Ray starts, for its workers)
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{options}&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield {"options": options, "fs": fs}
    finally:
        server.kill()
