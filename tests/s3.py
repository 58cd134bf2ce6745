"""A real S3 API on loopback for the tests: moto's server (werkzeug, in this process).

The endpoint is fixed when conftest imports this module, before any SparkSession starts, because
Spark's Python workers inherit the environment the JVM starts with: executors then reach the
same server as the driver, through the same AWS_* variables a user sets (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...). The server itself starts on first use.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Optional

_server = None
_lock = threading.Lock()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT = _free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
ENV = {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "capmix-test",
       "AWS_SECRET_ACCESS_KEY": "capmix-test-secret", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1"}


def set_environment() -> None:
    # No test may reach a real AWS account: every AWS client here talks to the local server.
    os.environ.update(ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)


def start() -> str:
    """Start the server once (idempotent); returns its endpoint."""
    global _server
    with _lock:
        if _server is None:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
            _server = ThreadedMotoServer(ip_address="127.0.0.1", port=PORT, verbose=False)
            _server.start()
    return ENDPOINT


def bucket(name: str) -> str:
    """A fresh bucket (created if missing); returns s3://name."""
    import boto3

    start()
    client = boto3.client("s3", endpoint_url=ENDPOINT)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://{name}"


def keys(prefix_uri: str) -> list[str]:
    """Every object key under an s3:// URI's prefix."""
    import boto3

    name, _, prefix = prefix_uri[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=ENDPOINT)
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def read(uri: str) -> bytes:
    """An object's bytes, read with boto3 (no fsspec listing cache in between)."""
    import boto3

    name, _, key = uri[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=ENDPOINT)
    return client.get_object(Bucket=name, Key=key)["Body"].read()


def delete(uri: str) -> None:
    import boto3

    name, _, key = uri[len("s3://"):].partition("/")
    boto3.client("s3", endpoint_url=ENDPOINT).delete_object(Bucket=name, Key=key)


def upload(local: str, uri: str) -> None:
    import s3fs

    s3fs.S3FileSystem().put(local, uri[len("s3://"):], recursive=True)


def stop() -> Optional[None]:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None
