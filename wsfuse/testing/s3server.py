"""A local S3 API server for tests and benchmarks: moto's server, made fast and observable.

Stock `moto_server` answers a ranged GET by reading the whole object and slicing it, spools
objects above ~5 MiB to temporary files and copies an object several times when a multipart
upload completes. `S3TestServer` keeps moto's S3 implementation (every API call behaves as
moto's) but, in-process:

- serves a single-range GET (`Range: bytes=a-b` or `bytes=a-`) itself, straight from the slice
  of moto's in-memory object (206 with Content-Range, ETag, Last-Modified, user metadata;
  412 on an If-Match mismatch, 416 at or past the end); anything unusual (versions, SSE-C,
  other conditionals, suffix ranges, auth enabled) falls through to moto;
- keeps every object in memory without copying it: moto's spool-to-disk threshold is raised,
  a stored value is adopted rather than copied, and a completed multipart upload keeps its
  parts as they are (no join: completing 1 GiB takes milliseconds), without moto's
  full-object checksum pass when the client asked for none;
- sends S3 requests straight to moto's S3 app (moto's dispatcher stat()s ~180 directories
  per request to find the service);
- emulates time-to-first-byte: `server.latency = 0.02` makes every request sleep that long in
  its own thread (werkzeug's threaded server: one thread per connection, so parallel requests
  overlap); `with server.no_latency():` exempts the harness's own setup;
- counts requests by kind, bucket and key (`server.count("GET", key="k")`, `server.requests`,
  `server.stats`, `server.reset_stats()`), so tests can assert what reached the store;
- injects faults: `server.fail_next(2, status=503, code="SlowDown", kind="GET")`;
- serves HTTPS when given a certificate and key (`tls=(cert, key)`, `--tls CERT KEY`), as
  real S3 endpoints do;
- can be driven from another process (benchmarks run it in its own, off the clients' GIL):
  `GET /_wsfuse/stats[?reset=1]` answers requests and bytes by kind as JSON,
  `POST /_wsfuse/reset` resets them, `POST /_wsfuse/latency?ms=20` sets the latency
  (bucket names cannot contain `_`: no S3 request is ever taken for these, nor counted);
- fixes three moto deviations from S3 that the backend contract meets: a part upload to an
  aborted/completed upload answers 404 NoSuchUpload (moto: 500), ListMultipartUploads
  reports each upload's real initiation time (moto: always 2010-11-10), and
  CompleteMultipartUpload honours `If-Match` (412, or 404 NoSuchKey for a missing object;
  moto checks only `If-None-Match`).

Moto's state is process-global: every `S3TestServer` in one process sees the same buckets.
Credentials are not checked (moto's default), unless started with `require_auth=True` (which
is process-global too, hence meant for `python -m wsfuse.testing.s3server --require-auth` in
a subprocess).

Run standalone: `python -m wsfuse.testing.s3server --port 9000 --latency 20` prints the
endpoint URL on its first line and serves until interrupted.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import datetime
import hashlib
import io
import itertools
import json
import math
import re
import signal
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html import escape
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote

import boto3
import google_crc32c
import moto.s3.models
from botocore.config import Config
from moto import settings as moto_settings
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from wsfuse.testing.latency import EmulatesLatency, LatencyEmulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

# The account and partition moto files requests under when credentials are unknown to its IAM.
_PARTITION = "aws"
# Objects below this stay in memory in moto's SpooledTemporaryFile: effectively "always".
_IN_MEMORY_LIMIT = 1 << 62

# Request kinds, as counted by `S3TestServer.count`.
GET = "GET"
HEAD = "HEAD"
PUT = "PUT"
LIST = "LIST"
COPY = "COPY"
DELETE = "DELETE"
CREATE_MPU = "CREATE_MPU"
UPLOAD_PART = "UPLOAD_PART"
UPLOAD_PART_COPY = "UPLOAD_PART_COPY"
COMPLETE_MPU = "COMPLETE_MPU"
ABORT_MPU = "ABORT_MPU"
LIST_MPU = "LIST_MPU"
LIST_PARTS = "LIST_PARTS"
HEAD_BUCKET = "HEAD_BUCKET"
CREATE_BUCKET = "CREATE_BUCKET"
DELETE_BUCKET = "DELETE_BUCKET"
DELETE_OBJECTS = "DELETE_OBJECTS"
LIST_BUCKETS = "LIST_BUCKETS"
LIST_VERSIONS = "LIST_VERSIONS"
BUCKET_CONFIG = "BUCKET_CONFIG"  # ?location, ?versioning, ?acl, ... on a bucket
OBJECT_CONFIG = "OBJECT_CONFIG"  # ?tagging, ?acl, ?retention, ... on an object
OTHER = "OTHER"

_LIST_PARAMS = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "continuation-token",
        "max-keys",
        "start-after",
        "encoding-type",
        "marker",
        "fetch-owner",
    }
)
_IGNORED_PARAMS = frozenset({"x-id"})  # botocore adds ?x-id=GetObject etc.
# The harness's control path (`S3TestServer._admin`): never a valid bucket name.
ADMIN_PREFIX = "_wsfuse"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
# Conditional / SSE-C headers the fast path leaves to moto.
_FALLTHROUGH_HEADERS = (
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM",
)


class RequestRecord(NamedTuple):
    """One request as the server saw it."""

    kind: str
    bucket: str | None
    key: str | None
    bytes_sent: int  # response body bytes
    status: int  # 0 while the response has not started


@dataclass(slots=True)
class _Entry:
    kind: str
    bucket: str | None
    key: str | None
    bytes_sent: int = 0
    status: int = 0

    def snapshot(self) -> RequestRecord:
        return RequestRecord(self.kind, self.bucket, self.key, self.bytes_sent, self.status)


@dataclass(slots=True)
class _Fault:
    remaining: int
    status: int
    code: str
    message: str
    kind: str | None
    key: str | None


# ---------------------------------------------------------------------------- moto tweaks


class _Chunks:
    """The parts of a completed multipart upload, kept as they are instead of joined."""

    __slots__ = ("parts", "size", "starts")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.starts = list(itertools.accumulate((len(p) for p in parts[:-1]), initial=0))
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size


class _ChunkedIO:
    """A read-only file over `_Chunks` (what moto's FakeKey needs of its buffer: seek, tell,
    read, close). Reading `[a, b)` copies only those bytes, whatever part they lie in."""

    def __init__(self, chunks: _Chunks) -> None:
        self._chunks: _Chunks | None = chunks
        self._pos = 0

    @property
    def closed(self) -> bool:
        return self._chunks is None

    def _live(self) -> _Chunks:
        if self._chunks is None:
            raise ValueError("I/O operation on closed file")
        return self._chunks

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._live().size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        chunks = self._live()
        end = chunks.size if n is None or n < 0 else min(chunks.size, self._pos + n)
        data = self.pread(self._pos, end)
        self._pos = max(self._pos, end)
        return data

    def pread(self, start: int, end: int) -> bytes:
        """Bytes `[start, end)`, without moving the position (thread-safe)."""
        chunks = self._live()
        end = min(end, chunks.size)
        if start >= end:
            return b""
        i = bisect.bisect_right(chunks.starts, start) - 1
        pieces: list[bytes | memoryview] = []
        while start < end:
            part, part_start = chunks.parts[i], chunks.starts[i]
            lo, hi = start - part_start, min(len(part), end - part_start)
            pieces.append(part if (lo, hi) == (0, len(part)) else memoryview(part)[lo:hi])
            start = part_start + hi
            i += 1
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        return b"".join(pieces)

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("a completed multipart object is read-only")

    def write(self, data: bytes) -> int:
        raise io.UnsupportedOperation("a completed multipart object is read-only")

    def close(self) -> None:
        self._chunks = None


def _fast_complete(models: Any, original_complete: Any) -> Any:
    """moto's CompleteMultipartUpload without joining the parts into one new bytes object
    (the key's value is the list of part objects) and, for CRC32C uploads, with S3's
    composite checksum computed from the parts: moto's own builder copies the whole object."""

    def complete(self: Any, body: Iterator[tuple[int, str]]) -> tuple[Any, str, Any]:
        algorithm = str(self.metadata.get("x-amz-checksum-algorithm") or "").upper()
        checksum_type = str(self.metadata.get("x-amz-checksum-type") or "").upper()
        if algorithm not in ("", "CRC32C") or checksum_type not in ("", "COMPOSITE"):
            return original_complete(self, body)  # type: ignore[no-any-return]
        parts: list[bytes] = []
        md5s = bytearray()
        last = None
        for number, etag in body:
            part = self.parts.get(number)
            if part is None or part.etag.replace('"', "") != etag.replace('"', ""):
                raise models.InvalidPart()
            if last is not None and last.contentsize < models.S3_UPLOAD_PART_MIN_SIZE:
                raise models.EntityTooSmall()
            md5s.extend(bytes.fromhex(part.etag.replace('"', "")))
            parts.append(part.value)  # the part's own bytes object: no copy
            last = part
        if not parts:
            raise models.MalformedXML()
        full = models.md5_hash()
        full.update(bytes(md5s))
        checksum = None
        if algorithm:  # S3's composite CRC32C: the CRC32C of the parts' CRC32Cs
            crcs = b"".join(google_crc32c.value(p).to_bytes(4, "big") for p in parts)
            checksum = ("COMPOSITE", _b64_crc32c(crcs), len(parts))
        return _Chunks(parts), f"{full.hexdigest()}-{len(parts)}", checksum

    return complete


def _read_range(obj: Any, start: int, end: int) -> bytes:
    """Bytes `[start, end)` of the moto key `obj`, copying only those: from the parts of a
    completed multipart upload without a lock, else under the key's lock (its buffer has
    one position, shared by every reader)."""
    buffer = obj._value_buffer
    memory = getattr(buffer, "_file", None)
    if isinstance(memory, _ChunkedIO):
        return memory.pread(start, end)
    with obj.lock:
        buffer.seek(start)
        data: bytes = buffer.read(end - start)
    return data


def _ranged_part_copy(original: Any) -> Any:
    """moto's UploadPartCopy reading only the source range: moto reads the whole source object
    for every part (a 1 GiB source copied in 16 parts was 16 GiB of copying, ~1 s a part), where
    S3's cost is the part's bytes."""

    def upload_part_copy(
        self: Any,
        dest_bucket_name: str,
        multipart_id: str,
        part_id: int,
        src_bucket_name: str,
        src_key_name: str,
        src_version_id: str | None,
        start_byte: int | None,
        end_byte: int | None,
    ) -> Any:
        source = self.get_object(src_bucket_name, src_key_name, version_id=src_version_id)
        if start_byte is None or end_byte is None:
            return original(
                self,
                dest_bucket_name,
                multipart_id,
                part_id,
                src_bucket_name,
                src_key_name,
                src_version_id,
                start_byte,
                end_byte,
            )
        multipart = self.get_bucket(dest_bucket_name).multiparts[multipart_id]
        return multipart.set_part(part_id, _read_range(source, start_byte, end_byte + 1))

    return upload_part_copy


_patch_lock = threading.Lock()
_patched = False


def _patch_moto() -> None:
    """Keep objects in memory without copying them (idempotent, process-wide).

    - FakeKey's SpooledTemporaryFile never rolls over to disk (its threshold is raised);
    - a stored value is adopted, not copied (`BytesIO(b)` shares `b` until written to, and
      moto reading it whole from 0 gets `b` itself back);
    - completing a multipart upload keeps the parts as they are (no join, no copy) and skips
      the full-object CRC that moto computes even when the client asked for no checksum;
    - UploadPartCopy copies the source range only, not the whole source per part.
    """
    global _patched  # noqa: PLW0603 - one-time, process-wide patch
    with _patch_lock:
        if _patched:
            return
        models: Any = moto.s3.models  # private names, patched on purpose
        # FakeKey spools its value to a temp file above this size; looked up per key creation.
        models.get_s3_default_key_buffer_size = lambda: _IN_MEMORY_LIMIT
        models.FakeMultipart.complete = _fast_complete(models, models.FakeMultipart.complete)
        models.S3Backend.upload_part_copy = _ranged_part_copy(models.S3Backend.upload_part_copy)

        value_property = models.FakeKey.value
        original_set_value = value_property.fset

        def set_value(self: Any, new_value: bytes | _Chunks) -> None:
            buffer = self._value_buffer
            memory = getattr(buffer, "_file", None)
            in_memory = type(memory) in (io.BytesIO, _ChunkedIO) and not buffer._rolled
            if in_memory and type(new_value) is bytes:
                buffer._file = io.BytesIO(new_value)  # shares new_value: no copy
                if self._etag is None:
                    # moto computes it lazily by seek()+read() on the shared buffer, unlocked:
                    # racing readers could see each other's positions. Compute it now.
                    self._etag = hashlib.md5(new_value, usedforsecurity=False).hexdigest()
            elif in_memory and isinstance(new_value, _Chunks):
                buffer._file = _ChunkedIO(new_value)
            elif isinstance(new_value, _Chunks):  # never happens: buffers stay in memory
                original_set_value(self, b"".join(new_value.parts))
                return
            else:
                original_set_value(self, new_value)
                return
            self.contentsize = len(new_value)

        models.FakeKey.value = property(value_property.fget, set_value)

        # moto lists every multipart upload as initiated on 2010-11-10; remember the real time
        # (crash recovery decides what to abort by age) and put it in the listing (see
        # `_with_initiated`).
        original_init = models.FakeMultipart.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self.wsfuse_initiated = datetime.datetime.now(datetime.UTC)

        models.FakeMultipart.__init__ = init
        _patched = True


def _auth_disabled() -> bool:
    return math.isinf(float(moto_settings.INITIAL_NO_AUTH_ACTION_COUNT))


def _s3_backend() -> Any:
    return moto.s3.models.s3_backends[DEFAULT_ACCOUNT_ID][_PARTITION]


# ---------------------------------------------------------------------------- classification


def classify(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], environ: WSGIEnviron
) -> str:
    """The kind of an S3 request (GET, PUT, LIST, CREATE_MPU, ...)."""
    params = set(query) - _IGNORED_PARAMS
    copy_source = "HTTP_X_AMZ_COPY_SOURCE" in environ
    if not bucket:
        return LIST_BUCKETS if method == "GET" else OTHER
    if not key:
        if method == "GET":
            if "uploads" in params:
                return LIST_MPU
            if "versions" in params:
                return LIST_VERSIONS
            return LIST if params <= _LIST_PARAMS else BUCKET_CONFIG
        if method == "HEAD":
            return HEAD_BUCKET
        if method == "PUT":
            return CREATE_BUCKET if not params else BUCKET_CONFIG
        if method == "DELETE":
            return DELETE_BUCKET if not params else BUCKET_CONFIG
        if method == "POST" and "delete" in params:
            return DELETE_OBJECTS
        return BUCKET_CONFIG
    if method == "GET":
        if "uploadId" in params:
            return LIST_PARTS
        return GET if _only_overrides(params) else OBJECT_CONFIG
    if method == "HEAD":
        return HEAD
    if method == "PUT":
        if "uploadId" in params and "partNumber" in params:
            return UPLOAD_PART_COPY if copy_source else UPLOAD_PART
        if params - {"versionId"}:
            return OBJECT_CONFIG
        return COPY if copy_source else PUT
    if method == "POST":
        if "uploads" in params:
            return CREATE_MPU
        if "uploadId" in params:
            return COMPLETE_MPU
        return OBJECT_CONFIG
    if method == "DELETE":
        if "uploadId" in params:
            return ABORT_MPU
        return DELETE if params <= {"versionId"} else OBJECT_CONFIG
    return OTHER


def _only_overrides(params: set[str]) -> bool:
    return all(p.startswith("response-") or p in {"versionId", "partNumber"} for p in params)


def _split_target(environ: WSGIEnviron) -> tuple[str | None, str | None, str]:
    """(bucket, key, query string) of a path-style or `bucket.localhost` request."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path, _, query = str(raw).partition("?")
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        path = unquote(path)
    else:
        path = str(environ.get("PATH_INFO", "")).encode("latin-1").decode("utf-8", "replace")
        query = str(environ.get("QUERY_STRING", ""))
    host = str(environ.get("HTTP_HOST", "")).rsplit(":", 1)[0]
    if host.endswith(".localhost"):
        bucket: str | None = host[: -len(".localhost")]
        key = path[1:]
    else:
        bucket, _, key = path[1:].partition("/")
    return bucket or None, key or None, query


# ---------------------------------------------------------------------------- the server


def _error_xml(code: str, message: str, resource: str, **extra: str) -> bytes:
    fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource>{fields}"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


_REASONS = {
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    412: "Precondition Failed",
    416: "Requested Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class S3TestServer(EmulatesLatency):
    """moto's S3 server on 127.0.0.1 (a free port unless given), in background threads.

    Use as a context manager (or `start()` / `stop()`); `endpoint_url` is the URL to give
    boto3 or wsfuse. Attributes and methods for tests: `latency`, `no_latency()`,
    `create_bucket()`, `client()`, `requests`, `stats`, `count()`, `bytes_sent()`,
    `reset_stats()`, `fail_next()`, `clear_faults()`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        require_auth: bool = False,
        fast_ranges: bool = True,
        verify_checksums: bool = True,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        #: (certificate, key) files: serve HTTPS, as real S3 endpoints do
        self.tls = tls
        self._requested_port = port
        #: the emulated time-to-first-byte (`latency`, `no_latency()`, `peak_overlap`)
        self.delays = LatencyEmulator(latency)
        #: serve single-range GETs from the object's slice (False: stock moto, for comparison)
        self.fast_ranges = fast_ranges
        #: refuse uploads whose x-amz-checksum-crc32c does not match, as S3 does (moto does
        #: not); benchmarks turn it off, since S3 pays for that check on its own machines
        self.verify_checksums = verify_checksums
        self._require_auth = require_auth
        self._saved_auth_count: float | None = None
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._faults: list[_Fault] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> S3TestServer:
        if self._server is not None:
            return self
        _patch_moto()
        if self._require_auth:
            self._saved_auth_count = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

        class QuietHandler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

        # moto's dispatcher finds the service of every request by stat()ing its ~180 package
        # directories (40% of a HEAD's server time): S3 requests go straight to the S3 app.
        moto_app = _Dispatch(
            create_backend_app("s3"), DomainDispatcherApplication(create_backend_app)
        )
        self._server = make_server(
            self.host,
            self._requested_port,
            self._app(moto_app),
            threaded=True,
            request_handler=QuietHandler,
            ssl_context=self.tls,
        )
        server = self._server
        # Answers go out as several small writes (TLS handshake flights, headers, then the
        # body): with Nagle each later one waits for the client's delayed ACK, ~12 ms per
        # request over HTTPS; S3's front ends do not make clients wait so. Set on the
        # listening socket, it holds for every accepted connection (Linux copies it), the
        # handshake that runs in accept() included.
        _no_delay(server.socket)
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05),
            name=f"s3-test-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._saved_auth_count is not None:
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = self._saved_auth_count
            self._saved_auth_count = None

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("S3TestServer is not running")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # ------------------------------------------------------------------ harness helpers

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        """Create `name` directly in moto's backend (no request; existing is fine)."""
        _patch_moto()
        backend = _s3_backend()
        if name not in backend.buckets:
            backend.create_bucket(name, region)

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this server (test credentials, no retries, path style)."""
        cfg = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
            **config,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="wsfuse-test",
            aws_secret_access_key="wsfuse-test-secret",  # noqa: S106 - the server ignores it
            config=cfg,
            verify=self.tls[0] if self.tls else None,
        )

    # ------------------------------------------------------------------ statistics

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request since the last `reset_stats()`, in arrival order."""
        with self._lock:
            return [e.snapshot() for e in self._entries]

    @property
    def stats(self) -> Counter[str]:
        """Number of requests by kind."""
        with self._lock:
            return Counter(e.kind for e in self._entries)

    def count(
        self, kind: str | None = None, *, key: str | None = None, bucket: str | None = None
    ) -> int:
        """Requests of `kind` (any if None), optionally only those for `key` / `bucket`."""
        with self._lock:
            return sum(1 for e in self._entries if _matches(e, kind, key, bucket))

    def bytes_sent(
        self, kind: str | None = None, *, key: str | None = None, bucket: str | None = None
    ) -> int:
        """Response body bytes of the matching requests."""
        with self._lock:
            return sum(e.bytes_sent for e in self._entries if _matches(e, kind, key, bucket))

    def reset_stats(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats_summary(self, *, reset: bool = False) -> dict[str, dict[str, int]]:
        """Requests and response body bytes by kind (and `"total"`), as JSON-ready numbers;
        with `reset`, the counters restart at once (atomically with the reading)."""
        summary: dict[str, dict[str, int]] = {"total": {"requests": 0, "bytes": 0}}
        with self._lock:
            for e in self._entries:
                for name in (e.kind, "total"):
                    row = summary.setdefault(name, {"requests": 0, "bytes": 0})
                    row["requests"] += 1
                    row["bytes"] += e.bytes_sent
            if reset:
                self._entries.clear()
        return summary

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        code: str = "SlowDown",
        *,
        kind: str | None = None,
        key: str | None = None,
        message: str = "Please reduce your request rate.",
    ) -> None:
        """Answer the next `n` requests of `kind` (any if None) for `key` (any if None) with an
        S3 error: `status` and an XML body with `code` (no body for HEAD, as S3)."""
        with self._lock:
            self._faults.append(_Fault(n, status, code, message, kind, key))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, kind: str, key: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.kind in (None, kind) and fault.key in (None, key):
                    fault.remaining -= 1
                    return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
            return None

    # ------------------------------------------------------------------ the WSGI layer

    def _app(self, moto_app: WSGIApp) -> WSGIApp:
        def app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
            method = str(environ.get("REQUEST_METHOD", "GET"))
            bucket, key, query_string = _split_target(environ)
            query = dict(parse_qsl(query_string, keep_blank_values=True))
            if bucket == ADMIN_PREFIX:
                return self._admin(method, key or "", query, start_response)
            moto_api = bucket == "moto-api"
            kind = OTHER if moto_api else classify(method, bucket, key, query, environ)
            entry = _Entry(kind, bucket, key)
            with self._lock:
                self._entries.append(entry)
            self.delays.delay()

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                entry.status = int(status.split(None, 1)[0])
                return start_response(status, headers, exc_info)

            fault = self._take_fault(kind, key)
            if fault is not None:
                _drain(environ)
                body = _error_xml(fault.code, fault.message, f"/{bucket or ''}/{key or ''}")
                return self._respond(entry, start, method, fault.status, body, [])

            if kind in _NEEDS_UPLOAD and not _upload_exists(bucket, query.get("uploadId", "")):
                # moto answers 500 (a KeyError) where S3 answers 404 NoSuchUpload
                _drain(environ)
                body = _error_xml(
                    "NoSuchUpload",
                    "The specified upload does not exist. The upload ID may be invalid, or the "
                    "upload may have been aborted or completed.",
                    f"/{bucket or ''}/{key or ''}",
                    UploadId=query.get("uploadId", ""),
                )
                return self._respond(entry, start, method, 404, body, [])

            if (
                self.verify_checksums
                and kind in (PUT, UPLOAD_PART)
                and environ.get("HTTP_X_AMZ_CHECKSUM_CRC32C")
            ):
                bad_digest = _verify_crc32c(environ, str(environ["HTTP_X_AMZ_CHECKSUM_CRC32C"]))
                if bad_digest is not None:
                    return self._respond(entry, start, method, 400, bad_digest, [])

            if kind == COMPLETE_MPU and self.verify_checksums:
                refused = _complete_checksums_refused(environ, bucket, query.get("uploadId", ""))
                if refused is not None:
                    return self._respond(entry, start, method, *refused, [])

            if kind == COMPLETE_MPU and environ.get("HTTP_IF_MATCH") is not None:
                refused = _complete_refused(bucket, key, str(environ["HTTP_IF_MATCH"]))
                if refused is not None:
                    _drain(environ)
                    return self._respond(entry, start, method, *refused, [])

            if kind == GET and self.fast_ranges:
                answer = self._range_get(environ, bucket, key, set(query) - _IGNORED_PARAMS)
                if answer is not None:
                    status, headers, body = answer
                    return self._respond(entry, start, method, status, body, headers)

            if kind == LIST_MPU:
                return self._list_uploads(moto_app, environ, start, entry, bucket)
            return _Counting(moto_app(environ, start), entry)

        return app

    def _admin(
        self, method: str, action: str, query: dict[str, str], start_response: StartResponse
    ) -> list[bytes]:
        """The harness's control path, for a server in another process (not counted, no
        latency): `GET /_wsfuse/stats` (`?reset=1` resets after reading), `POST
        /_wsfuse/reset`, `POST /_wsfuse/latency?ms=20`. S3 bucket names cannot contain `_`,
        so no S3 request is ever taken for one of these."""
        status = "200 OK"
        payload: object = None
        if action == "stats" and method == "GET":
            payload = self.stats_summary(reset=query.get("reset") in ("1", "true"))
        elif action == "reset" and method == "POST":
            self.reset_stats()
            payload = {}
        elif action == "latency" and method in ("POST", "PUT"):
            try:
                self.latency = float(query.get("ms", "")) / 1000
            except ValueError:
                status, payload = "400 Bad Request", {"error": "latency needs ?ms=NUMBER"}
            else:
                payload = {"latency_ms": self.latency * 1000}
        elif action == "latency" and method == "GET":
            payload = {"latency_ms": self.latency * 1000}
        else:
            status, payload = "404 Not Found", {"error": f"no admin action {method} {action!r}"}
        body = json.dumps(payload).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    @staticmethod
    def _list_uploads(
        moto_app: WSGIApp,
        environ: WSGIEnviron,
        start: StartResponse,
        entry: _Entry,
        bucket: str | None,
    ) -> list[bytes]:
        """moto's ListMultipartUploads answer, with each upload's real initiation time."""
        answer: list[tuple[str, list[tuple[str, str]]]] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer.append((status, headers))
            return lambda data: None

        result = moto_app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = answer[-1]
        if status.startswith("200"):
            body = _with_initiated(body, bucket)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start(status, [*headers, ("Content-Length", str(len(body)))])
        entry.bytes_sent = len(body)
        return [body]

    @staticmethod
    def _respond(
        entry: _Entry,
        start: StartResponse,
        method: str,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]],
    ) -> list[bytes]:
        all_headers = [
            ("x-amz-request-id", uuid.uuid4().hex[:16].upper()),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        if status >= 300:
            all_headers.append(("Content-Type", "application/xml"))
        start(f"{status} {_REASONS.get(status, 'Error')}", all_headers)
        if method == "HEAD":
            return []
        entry.bytes_sent = len(body)
        return [body]

    def _range_get(
        self, environ: WSGIEnviron, bucket: str | None, key: str | None, params: set[str]
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Answer a single-range GET from the object's slice, or None to let moto answer."""
        range_header = str(environ.get("HTTP_RANGE") or "")
        if not range_header or not bucket or not key or params:
            return None
        match = _RANGE.fullmatch(range_header.strip())
        if match is None or any(h in environ for h in _FALLTHROUGH_HEADERS):
            return None
        if not _auth_disabled():
            return None
        fake_bucket = _s3_backend().buckets.get(bucket)
        if fake_bucket is None:
            return None
        obj = fake_bucket.keys.get(key)
        if not isinstance(obj, moto.s3.models.FakeKey) or obj.storage_class not in (
            None,
            "STANDARD",
        ):
            return None
        try:
            return self._range_answer(obj, f"/{bucket}/{key}", environ, range_header, match)
        except ValueError:  # the key was overwritten or deleted meanwhile: let moto answer
            return None

    @staticmethod
    def _range_answer(
        obj: Any, resource: str, environ: WSGIEnviron, range_header: str, match: re.Match[str]
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        etag = str(obj.etag)
        if_match = environ.get("HTTP_IF_MATCH")
        if if_match is not None:
            wanted = {t.strip().strip('"') for t in str(if_match).split(",")}
            if "*" not in wanted and etag.strip('"') not in wanted:
                body = _error_xml(
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                    resource,
                    Condition="If-Match",
                )
                return 412, [], body
        size = int(obj.size)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else size - 1
        if last < first:
            return None  # not a valid range spec: S3 ignores it
        if first >= size:
            body = _error_xml(
                "InvalidRange",
                "The requested range is not satisfiable",
                resource,
                RangeRequested=range_header,
                ActualObjectSize=str(size),
            )
            return 416, [("Content-Range", f"bytes */{size}")], body
        last = min(last, size - 1)
        data = _read_range(obj, first, last + 1)
        headers = [
            ("Content-Range", f"bytes {first}-{last}/{size}"),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Last-Modified", str(obj.last_modified_RFC1123)),
        ]
        if obj.version_id != "null":
            headers.append(("x-amz-version-id", str(obj.version_id)))
        for name, value in obj.metadata.items():
            headers.append((str(name), str(value)))
        try:
            for _, value in headers:
                value.encode("latin-1")
        except UnicodeEncodeError:
            return None
        return 206, headers, data


_NEEDS_UPLOAD = frozenset({UPLOAD_PART, UPLOAD_PART_COPY, COMPLETE_MPU, LIST_PARTS})


def _complete_refused(
    bucket: str | None, key: str | None, if_match: str
) -> tuple[int, bytes] | None:
    """(status, body) of a CompleteMultipartUpload whose `If-Match` does not hold, as S3
    answers it; None when it holds, or when unsure (moto then completes unconditionally)."""
    if not bucket or not key or not _auth_disabled():
        return None
    fake_bucket = _s3_backend().buckets.get(bucket)
    if fake_bucket is None:
        return None
    resource = f"/{bucket}/{key}"
    obj = fake_bucket.keys.get(key)
    if not isinstance(obj, moto.s3.models.FakeKey):
        body = _error_xml("NoSuchKey", "The specified key does not exist.", resource, Key=key)
        return 404, body
    wanted = {t.strip().strip('"') for t in if_match.split(",")}
    if "*" in wanted or str(obj.etag).strip('"') in wanted:
        return None
    body = _error_xml(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        resource,
        Condition="If-Match",
    )
    return 412, body


_PART = re.compile(rb"<Part>(.*?)</Part>", re.DOTALL)
_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
_PART_CRC32C = re.compile(rb"<ChecksumCRC32C>\s*(.*?)\s*</ChecksumCRC32C>")


def _complete_checksums_refused(
    environ: WSGIEnviron, bucket: str | None, upload_id: str
) -> tuple[int, bytes] | None:
    """(status, body) of a CompleteMultipartUpload that S3 refuses because the upload was
    created with a CRC32C checksum and a part's `ChecksumCRC32C` is missing or wrong (moto
    does not check); None otherwise, with the request body put back for moto."""
    if not bucket or not _auth_disabled():
        return None
    fake_bucket = _s3_backend().buckets.get(bucket)
    multipart = fake_bucket.multiparts.get(upload_id) if fake_bucket is not None else None
    if multipart is None:
        return None
    if str(multipart.metadata.get("x-amz-checksum-algorithm") or "").upper() != "CRC32C":
        return None
    body = _peek_body(environ)
    resource = f"/{bucket}/{multipart.key_name}"
    for part_xml in _PART.findall(body):
        number_match = _PART_NUMBER.search(part_xml)
        if number_match is None:
            continue  # moto answers a malformed part itself
        number = int(number_match.group(1))
        checksum = _PART_CRC32C.search(part_xml)
        if checksum is None:
            return 400, _error_xml(
                "InvalidRequest",
                "The upload was created using a crc32c checksum. The complete request must "
                f"include the checksum for each part. It was missing for part {number} in "
                "the request.",
                resource,
            )
        part = multipart.parts.get(number)
        if part is not None and _b64_crc32c(part.value) != checksum.group(1).decode():
            return 400, _error_xml(
                "InvalidPart",
                "One or more of the specified parts could not be found. The part may not "
                "have been uploaded, or the specified entity tag may not match the part's "
                "entity tag.",
                resource,
                PartNumber=str(number),
            )
    return None


def _upload_exists(bucket: str | None, upload_id: str) -> bool:
    """Whether the multipart upload exists (True when unsure: moto then answers)."""
    if not bucket or not _auth_disabled():
        return True
    fake_bucket = _s3_backend().buckets.get(bucket)
    return fake_bucket is None or upload_id in fake_bucket.multiparts


_UPLOAD = re.compile(rb"<Upload>.*?</Upload>", re.DOTALL)
_UPLOAD_ID = re.compile(rb"<UploadId>(.*?)</UploadId>")
_INITIATED = re.compile(rb"<Initiated>.*?</Initiated>")


def _with_initiated(body: bytes, bucket: str | None) -> bytes:
    fake_bucket = _s3_backend().buckets.get(bucket) if bucket else None
    if fake_bucket is None:
        return body

    def fix(match: re.Match[bytes]) -> bytes:
        block = match.group(0)
        upload_id = _UPLOAD_ID.search(block)
        upload = fake_bucket.multiparts.get(upload_id.group(1).decode()) if upload_id else None
        when = getattr(upload, "wsfuse_initiated", None)
        if when is None:
            return block
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
        return _INITIATED.sub(b"<Initiated>" + stamp.encode() + b"</Initiated>", block)

    return _UPLOAD.sub(fix, body)


class _Dispatch:
    """Sends S3 requests (signed for s3, or unsigned) to moto's S3 app, the rest (moto-api,
    other services) to moto's dispatcher."""

    def __init__(self, s3_app: WSGIApp, dispatcher: WSGIApp) -> None:
        self.s3_app = s3_app
        self.dispatcher = dispatcher

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        query = str(environ.get("QUERY_STRING", ""))
        signed_for = "/s3/aws4_request" in auth or "%2Fs3%2Faws4_request" in query
        unsigned = not auth and "X-Amz-Credential" not in query
        if not path.startswith(("/moto-api", "/favicon.ico", "/latest/")) and (
            signed_for or unsigned
        ):
            return self.s3_app(environ, start_response)
        return self.dispatcher(environ, start_response)


def _matches(entry: _Entry, kind: str | None, key: str | None, bucket: str | None) -> bool:
    return (
        (kind is None or entry.kind == kind)
        and (key is None or entry.key == key)
        and (bucket is None or entry.bucket == bucket)
    )


def _b64_crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def _peek_body(environ: WSGIEnviron) -> bytes:
    """The request body, read whole and put back for moto to read again."""
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body: bytes = stream.read() if environ.get("wsgi.input_terminated") else stream.read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _verify_crc32c(environ: WSGIEnviron, expected: str) -> bytes | None:
    """S3 checks an upload's `x-amz-checksum-crc32c` and refuses a body that does not match
    (moto ignores it). Returns the BadDigest error body, or None with the body put back for
    moto to read."""
    body = _peek_body(environ)
    actual = _b64_crc32c(body)
    if actual == expected:
        return None
    return _error_xml(
        "BadDigest",
        f"The CRC32C you specified did not match the calculated checksum ({actual}).",
        "",
    )


def _drain(environ: WSGIEnviron) -> None:
    """Read the request body we are not going to use, so the client can see our answer."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        remaining = 0
    if environ.get("wsgi.input_terminated"):
        while stream.read(1 << 20):
            pass
        return
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 20))
        if not chunk:
            return
        remaining -= len(chunk)


class _Counting:
    """Wraps moto's response iterable to count the body bytes sent."""

    def __init__(self, inner: Iterable[bytes], entry: _Entry) -> None:
        self._inner = inner
        self._entry = entry

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._entry.bytes_sent += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------- standalone


def create_iam_user(name: str) -> tuple[str, str]:
    """Create IAM user `name`, allowed every action, in this process's moto; returns its
    (access key id, secret access key). Only meaningful with `require_auth=True`."""
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user("us-east-1", name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(name, "everything", json.dumps(policy))
    key = iam.create_access_key(name)
    return key.access_key_id, key.secret_access_key


def _no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY where the socket is TCP (not on a unix socket, where it does not exist)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wsfuse.testing.s3server",
        description="A local S3 API server (moto, with fast ranged GETs) for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument("--latency", type=float, default=0.0, help="time to first byte, in ms")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket")
    parser.add_argument(
        "--require-auth",
        action="store_true",
        help="check credentials like S3 does (moto's IAM; unknown access keys are refused)",
    )
    parser.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="accept uploads without checking their x-amz-checksum-crc32c (benchmarks)",
    )
    parser.add_argument(
        "--tls",
        nargs=2,
        metavar=("CERT", "KEY"),
        help="serve HTTPS with this certificate and key (PEM files)",
    )
    parser.add_argument(
        "--user",
        help="create this IAM user, allowed everything, and print its access key id and "
        "secret on the line after the endpoint (for signed-request tests with --require-auth)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = S3TestServer(
        args.host,
        args.port,
        latency=args.latency / 1000,
        require_auth=args.require_auth,
        verify_checksums=not args.no_verify_checksums,
        tls=tuple(args.tls) if args.tls else None,
    )
    with server:
        for name in args.bucket:
            server.create_bucket(name)
        sys.stdout.write(server.endpoint_url + "\n")
        if args.user:
            sys.stdout.write(" ".join(create_iam_user(args.user)) + "\n")
        sys.stdout.flush()
        stop.wait()


if __name__ == "__main__":
    main()
