"""What the S3 test server knows of a request: its target (bucket, key, query), its kind
(GET, PUT, LIST, CREATE_MPU, ...), and the record kept of it for tests to count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import unquote

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

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
IGNORED_PARAMS = frozenset({"x-id"})  # botocore adds ?x-id=GetObject etc.


class RequestRecord(NamedTuple):
    """One request as the server saw it."""

    kind: str
    bucket: str | None
    key: str | None
    bytes_sent: int  # response body bytes
    status: int  # 0 while the response has not started
    bytes_received: int = 0  # request body bytes (the payload of a chunked upload)


@dataclass(slots=True)
class RequestEntry:
    """One request while it is answered (the server fills in its status and bytes sent);
    tests see its `snapshot()`."""

    kind: str
    bucket: str | None
    key: str | None
    bytes_sent: int = 0
    status: int = 0
    bytes_received: int = 0

    def snapshot(self) -> RequestRecord:
        return RequestRecord(
            self.kind, self.bucket, self.key, self.bytes_sent, self.status, self.bytes_received
        )


#: A request with this header set to 1 is the harness's own (a benchmark's "is it there yet?"
#: checks): answered as any other, but neither delayed nor counted.
HARNESS_HEADER = "HTTP_X_WSFUSE_HARNESS"


def body_length(environ: WSGIEnviron) -> int:
    """The request body's payload length: `x-amz-decoded-content-length` for a chunked
    (aws-chunked) upload, whose Content-Length includes the chunk signatures."""
    for name in ("HTTP_X_AMZ_DECODED_CONTENT_LENGTH", "CONTENT_LENGTH"):
        value = str(environ.get(name) or "")
        if value.isdigit():
            return int(value)
    return 0


def classify(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], environ: WSGIEnviron
) -> str:
    """The kind of an S3 request (GET, PUT, LIST, CREATE_MPU, ...)."""
    params = set(query) - IGNORED_PARAMS
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


def split_target(environ: WSGIEnviron) -> tuple[str | None, str | None, str]:
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


def matches(entry: RequestEntry, kind: str | None, key: str | None, bucket: str | None) -> bool:
    return (
        (kind is None or entry.kind == kind)
        and (key is None or entry.key == key)
        and (bucket is None or entry.bucket == bucket)
    )


class CountingBody:
    """Wraps moto's response iterable to count the body bytes sent."""

    def __init__(self, inner: Iterable[bytes], entry: RequestEntry) -> None:
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
