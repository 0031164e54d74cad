"""The `Backend` interface: what wsfuse needs from an object store, and nothing more.

Every implementation (memory, local directory, S3, GCS) passes one contract suite
(`tests/contract/`). Backends are synchronous and thread-safe: the filesystem calls them
from worker threads behind a named limiter, so a method may block for as long as its
deadline allows, and must never touch state owned by the trio thread.

Errors are the small taxonomy of `wsfuse.errors`: `NotFound`, `PreconditionFailed`,
`PermissionDenied`, `Transient` (retryable), `InvalidKey`, `BackendError`. A backend never
retries by itself (its client libraries are configured not to, or only briefly); retries,
backoff and deadlines live in one place, `wsfuse.backends.retry`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# S3's multipart limits, which the fakes enforce too so that code tested on them is right on S3:
# at most 10,000 parts, every part but the last at least 5 MiB, a part at most 5 GiB.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
# 8 MiB parts: the boto3/awscli default and mountpoint-s3's; large enough to amortise
# per-request latency, small enough to pipeline a sequential writer's parts.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
# S3 answers at most 1,000 keys per LIST page.
DEFAULT_PAGE_SIZE = 1000

#: `get_blocks`' callback: a block's index within the range, and its bytes.
OnBlock = Callable[[int, bytes], None]


def part_size_for(total_size: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The part size for an object of `total_size` bytes: `preferred` unless that would take
    more than `MAX_PARTS` parts, in which case parts grow (in MiB steps) until it fits."""
    size = max(preferred, MIN_PART_SIZE)
    if total_size > size * MAX_PARTS:
        mib = 1024 * 1024
        size = -(-total_size // MAX_PARTS)  # ceil
        size = -(-size // mib) * mib
    if size > MAX_PART_SIZE:
        raise ValueError(f"object of {total_size} bytes exceeds the 5 TiB object limit")
    return size


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD or a LIST entry tells about one object.

    `etag` identifies the version: S3's ETag (quotes stripped), GCS's generation as a string
    (conditional requests use it), or the local/memory backend's version tag. `mtime` is
    seconds since the epoch (the store's last-modified time). `metadata` is user metadata
    (S3 `x-amz-meta-*` without the prefix, GCS custom metadata); LIST results do not carry it
    (`metadata is None` means "not known", `{}` means "none").
    """

    key: str
    size: int
    etag: str
    mtime: float
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a listing: objects directly matched, common prefixes (each ending in the
    delimiter), and the token for the next page (`None` on the last page)."""

    objects: Sequence[ObjectInfo]
    prefixes: Sequence[str]
    next_token: str | None


@dataclass(frozen=True, slots=True)
class PartInfo:
    """An uploaded part of a multipart upload, as `complete_multipart` needs it."""

    number: int
    etag: str
    size: int
    checksum: str = ""  # the part's CRC32C as sent (S3), when its upload asked for them


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """A multipart upload in progress (for crash recovery: abort what nobody will complete)."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a store (or its local emulator) can do; the contract suite skips, with the stated
    reason, tests of what a backend declares it cannot do."""

    conditional_get: bool = True
    conditional_put: bool = True
    pagination: bool = True
    #: whether `a` and `a/b` can both be objects (false for a directory tree)
    key_prefix_clash: bool = True
    reasons: Mapping[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """An object store. Thread-safe; every method may block (up to its deadline).

    Keys are full object keys (the URI prefix already applied by `PrefixedBackend`).
    """

    #: a short name for logs: "s3://bucket", "file:///srv/bucket", ...
    name: str = "backend"
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Metadata of `key`, user metadata included. Raises `NotFound`."""

    @abc.abstractmethod
    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        """Bytes `[offset, offset + length)` of `key`.

        `length == 0` returns `b""` without a request. A range reaching past the end returns
        the bytes that exist (a short read; `b""` at or after EOF). With `if_match`, raises
        `PreconditionFailed` unless the object's etag equals it. Raises `NotFound`.
        """

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
        """`get_range(key, offset, length)` cut into `block_size` pieces (the last may be
        short; `[]` for no bytes). One request. Backends that can read a response body in
        pieces override this so the bytes are copied once, from the socket into each piece.

        `on_block(i, block)` is called in this thread with each piece as soon as it is whole,
        while its bytes are still in the CPU's cache (the block cache checksums them there).
        After a retried attempt it may see an index again, with the same bytes."""
        if block_size <= 0:
            raise ValueError(f"block size must be positive, not {block_size}")
        data = self.get_range(key, offset, length, if_match=if_match)
        if len(data) <= block_size:
            blocks = [data] if data else []
        else:
            view = memoryview(data)
            blocks = [bytes(view[i : i + block_size]) for i in range(0, len(data), block_size)]
        if on_block is not None:
            for i, block in enumerate(blocks):
                on_block(i, block)
        return blocks

    @abc.abstractmethod
    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> ListPage:
        """One page of keys starting with `prefix`, in lexicographic (UTF-8 byte) order.

        With a delimiter, keys containing it after the prefix are rolled up into `prefixes`.
        Pass the returned `next_token` to get the next page. A missing prefix is an empty page.
        """

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Store `data` under `key` atomically (readers see the old or the new object).

        `if_match`: only replace that version; `if_none_match`: only create. Either failing
        raises `PreconditionFailed`. Returns the new object's info.
        """

    @abc.abstractmethod
    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        """Start a multipart upload; returns its upload id."""

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        """Upload part `number` (1..10,000). Parts may arrive in any order and in parallel.
        Raises `NotFound` if the upload does not exist (aborted or completed)."""

    @abc.abstractmethod
    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Assemble `parts` (ascending numbers) into the object. Every part but the last must be
        at least `MIN_PART_SIZE`; a violation raises `BackendError` and leaves the upload open.

        `if_match` / `if_none_match` as for `put`, checked when the object is assembled (S3
        `If-Match` / `If-None-Match` on CompleteMultipartUpload, GCS `ifGenerationMatch` on the
        final compose): failing raises `PreconditionFailed` (`if_match` of a missing object:
        that or `NotFound`, by store), changes nothing, and leaves the upload to be aborted.
        """

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abandon the upload and free its parts; aborting an unknown upload is success."""

    @abc.abstractmethod
    def list_multipart(self, prefix: str) -> Sequence[UploadInfo]:
        """Multipart uploads in progress under `prefix` (recovery aborts the orphans)."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """Server-side copy (no bytes through us; multipart copy above 5 GiB where needed).
        `metadata=None` keeps the source's user metadata, otherwise replaces it.
        Raises `NotFound`."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is success."""

    def check_bucket(self) -> None:
        """Raise `BucketNotFound` / `PermissionDenied` / `Unavailable` unless the bucket can be
        listed. Used before mounting and by `wsfuse doctor`, so errors come early and clearly."""
        self.list("", delimiter="/", page_size=1)

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and threads."""

    # ------------------------------------------------------------------ helpers

    def list_all(self, prefix: str, *, delimiter: str | None = "/") -> Iterator[ListPage]:
        """Every page of `list(prefix, delimiter)`."""
        token: str | None = None
        while True:
            page = self.list(prefix, delimiter=delimiter, token=token)
            yield page
            if page.next_token is None:
                return
            token = page.next_token
