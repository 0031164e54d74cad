"""The S3 backend: boto3, one client per backend, no hidden retries.

The client is built once (boto3 clients are thread-safe; sessions are not) with a connection
pool sized to the filesystem's parallelism, short connect and read timeouts, and botocore's
own retries off: `wsfuse.backends.retry` is the one place that retries. The request/response
checksums that recent botocore adds by default are off too ("when_required"): TCP (and TLS)
already protect the bytes, and hashing every ranged GET twice costs more CPU than the FUSE
layer itself.

Ranged GETs, part uploads and PUTs, the hot requests, skip the client pipeline (`s3direct`:
the same signer, HTTP session and error mapping, at less CPU per request and per byte).

Errors are mapped in one function, `map_error` (`s3wire`, with the rest of what S3's answers
mean in wsfuse's terms); `copy`, a server-side copy that may go in parallel parts, is `s3copy`.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import email.utils
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions
import botocore.session
import botocore.utils
import google_crc32c
import urllib3.exceptions
from botocore.config import Config

from wsfuse import errors
from wsfuse.backends.base import (
    DEFAULT_PAGE_SIZE,
    Capabilities,
    ListPage,
    ObjectInfo,
    OnBlock,
    PartInfo,
    UploadInfo,
)
from wsfuse.backends.options import BackendOptions
from wsfuse.backends.s3copy import (
    MIN_COPY_PART,
    PARALLEL_COPY_ABOVE,
    ServerSideCopy,
    copy_part_size,
)
from wsfuse.backends.s3direct import DirectS3, put_headers
from wsfuse.backends.s3wire import (
    WRONG_REGION,
    bare_etag,
    http_time,
    is_range_error,
    map_error,
    object_info,
    quoted_etag,
    response_time,
    timestamp,
    user_metadata,
)

# What callers (and tests) import from here, wherever it is defined.
__all__ = ["PARALLEL_COPY_ABOVE", "S3Backend", "copy_part_size", "map_error"]

log = logging.getLogger(__name__)

T = TypeVar("T")

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _crc32c(data: bytes) -> str:
    """The `x-amz-checksum-crc32c` of `data`: base64 of the big-endian CRC32C. S3 verifies it
    and refuses a body that does not match (BadDigest), so uploads need no SHA-256 of the
    body in the signature (0.71 CPU s/GiB here, against 0.06 for the CRC32C); mountpoint-s3
    makes the same choice."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def _part_entry(part: PartInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {"PartNumber": part.number, "ETag": quoted_etag(part.etag)}
    if part.checksum:
        entry["ChecksumCRC32C"] = part.checksum
    return entry


def _parse_timestamp(value: str) -> datetime:
    """botocore's timestamp parser, fast: S3 XML has ISO 8601 (`datetime.fromisoformat`, in C)
    and headers RFC 1123 dates. botocore's default (dateutil) took ~15% of the daemon's CPU
    while listing a 10,000-key directory: every key's LastModified goes through it."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return botocore.utils.parse_timestamp(value)  # epoch seconds and other rarities
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class S3Backend(ServerSideCopy):
    """One S3 bucket (or an S3-compatible store at `options.endpoint_url`)."""

    def __init__(self, bucket: str, options: BackendOptions) -> None:
        self.bucket = bucket
        self.name = f"s3://{bucket}"
        self.capabilities = Capabilities()
        self.options = options
        #: above this size `copy` copies parts in parallel (`PARALLEL_COPY_ABOVE`; lowered by
        #: tests)
        self.max_single_copy = PARALLEL_COPY_ABOVE
        #: smallest part of a multipart copy (`copy_part_size` says how it grows)
        self.copy_part_size = MIN_COPY_PART
        config = Config(
            max_pool_connections=options.max_connections,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            # One attempt: retries, backoff and deadlines live in wsfuse.backends.retry.
            # (`max_attempts` counts *retries* in botocore's Config; `total_max_attempts`
            # counts attempts.)
            retries={"total_max_attempts": 1, "mode": "standard"},
            # UNSIGNED-PAYLOAD: SigV4 signs the headers, and a CRC32C checksum header
            # (which S3 verifies) protects each body instead of a SHA-256 of it (see `_crc32c`)
            # (without checksums, botocore's default: bodies signed over plain http)
            s3=(
                {"addressing_style": options.addressing_style, "payload_signing_enabled": False}
                if options.upload_checksums == "crc32c"
                else {"addressing_style": options.addressing_style}
            ),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        try:
            core = botocore.session.get_session()
            core.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_parse_timestamp
            )
            session = boto3.session.Session(profile_name=options.profile, botocore_session=core)
            # (resolves the credential chain now: a broken profile fails here, not mid-read)
            self._client: S3Client = session.client(
                "s3",
                region_name=options.region,
                endpoint_url=options.endpoint_url,
                config=config,
            )
        except botocore.exceptions.ProfileNotFound as exc:
            raise errors.PermissionDenied(
                f"AWS profile {options.profile!r} not found in ~/.aws/config or "
                "~/.aws/credentials; check --profile / AWS_PROFILE"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise map_error(
                exc, op="connect", bucket=bucket, endpoint=options.endpoint_url or "S3"
            ) from exc
        self.endpoint = options.endpoint_url or str(self._client.meta.endpoint_url)
        self._checksums = options.upload_checksums == "crc32c"
        #: ranged GETs, part uploads and PUTs without the client pipeline (None: boto3 does
        #: them)
        self._direct = DirectS3.create(self._client, session, bucket)

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _mapped(self, op: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except errors.BackendError:
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, op, key) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error(exc, op, key) from exc

    def _direct_for(self, key: str, request: Callable[[DirectS3], T]) -> T | None:
        """`request` through the direct path, or None: boto3 must do it. The direct path
        signs for the client's region and cannot follow S3's region redirects as boto3's
        client does; the first "wrong region" answer switches it off for good."""
        direct = self._direct
        if direct is None:
            return None
        try:
            return request(direct)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or "")
            if code not in WRONG_REGION:
                raise
            log.info(
                "s3://%s answers %s to requests signed for region %s: letting boto3 follow "
                "its region redirects from now on",
                self.bucket,
                code,
                self._client.meta.region_name,
            )
            self._direct = None
            direct.close()
            return None

    def _error(self, exc: BaseException, op: str, key: str | None) -> errors.BackendError:
        return map_error(exc, op=op, bucket=self.bucket, key=key, endpoint=self.endpoint)

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo:
        return object_info(key, self._head_response(key))

    def _head_response(self, key: str) -> Mapping[str, Any]:
        with self._mapped("head", key):
            return self._client.head_object(Bucket=self.bucket, Key=key)

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        pieces = self._get(key, offset, length, None, if_match)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def get_blocks(
        self,
        key: str,
        offset: int,
        length: int,
        block_size: int,
        *,
        if_match: str | None = None,
        on_block: OnBlock | None = None,
    ) -> list[bytes]:
        if block_size <= 0:
            raise ValueError(f"block size must be positive, not {block_size}")
        return [p for p in self._get(key, offset, length, block_size, if_match, on_block) if p]

    def _get(
        self,
        key: str,
        offset: int,
        length: int,
        piece: int | None,
        if_match: str | None,
        on_block: OnBlock | None = None,
    ) -> list[bytes]:
        """One ranged GET; the body read in `piece`-sized reads (each one copy from the
        socket, nothing joined or split afterwards, each handed to `on_block` as it comes)
        or whole when `piece` is None."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        if length == 0:
            return [b""]
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Range": f"bytes={offset}-{offset + length - 1}",
        }
        if if_match is not None:
            kwargs["IfMatch"] = quoted_etag(if_match)
        pieces: list[bytes] = []

        def consume(body: Any, status: int, expected: int) -> None:
            if piece is None or status == 200:
                pieces.append(body.read())
            else:
                while chunk := body.read(piece):
                    if on_block is not None:
                        on_block(len(pieces), chunk)
                    pieces.append(chunk)
            got = sum(map(len, pieces))
            if expected >= 0 and got != expected:
                raise botocore.exceptions.IncompleteReadError(
                    actual_bytes=got, expected_bytes=expected
                )

        try:
            with self._mapped("get", key):
                direct = self._direct_for(
                    key, lambda d: d.get(key, kwargs["Range"], kwargs.get("IfMatch"), consume)
                )
                if direct is not None:
                    status = direct
                else:
                    resp = self._client.get_object(**kwargs)
                    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 206)
                    body = resp["Body"]
                    try:
                        consume(body, status, -1)  # botocore's body checks the length
                    finally:
                        body.close()
        except errors.BackendError as exc:
            cause = exc.__cause__
            if isinstance(cause, botocore.exceptions.ClientError) and is_range_error(cause):
                return [b""]  # at or past the end of the object: S3 answers 416
            raise
        if status == 200:  # the store ignored the Range (some do, e.g. for empty objects)
            data = pieces[0][offset : offset + length]
            if piece is None or len(data) <= piece:
                cut = [data]
            else:
                cut = [data[i : i + piece] for i in range(0, len(data), piece)]
            if on_block is not None and piece is not None:
                for i, block in enumerate(cut):
                    if block:
                        on_block(i, block)
            return cut
        return pieces

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> ListPage:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": max(1, min(page_size, DEFAULT_PAGE_SIZE)),
        }
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        with self._mapped("list", prefix):
            resp = self._client.list_objects_v2(**kwargs)
        objects = [
            ObjectInfo(
                key=item["Key"],
                size=int(item["Size"]),
                etag=bare_etag(item.get("ETag", "")),
                mtime=timestamp(item["LastModified"]),
                metadata=None,
            )
            for item in resp.get("Contents", [])
        ]
        prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", []) if "Prefix" in p]
        next_token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        return ListPage(objects=objects, prefixes=prefixes, next_token=next_token or None)

    # ------------------------------------------------------------------ writes

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        meta = user_metadata(metadata)
        checksum = _crc32c(data) if self._checksums else ""
        match = quoted_etag(if_match) if if_match is not None else None
        headers = put_headers(meta, checksum, match, if_none_match)
        with self._mapped("put", key):
            direct = (
                self._direct_for(key, lambda d: d.put(key, data, headers))
                if headers is not None
                else None
            )
            if direct is not None:
                etag, mtime = direct[0], http_time(direct[1])
            else:
                kwargs: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Key": key,
                    "Body": data,
                    "Metadata": meta,
                }
                if checksum:
                    kwargs["ChecksumCRC32C"] = checksum
                if match is not None:
                    kwargs["IfMatch"] = match
                if if_none_match:
                    kwargs["IfNoneMatch"] = "*"
                resp = self._client.put_object(**kwargs)
                etag, mtime = resp["ETag"], response_time(resp)
        return ObjectInfo(key=key, size=len(data), etag=bare_etag(etag), mtime=mtime, metadata=meta)

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        return self._create_multipart(key, metadata, checksums=self._checksums)

    def _create_multipart(
        self, key: str, metadata: Mapping[str, str] | None, *, checksums: bool, **extra: Any
    ) -> str:
        """With `checksums`, every part must carry its CRC32C (`upload_part` does) and S3
        checks each one; a multipart copy's parts are S3's own bytes and go without.
        `extra`: more CreateMultipartUpload arguments (a copy's content headers, tags)."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Metadata": user_metadata(metadata),
            **extra,
        }
        if checksums:
            kwargs["ChecksumAlgorithm"] = "CRC32C"
        with self._mapped("create_multipart", key):
            resp = self._client.create_multipart_upload(**kwargs)
        return resp["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        checksum = _crc32c(data) if self._checksums else ""
        with self._mapped(f"upload_part {number}", key):
            direct_etag = self._direct_for(
                key, lambda d: d.upload_part(key, upload_id, number, data, checksum)
            )
            if direct_etag is not None:
                etag = direct_etag
            else:
                kwargs: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Key": key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                    "Body": data,
                }
                if checksum:
                    kwargs["ChecksumCRC32C"] = checksum
                etag = self._client.upload_part(**kwargs)["ETag"]
        return PartInfo(number=number, etag=bare_etag(etag), size=len(data), checksum=checksum)

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        ordered = sorted(parts, key=lambda p: p.number)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": [_part_entry(p) for p in ordered]},
        }
        if if_match is not None:
            kwargs["IfMatch"] = quoted_etag(if_match)
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        with self._mapped("complete_multipart", key):
            resp = self._client.complete_multipart_upload(**kwargs)
        return ObjectInfo(
            key=key,
            size=sum(p.size for p in ordered),
            etag=bare_etag(resp["ETag"]),
            mtime=response_time(resp),
            metadata=None,
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            with self._mapped("abort_multipart", key):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except errors.NotFound as exc:
            if isinstance(exc, errors.BucketNotFound):
                raise
            return  # unknown (already aborted or completed) upload: success

    def list_multipart(self, prefix: str) -> builtins.list[UploadInfo]:
        uploads: builtins.list[UploadInfo] = []
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if key_marker:
                kwargs["KeyMarker"] = key_marker
            if upload_marker:
                kwargs["UploadIdMarker"] = upload_marker
            with self._mapped("list_multipart", prefix):
                resp = self._client.list_multipart_uploads(**kwargs)
            for upload in resp.get("Uploads", []):
                key = upload.get("Key", "")
                if key.startswith(prefix) and "UploadId" in upload:
                    initiated = upload.get("Initiated")
                    uploads.append(
                        UploadInfo(
                            key=key,
                            upload_id=upload["UploadId"],
                            initiated=timestamp(initiated) if initiated else 0.0,
                        )
                    )
            next_key = resp.get("NextKeyMarker")
            next_upload = resp.get("NextUploadIdMarker")
            if not resp.get("IsTruncated") or (
                (next_key, next_upload) == (key_marker, upload_marker)
            ):
                return uploads
            key_marker, upload_marker = next_key, next_upload

    def delete(self, key: str) -> None:
        try:
            with self._mapped("delete", key):
                self._client.delete_object(Bucket=self.bucket, Key=key)
        except errors.NotFound as exc:
            if isinstance(exc, errors.BucketNotFound):
                raise
            return  # a missing key is success (S3 says 204 anyway)

    # ------------------------------------------------------------------ misc

    def check_bucket(self) -> None:
        """A one-key LIST: needs the permission the filesystem needs, and answers NoSuchBucket /
        AccessDenied / InvalidAccessKeyId with a body (a HEAD would only say 404 / 403)."""
        try:
            with self._mapped("check_bucket"):
                self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1, Delimiter="/")
        except errors.NotFound as exc:
            if isinstance(exc, errors.BucketNotFound):
                raise
            raise errors.BucketNotFound(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}; check the bucket name "
                "in the storage URI (and --endpoint-url / --region), or create the bucket first"
            ) from exc

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._client.close()
