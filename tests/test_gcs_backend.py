"""GCS-specific tests: the parallel composite multipart upload, error mapping, and the patched
local emulator (`wsfuse.testing.gcsserver`). The generic behaviour is in tests/contract/."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import google.auth
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from tests.conftest import fresh_bucket_name
from wsfuse.backends import gcs as gcs_module
from wsfuse.backends.base import MIN_PART_SIZE, PartInfo
from wsfuse.backends.gcs import (
    UPLOAD_PREFIX,
    GCSBackend,
    compose_plan,
    compose_requests,
)
from wsfuse.backends.options import BackendOptions
from wsfuse.backends.retry import RetryingBackend, RetryPolicy
from wsfuse.errors import (
    BackendError,
    BucketNotFound,
    InvalidKey,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Transient,
    Unavailable,
    UserError,
)
from wsfuse.testing.gcsserver import GCSTestServer
from wsfuse.testing.ramp import ramp

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, deadline=5.0)


@pytest.fixture
def server(gcs_server: GCSTestServer) -> GCSTestServer:
    gcs_server.reset_stats()
    return gcs_server


@pytest.fixture
def bucket(server: GCSTestServer) -> str:
    name = fresh_bucket_name("gcs")
    server.create_bucket(name)
    return name


@pytest.fixture
def gcs(server: GCSTestServer, bucket: str) -> Iterator[GCSBackend]:
    backend = GCSBackend(bucket, BackendOptions(endpoint_url=server.endpoint_url))
    try:
        yield backend
    finally:
        backend.close()


def upload(
    backend: GCSBackend, key: str, sizes: list[int], **kw: Any
) -> tuple[str, list[PartInfo]]:
    """Create an upload of `key` and send its ramp data in parts of `sizes`, in parallel."""
    upload_id = backend.create_multipart(key, **kw)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def send(i: int) -> PartInfo:
        return backend.upload_part(key, upload_id, i + 1, ramp(key, offsets[i], sizes[i]))

    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(send, range(len(sizes))))
    return upload_id, parts


def assert_ramp(backend: GCSBackend, key: str, total: int, boundaries: list[int]) -> None:
    assert backend.head(key).size == total
    for off in [0, total - 1, *[b + d for b in boundaries for d in (-3, 0)]]:
        if 0 <= off < total:
            assert backend.get_range(key, off, 4096) == ramp(key, off, min(4096, total - off))


# ---------------------------------------------------------------------- the compose plan


def test_compose_plan_examples() -> None:
    assert compose_plan(1) == [[range(1)]]
    assert compose_plan(32) == [[range(32)]]
    assert compose_plan(33) == [[range(0, 32), range(32, 33)], [range(2)]]
    assert [len(level) for level in compose_plan(10_000)] == [328, 18, 1]
    assert [compose_requests(n) for n in (1, 2, 32, 33, 63, 64, 1000, 1024, 1025, 10_000)] == [
        1,
        1,
        1,
        2,
        2,
        3,
        33,
        33,
        34,
        323,
    ]


@pytest.mark.parametrize("fan_in", [2, 3, 32])
def test_compose_plan_is_ordered_bounded_and_minimal(fan_in: int) -> None:
    for n in range(1, 2500 if fan_in > 3 else 400):
        plan = compose_plan(n, fan_in)
        width = n
        for level in plan:
            assert [i for group in level for i in group] == list(range(width))  # order kept
            assert all(1 <= len(group) <= fan_in for group in level)
            width = len(level)
        assert width == 1
        # each compose removes at most fan_in - 1 entries: this is the fewest requests
        assert compose_requests(n, fan_in) == max(1, -(-(n - 1) // (fan_in - 1)))


# ---------------------------------------------------------------------- multipart = compose


def test_three_part_upload_is_one_compose_and_leaves_no_temporaries(
    gcs: GCSBackend, server: GCSTestServer, bucket: str
) -> None:
    sizes = [MIN_PART_SIZE, MIN_PART_SIZE, 12345]
    upload_id, parts = upload(gcs, "mp", sizes, metadata={"mode": "33188"})
    assert server.count("PUT") == 4  # the manifest and three parts
    info = gcs.complete_multipart("mp", upload_id, parts)
    assert server.count("COMPOSE") == 1 and server.count("COMPOSE", key="mp") == 1
    assert info.size == sum(sizes) and info.etag == gcs.head("mp").etag
    assert gcs.head("mp").metadata == {"mode": "33188"}
    assert server.object_names(bucket) == ["mp"]
    assert gcs.list_multipart("") == []
    assert_ramp(gcs, "mp", sum(sizes), [MIN_PART_SIZE, 2 * MIN_PART_SIZE])
    assert server.count("BUCKET") == 0  # the client library's metadata prefetch is off


def test_hierarchical_compose(gcs: GCSBackend, server: GCSTestServer, bucket: str) -> None:
    gcs.compose_fan_in = 2  # 5 parts: 3 levels, with a pass-through, as 33+ parts would be
    sizes = [MIN_PART_SIZE] * 4 + [777]
    upload_id, parts = upload(gcs, "tree", sizes, metadata={"uid": "7"})
    info = gcs.complete_multipart("tree", upload_id, parts)
    assert server.count("COMPOSE") == compose_requests(5, 2) == 4
    assert info.size == sum(sizes)
    assert gcs.head("tree").metadata == {"uid": "7"}
    assert server.storage.objects[bucket]["tree"]["componentCount"] == 5
    assert server.object_names(bucket) == ["tree"]
    assert_ramp(gcs, "tree", sum(sizes), [MIN_PART_SIZE * i for i in range(1, 5)])


@pytest.mark.slow
def test_more_than_32_parts(gcs: GCSBackend, server: GCSTestServer, bucket: str) -> None:
    sizes = [MIN_PART_SIZE] * 33  # 165 MiB: ~3 s on the emulator
    upload_id, parts = upload(gcs, "big", sizes)
    gcs.complete_multipart("big", upload_id, parts)
    assert server.count("COMPOSE") == 2
    assert server.object_names(bucket) == ["big"]
    assert_ramp(gcs, "big", sum(sizes), [MIN_PART_SIZE * 31, MIN_PART_SIZE * 32])


def test_abort_deletes_every_temporary(gcs: GCSBackend, server: GCSTestServer, bucket: str) -> None:
    upload_id, _ = upload(gcs, "ab", [1000, 2000, 3000])
    assert len(server.object_names(bucket)) == 4
    gcs.abort_multipart("ab", upload_id)
    assert server.object_names(bucket) == []
    assert gcs.list_multipart("") == []
    with pytest.raises(NotFound):
        gcs.upload_part("ab", upload_id, 4, b"late")
    assert server.object_names(bucket) == []  # the late part deleted itself
    gcs.abort_multipart("ab", upload_id)
    gcs.abort_multipart("ab", "not-an-upload-id")


def test_list_multipart_after_create_and_after_a_crash(
    gcs: GCSBackend, server: GCSTestServer, bucket: str
) -> None:
    before = time.time()
    ids = {key: gcs.create_multipart(key) for key in ["b/z", "a/y", "a/x"]}
    gcs.upload_part("a/x", ids["a/x"], 1, b"part")
    uploads = gcs.list_multipart("a/")
    assert [(u.key, u.upload_id) for u in uploads] == [("a/x", ids["a/x"]), ("a/y", ids["a/y"])]
    assert all(before - 5 < u.initiated < time.time() + 5 for u in uploads)
    assert len(gcs.list_multipart("")) == 3
    # temporaries are not objects of the bucket
    assert gcs.list("", delimiter="/").prefixes == []
    assert gcs.list("", delimiter=None).objects == []
    with pytest.raises(InvalidKey):
        gcs.put(UPLOAD_PREFIX + "x", b"")
    # another process (after a crash) finds the uploads and aborts them
    other = GCSBackend(bucket, BackendOptions(endpoint_url=server.endpoint_url))
    try:
        for u in other.list_multipart(""):
            other.abort_multipart(u.key, u.upload_id)
    finally:
        other.close()
    assert server.object_names(bucket) == []


def test_small_part_is_rejected_and_the_upload_stays_open(gcs: GCSBackend) -> None:
    upload_id, parts = upload(gcs, "small", [1000, 1000])
    with pytest.raises(BackendError, match="at least"):
        gcs.complete_multipart("small", upload_id, parts)
    assert [u.upload_id for u in gcs.list_multipart("small")] == [upload_id]
    gcs.abort_multipart("small", upload_id)


def test_part_never_uploaded(gcs: GCSBackend, server: GCSTestServer, bucket: str) -> None:
    upload_id, parts = upload(gcs, "gap", [MIN_PART_SIZE])
    ghost = PartInfo(number=2, etag="12345", size=10)
    with pytest.raises(BackendError, match="never uploaded") as err:
        gcs.complete_multipart("gap", upload_id, [*parts, ghost])
    assert not isinstance(err.value, NotFound)
    assert [u.upload_id for u in gcs.list_multipart("gap")] == [upload_id]
    gcs.abort_multipart("gap", upload_id)
    assert server.object_names(bucket) == []


def test_stale_part_etag(gcs: GCSBackend) -> None:
    upload_id, parts = upload(gcs, "stale", [MIN_PART_SIZE, 10])
    gcs.upload_part("stale", upload_id, 2, b"replaced")  # a new generation of part 2
    with pytest.raises(BackendError, match="changed"):
        gcs.complete_multipart("stale", upload_id, parts)
    gcs.abort_multipart("stale", upload_id)


def test_complete_retried_after_a_lost_reply(
    gcs: GCSBackend, server: GCSTestServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [MIN_PART_SIZE, 100]
    upload_id, parts = upload(gcs, "lost", sizes)
    real = gcs._delete_upload
    calls = []

    def flaky(upload_id: str, *, sweeps_after_manifest: int) -> None:
        calls.append(upload_id)
        if len(calls) == 1:  # the compose happened; its caller never heard
            raise Transient("connection reset")
        real(upload_id, sweeps_after_manifest=sweeps_after_manifest)

    monkeypatch.setattr(gcs, "_delete_upload", flaky)
    info = RetryingBackend(gcs, FAST_RETRY).complete_multipart("lost", upload_id, parts)
    assert info.size == sum(sizes)
    assert server.count("COMPOSE") == 2  # the retry's compose found its sources gone
    assert server.object_names(bucket) == ["lost"]
    assert_ramp(gcs, "lost", sum(sizes), [MIN_PART_SIZE])
    # and once complete, the upload is gone
    with pytest.raises(NotFound):
        gcs.complete_multipart("lost", upload_id, parts)
    with pytest.raises(NotFound):
        gcs.upload_part("lost", upload_id, 3, b"x")


def test_complete_with_the_wrong_key_is_not_found(gcs: GCSBackend) -> None:
    upload_id, parts = upload(gcs, "right", [10])
    with pytest.raises(NotFound):
        gcs.complete_multipart("wrong", upload_id, parts)
    with pytest.raises(NotFound):
        gcs.upload_part("wrong", upload_id, 2, b"x")
    gcs.abort_multipart("right", upload_id)


# ---------------------------------------------------------------------- errors


def test_missing_bucket(server: GCSTestServer) -> None:
    backend = GCSBackend("wsfuse-no-such-bucket", BackendOptions(endpoint_url=server.endpoint_url))
    try:
        with pytest.raises(BucketNotFound) as err:
            backend.check_bucket()
        assert "gs://wsfuse-no-such-bucket" in str(err.value)
        assert "gcloud storage buckets create" in str(err.value)
        assert isinstance(err.value, UserError)
        with pytest.raises(BucketNotFound):
            backend.list("")
        with pytest.raises(NotFound):
            backend.head("k")
    finally:
        backend.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    opts = BackendOptions(endpoint_url=endpoint, connect_timeout=0.5, read_timeout=0.5)
    inner = GCSBackend("b", opts)
    backend = RetryingBackend(inner, RetryPolicy(max_attempts=2, base_delay=0.01, deadline=2))
    try:
        with pytest.raises(Transient, match="cannot reach"):
            inner.head("k")
        start = time.monotonic()
        with pytest.raises(Unavailable) as err:
            backend.check_bucket()
        assert time.monotonic() - start < 3
        assert endpoint in str(err.value)
        assert isinstance(err.value, UserError)
        with pytest.raises(Unavailable):
            backend.get_range("k", 0, 10)
    finally:
        backend.close()


def test_no_hidden_retries_and_503_is_transient(gcs: GCSBackend, server: GCSTestServer) -> None:
    gcs.put("k", b"data")
    server.reset_stats()
    server.fail_next("GET", status=503, key="k")
    with pytest.raises(Transient):
        gcs.get_range("k", 0, 4)
    assert server.count("GET", key="k") == 1  # the client library did not retry
    server.fail_next("PUT", status=503, key="k")
    with pytest.raises(Transient):
        gcs.put("k", b"new")
    assert server.count("PUT", key="k") == 1
    server.fail_next("GET", status=503, times=2, key="k")
    assert RetryingBackend(gcs, FAST_RETRY).get_range("k", 0, 4) == b"data"
    assert server.count("GET", key="k") == 4


@pytest.mark.parametrize("status", [429, 500, 502, 504])
def test_throttling_and_server_errors_are_transient(
    gcs: GCSBackend, server: GCSTestServer, status: int
) -> None:
    server.fail_next("HEAD", status=status)
    with pytest.raises(Transient):
        gcs.head("anything")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_say_what_to_do(gcs: GCSBackend, server: GCSTestServer, status: int) -> None:
    server.fail_next("LIST", status=status)
    with pytest.raises(PermissionDenied) as err:
        gcs.check_bucket()
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(err.value)
    assert "gcloud auth application-default login" in str(err.value)


def test_error_mapping_table(gcs: GCSBackend) -> None:
    cases: list[tuple[BaseException, type[BackendError]]] = [
        (gexc.NotFound("x"), NotFound),
        (gexc.PreconditionFailed("x"), PreconditionFailed),
        (gexc.Forbidden("x"), PermissionDenied),
        (gexc.Unauthorized("x"), PermissionDenied),
        (gexc.TooManyRequests("x"), Transient),
        (gexc.InternalServerError("x"), Transient),
        (gexc.BadGateway("x"), Transient),
        (gexc.ServiceUnavailable("x"), Transient),
        (gexc.GatewayTimeout("x"), Transient),
        (requests.ConnectionError("reset"), Transient),
        (requests.ReadTimeout("slow"), Transient),
        (requests.exceptions.ChunkedEncodingError("broken"), Transient),
        (auth_exc.TransportError("metadata server"), Transient),
        (auth_exc.DefaultCredentialsError("none"), PermissionDenied),
        (auth_exc.RefreshError("invalid_grant"), PermissionDenied),
        (gexc.BadRequest("x"), BackendError),
        (RuntimeError("odd"), BackendError),
    ]
    for exc, expected in cases:
        got = gcs._translate(exc, "head", "k")
        assert type(got) is expected, (exc, got)
        assert got.key == "k"
    assert gcs.endpoint in str(gcs._translate(requests.ConnectionError("x"), "head", "k"))


def test_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_credentials(**_: object) -> None:
        raise auth_exc.DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    with pytest.raises(PermissionDenied) as err:
        GCSBackend("b", BackendOptions())
    assert "gcloud auth application-default login" in str(err.value)


# ---------------------------------------------------------------------- details


def test_awkward_keys_roundtrip(gcs: GCSBackend) -> None:
    keys = ["../x", "./y", "a/b/", "a/b/c", "a/b", "a//b", "q?x=1#f", "tab\tkey"]
    for key in keys:
        gcs.put(key, key.encode())
    for key in keys:
        assert gcs.get_range(key, 0, 100) == key.encode()
    objects = [o.key for page in gcs.list_all("", delimiter=None) for o in page.objects]
    assert objects == sorted(keys)
    for bad in ["", ".", "..", "line\nfeed", "x" * 1025]:
        with pytest.raises(InvalidKey):
            gcs.put(bad, b"")


def test_range_at_or_past_the_end_is_one_request(gcs: GCSBackend, server: GCSTestServer) -> None:
    gcs.put("r", b"0123456789")
    server.reset_stats()
    assert gcs.get_range("r", 10, 5) == b""
    assert gcs.get_range("r", 8, 5) == b"89"
    assert server.count("GET") == 2
    gcs.get_range("r", 0, 0)
    assert server.count("GET") == 2


def test_non_generation_etag_fails_without_a_request(
    gcs: GCSBackend, server: GCSTestServer
) -> None:
    gcs.put("e", b"x")
    server.reset_stats()
    with pytest.raises(PreconditionFailed):
        gcs.get_range("e", 0, 1, if_match='"d41d8cd98f00b204e9800998ecf8427e"')
    with pytest.raises(PreconditionFailed):
        gcs.put("e", b"y", if_match="abc")
    assert sum(server.count(k) for k in ("GET", "PUT", "HEAD")) == 0


def test_preconditions_on_a_resumable_upload(gcs: GCSBackend) -> None:
    data = b"z" * (9 * 1024 * 1024)  # above 8 MiB the client library uploads resumably
    first = gcs.put("big", data, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        gcs.put("big", data, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        gcs.put("big", data, if_match=str(int(first.etag) + 1))
    second = gcs.put("big", b"small", if_match=first.etag)
    assert int(second.etag) > int(first.etag)


def test_copy_metadata_replaced_by_empty(gcs: GCSBackend) -> None:
    gcs.put("src", b"data", metadata={"mode": "33188"})
    gcs.copy("src", "dst", metadata={})
    assert gcs.head("dst").metadata == {}
    assert gcs.head("src").metadata == {"mode": "33188"}
    with pytest.raises(InvalidKey):
        gcs.copy("src", UPLOAD_PREFIX + "x")


def test_capabilities_are_complete(gcs: GCSBackend, server: GCSTestServer) -> None:
    # The emulator's gaps are patched, not declared: everything is tested on GCS too.
    assert gcs.capabilities == server.capabilities
    assert gcs.capabilities.conditional_get and gcs.capabilities.conditional_put
    assert gcs.capabilities.pagination
    assert gcs_module.MAX_COMPOSE_SOURCES == 32


def test_invalid_bucket_name(server: GCSTestServer) -> None:
    with pytest.raises(UserError, match="bucket name"):
        GCSBackend("-bad-", BackendOptions(endpoint_url=server.endpoint_url))


def test_emulated_latency_overlaps(gcs: GCSBackend, server: GCSTestServer) -> None:
    """Overlap is read from the server's count of requests asleep at once, not from the
    wall clock (which a loaded CI machine stretches)."""
    with server.no_latency():
        server.latency = 0.2
        gcs.put("lat", b"x")  # exempt
        gcs.head("lat")
    server.delays.reset_overlap()
    assert server.delays.delayed == 0
    barrier = threading.Barrier(4)

    def head(_: int) -> None:
        barrier.wait()
        gcs.head("lat")

    try:
        server.latency = 1.0  # four threads released together all meet inside it
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(head, range(4)))
        assert time.monotonic() - start >= 1.0
    finally:
        server.latency = 0.0
    assert server.delays.delayed == 4
    assert server.delays.peak_overlap >= 2, "parallel requests did not overlap"
    assert server.count("HEAD", key="lat") == 5
    assert server.count("LIST") == 0
    gcs.list("la")
    assert server.count("LIST", key="la") == 1
