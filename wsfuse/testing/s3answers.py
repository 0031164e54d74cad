"""The answers the S3 test server gives itself instead of leaving a request to moto.

A single-range GET is served straight from the object's slice (`range_get`), and where moto
deviates from S3 in a way the backend contract meets, the S3 answer is given here: 404
NoSuchUpload for a part upload to a finished upload (`upload_exists`), a refused
CompleteMultipartUpload whose `If-Match` does not hold or whose part checksums do not match
(`complete_refused`, `complete_checksums_refused`), BadDigest for an upload whose CRC32C does not
match (`verify_crc32c`), and each multipart upload's real initiation time in
ListMultipartUploads (`list_uploads`).
"""

from __future__ import annotations

import io
import re
import uuid
from html import escape
from typing import Any

import moto.s3.models

from wsfuse.testing.s3moto import auth_disabled, b64_crc32c, read_range_pieces, s3_backend
from wsfuse.testing.s3requests import (
    COMPLETE_MPU,
    LIST_PARTS,
    UPLOAD_PART,
    UPLOAD_PART_COPY,
    RequestEntry,
    StartResponse,
    WSGIApp,
    WSGIEnviron,
)

#: An answer's body: bytes, or pieces sent one after the other (`s3moto.read_range_pieces`).
Body = bytes | list[bytes]

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
# Conditional / SSE-C headers the fast path leaves to moto.
_FALLTHROUGH_HEADERS = (
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM",
)


def error_xml(code: str, message: str, resource: str, **extra: str) -> bytes:
    """An S3 error body: `code`, `message`, `resource`, and any `extra` fields."""
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


def respond(
    entry: RequestEntry,
    start: StartResponse,
    method: str,
    status: int,
    body: Body,
    headers: list[tuple[str, str]],
) -> list[bytes]:
    """Answer `status` and `body` as S3 does (a request id; XML for an error; no body for
    HEAD), counting the body bytes in `entry`. A body in pieces is sent piece by piece."""
    pieces = [body] if isinstance(body, bytes) else body
    length = sum(map(len, pieces))
    all_headers = [
        ("x-amz-request-id", uuid.uuid4().hex[:16].upper()),
        ("Content-Length", str(length)),
        *headers,
    ]
    if status >= 300:
        all_headers.append(("Content-Type", "application/xml"))
    start(f"{status} {_REASONS.get(status, 'Error')}", all_headers)
    if method == "HEAD":
        return []
    entry.bytes_sent = length
    return pieces


def list_uploads(
    moto_app: WSGIApp,
    environ: WSGIEnviron,
    start: StartResponse,
    entry: RequestEntry,
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


def range_get(
    environ: WSGIEnviron, bucket: str | None, key: str | None, params: set[str]
) -> tuple[int, list[tuple[str, str]], Body] | None:
    """Answer a single-range GET from the object's slice, or None to let moto answer."""
    range_header = str(environ.get("HTTP_RANGE") or "")
    if not range_header or not bucket or not key or params:
        return None
    match = _RANGE.fullmatch(range_header.strip())
    if match is None or any(h in environ for h in _FALLTHROUGH_HEADERS):
        return None
    if not auth_disabled():
        return None
    fake_bucket = s3_backend().buckets.get(bucket)
    if fake_bucket is None:
        return None
    obj = fake_bucket.keys.get(key)
    if not isinstance(obj, moto.s3.models.FakeKey) or obj.storage_class not in (
        None,
        "STANDARD",
    ):
        return None
    try:
        return _range_answer(obj, f"/{bucket}/{key}", environ, range_header, match)
    except ValueError:  # the key was overwritten or deleted meanwhile: let moto answer
        return None


def _range_answer(
    obj: Any, resource: str, environ: WSGIEnviron, range_header: str, match: re.Match[str]
) -> tuple[int, list[tuple[str, str]], Body] | None:
    etag = str(obj.etag)
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None:
        wanted = {t.strip().strip('"') for t in str(if_match).split(",")}
        if "*" not in wanted and etag.strip('"') not in wanted:
            body = error_xml(
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
        body = error_xml(
            "InvalidRange",
            "The requested range is not satisfiable",
            resource,
            RangeRequested=range_header,
            ActualObjectSize=str(size),
        )
        return 416, [("Content-Range", f"bytes */{size}")], body
    last = min(last, size - 1)
    data = read_range_pieces(obj, first, last + 1)
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


NEEDS_UPLOAD = frozenset({UPLOAD_PART, UPLOAD_PART_COPY, COMPLETE_MPU, LIST_PARTS})


def complete_refused(
    bucket: str | None, key: str | None, if_match: str
) -> tuple[int, bytes] | None:
    """(status, body) of a CompleteMultipartUpload whose `If-Match` does not hold, as S3
    answers it; None when it holds, or when unsure (moto then completes unconditionally)."""
    if not bucket or not key or not auth_disabled():
        return None
    fake_bucket = s3_backend().buckets.get(bucket)
    if fake_bucket is None:
        return None
    resource = f"/{bucket}/{key}"
    obj = fake_bucket.keys.get(key)
    if not isinstance(obj, moto.s3.models.FakeKey):
        body = error_xml("NoSuchKey", "The specified key does not exist.", resource, Key=key)
        return 404, body
    wanted = {t.strip().strip('"') for t in if_match.split(",")}
    if "*" in wanted or str(obj.etag).strip('"') in wanted:
        return None
    body = error_xml(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        resource,
        Condition="If-Match",
    )
    return 412, body


_PART = re.compile(rb"<Part>(.*?)</Part>", re.DOTALL)
_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")
_PART_CRC32C = re.compile(rb"<ChecksumCRC32C>\s*(.*?)\s*</ChecksumCRC32C>")


def complete_checksums_refused(
    environ: WSGIEnviron, bucket: str | None, upload_id: str
) -> tuple[int, bytes] | None:
    """(status, body) of a CompleteMultipartUpload that S3 refuses because the upload was
    created with a CRC32C checksum and a part's `ChecksumCRC32C` is missing or wrong (moto
    does not check); None otherwise, with the request body put back for moto."""
    if not bucket or not auth_disabled():
        return None
    fake_bucket = s3_backend().buckets.get(bucket)
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
            return 400, error_xml(
                "InvalidRequest",
                "The upload was created using a crc32c checksum. The complete request must "
                f"include the checksum for each part. It was missing for part {number} in "
                "the request.",
                resource,
            )
        part = multipart.parts.get(number)
        if part is not None and b64_crc32c(part.value) != checksum.group(1).decode():
            return 400, error_xml(
                "InvalidPart",
                "One or more of the specified parts could not be found. The part may not "
                "have been uploaded, or the specified entity tag may not match the part's "
                "entity tag.",
                resource,
                PartNumber=str(number),
            )
    return None


def upload_exists(bucket: str | None, upload_id: str) -> bool:
    """Whether the multipart upload exists (True when unsure: moto then answers)."""
    if not bucket or not auth_disabled():
        return True
    fake_bucket = s3_backend().buckets.get(bucket)
    return fake_bucket is None or upload_id in fake_bucket.multiparts


_UPLOAD = re.compile(rb"<Upload>.*?</Upload>", re.DOTALL)
_UPLOAD_ID = re.compile(rb"<UploadId>(.*?)</UploadId>")
_INITIATED = re.compile(rb"<Initiated>.*?</Initiated>")


def _with_initiated(body: bytes, bucket: str | None) -> bytes:
    fake_bucket = s3_backend().buckets.get(bucket) if bucket else None
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


def _peek_body(environ: WSGIEnviron) -> bytes:
    """The request body, read whole and put back for moto to read again."""
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body: bytes = stream.read() if environ.get("wsgi.input_terminated") else stream.read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def verify_crc32c(environ: WSGIEnviron, expected: str) -> bytes | None:
    """S3 checks an upload's `x-amz-checksum-crc32c` and refuses a body that does not match
    (moto ignores it). Returns the BadDigest error body, or None with the body put back for
    moto to read."""
    body = _peek_body(environ)
    actual = b64_crc32c(body)
    if actual == expected:
        return None
    return error_xml(
        "BadDigest",
        f"The CRC32C you specified did not match the calculated checksum ({actual}).",
        "",
    )


def drain(environ: WSGIEnviron) -> None:
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
