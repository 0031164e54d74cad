"""Staging files: the local, writable copy of a file being written, one per inode.

Every reader on this node sees written-but-not-yet-uploaded data because reads of a staged inode
are served from here. The file lives on the cache disk (`CACHE/staging/`), is sparse, and is
kept after a failed upload (recorded as pending in the index) so nothing written is lost.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class Staging:
    """A staging file. Not thread-safe by itself: owned by the trio thread; worker threads only
    `pread` it during uploads (positional I/O needs no shared offset)."""

    def __init__(self, directory: Path, *, path: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = path or directory / uuid.uuid4().hex
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o600)
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

    @property
    def dirty(self) -> bool:
        return self.version != self.uploaded_version

    def touch(self) -> None:
        self.version += 1

    def pwrite(self, data: bytes, offset: int) -> int:
        try:
            n = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            self.write_error = exc.errno
            raise
        self.size = max(self.size, offset + n)
        self.touch()
        return n

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = size
        self.touch()

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self, *, remove: bool) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if remove:
            self.path.unlink(missing_ok=True)
