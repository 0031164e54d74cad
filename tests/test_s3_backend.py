"""S3-specific behaviour of `S3Backend` (the generic contract is in tests/contract/): retries
through the one retry layer, dead and black-holed endpoints, missing buckets, bad or missing
credentials, the error mapping, and multipart copy."""

from __future__ import annotations

import contextlib
import datetime
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from tests.conftest import TEST_RETRY, AuthServer, fresh_bucket_name, self_signed_certificate
from tests.scripted_server import Serve
from wsfuse import errors
from wsfuse.backends import plainhttp
from wsfuse.backends.base import MIN_PART_SIZE
from wsfuse.backends.httpbody import BlockBody
from wsfuse.backends.options import BackendOptions
from wsfuse.backends.retry import RetryingBackend, RetryPolicy
from wsfuse.backends.s3 import PARALLEL_COPY_ABOVE, S3Backend, copy_part_size, map_error
from wsfuse.backends.s3direct import EXPECT_CONTINUE_FROM
from wsfuse.testing.ramp import ramp
from wsfuse.testing.s3server import S3TestServer

SECRET = "wsfuse-test-secret"


@pytest.fixture
def s3(server: S3TestServer) -> Iterator[S3Backend]:
    name = fresh_bucket_name("s3b")
    server.create_bucket(name)
    backend = S3Backend(name, BackendOptions(endpoint_url=server.endpoint_url, region="us-east-1"))
    try:
        yield backend
    finally:
        backend.close()


# ---------------------------------------------------------------------- retries


def test_slowdown_is_retried_by_the_retry_layer_not_by_boto3(
    server: S3TestServer, s3: S3Backend
) -> None:
    s3.put("k", b"hello world")
    retrying = RetryingBackend(s3, TEST_RETRY)
    server.reset_stats()
    server.fail_next(2, status=503, code="SlowDown", kind="GET")
    assert retrying.get_range("k", 0, 5) == b"hello"
    assert [r.status for r in server.requests] == [503, 503, 206]
    assert server.count("GET", key="k") == 3

    # the bare backend makes exactly one attempt: no hidden botocore retries
    server.reset_stats()
    server.fail_next(1, status=503, code="SlowDown")
    with pytest.raises(errors.Transient, match="SlowDown"):
        s3.get_range("k", 0, 5)
    assert server.count() == 1


def test_retries_give_up_with_unavailable(server: S3TestServer, s3: S3Backend) -> None:
    s3.put("k", b"x")
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02, deadline=5)
    server.fail_next(10, status=500, code="InternalError", kind="PUT")
    with pytest.raises(errors.Unavailable, match="InternalError"):
        RetryingBackend(s3, policy).put("k", b"y")
    assert server.count("PUT", key="k") == 1 + 3
    assert s3.get_range("k", 0, 10) == b"x"


def test_transient_status_codes_map_to_transient(server: S3TestServer, s3: S3Backend) -> None:
    s3.put("k", b"x")
    for status, code in [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")]:
        server.fail_next(1, status=status, code=code)
        with pytest.raises(errors.Transient):
            s3.get_range("k", 0, 1)
    server.fail_next(1, status=400, code="InvalidArgument")
    with pytest.raises(errors.BackendError) as exc:
        s3.get_range("k", 0, 1)
    assert not isinstance(exc.value, errors.Transient)


# ---------------------------------------------------------------------- dead endpoints


@pytest.fixture
def black_hole(serve: Serve) -> str:
    """An endpoint that accepts connections and never answers."""
    return serve(lambda conn, _: conn.recv(1)).url  # until the client gives up


def test_black_holed_endpoint_fails_within_the_deadline(black_hole: str) -> None:
    options = BackendOptions(
        endpoint_url=black_hole,
        region="us-east-1",
        connect_timeout=0.5,
        read_timeout=0.5,
        retry=RetryPolicy(max_attempts=3, base_delay=0.05, deadline=2),
    )
    backend = RetryingBackend(S3Backend("bucket", options), options.retry)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable) as exc:
        backend.head("k")
    elapsed = time.monotonic() - t0
    backend.close()
    assert elapsed < 4, f"took {elapsed:.1f}s"
    assert elapsed >= 0.5  # it did wait for an answer
    assert black_hole in str(exc.value)
    assert isinstance(exc.value, errors.UserError)


def test_unreachable_endpoint_is_unavailable_with_a_clear_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: connections are refused
    endpoint = f"http://127.0.0.1:{port}"
    options = BackendOptions(
        endpoint_url=endpoint,
        region="us-east-1",
        connect_timeout=0.5,
        read_timeout=0.5,
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, deadline=2),
    )
    backend = RetryingBackend(S3Backend("bucket", options), options.retry)
    with pytest.raises(errors.Unavailable) as exc:
        backend.check_bucket()
    backend.close()
    message = str(exc.value)
    assert "cannot connect to" in message and endpoint in message
    assert "3 attempt(s)" in message


# ---------------------------------------------------------------------- buckets and credentials


def test_missing_bucket_is_bucket_not_found(server: S3TestServer) -> None:
    backend = S3Backend(
        "no-such-bucket-anywhere",
        BackendOptions(endpoint_url=server.endpoint_url, region="us-east-1"),
    )
    with pytest.raises(errors.BucketNotFound) as exc:
        backend.check_bucket()
    assert "no-such-bucket-anywhere" in str(exc.value)
    assert isinstance(exc.value, errors.UserError)
    with pytest.raises(errors.BucketNotFound):
        backend.list("")
    backend.close()


def test_bad_credentials_are_permission_denied(auth_server: str) -> None:
    # conftest's AWS_ACCESS_KEY_ID is unknown to this server's IAM
    backend = S3Backend("authbucket", BackendOptions(endpoint_url=auth_server, region="us-east-1"))
    with pytest.raises(errors.PermissionDenied) as exc:
        backend.check_bucket()
    message = str(exc.value)
    assert "InvalidAccessKeyId" in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_PROFILE" in message
    assert SECRET not in message
    with pytest.raises(errors.PermissionDenied):
        backend.head("k")  # a HEAD's bare 403 too
    with pytest.raises(errors.PermissionDenied):
        backend.put("k", b"x")
    backend.close()


def test_direct_gets_send_the_host_they_signed(
    auth_endpoint: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint spelled with capitals: botocore signs the host lower-cased, so the GETs
    on wsfuse's own sockets must send it that way too (SignatureDoesNotMatch otherwise)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", auth_endpoint.secret_key)
    port = auth_endpoint.url.rsplit(":", 1)[1]
    options = BackendOptions(endpoint_url=f"http://LocalHost:{port}", region="us-east-1")
    backend = S3Backend("authbucket", options)
    try:
        assert backend._direct is not None and backend._direct.plain is not None
        backend.put("host-case", ramp("host-case", 0, 5000))
        assert backend.get_range("host-case", 10, 4000) == ramp("host-case", 10, 4000)
    finally:
        backend.close()


def test_direct_requests_are_signed_the_way_s3_checks_them(
    auth_endpoint: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranged GETs and part uploads bypass boto3's client pipeline (wsfuse.backends.s3direct):
    against a server that verifies SigV4, they must be accepted with the right keys (odd key
    names included) and refused as PermissionDenied with a wrong secret."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", auth_endpoint.secret_key)
    options = BackendOptions(endpoint_url=auth_endpoint.url, region="us-east-1")
    backend = S3Backend("authbucket", options)
    assert backend._direct is not None
    keys = ["plain", "dir with space/naïve ü.txt", "a+b=c&d~e.txt", "pct%20x", "emoji 🚀"]
    for key in keys:
        backend.put(key, ramp(key, 0, 3000))
    for key in keys:
        assert backend.get_range(key, 5, 1000) == ramp(key, 5, 1000)
        assert backend.get_blocks(key, 0, 3000, 1024) == [
            ramp(key, 0, 1024),
            ramp(key, 1024, 1024),
            ramp(key, 2048, 952),
        ]
    etag = backend.head("plain").etag
    assert backend.get_range("plain", 0, 10, if_match=etag) == ramp("plain", 0, 10)
    with pytest.raises(errors.PreconditionFailed):
        backend.get_range("plain", 0, 10, if_match="0" * 32)
    with pytest.raises(errors.NotFound):
        backend.get_range("absent", 0, 10)
    assert backend.get_range("plain", 5000, 10) == b""
    upload = backend.create_multipart("dir with space/multi ü")
    parts = [
        backend.upload_part("dir with space/multi ü", upload, n, ramp("m", n * 7, MIN_PART_SIZE))
        for n in (1, 2)
    ]
    backend.complete_multipart("dir with space/multi ü", upload, parts)
    assert backend.get_range("dir with space/multi ü", MIN_PART_SIZE, 64) == ramp("m", 14, 64)
    backend.close()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + auth_endpoint.secret_key)
    wrong = S3Backend("authbucket", options)
    assert wrong._direct is not None
    with pytest.raises(errors.PermissionDenied, match="SignatureDoesNotMatch"):
        wrong.get_range("plain", 0, 10)
    with pytest.raises(errors.PermissionDenied, match="SignatureDoesNotMatch"):
        wrong.upload_part("dir with space/multi ü", upload, 1, b"x")
    with pytest.raises(errors.PermissionDenied, match="SignatureDoesNotMatch"):
        wrong.put("plain", b"x", metadata={"mode": "33188"})
    with pytest.raises(errors.PermissionDenied, match="SignatureDoesNotMatch"):
        wrong.put("plain", ramp("big", 0, 6 * 1024 * 1024))  # more than a socket buffer
    wrong.close()


def test_puts_go_direct_with_metadata_and_conditions(
    auth_endpoint: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT (every file written through the mount, on close) bypasses boto3's pipeline too:
    its metadata, checksum and If-Match / If-None-Match headers are signed and honoured by a
    server that verifies SigV4, and boto3's put_object is never called for it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", auth_endpoint.secret_key)
    backend = S3Backend("authbucket", BackendOptions(endpoint_url=auth_endpoint.url))
    try:
        assert backend._direct is not None

        def no_boto3(**kwargs: Any) -> Any:
            raise AssertionError(f"boto3 put_object called for {kwargs['Key']!r}")

        monkeypatch.setattr(backend._client, "put_object", no_boto3)
        sent: list[dict[str, str]] = []
        send = backend._direct._http.send

        def recording(request: Any) -> Any:
            sent.append({k.lower(): str(v) for k, v in request.headers.items()})
            return send(request)

        monkeypatch.setattr(backend._direct._http, "send", recording)
        before = time.time()
        info = backend.put("d/ü f", b"first", metadata={"Mode": "33188", "uid": "0"})
        assert (sent[-1]["x-amz-meta-mode"], sent[-1]["x-amz-meta-uid"]) == ("33188", "0")
        assert "x-amz-checksum-crc32c" in sent[-1]
        assert "expect" not in sent[-1]  # a small body goes at once
        backend.put("large", ramp("large", 0, EXPECT_CONTINUE_FROM))
        assert sent[-1]["expect"] == "100-continue"  # as boto3 asks before a body
        assert backend.get_range("large", 7, 9) == ramp("large", 7, 9)
        assert info.size == 5 and info.metadata == {"mode": "33188", "uid": "0"}
        assert before - 5 <= info.mtime <= time.time() + 5  # the server's Date header
        head = backend.head("d/ü f")
        assert (head.etag, head.metadata) == (info.etag, {"mode": "33188", "uid": "0"})
        with pytest.raises(errors.PreconditionFailed):
            backend.put("d/ü f", b"second", if_none_match=True)
        with pytest.raises(errors.PreconditionFailed):
            backend.put("d/ü f", b"second", if_match="0" * 32)
        second = backend.put("d/ü f", b"second", if_match=info.etag)
        assert backend.get_range("d/ü f", 0, 10) == b"second"
        assert backend.put("new", b"x", if_none_match=True).etag != second.etag
    finally:
        backend.close()


def test_a_put_with_metadata_a_header_cannot_carry_goes_through_boto3(
    s3: S3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata that is not printable ASCII (which S3 would refuse or mangle in a header):
    the direct path leaves the request to boto3, which reports it as it always has."""
    assert s3._direct is not None
    calls: list[str] = []
    original = s3._client.put_object

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["Key"])
        return original(**kwargs)

    monkeypatch.setattr(s3._client, "put_object", counting)
    s3.put("plain", b"x", metadata={"mode": "33188"})
    assert calls == []
    # whatever boto3 (or the server) makes of it is not the direct path's business
    with contextlib.suppress(errors.BackendError):
        s3.put("odd", b"x", metadata={"note": "line\nbreak"})
    with contextlib.suppress(errors.BackendError):
        s3.put("odd name", b"x", metadata={"a:b": "1"})  # not an HTTP token
    assert calls == ["odd", "odd name"]
    s3.put("empty", b"", metadata={"note": ""})  # an empty body or value is fine either way
    assert calls == ["odd", "odd name"] and s3.get_range("empty", 0, 1) == b""


@pytest.mark.parametrize("code", ["PermanentRedirect", "TemporaryRedirect", "307"])
def test_a_wrong_region_answer_to_a_put_hands_it_to_boto3(
    s3: S3Backend, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """boto3 follows S3's redirects (301, and 307 for a new bucket reached through the
    global endpoint); the direct path hands the request, and all later ones, to it."""
    assert s3._direct is not None

    def redirected(*args: Any, **kwargs: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": code, "Message": "use the other endpoint"}}, "PutObject"
        )

    monkeypatch.setattr(s3._direct, "put", redirected)
    info = s3.put("k", b"0123456789", metadata={"mode": "33188"})
    assert s3._direct is None
    assert s3.head("k").metadata == {"mode": "33188"}
    assert s3.head("k").etag == info.etag and s3.get_range("k", 0, 3) == b"012"


def test_a_wrong_region_answer_hands_the_direct_path_back_to_boto3(
    s3: S3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct path signs for the client's region and cannot follow S3's region
    redirects the way boto3's client does: a PermanentRedirect switches it off and the
    request is made again through boto3."""
    s3.put("k", b"0123456789")
    assert s3._direct is not None

    def redirected(*args: Any, **kwargs: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "PermanentRedirect", "Message": "use the other endpoint"}},
            "GetObject",
        )

    monkeypatch.setattr(s3._direct, "get", redirected)
    assert s3.get_range("k", 2, 3) == b"234"
    assert s3._direct is None
    assert s3.get_range("k", 0, 2) == b"01"


@pytest.mark.parametrize("path", ["plain", "botocore"])
def test_ranged_gets_read_each_block_straight_from_the_socket(
    s3: S3Backend, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The direct GET reads its body with one `recv(MSG_WAITALL)` per block, on its own
    keep-alive socket (`PlainHttp`, plain-HTTP endpoints) or from botocore's connection
    (`BlockBody`), never through urllib3's read loop; the bytes are the object's."""
    data = ramp("k", 0, 5 * 1024 * 1024 + 321)
    s3.put("k", data)
    assert s3._direct is not None and s3._direct.plain is not None
    if path == "botocore":
        s3._direct.plain = None
    reader: Any = BlockBody if path == "botocore" else plainhttp.Response
    reads: list[int] = []
    original = reader.read

    def counting(self: Any, amt: int | None = None) -> bytes:
        piece: bytes = original(self, amt)
        reads.append(len(piece))
        return piece

    monkeypatch.setattr(reader, "read", counting)
    blocks = s3.get_blocks("k", 100, len(data) - 100, 1024 * 1024)
    assert b"".join(blocks) == data[100:]
    assert [len(b) for b in blocks] == [1024 * 1024] * 5 + [221]
    assert sum(reads) == len(data) - 100 and len(reads) >= 6


def test_the_backend_over_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real S3 endpoints are HTTPS: reads (direct GETs on wsfuse's own TLS connections), part
    uploads and listings all work over TLS, the certificate checked against the bundle; and
    without the bundle the certificate is refused on both paths."""
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    with S3TestServer(tls=(str(cert), str(key))) as server:
        assert server.endpoint_url.startswith("https://")
        server.create_bucket("tls")
        options = BackendOptions(endpoint_url=server.endpoint_url, region="us-east-1")
        backend = S3Backend("tls", options)
        try:
            assert backend._direct is not None and backend._direct.plain is not None
            assert backend._direct.plain.tls is not None
            data = ramp("big", 0, 2 * MIN_PART_SIZE + 4321)
            upload = backend.create_multipart("big")
            parts = [
                backend.upload_part("big", upload, n + 1, data[off : off + MIN_PART_SIZE])
                for n, off in enumerate(range(0, len(data), MIN_PART_SIZE))
            ]
            backend.complete_multipart("big", upload, parts)
            blocks = backend.get_blocks("big", 10, len(data) - 10, 1024 * 1024)
            assert b"".join(blocks) == data[10:]
            assert backend.get_range("big", len(data) - 5, 100) == data[-5:]
            assert [o.key for o in backend.list("", delimiter=None).objects] == ["big"]
        finally:
            backend.close()
        assert server.count("GET") >= 2
        monkeypatch.delenv("AWS_CA_BUNDLE")  # botocore's own bundle: a self-signed cert fails
        backend = S3Backend("tls", options)
        try:
            assert backend._direct is not None and backend._direct.plain is not None
            with pytest.raises(errors.BackendError, match="TLS error"):
                backend.get_range("big", 0, 10)
        finally:
            backend.close()


def test_a_short_body_is_a_transient_error(serve: Serve) -> None:
    """A server that closes the connection before Content-Length bytes: the read fails as
    Transient (retried), never returns the short data."""

    def short_body(conn: socket.socket, _: int) -> None:
        conn.sendall(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n"
            b"Content-Range: bytes 0-99/1000\r\n\r\n" + b"x" * 40
        )
        conn.shutdown(socket.SHUT_RDWR)

    url = serve(short_body).url
    backend = S3Backend("bucket", BackendOptions(endpoint_url=url, region="us-east-1"))
    try:
        assert backend._direct is not None
        with pytest.raises(errors.Transient):
            backend.get_range("k", 0, 100)
        with pytest.raises(errors.Transient):
            backend.get_blocks("k", 0, 100, 30)
    finally:
        backend.close()


def test_uploads_carry_a_crc32c_that_the_server_verifies(
    server: S3TestServer, s3: S3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies go unsigned (UNSIGNED-PAYLOAD) with an x-amz-checksum-crc32c instead: PUTs and
    parts whose checksum does not match their bytes are refused (BadDigest, retried as
    Transient), and a multipart upload completes with its parts' checksums."""
    data = ramp("whole", 0, 100_000)
    assert s3.get_range(s3.put("whole", data).key, 0, len(data)) == data
    upload = s3.create_multipart("multi")
    parts = [
        s3.upload_part("multi", upload, n, ramp("multi", (n - 1) * MIN_PART_SIZE, MIN_PART_SIZE))
        for n in (1, 2)
    ]
    assert all(p.checksum for p in parts)
    info = s3.complete_multipart("multi", upload, parts)
    assert info.size == 2 * MIN_PART_SIZE
    assert s3.get_range("multi", MIN_PART_SIZE - 5, 10) == ramp("multi", MIN_PART_SIZE - 5, 10)

    import wsfuse.backends.s3 as s3_module

    monkeypatch.setattr(s3_module, "_crc32c", lambda body: "AAAAAA==")
    server.reset_stats()
    with pytest.raises(errors.Transient, match="BadDigest"):
        s3.put("corrupt", b"some bytes")
    upload = s3.create_multipart("corrupt-multi")
    with pytest.raises(errors.Transient, match="BadDigest"):
        s3.upload_part("corrupt-multi", upload, 1, b"x" * 1000)
    s3.abort_multipart("corrupt-multi", upload)
    with pytest.raises(errors.NotFound):
        s3.head("corrupt")
    assert [r.status for r in server.requests if r.kind in ("PUT", "UPLOAD_PART")] == [400, 400]


def test_upload_checksums_off_for_stores_that_refuse_them(
    server: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--upload-checksums off` (`-o upload_checksums=off`): no checksum header on PUTs or
    parts (a wrong one would be refused), and multipart uploads complete without them."""
    from wsfuse.cli import backend_options, build_parser, expand_o_options

    parser = build_parser()
    argv = ["mount", "s3://b", "/mnt/x", "-o", "upload_checksums=off"]
    args = parser.parse_args(expand_o_options(parser, argv))
    assert backend_options(args).upload_checksums == "off"

    import wsfuse.backends.s3 as s3_module

    monkeypatch.setattr(s3_module, "_crc32c", lambda body: "AAAAAA==")
    name = fresh_bucket_name("nock")
    server.create_bucket(name)
    options = BackendOptions(
        endpoint_url=server.endpoint_url, region="us-east-1", upload_checksums="off"
    )
    backend = S3Backend(name, options)
    try:
        backend.put("small", b"no checksum")
        upload = backend.create_multipart("big")
        parts = [
            backend.upload_part(
                "big", upload, n, ramp("big", (n - 1) * MIN_PART_SIZE, MIN_PART_SIZE)
            )
            for n in (1, 2)
        ]
        assert all(p.checksum == "" for p in parts)
        backend.complete_multipart("big", upload, parts)
        assert backend.get_range("big", 0, 2 * MIN_PART_SIZE) == ramp("big", 0, 2 * MIN_PART_SIZE)
        assert backend.get_range("small", 0, 100) == b"no checksum"
    finally:
        backend.close()


def test_no_credentials_is_permission_denied(
    server: S3TestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = S3Backend("whatever", BackendOptions(endpoint_url=server.endpoint_url))
    with pytest.raises(errors.PermissionDenied, match="no AWS credentials found"):
        backend.check_bucket()
    backend.close()


def test_unknown_profile_is_permission_denied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(errors.PermissionDenied, match="nosuchprofile"):
        S3Backend("b", BackendOptions(profile="nosuchprofile"))


# ---------------------------------------------------------------------- S3 specifics


def test_info_fields(server: S3TestServer, s3: S3Backend) -> None:
    info = s3.put("k", b"abc", metadata={"Mode": "33188"})
    assert '"' not in info.etag and len(info.etag) == 32  # an MD5, quotes stripped
    assert info.metadata == {"mode": "33188"}  # S3 lower-cases metadata names
    head = s3.head("k")
    assert head.etag == info.etag and head.metadata == {"mode": "33188"}
    assert abs(head.mtime - info.mtime) <= 2
    assert abs(head.mtime - datetime.datetime.now(datetime.UTC).timestamp()) < 3600
    (listed,) = s3.list("").objects
    assert (listed.etag, listed.size, listed.metadata) == (info.etag, 3, None)


def test_past_eof_is_empty_but_missing_key_is_not_found(s3: S3Backend) -> None:
    s3.put("k", b"0123456789")
    assert s3.get_range("k", 10, 5) == b""
    assert s3.get_range("k", 10**12, 5) == b""
    with pytest.raises(errors.NotFound):
        s3.get_range("missing", 10**12, 5)
    etag = s3.head("k").etag
    assert s3.get_range("k", 50, 5, if_match=etag) == b""
    with pytest.raises(errors.PreconditionFailed):
        s3.get_range("k", 50, 5, if_match="0" * 32)


def test_zero_length_read_makes_no_request(server: S3TestServer, s3: S3Backend) -> None:
    server.reset_stats()
    assert s3.get_range("anything", 0, 0) == b""
    assert server.count() == 0


def test_multipart_copy_above_the_single_copy_limit(server: S3TestServer, s3: S3Backend) -> None:
    size = 2 * MIN_PART_SIZE + 12345
    s3.put("src", ramp("src", 0, size), metadata={"mode": "33261"})
    s3.max_single_copy = MIN_PART_SIZE  # as if this were > 5 GiB
    s3.copy_part_size = MIN_PART_SIZE
    server.reset_stats()
    info = s3.copy("src", "dst")
    assert server.count("UPLOAD_PART_COPY", key="dst") == 3
    assert server.count("COPY") == 0 and server.count("GET") == 0
    assert info.size == size and info.metadata == {"mode": "33261"}
    head = s3.head("dst")
    assert (head.size, head.etag, head.metadata) == (size, info.etag, {"mode": "33261"})
    for offset in (0, MIN_PART_SIZE - 5, 2 * MIN_PART_SIZE + 1, size - 100):
        assert s3.get_range("dst", offset, 4096) == ramp("src", offset, min(4096, size - offset))
    s3.copy("src", "dst2", metadata={"uid": "7"})
    assert s3.head("dst2").metadata == {"uid": "7"}
    assert s3.list_multipart("") == []


def test_copy_part_size_splits_large_copies_into_about_16_parts() -> None:
    mib = 1024 * 1024
    assert 5 * 1024 * mib > PARALLEL_COPY_ABOVE  # S3 refuses one CopyObject above 5 GiB
    assert copy_part_size(1024 * mib) == 64 * mib  # a 1 GiB checkpoint: 16 parts
    assert copy_part_size(300 * mib) == 64 * mib  # never below the minimum: 5 parts
    assert copy_part_size(10 * 1024 * mib + 1) == 641 * mib  # MiB multiples, 16 parts
    assert copy_part_size(1024 * 1024 * mib) == 5 * 1024 * mib  # S3's 5 GiB part limit
    assert copy_part_size(3 * MIN_PART_SIZE, MIN_PART_SIZE) == MIN_PART_SIZE


@pytest.mark.parametrize("parallel", [False, True], ids=["copy_object", "part_copy"])
def test_copy_keeps_content_headers_and_tags(
    server: S3TestServer, s3: S3Backend, parallel: bool
) -> None:
    """A rename must not strip what other tools set on an object: CopyObject keeps its content
    headers and tags by itself, a multipart copy only if they are passed along."""
    size = 2 * MIN_PART_SIZE + 7
    client = server.client()
    try:
        client.put_object(
            Bucket=s3.bucket,
            Key="src",
            Body=ramp("src", 0, size),
            ContentType="application/x-tar",
            ContentEncoding="gzip",
            ContentDisposition='attachment; filename="a b.tar"',
            ContentLanguage="en",
            CacheControl="max-age=60",
            Metadata={"mode": "33188"},
            Tagging="team=ml&kind=shard%20data",
        )
        if parallel:
            s3.max_single_copy = MIN_PART_SIZE
            s3.copy_part_size = MIN_PART_SIZE
        server.reset_stats()
        s3.copy("src", "dst")
        assert server.count("UPLOAD_PART_COPY") == (3 if parallel else 0)
        head = client.head_object(Bucket=s3.bucket, Key="dst")
        assert head["ContentType"] == "application/x-tar"
        assert head["ContentEncoding"] == "gzip"
        assert head["ContentDisposition"] == 'attachment; filename="a b.tar"'
        assert head["ContentLanguage"] == "en"
        assert head["CacheControl"] == "max-age=60"
        assert head["Metadata"] == {"mode": "33188"}
        tags = client.get_object_tagging(Bucket=s3.bucket, Key="dst")["TagSet"]
        assert sorted((t["Key"], t["Value"]) for t in tags) == [
            ("kind", "shard data"),
            ("team", "ml"),
        ]
        assert s3.get_range("dst", size - 100, 100) == ramp("src", size - 100, 100)
        s3.copy("src", "dst2", metadata={"mode": "33261"})  # what chmod does: REPLACE
        head = client.head_object(Bucket=s3.bucket, Key="dst2")
        assert (head["ContentType"], head["CacheControl"]) == ("application/x-tar", "max-age=60")
        assert head["Metadata"] == {"mode": "33261"}
    finally:
        client.close()


def test_part_copy_without_permission_to_read_tags_goes_without_them(
    s3: S3Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put("src", ramp("src", 0, 2 * MIN_PART_SIZE), metadata={"mode": "1"})
    s3.max_single_copy = MIN_PART_SIZE
    s3.copy_part_size = MIN_PART_SIZE

    def denied(**kwargs: Any) -> Any:
        error = {"Error": {"Code": "AccessDenied", "Message": "no s3:GetObjectTagging"}}
        raise ClientError(error, "GetObjectTagging")

    monkeypatch.setattr(s3._client, "get_object_tagging", denied)
    with caplog.at_level(logging.INFO, logger="wsfuse.backends.s3copy"):
        info = s3.copy("src", "dst")
    assert "goes without its tags" in caplog.text
    assert info.metadata == {"mode": "1"} and s3.head("dst").size == 2 * MIN_PART_SIZE


def test_part_copy_on_a_store_without_tagging_goes_without_tags(
    s3: S3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some S3-compatible stores answer 501 NotImplemented to GetObjectTagging: a rename
    must not fail (or retry until its deadline) for it."""
    s3.put("src", ramp("src", 0, 2 * MIN_PART_SIZE))
    s3.max_single_copy = MIN_PART_SIZE
    s3.copy_part_size = MIN_PART_SIZE

    def not_implemented(**kwargs: Any) -> Any:
        error = {
            "Error": {"Code": "NotImplemented", "Message": "tagging"},
            "ResponseMetadata": {"HTTPStatusCode": 501},
        }
        raise ClientError(error, "GetObjectTagging")

    monkeypatch.setattr(s3._client, "get_object_tagging", not_implemented)
    assert s3.copy("src", "dst").size == 2 * MIN_PART_SIZE
    assert s3.get_range("dst", 0, 100) == ramp("src", 0, 100)


def test_failed_multipart_copy_aborts_its_upload(server: S3TestServer, s3: S3Backend) -> None:
    s3.put("src", ramp("src", 0, 2 * MIN_PART_SIZE))
    s3.max_single_copy = MIN_PART_SIZE
    server.fail_next(5, status=400, code="InvalidRequest", kind="UPLOAD_PART_COPY")
    with pytest.raises(errors.BackendError):
        s3.copy("src", "dst")
    assert s3.list_multipart("") == []
    with pytest.raises(errors.NotFound):
        s3.head("dst")


def test_copy_onto_itself_keeps_or_replaces_metadata(s3: S3Backend) -> None:
    s3.put("k", b"data", metadata={"mode": "1"})
    assert s3.copy("k", "k").metadata == {"mode": "1"}
    s3.copy("k", "k", metadata={"mode": "2"})
    assert s3.head("k").metadata == {"mode": "2"}
    assert s3.get_range("k", 0, 10) == b"data"


def test_list_multipart_and_abort_unknown(s3: S3Backend) -> None:
    a = s3.create_multipart("dir/a")
    b = s3.create_multipart("other")
    assert {u.upload_id for u in s3.list_multipart("dir/")} == {a}
    assert {u.key for u in s3.list_multipart("")} == {"dir/a", "other"}
    now = time.time()  # the server reports real initiation times (stock moto: 2010)
    assert all(abs(u.initiated - now) < 600 for u in s3.list_multipart(""))
    s3.abort_multipart("dir/a", a)
    s3.abort_multipart("dir/a", a)
    s3.abort_multipart("other", "no-such-upload-id")
    s3.abort_multipart("other", b)
    assert s3.list_multipart("") == []


# ---------------------------------------------------------------------- the error table


def client_error(code: str, status: int, message: str = "msg") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("NoSuchKey", 404), errors.NotFound),
        (client_error("404", 404), errors.NotFound),
        (client_error("NoSuchUpload", 404), errors.NotFound),
        (client_error("NoSuchBucket", 404), errors.BucketNotFound),
        (client_error("PreconditionFailed", 412), errors.PreconditionFailed),
        (client_error("412", 412), errors.PreconditionFailed),
        (client_error("AccessDenied", 403), errors.PermissionDenied),
        (client_error("403", 403), errors.PermissionDenied),
        (client_error("InvalidAccessKeyId", 403), errors.PermissionDenied),
        (client_error("SignatureDoesNotMatch", 403), errors.PermissionDenied),
        (client_error("SlowDown", 503), errors.Transient),
        (client_error("503", 503), errors.Transient),
        (client_error("InternalError", 500), errors.Transient),
        (client_error("RequestTimeout", 400), errors.Transient),
        (client_error("Throttling", 400), errors.Transient),
        (client_error("429", 429), errors.Transient),
        (client_error("Whatever", 502), errors.Transient),
        (client_error("KeyTooLongError", 400), errors.InvalidKey),
        (client_error("InvalidArgument", 400), errors.BackendError),
        (EndpointConnectionError(endpoint_url="http://x"), errors.Transient),
        (ConnectTimeoutError(endpoint_url="http://x"), errors.Transient),
        (ReadTimeoutError(endpoint_url="http://x"), errors.Transient),
        (ConnectionResetError(), errors.Transient),
        (NoCredentialsError(), errors.PermissionDenied),
    ],
)
def test_error_mapping(exc: BaseException, expected: type[errors.BackendError]) -> None:
    mapped = map_error(exc, op="get", bucket="bkt", key="k", endpoint="http://endpoint")
    assert type(mapped) is expected
    assert mapped.key == "k"
    if expected is errors.PermissionDenied:
        assert "AWS_ACCESS_KEY_ID" in str(mapped)
    if expected is errors.Transient and not isinstance(exc, ClientError):
        assert "http://endpoint" in str(mapped)


@pytest.mark.parametrize(
    ("code", "status", "says"),
    [
        ("PermanentRedirect", 301, "probably in another region"),
        ("301", 301, "probably in another region"),
        ("TemporaryRedirect", 307, "redirects requests for now"),
        ("307", 307, "redirects requests for now"),
    ],
)
def test_a_redirect_boto3_could_not_follow_says_what_to_do(
    code: str, status: int, says: str
) -> None:
    mapped = map_error(client_error(code, status), op="put", bucket="bkt", key="k", endpoint="e")
    assert type(mapped) is errors.BackendError
    assert says in str(mapped) and "--region" in str(mapped)
