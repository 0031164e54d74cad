"""In-memory backend: the fake that unit tests run on, shipped as production code.

It counts operations (so tests can assert "exactly one GET"), can inject faults and latency
per operation, enforces S3's multipart rules, and checks its own invariants after every
mutation. It passes the same contract suite as S3 and GCS.
"""

from __future__ import annotations

import bisect
import builtins
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from wsfuse.backends.base import (
    MIN_PART_SIZE,
    Backend,
    Capabilities,
    ListPage,
    ObjectInfo,
    PartInfo,
    UploadInfo,
)
from wsfuse.backends.listing import paginate
from wsfuse.errors import BackendError, NotFound, PreconditionFailed

FaultHook = Callable[[str, str], None]


@dataclass(slots=True)
class _Object:
    data: bytes
    etag: str
    mtime: float
    metadata: dict[str, str]


@dataclass(slots=True)
class _Upload:
    key: str
    metadata: dict[str, str]
    initiated: float
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryBackend(Backend):
    """A thread-safe in-memory bucket.

    `counts[op]` counts calls by operation name (`head`, `get_range`, `list`, `put`, ...);
    `bytes_read` counts bytes returned by `get_range`. `fault_hook(op, key)` runs before each
    operation and may raise (or sleep) to inject failures and latency.
    """

    _named: ClassVar[dict[str, MemoryBackend]] = {}
    _named_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "mem") -> None:
        self.name = f"mem://{name}"
        self.capabilities = Capabilities()
        self._lock = threading.Lock()
        # GUARDED_BY: _lock
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # INVARIANT: sorted(self._objects)
        self._uploads: dict[str, _Upload] = {}
        self.counts: Counter[str] = Counter()
        self.bytes_read = 0
        self.fault_hook: FaultHook | None = None

    @classmethod
    def named(cls, name: str) -> MemoryBackend:
        """The process-wide bucket called `name` (`mem://name` URIs share their data)."""
        with cls._named_lock:
            if name not in cls._named:
                cls._named[name] = cls(name)
            return cls._named[name]

    # ------------------------------------------------------------------ internals

    def _enter(self, op: str, key: str) -> None:
        hook = self.fault_hook
        if hook is not None:
            hook(op, key)
        with self._lock:
            self.counts[op] += 1

    def _info(self, key: str, obj: _Object, *, with_metadata: bool) -> ObjectInfo:
        return ObjectInfo(
            key, len(obj.data), obj.etag, obj.mtime, dict(obj.metadata) if with_metadata else None
        )

    def _get(self, key: str) -> _Object:
        obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"no such key: {key!r}", key=key)
        return obj

    def _check_precondition(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        current = self._objects.get(key)
        if if_match is not None and (current is None or current.etag != if_match):
            if current is None:
                raise NotFound(f"no such key: {key!r}", key=key)
            raise PreconditionFailed(f"{key!r} is no longer version {if_match}", key=key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{key!r} already exists", key=key)

    def _store(
        self, key: str, data: bytes, etag: str, metadata: Mapping[str, str] | None
    ) -> ObjectInfo:
        # Wall clock, like a store's Last-Modified: it is what users see as mtime.
        obj = _Object(bytes(data), etag, time.time(), dict(metadata or {}))
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = obj
        self._check_invariants()
        return self._info(key, obj, with_metadata=True)

    def _check_invariants(self) -> None:
        # Cheap enough for test-sized buckets; catches a broken index at the faulty operation.
        if len(self._keys) < 5000:
            assert self._keys == sorted(self._objects), "key index out of sync"

    # ------------------------------------------------------------------ Backend

    def head(self, key: str) -> ObjectInfo:
        self._enter("head", key)
        with self._lock:
            return self._info(key, self._get(key), with_metadata=True)

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        if length == 0:
            return b""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        self._enter("get_range", key)
        with self._lock:
            obj = self._get(key)
            if if_match is not None and obj.etag != if_match:
                raise PreconditionFailed(f"{key!r} is no longer version {if_match}", key=key)
            data = obj.data[offset : offset + length]
            self.bytes_read += len(data)
            return data

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = 1000,
    ) -> ListPage:
        self._enter("list", prefix)
        with self._lock:
            start = bisect.bisect_left(self._keys, prefix)
            keys: builtins.list[str] = []
            for key in self._keys[start:]:
                if not key.startswith(prefix):
                    break
                keys.append(key)
            objects = self._objects
            return paginate(
                keys,
                lambda k: self._info(k, objects[k], with_metadata=False),
                prefix,
                delimiter,
                token,
                page_size,
            )

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        self._enter("put", key)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._lock:
            self._check_precondition(key, if_match, if_none_match)
            return self._store(key, data, etag, metadata)

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        self._enter("create_multipart", key)
        upload_id = uuid.uuid4().hex
        with self._lock:
            self._uploads[upload_id] = _Upload(key, dict(metadata or {}), time.time())
        return upload_id

    def _upload(self, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NotFound(f"no such multipart upload {upload_id} for {key!r}", key=key)
        return upload

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        self._enter("upload_part", key)
        if not 1 <= number <= 10_000:
            raise BackendError(f"part number {number} out of range 1..10000", key=key)
        with self._lock:
            self._upload(key, upload_id).parts[number] = bytes(data)
        return PartInfo(number, hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data))

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        self._enter("complete_multipart", key)
        with self._lock:
            upload = self._upload(key, upload_id)
            if not parts:
                raise BackendError("a multipart upload needs at least one part", key=key)
            numbers = [p.number for p in parts]
            if numbers != sorted(set(numbers)):
                raise BackendError("parts must be listed in ascending order, once each", key=key)
            chunks: builtins.list[bytes] = []
            digest = hashlib.md5(usedforsecurity=False)
            for i, part in enumerate(parts):
                data = upload.parts.get(part.number)
                if (
                    data is None
                    or hashlib.md5(data, usedforsecurity=False).hexdigest() != part.etag
                ):
                    raise BackendError(f"part {part.number} was not uploaded", key=key)
                if i < len(parts) - 1 and len(data) < MIN_PART_SIZE:
                    raise BackendError(
                        f"part {part.number} is {len(data)} bytes; every part but the last must "
                        f"be at least {MIN_PART_SIZE}",
                        key=key,
                    )
                chunks.append(data)
                digest.update(bytes.fromhex(part.etag))
            self._check_precondition(key, if_match, if_none_match)
            del self._uploads[upload_id]
            etag = f"{digest.hexdigest()}-{len(parts)}"
            return self._store(key, b"".join(chunks), etag, upload.metadata)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._enter("abort_multipart", key)
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self._uploads[upload_id]

    def list_multipart(self, prefix: str) -> Sequence[UploadInfo]:
        self._enter("list_multipart", prefix)
        with self._lock:
            return sorted(
                (
                    UploadInfo(u.key, uid, u.initiated)
                    for uid, u in self._uploads.items()
                    if u.key.startswith(prefix)
                ),
                key=lambda u: (u.key, u.initiated),
            )

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        self._enter("copy", src)
        with self._lock:
            obj = self._get(src)
            return self._store(
                dst, obj.data, obj.etag, obj.metadata if metadata is None else metadata
            )

    def delete(self, key: str) -> None:
        self._enter("delete", key)
        with self._lock:
            if self._objects.pop(key, None) is not None:
                del self._keys[bisect.bisect_left(self._keys, key)]
                self._check_invariants()

    def check_bucket(self) -> None:
        self._enter("check_bucket", "")

    # ------------------------------------------------------------------ test helpers

    def key_list(self) -> builtins.list[str]:
        with self._lock:
            return list(self._keys)
