"""The local S3 test server itself, through plain boto3: its fast ranged GETs must answer
exactly as S3 does, and its counters, latency and fault injection must be trustworthy, since
other tests and the benchmarks rely on them."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import google_crc32c
import pytest
from botocore.exceptions import ClientError

from tests.conftest import fresh_bucket_name
from wsfuse.testing import s3moto
from wsfuse.testing.s3server import S3TestServer

MIB = 1024 * 1024


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def client(server: S3TestServer) -> Iterator[Any]:
    c = server.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def bucket(server: S3TestServer) -> str:
    name = fresh_bucket_name("srv")
    server.create_bucket(name)
    return name


def get(client: Any, bucket: str, key: str, range_: str | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, **kw}
    if range_ is not None:
        args["Range"] = range_
    resp = client.get_object(**args)
    resp["data"] = resp["Body"].read()
    return resp


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def upload_multipart(client: Any, bucket: str, key: str, data: bytes, part: int) -> None:
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"m": "p"})[
        "UploadId"
    ]
    parts = []
    for number, offset in enumerate(range(0, len(data), part), start=1):
        resp = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data[offset : offset + part],
        )
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )


# ---------------------------------------------------------------------- ranged GETs


@pytest.mark.parametrize("layout", ["single", "multipart"])
def test_random_ranges_match_the_object(
    server: S3TestServer, client: Any, bucket: str, layout: str
) -> None:
    size = 3 * 5 * MIB + 12345 if layout == "multipart" else 3 * MIB + 7
    data = data_of(size, seed=size)
    if layout == "multipart":
        upload_multipart(client, bucket, "obj", data, 5 * MIB)  # parts: 5, 5, 5 MiB + 12345
    else:
        client.put_object(Bucket=bucket, Key="obj", Body=data, Metadata={"m": "p"})
    head = client.head_object(Bucket=bucket, Key="obj")
    rng = random.Random(7)
    boundary = 5 * MIB if layout == "multipart" else MIB  # a part boundary, or not
    cases = [(0, 0), (0, size - 1), (size - 1, size - 1), (boundary - 3, boundary + 3)]
    cases += [(a, a + rng.randrange(1, 2 * MIB)) for a in rng.sample(range(size), 20)]
    server.reset_stats()
    for first, last in cases:
        resp = get(client, bucket, "obj", f"bytes={first}-{last}")
        end = min(last, size - 1)
        assert resp["data"] == data[first : end + 1], (first, last)
        assert resp["ContentRange"] == f"bytes {first}-{end}/{size}"
        assert resp["ContentLength"] == end - first + 1
        assert resp["ETag"] == head["ETag"]
        assert resp["Metadata"] == {"m": "p"}
        assert resp["LastModified"] == head["LastModified"]
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206
    # open-ended range and a full GET (the latter answered by moto itself)
    assert get(client, bucket, "obj", f"bytes={size - 10}-")["data"] == data[-10:]
    assert get(client, bucket, "obj")["data"] == data
    assert server.count("GET", key="obj") == len(cases) + 2
    assert (
        server.bytes_sent("GET", key="obj")
        == sum(min(last, size - 1) - first + 1 for first, last in cases) + 10 + size
    )


def test_a_range_of_whole_parts_is_sent_without_a_copy() -> None:
    """A ranged answer over several parts of a multipart object goes out part by part:
    joining them cost the server a copy and a fresh allocation per answer, a penalty only
    clients reading larger ranges than the upload's parts paid (s3fs, rclone in the bench)."""
    parts = [bytes([i]) * 1000 for i in range(4)]
    chunked = s3moto._ChunkedIO(s3moto._Chunks(parts))
    whole = chunked.pieces(1000, 3000)
    assert len(whole) == 2 and all(p is q for p, q in zip(whole, parts[1:3], strict=True))
    partial = chunked.pieces(500, 3500)
    assert [len(p) for p in partial] == [500, 1000, 1000, 500]
    assert partial[1] is parts[1] and partial[2] is parts[2]
    assert b"".join(partial) == b"".join(parts)[500:3500] == chunked.pread(500, 3500)
    assert chunked.pieces(4000, 5000) == [b""]


@pytest.mark.parametrize("layout", ["single", "multipart"])
def test_upload_part_copy_reads_only_its_range(
    client: Any, bucket: str, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto read the whole source for every UploadPartCopy (a 1 GiB rename in 16 parts was
    16 GiB of copying); the server copies the part's range only, byte-exact."""
    size = 3 * 5 * MIB + 12345
    data = data_of(size, seed=3)
    if layout == "multipart":
        upload_multipart(client, bucket, "src", data, 5 * MIB)
    else:
        client.put_object(Bucket=bucket, Key="src", Body=data)
    read: list[int] = []
    original = s3moto._ChunkedIO.pieces

    def counting_pieces(self: Any, start: int, end: int) -> list[bytes]:
        got = original(self, start, end)
        read.append(sum(map(len, got)))
        return got

    monkeypatch.setattr(s3moto._ChunkedIO, "pieces", counting_pieces)
    # parts that straddle the source's part boundaries (5 MiB) and end with its last byte
    ranges = [(0, 6 * MIB - 1), (6 * MIB, 12 * MIB - 1), (12 * MIB, size - 1)]
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    parts = []
    for number, (first, last) in enumerate(ranges, start=1):
        resp = client.upload_part_copy(
            Bucket=bucket,
            Key="dst",
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": "src"},
            CopySourceRange=f"bytes={first}-{last}",
        )
        etag = resp["CopyPartResult"]["ETag"]
        assert etag.strip('"') == hashlib.md5(data[first : last + 1]).hexdigest()
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(
        Bucket=bucket, Key="dst", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    if layout == "multipart":
        assert sum(read) == size  # each range once; before, the whole source per part
    assert get(client, bucket, "dst")["data"] == data


def test_range_past_end_is_416_and_straddling_is_short(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    assert get(client, bucket, "k", "bytes=8-100")["data"] == b"89"
    for spec in ("bytes=10-20", "bytes=10-", "bytes=1000-2000"):
        with pytest.raises(ClientError) as exc:
            get(client, bucket, "k", spec)
        assert error_of(exc) == ("InvalidRange", 416)
    client.put_object(Bucket=bucket, Key="empty", Body=b"")
    with pytest.raises(ClientError) as exc:
        get(client, bucket, "empty", "bytes=0-10")
    assert error_of(exc) == ("InvalidRange", 416)


def test_range_of_missing_key_or_bucket_is_404(client: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        get(client, bucket, "missing", "bytes=0-10")
    assert error_of(exc) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as exc:
        get(client, "no-such-bucket-here", "k", "bytes=0-10")
    assert error_of(exc) == ("NoSuchBucket", 404)


def test_if_match(client: Any, bucket: str) -> None:
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"version one")["ETag"]
    assert get(client, bucket, "k", "bytes=0-6", IfMatch=etag)["data"] == b"version"
    assert get(client, bucket, "k", "bytes=0-6", IfMatch=etag.strip('"'))["data"] == b"version"
    client.put_object(Bucket=bucket, Key="k", Body=b"version two")
    with pytest.raises(ClientError) as exc:
        get(client, bucket, "k", "bytes=0-6", IfMatch=etag)
    assert error_of(exc) == ("PreconditionFailed", 412)
    # If-Match is checked before the range (RFC 9110): a stale etag past the end is still 412
    with pytest.raises(ClientError) as exc:
        get(client, bucket, "k", "bytes=100-200", IfMatch=etag)
    assert error_of(exc) == ("PreconditionFailed", 412)


def test_ranges_of_unicode_keys(client: Any, bucket: str) -> None:
    for key in ["dir with space/naïve ü.txt", "a+b=c&d.txt", "pct%20x", "emoji 🚀", "q?x=1#y"]:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
        assert get(client, bucket, key, "bytes=1-3")["data"] == key.encode()[1:4]


def test_parallel_ranges_during_overwrites(client: Any, bucket: str) -> None:
    """A ranged GET racing an overwrite sees the old or the new object, never an error."""
    old, new = b"a" * MIB, b"b" * MIB
    client.put_object(Bucket=bucket, Key="k", Body=old)

    def read(i: int) -> bytes:
        data: bytes = get(client, bucket, "k", f"bytes={i * 1000}-{i * 1000 + 999}")["data"]
        return data

    with ThreadPoolExecutor(8) as pool:
        reads = [pool.submit(read, i) for i in range(200)]
        for i in range(20):
            client.put_object(Bucket=bucket, Key="k", Body=new if i % 2 else old)
        for r in reads:
            assert r.result() in (b"a" * 1000, b"b" * 1000)


# ---------------------------------------------------------------------- counting


def test_requests_are_counted_by_kind_and_key(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    get(client, bucket, "k", "bytes=0-1")
    client.head_object(Bucket=bucket, Key="k")
    client.list_objects_v2(Bucket=bucket, Prefix="", Delimiter="/")
    client.copy_object(Bucket=bucket, Key="k2", CopySource={"Bucket": bucket, "Key": "k"})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = client.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1, Body=b"x")[
        "ETag"
    ]
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    aborted = client.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    client.list_multipart_uploads(Bucket=bucket)
    client.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=aborted)
    client.delete_object(Bucket=bucket, Key="k2")
    kinds = [(r.kind, r.key) for r in server.requests]
    assert kinds == [
        ("PUT", "k"),
        ("GET", "k"),
        ("HEAD", "k"),
        ("LIST", None),
        ("COPY", "k2"),
        ("CREATE_MPU", "mp"),
        ("UPLOAD_PART", "mp"),
        ("COMPLETE_MPU", "mp"),
        ("CREATE_MPU", "ab"),
        ("LIST_MPU", None),
        ("ABORT_MPU", "ab"),
        ("DELETE", "k2"),
    ]
    assert all(r.bucket == bucket for r in server.requests)
    assert server.count("GET", key="k") == 1
    assert server.count("GET", key="other") == 0
    assert server.count(bucket=bucket) == len(kinds)
    assert server.stats["CREATE_MPU"] == 2
    get_record = server.requests[1]
    assert (get_record.bytes_sent, get_record.status) == (2, 206)
    server.reset_stats()
    assert server.requests == [] and server.count() == 0


def test_upload_part_to_missing_upload_is_no_such_upload(client: Any, bucket: str) -> None:
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
    with pytest.raises(ClientError) as exc:
        client.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"x")
    assert error_of(exc) == ("NoSuchUpload", 404)


# ---------------------------------------------------------------------- checksums


def test_upload_checksums_are_verified_as_s3_does(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    """moto ignores x-amz-checksum-crc32c; S3 refuses a body that does not match it."""
    body = b"checksummed body"
    good = base64.b64encode(google_crc32c.value(body).to_bytes(4, "big")).decode()
    client.put_object(Bucket=bucket, Key="ok", Body=body, ChecksumCRC32C=good)
    assert get(client, bucket, "ok", "bytes=0-6")["data"] == body[:7]
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="bad", Body=body, ChecksumCRC32C="AAAAAA==")
    assert error_of(exc) == ("BadDigest", 400)
    upload = client.create_multipart_upload(Bucket=bucket, Key="m", ChecksumAlgorithm="CRC32C")
    upload_id = upload["UploadId"]
    with pytest.raises(ClientError) as exc:
        client.upload_part(
            Bucket=bucket,
            Key="m",
            UploadId=upload_id,
            PartNumber=1,
            Body=body,
            ChecksumCRC32C="AAAAAA==",
        )
    assert error_of(exc) == ("BadDigest", 400)
    part = client.upload_part(
        Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1, Body=body, ChecksumCRC32C=good
    )
    # An upload created with a checksum completes only with each part's checksum, as on S3.
    for parts, code in (
        ([{"PartNumber": 1, "ETag": part["ETag"]}], "InvalidRequest"),
        ([{"PartNumber": 1, "ETag": part["ETag"], "ChecksumCRC32C": "AAAAAA=="}], "InvalidPart"),
    ):
        with pytest.raises(ClientError) as exc:
            client.complete_multipart_upload(
                Bucket=bucket, Key="m", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        assert error_of(exc) == (code, 400)
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="m",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": part["ETag"], "ChecksumCRC32C": good}]
        },
    )
    assert get(client, bucket, "m", "bytes=0-99")["data"] == body
    server.verify_checksums = False
    try:
        client.put_object(Bucket=bucket, Key="unchecked", Body=body, ChecksumCRC32C="AAAAAA==")
    finally:
        server.verify_checksums = True


# ---------------------------------------------------------------------- latency


def test_latency_is_per_request_and_parallel_requests_overlap(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    """Overlap is proven from the server's own count of requests asleep at once, and
    wall-clock time is only bounded from below: a loaded CI machine stretches it."""
    with server.no_latency():
        client.put_object(Bucket=bucket, Key="k", Body=b"x")
    server.latency = 0.3
    server.delays.reset_overlap()
    t0 = time.perf_counter()
    client.head_object(Bucket=bucket, Key="k")
    assert time.perf_counter() - t0 >= 0.3
    assert (server.delays.delayed, server.delays.peak_overlap) == (1, 1)
    server.latency = 1.0  # long enough that two threads started together meet in it
    barrier = threading.Barrier(2)

    def ranged(_: int) -> None:
        barrier.wait()
        get(client, bucket, "k", "bytes=0-0")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(ranged, range(2)))
    assert server.delays.delayed == 3
    assert server.delays.peak_overlap == 2, "two parallel requests did not overlap"
    with server.no_latency():
        client.head_object(Bucket=bucket, Key="k")
    assert server.delays.delayed == 3  # the exempt request was not delayed


# ---------------------------------------------------------------------- faults


def test_fail_next_answers_slowdown_then_succeeds(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"abc")
    server.fail_next(1, status=503, code="SlowDown")
    with pytest.raises(ClientError) as exc:
        get(client, bucket, "k", "bytes=0-1")
    assert error_of(exc) == ("SlowDown", 503)
    assert get(client, bucket, "k", "bytes=0-1")["data"] == b"ab"
    assert [r.status for r in server.requests[-2:]] == [503, 206]


def test_fail_next_filters_by_kind_and_key(server: S3TestServer, client: Any, bucket: str) -> None:
    server.fail_next(2, status=500, code="InternalError", kind="PUT", key="bad")
    client.put_object(Bucket=bucket, Key="good", Body=b"x" * 100_000)  # not matched
    client.head_object(Bucket=bucket, Key="good")
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            client.put_object(Bucket=bucket, Key="bad", Body=b"y" * 100_000)  # body drained
        assert error_of(exc) == ("InternalError", 500)
    client.put_object(Bucket=bucket, Key="bad", Body=b"z")
    assert get(client, bucket, "bad")["data"] == b"z"
    # a HEAD fault has no body, as on S3
    server.fail_next(1, status=503, kind="HEAD")
    with pytest.raises(ClientError) as exc:
        client.head_object(Bucket=bucket, Key="good")
    assert error_of(exc)[1] == 503


# ---------------------------------------------------------------------- lifecycle


def test_context_manager_frees_the_port() -> None:
    with S3TestServer() as srv:
        url = srv.endpoint_url
        srv.create_bucket(fresh_bucket_name("own"))
        c = srv.client()
        assert c.list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again
    c.close()


def test_standalone_server_prints_its_endpoint() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsfuse.testing.s3server", "--port", "0", "--bucket", "standalone"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        c = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="a",
            aws_secret_access_key="b",
        )
        names = [b["Name"] for b in c.list_buckets()["Buckets"]]
        assert "standalone" in names
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def admin(url: str, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"{url}/_wsfuse/{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_admin_path_drives_a_server_in_another_process() -> None:
    """What the benchmarks rely on: stats by kind (not counting the admin requests), reset,
    and latency set from outside, applied per S3 request."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsfuse.testing.s3server", "--bucket", "admin-test"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        c = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="a",
            aws_secret_access_key="b",
        )
        assert admin(url, "POST", "reset") == (200, {})
        c.put_object(Bucket="admin-test", Key="k", Body=b"x" * 1000)
        for _ in range(3):
            c.get_object(Bucket="admin-test", Key="k", Range="bytes=0-99")["Body"].read()
        status, stats = admin(url, "GET", "stats?reset=1")
        assert status == 200
        assert stats["PUT"]["requests"] == 1
        assert stats["GET"] == {"requests": 3, "bytes": 300, "received": 0}
        assert stats["total"]["requests"] == 4
        status, stats = admin(url, "GET", "stats")
        assert stats["total"]["requests"] == 0  # reset after the last read; admin not counted

        assert admin(url, "POST", "latency?ms=1000") == (200, {"latency_ms": 1000.0})
        assert admin(url, "GET", "latency") == (200, {"latency_ms": 1000.0})
        started = time.monotonic()
        c.head_object(Bucket="admin-test", Key="k")
        assert time.monotonic() - started >= 1.0
        started = time.monotonic()
        admin(url, "GET", "stats")  # the harness's own requests are never delayed
        assert time.monotonic() - started < 1.0
        assert admin(url, "POST", "latency?ms=0")[1] == {"latency_ms": 0.0}

        assert admin(url, "POST", "latency?ms=soon")[0] == 400
        assert admin(url, "GET", "nonsense")[0] == 404
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_seeded_objects_are_served_like_uploaded_ones(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    objects = {f"seed/{i:04d}": data_of(100 + i, i) for i in range(300)}
    server.reset_stats()
    server.put_objects(bucket, objects)
    assert server.stats == {}  # no requests: nothing counted, nothing delayed
    listed = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="seed/")
    found = {o["Key"]: o for page in listed for o in page["Contents"]}
    assert sorted(found) == sorted(objects)
    for key in ("seed/0000", "seed/0299"):
        assert found[key]["ETag"] == f'"{hashlib.md5(objects[key]).hexdigest()}"'
        assert get(client, bucket, key)["data"] == objects[key]
        assert get(client, bucket, key, "bytes=10-19")["data"] == objects[key][10:20]


def test_request_bodies_are_counted_and_harness_requests_are_not(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    server.reset_stats()
    client.put_object(Bucket=bucket, Key="up", Body=b"u" * 1000)
    upload_multipart(client, bucket, "mpu", data_of(6 * MIB, 1), 5 * MIB)
    summary = server.stats_summary()
    assert summary["PUT"]["received"] == 1000
    assert summary["UPLOAD_PART"]["received"] == 6 * MIB
    assert [r.bytes_received for r in server.requests if r.key == "up"] == [1000]

    harness = server.client()
    harness.meta.events.register(
        "before-sign.s3", lambda request, **_: request.headers.add_header("x-wsfuse-harness", "1")
    )
    server.reset_stats()
    server.delays.reset_overlap()
    server.latency = 0.5
    try:
        server.fail_next(1, status=503, code="SlowDown", kind="HEAD")
        assert harness.head_object(Bucket=bucket, Key="up")["ContentLength"] == 1000
        assert server.delays.delayed == 0  # not delayed
    finally:
        server.latency = 0
    assert server.stats == {}  # not counted
    with pytest.raises(ClientError):  # the fault was left for the client under test
        client.head_object(Bucket=bucket, Key="up")
    server.clear_faults()


def test_traffic_can_be_split_by_key_prefix(server: S3TestServer, client: Any, bucket: str) -> None:
    """A benchmark counts a workload's traffic by its own keys: a peer still uploading an
    earlier workload's file is shown apart ("elsewhere"), not as this workload's. Requests
    without a key (a LIST) belong to the workload."""
    server.reset_stats()
    client.put_object(Bucket=bucket, Key="mine/a", Body=b"a" * 100)
    client.put_object(Bucket=bucket, Key="late/b", Body=b"b" * 7000)
    client.list_objects_v2(Bucket=bucket, Prefix="mine/")
    assert get(client, bucket, "mine/a")["data"] == b"a" * 100

    everything = server.stats_summary()
    assert everything["total"]["requests"] == 4
    assert everything["total"]["received"] == 7100
    assert "elsewhere" not in everything

    split = server.stats_summary(prefixes=("mine/", "other/"))
    # the GET's 100 bytes and the LIST's answer are both the workload's
    assert split["total"] == {**everything["total"], "requests": 3, "received": 100}
    assert split["PUT"]["requests"] == 1
    assert split["elsewhere"] == {"requests": 1, "bytes": 0, "received": 7000}

    # the same through the control path a benchmark in another process uses
    url = f"{server.endpoint_url}/_wsfuse/stats?prefixes=mine%2F,other%2F&reset=1"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert json.load(answer) == split
    assert server.stats == {}  # reset after reading


def test_the_benchmark_reads_split_traffic_through_the_control_path(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    """bench/harness/server.py's `stats` (what `bench/run` calls for every workload) asks
    the server for several prefixes at once and resets with the same call; the query it
    builds (url-encoded, comma-joined) reaches the server intact."""
    from pathlib import Path

    from bench.harness.server import Server as BenchServer

    bench = BenchServer(Path("/nonexistent.log"))
    bench.url = server.endpoint_url
    server.reset_stats()
    for key in ("w-run/ckpt.bin", "r-run/ckpt-final.bin", "c-run/0001"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * 10)
    assert bench.stats() == server.stats_summary()
    one = bench.stats(prefixes=("r-run",))
    assert one["total"]["requests"] == 1
    assert one["elsewhere"]["requests"] == 2
    two = bench.stats(reset=True, prefixes=("c-run", "w-run/ckpt.bin"))
    assert two["total"]["requests"] == 2
    assert two["elsewhere"]["requests"] == 1
    assert server.stats == {}  # reset by the same call
    for wrong in ("r-run", ("a,b",)):
        with pytest.raises(ValueError):
            bench.stats(prefixes=wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        server.stats_summary(prefixes="r-run")


def test_the_control_path_sets_the_latency_and_resets_the_counters(
    server: S3TestServer, client: Any, bucket: str
) -> None:
    """What a benchmark in another process uses besides the stats: the latency (set, read
    back, refused when malformed), the reset, and a clear answer for anything else."""

    def call(method: str, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(f"{server.endpoint_url}/_wsfuse/{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    try:
        assert call("POST", "latency?ms=20") == (200, {"latency_ms": 20.0})
        assert server.latency == pytest.approx(0.02)
        assert call("GET", "latency") == (200, {"latency_ms": 20.0})
        status, answer = call("POST", "latency?ms=soon")
        assert status == 400 and "ms=NUMBER" in answer["error"]
        assert server.latency == pytest.approx(0.02)  # unchanged by the bad request
    finally:
        assert call("POST", "latency?ms=0")[0] == 200
    client.put_object(Bucket=bucket, Key="counted", Body=b"x")
    assert server.stats != {}
    assert call("POST", "reset") == (200, {})
    assert server.stats == {}  # the control path itself is never counted
    status, answer = call("DELETE", "stats")
    assert status == 404 and "no admin action" in answer["error"]
