"""A real S3-compatible server on loopback: moto's server mode, as s3fs's own suite uses it, never a mocked client.

The driver and the workers reach it the way they reach any S3, through the standard environment
(``AWS_ENDPOINT_URL`` and the key pair), which ``s3_server`` sets for this process and so for every child. No
developer's own AWS configuration is consulted (empty config and credentials files), and never the instance
metadata service (off loopback).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import s3fs
from moto.server import ThreadedMotoServer

from tests.support.processes import free_port


@dataclass(frozen=True)
class S3:
    endpoint: str
    fs: s3fs.S3FileSystem  # this process's own client, to make buckets and look at objects

    def put(self, uri: str, data: bytes) -> None:
        self.fs.pipe_file(uri, data)

    def get(self, uri: str) -> bytes:
        return self.fs.cat_file(uri)

    def keys(self, prefix: str) -> list[str]:
        """``s3://…`` URIs of the objects under ``prefix``, sorted (listed afresh: no cache)."""
        self.fs.invalidate_cache()
        return sorted(f"s3://{key}" for key in self.fs.find(prefix))


@contextmanager
def s3_server() -> Iterator[S3]:
    """moto's S3 on a free loopback port, with AWS_* set for this process and its children until it stops."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with pytest.MonkeyPatch.context() as patch, tempfile.NamedTemporaryFile(prefix="aws-empty-") as empty:
            for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
                patch.setenv(name, empty.name)
            patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            for name, value in env.items():
                patch.setenv(name, value)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # a developer's own must not reach the test server
                patch.delenv(name, raising=False)
            # fsspec keeps one client per arguments: one made for an earlier server of this process would still
            # call that server's (closed) port.
            s3fs.S3FileSystem.clear_instance_cache()
            yield S3(endpoint, s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                                                 skip_instance_cache=True, use_listings_cache=False))
    finally:
        server.stop()
