"""Server-side copy for the S3 backend (what a rename does to each object): one CopyObject,
or above `PARALLEL_COPY_ABOVE` parts copied in parallel (UploadPartCopy) into a multipart
upload that carries what CopyObject would have kept (content headers, tags).
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from wsfuse import errors
from wsfuse.backends.base import MAX_PART_SIZE, Backend, ObjectInfo, PartInfo, part_size_for
from wsfuse.backends.s3wire import (
    bare_etag,
    object_info,
    quoted_etag,
    response_time,
    timestamp,
    user_metadata,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from wsfuse.backends.options import BackendOptions

log = logging.getLogger(__name__)

#: A rename copies the object on the server. One CopyObject is one stream of server-side work;
#: above this size the copy is split into parts copied in parallel (UploadPartCopy), as the AWS
#: CLI does above 8 MiB and s3fs above 512 MiB (S3 refuses a single copy above 5 GiB anyway).
#: Below it, one request is cheaper than three (create, parts, complete). 1 GiB on the local
#: test server: 2.5 s as one CopyObject, 1.35 s as 16 parallel parts (docs/performance.md).
PARALLEL_COPY_ABOVE = 256 * 1024 * 1024
#: A parallel copy uses about `COPY_PARTS` parts of at least `MIN_COPY_PART` each.
COPY_PARTS = 16
MIN_COPY_PART = 64 * 1024 * 1024


def copy_part_size(total_size: int, smallest: int = MIN_COPY_PART) -> int:
    """Part size of a parallel copy of `total_size` bytes: about `COPY_PARTS` parts (MiB
    multiples), never below `smallest`, never above S3's 5 GiB part limit (and within its
    10,000 parts)."""
    mib = 1024 * 1024
    even = -(-total_size // COPY_PARTS)
    even = -(-even // mib) * mib
    return part_size_for(total_size, min(MAX_PART_SIZE, max(smallest, even)))


#: Answers of S3-compatible stores that do not implement a request (object tagging, say).
_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed"})
#: What CopyObject keeps (`MetadataDirective=COPY`) besides user metadata, which a multipart
#: copy must pass to CreateMultipartUpload itself (HeadObject names = the call's arguments).
_CONTENT_HEADERS = (
    "ContentType",
    "ContentEncoding",
    "ContentDisposition",
    "ContentLanguage",
    "CacheControl",
)


def _content_headers(head: Mapping[str, Any]) -> dict[str, Any]:
    """The `_CONTENT_HEADERS` a HeadObject answer carries, as copy arguments."""
    return {name: head[name] for name in _CONTENT_HEADERS if head.get(name)}


class ServerSideCopy(Backend):
    """`copy` for `S3Backend`, its subclass, which provides the rest (the client, the
    multipart calls); like any backend method, called from worker threads."""

    if TYPE_CHECKING:  # what copying uses of S3Backend beyond the Backend interface
        bucket: str
        options: BackendOptions
        max_single_copy: int
        copy_part_size: int
        _client: S3Client

        def _mapped(
            self, op: str, key: str | None = None
        ) -> contextlib.AbstractContextManager[None]: ...
        def _head_response(self, key: str) -> Mapping[str, Any]: ...
        def _create_multipart(
            self, key: str, metadata: Mapping[str, str] | None, *, checksums: bool, **extra: Any
        ) -> str: ...

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        head = self._head_response(src)
        source = object_info(src, head)
        new_meta = dict(source.metadata or {}) if metadata is None else user_metadata(metadata)
        if src == dst and metadata is None:
            return source  # S3 refuses a copy onto itself that changes nothing
        if source.size > self.max_single_copy:
            return self._multipart_copy(src, dst, source, new_meta, head)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": dst,
            "CopySource": {"Bucket": self.bucket, "Key": src},
            # pin the version we measured: a concurrent overwrite fails instead of mixing
            "CopySourceIfMatch": quoted_etag(source.etag),
            "MetadataDirective": "COPY" if metadata is None else "REPLACE",
        }
        if metadata is not None:
            kwargs["Metadata"] = new_meta
            # REPLACE replaces the content headers too: keep the source's, as COPY does.
            kwargs.update(_content_headers(head))
        try:
            with self._mapped("copy", src):
                resp = self._client.copy_object(**kwargs)
        except errors.PreconditionFailed as exc:
            raise errors.Transient(
                f"copy s3://{self.bucket}/{src}: the source changed during the copy", key=src
            ) from exc
        result = resp.get("CopyObjectResult", {})
        modified = result.get("LastModified")
        return ObjectInfo(
            key=dst,
            size=source.size,
            etag=bare_etag(result.get("ETag", "")),
            mtime=timestamp(modified) if modified else response_time(resp),
            metadata=new_meta,
        )

    def _multipart_copy(
        self,
        src: str,
        dst: str,
        source: ObjectInfo,
        metadata: dict[str, str],
        head: Mapping[str, Any],
    ) -> ObjectInfo:
        """Server-side copy in parts (UploadPartCopy, 8 at a time), for sources above
        `max_single_copy`. What a CopyObject keeps by itself (content headers, tags) is
        passed to the new upload from the source's HEAD (`head`) and its tags."""
        part_size = copy_part_size(source.size, self.copy_part_size)
        ranges = [
            (number, offset, min(part_size, source.size - offset))
            for number, offset in enumerate(range(0, source.size, part_size), start=1)
        ]
        copy_source = {"Bucket": self.bucket, "Key": src}

        def copy_part(spec: tuple[int, int, int]) -> PartInfo:
            number, offset, length = spec
            with self._mapped(f"copy part {number}", src):
                resp = self._client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=copy_source,  # type: ignore[arg-type]
                    CopySourceRange=f"bytes={offset}-{offset + length - 1}",
                    CopySourceIfMatch=quoted_etag(source.etag),
                )
            return PartInfo(
                number=number, etag=bare_etag(resp["CopyPartResult"]["ETag"]), size=length
            )

        carried = _content_headers(head)
        tagging = self._tagging_of(src)
        if tagging:
            carried["Tagging"] = tagging
        upload_id = self._create_multipart(dst, metadata, checksums=False, **carried)
        try:
            workers = max(1, min(8, len(ranges), self.options.max_connections))
            pool = ThreadPoolExecutor(workers, thread_name_prefix="s3-copy")
            try:
                parts = list(pool.map(copy_part, ranges))
            finally:  # after a failed part, the parts not started yet are not copied
                pool.shutdown(wait=True, cancel_futures=True)
            info = self.complete_multipart(dst, upload_id, parts)
        except BaseException as exc:
            with contextlib.suppress(errors.BackendError):
                self.abort_multipart(dst, upload_id)
            if isinstance(exc, errors.PreconditionFailed):
                raise errors.Transient(
                    f"copy s3://{self.bucket}/{src}: the source changed during the copy", key=src
                ) from exc
            raise
        return ObjectInfo(
            key=dst, size=source.size, etag=info.etag, mtime=info.mtime, metadata=metadata
        )

    def _tagging_of(self, key: str) -> str:
        """The object's tags as a query string for a new upload, "" without tags or without
        permission to read them (s3:GetObjectTagging): a copy then goes without its tags
        rather than failing, as it would have to without that permission anyway."""
        try:
            with self._mapped("get tagging", key):
                tags = self._client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        except errors.BackendError as exc:
            cause = exc.__cause__
            unsupported = isinstance(cause, botocore.exceptions.ClientError) and (
                cause.response.get("Error", {}).get("Code") in _UNSUPPORTED
                or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 501
            )
            if isinstance(exc, errors.Transient) and not unsupported:
                raise
            log.info("copy of s3://%s/%s goes without its tags: %s", self.bucket, key, exc)
            return ""
        pairs = [(t["Key"], t["Value"]) for t in tags]
        return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
