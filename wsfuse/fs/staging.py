"""Staging files: the local, writable copy of a file being written, one per inode.

Every reader on this node sees written-but-not-yet-uploaded data because reads of a staged inode
are served from here. The file lives on the cache disk (`CACHE/staging/`), is sparse, and is
kept after a failed upload (recorded as pending in the index) so nothing written is lost.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

from wsfuse import directio

#: Writes at least this long move their page-aligned middle with O_DIRECT.
DIRECT_MIN: Final = 64 * 1024
#: Bounce buffer for O_DIRECT writes (FUSE writes are at most 1 MiB; longer ones are chunked).
BOUNCE_SIZE: Final = 1 << 20
#: Aligned buffers for O_DIRECT reads of parts and blocks (worker threads; bounded memory).
READ_BUFFERS: Final = 4
READ_BUFFER_SIZE: Final = 8 << 20


@functools.cache
def _bounce() -> mmap.mmap:
    """The aligned write buffer shared by every staging file (trio thread only)."""
    return mmap.mmap(-1, BOUNCE_SIZE)


@functools.cache
def _read_pool() -> directio.AlignedPool:
    return directio.AlignedPool(READ_BUFFER_SIZE, READ_BUFFERS)


class Staging:
    """A staging file. Not thread-safe by itself: owned by the trio thread; worker threads only
    read it during uploads (positional I/O needs no shared offset).

    Large writes (a checkpoint writer's 1 MiB writes) put their page-aligned middle on disk
    with O_DIRECT through a reused buffer, and uploads read parts back the same way: through
    the page cache every staged byte would land in a fresh page-cache page twice over, the
    costliest step of a large write on the test machine (docs/performance.md, "Fewer fresh
    pages").
    The unaligned edges go through the page cache; the kernel keeps both views coherent
    (an O_DIRECT read writes back dirty pages of its range first).
    """

    def __init__(self, directory: Path, *, path: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = path or directory / uuid.uuid4().hex
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o600)
        self.direct_fd = directio.open_direct(self.path, os.O_RDWR)
        # Cleared if the filesystem opened O_DIRECT but refuses an aligned write. The
        # descriptor stays open: worker threads may be reading through it.
        self._direct_writes = self.direct_fd >= 0
        self.size = os.fstat(self.fd).st_size
        # INVARIANT: version == uploaded_version  <=>  the bucket holds exactly these bytes.
        self.version = 0
        self.uploaded_version = 0
        # The version whose upload failed (close/fsync got EIO): RELEASE must not retry it
        # behind the caller's back; it stays pending for recovery.
        self.failed_version = -1
        # A write that failed (ENOSPC on a full cache disk): the staged bytes are not what the
        # writer meant, so they are never uploaded; close() reports the error.
        self.write_error: int | None = None
        # The bytes of version `body_version` when its upload was one small PUT (see
        # `WriteBack.upload`): copied into the cache on release without reading them back.
        # `on_body_bytes(delta)` is told how the bytes kept here changed (the owner's budget).
        self.uploaded_body: bytes | None = None
        self.body_version = -1
        self.on_body_bytes: Callable[[int], None] | None = None

    @property
    def dirty(self) -> bool:
        return self.version != self.uploaded_version

    def touch(self) -> None:
        self.version += 1

    def pwrite(self, data: bytes, offset: int) -> int:
        try:
            if self._direct_writes and len(data) >= DIRECT_MIN:
                n = self._pwrite_split(data, offset)
            else:
                n = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            self.write_error = exc.errno
            raise
        self.size = max(self.size, offset + n)
        self.touch()
        return n

    def _pwrite_split(self, data: bytes, offset: int) -> int:
        """Unaligned head and tail through the page cache, the aligned middle with O_DIRECT."""
        end = offset + len(data)
        start, stop = directio.align_up(offset), directio.align_down(end)
        if stop - start < directio.ALIGN:
            return os.pwrite(self.fd, data, offset)
        view = memoryview(data)
        if start > offset:
            directio.pwrite_all(self.fd, view[: start - offset], offset)
        bounce = _bounce()
        with memoryview(bounce) as buffer:
            pos = start
            while pos < stop:
                n = min(stop - pos, BOUNCE_SIZE)
                bounce[:n] = view[pos - offset : pos - offset + n]
                try:
                    directio.pwrite_all(self.direct_fd, buffer[:n], pos)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # O_DIRECT taken at open but not for this write: page cache from now on.
                    self._direct_writes = False
                    directio.pwrite_all(self.fd, view[pos - offset : stop - offset], pos)
                    break
                pos += n
        if end > stop:
            directio.pwrite_all(self.fd, view[stop - offset :], stop)
        return len(data)

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def read_uncached(self, length: int, offset: int) -> bytes:
        """Read for an upload or the block cache (worker threads): with O_DIRECT when the
        offset is aligned, so the bytes do not fill the page cache on their way out."""
        fd = self.direct_fd
        if fd >= 0 and not offset % directio.ALIGN:
            try:
                return directio.pread_direct(fd, length, offset, _read_pool())
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        return os.pread(self.fd, length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = size
        self.touch()

    def fsync(self) -> None:
        os.fsync(self.fd)

    def keep_body(self, body: bytes | None, version: int) -> None:
        """Keep `body` as the bytes of `version` (None: keep nothing), letting go of any
        kept before."""
        delta = len(body or b"") - len(self.uploaded_body or b"")
        self.uploaded_body, self.body_version = body, version if body is not None else -1
        if delta and self.on_body_bytes is not None:
            self.on_body_bytes(delta)

    def drop_body(self) -> None:
        self.keep_body(None, -1)

    def close(self, *, remove: bool) -> None:
        self.drop_body()
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if remove:
            self.path.unlink(missing_ok=True)
