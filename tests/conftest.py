"""Shared fixtures: the local S3 and GCS API servers (one per session, on 127.0.0.1), and a
`backend` fixture parametrised over every implementation, each test on a fresh bucket."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.scripted_server import Script, ScriptedServer, Serve, Wrap
from wsfuse.backends.base import Backend
from wsfuse.backends.options import BackendOptions
from wsfuse.backends.retry import RetryPolicy
from wsfuse.testing import tls

BACKEND_KINDS = ["memory", "local", "s3", "gcs"]
_bucket_numbers = itertools.count()

# Tests must never reach a real cloud: fake credentials, no metadata-server lookups.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "wsfuse-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "wsfuse-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.pop("AWS_PROFILE", None)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for https://127.0.0.1 (skips the test without an openssl command)."""
    try:
        return tls.self_signed_certificate(directory)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def fresh_bucket_name(kind: str) -> str:
    return f"wsfuse-{kind}-{os.getpid()}-{next(_bucket_numbers)}"


# Fast retries in tests: transient failures are injected on purpose, and nobody wants to wait.
TEST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.1, deadline=20.0)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    from wsfuse.testing.s3server import S3TestServer

    with S3TestServer() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[object]:
    from wsfuse.testing.gcsserver import GCSTestServer

    with GCSTestServer() as server:
        yield server


@pytest.fixture
def server(s3_server: Any) -> Iterator[Any]:
    """The session's S3 server with clean counters and faults, and no latency afterwards."""
    s3_server.reset_stats()
    s3_server.clear_faults()
    try:
        yield s3_server
    finally:
        s3_server.latency = 0.0
        s3_server.clear_faults()


class AuthServer(NamedTuple):
    """An S3 server that checks signatures, and the keys of its one IAM user."""

    url: str
    access_key: str
    secret_key: str


@pytest.fixture(scope="module")
def auth_endpoint() -> Iterator[AuthServer]:
    """An S3 server that checks credentials (moto's IAM) with the bucket `authbucket` and
    the IAM user `tester`: in a subprocess, because moto's switch for that is process-wide."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsfuse.testing.s3server",
            "--port",
            "0",
            "--require-auth",
            "--bucket",
            "authbucket",
            "--user",
            "tester",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), url
        access_key, secret_key = proc.stdout.readline().split()
        yield AuthServer(url, access_key, secret_key)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def auth_server(auth_endpoint: AuthServer) -> str:
    """The endpoint of `auth_endpoint`, for tests of credentials it does not know."""
    return auth_endpoint.url


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A bare (no retry, no prefix) backend of `kind` on a new, empty bucket."""
    if kind == "memory":
        from wsfuse.backends.memory import MemoryBackend

        return MemoryBackend()
    if kind == "local":
        from wsfuse.backends.localdir import LocalDirBackend

        return LocalDirBackend(str(tmp_path / "bucket"), create=True)
    if kind == "s3":
        from wsfuse.backends.s3 import S3Backend

        server = request.getfixturevalue("s3_server")
        name = fresh_bucket_name("s3")
        server.create_bucket(name)  # type: ignore[attr-defined]
        opts = BackendOptions(endpoint_url=server.endpoint_url, region="us-east-1")  # type: ignore[attr-defined]
        return S3Backend(name, opts)
    if kind == "gcs":
        from wsfuse.backends.gcs import GCSBackend

        server = request.getfixturevalue("gcs_server")
        name = fresh_bucket_name("gcs")
        server.create_bucket(name)  # type: ignore[attr-defined]
        return GCSBackend(name, BackendOptions(endpoint_url=server.endpoint_url))  # type: ignore[attr-defined]
    raise AssertionError(kind)


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, request, tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """`serve(script, wrap=None)` starts a ScriptedServer, closed after the test."""
    servers: list[ScriptedServer] = []

    def start(script: Script, wrap: Wrap | None = None) -> ScriptedServer:
        servers.append(ScriptedServer(script, wrap))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
