"""Block files on disk: written through the page cache or with O_DIRECT, read back verified.

Why O_DIRECT: a block fetched for a reader is handed to it from memory, so the copy on disk is
only for later (a remount, an evicted page). Writing it through the page cache costs a fresh
page-cache page per 4 KiB, a memory copy and later writeback work: 0.9-2.1 CPU-seconds per GiB
on the 2-core test machine, about as much as everything else the daemon does for a cold read.
An O_DIRECT write from a reused, page-aligned buffer costs about half of that
(docs/performance.md, "Fewer fresh pages"). Blocks that will be read back soon (a directory's small
files read ahead) still go through the page cache, where the read finds them.

O_DIRECT needs the file offset, the length and the memory address aligned: the data starts at
a multiple of `directio.ALIGN` (the header is padded with zeros, its `pad` field says how much)
and only whole-page blocks are written that way. Filesystems without O_DIRECT (tmpfs on older
kernels, some FUSE or network filesystems) answer EINVAL; the writer then uses the page cache
for the rest of its life.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from typing import Final

import google_crc32c

from wsfuse import directio
from wsfuse.cache import schema
from wsfuse.cache.schema import BlockKey

log = logging.getLogger(__name__)

#: Headers (key + etag) longer than this are written through the page cache: the bounce
#: buffers stay small, and keys that long are rare.
MAX_DIRECT_HEADER: Final = 2 * directio.ALIGN
#: Bounce buffers for O_DIRECT writes (block size each). Puts come from the fetcher's 4 disk
#: writers and the post-upload copy, so a put practically never waits for one.
DIRECT_BUFFERS: Final = 8


def direct_padding(header_size: int, length: int) -> int | None:
    """Zero bytes between header and data for an O_DIRECT write, or None when this block
    cannot be written that way (empty, not whole pages, header too long)."""
    if length == 0 or length % directio.ALIGN or header_size > MAX_DIRECT_HEADER:
        return None
    return -header_size % directio.ALIGN


class BlockFileWriter:
    """Writes block files. Thread-safe (the bounce buffers come from an `AlignedPool`)."""

    def __init__(self, block_size: int) -> None:
        self._buffers = directio.AlignedPool(MAX_DIRECT_HEADER + block_size, DIRECT_BUFFERS)
        self.direct_supported = True  # until the filesystem says EINVAL once

    def write(self, path: str, header: bytes, pad: int, data: bytes, *, direct: bool) -> None:
        """Create `path` (exclusively) holding `header`, `pad` zero bytes, then `data`.
        With `direct`, and when the layout and the filesystem allow it, with O_DIRECT."""
        if direct and self.direct_supported and (len(header) + pad) % directio.ALIGN == 0:
            with self._buffers.take() as buffer:
                if self._write_direct(path, buffer, header, pad, data):
                    return
        _write_buffered(path, (header, bytes(pad), data) if pad else (header, data))

    def close(self) -> None:
        self._buffers.close()

    def _write_direct(
        self, path: str, buffer: mmap.mmap, header: bytes, pad: int, data: bytes
    ) -> bool:
        """False when the filesystem refuses O_DIRECT (nothing is left behind)."""
        start = len(header) + pad
        end = start + len(data)
        buffer[: len(header)] = header
        buffer[len(header) : start] = bytes(pad)
        buffer[start:end] = data
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._unsupported(exc)
            return False
        try:
            with memoryview(buffer) as view:
                directio.pwrite_all(fd, view[:end], 0)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise  # the caller removes the temp file
            os.unlink(path)
            self._unsupported(exc)
            return False
        finally:
            os.close(fd)
        return True

    def _unsupported(self, exc: OSError) -> None:
        if self.direct_supported:
            self.direct_supported = False
            log.info("the cache filesystem refuses O_DIRECT (%s): writing blocks buffered", exc)


def _write_buffered(path: str, buffers: tuple[bytes, ...]) -> None:
    # O_EXCL: the name is unique to this put, so an existing file is somebody's bug.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # One pwritev of header and data: no concatenation copy of the 1 MiB block.
        views = [memoryview(b) for b in buffers]
        offset = 0
        while views:
            written = os.pwritev(fd, views, offset)
            if written <= 0:
                raise OSError(errno.ENOSPC, "short write")
            offset += written
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views and written:
                views[0] = views[0][written:]
        # No fsync: a block torn by an OS crash fails its CRC on the next read and is
        # dropped as a miss; a process crash loses nothing the page cache holds.
    finally:
        os.close(fd)


def read_block_file(path: str, bkey: BlockKey, block_size: int) -> bytes | str:
    """The verified data of the block file at `path`, or why it is not acceptable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        hsize = schema.header_size(bkey)
        header = schema.check_block_header(os.pread(fd, hsize, 0), bkey)
        if isinstance(header, str):
            return header
        if header.length > block_size:
            return f"header says {header.length} bytes, more than a block"
        start = hsize + header.pad
        file_size = os.fstat(fd).st_size
        if file_size != start + header.length:
            return f"file is {file_size} bytes, header says {start + header.length}"
        # Straight into the bytes object we return: no copy after the kernel's.
        data = os.pread(fd, header.length, start)
    finally:
        os.close(fd)
    if len(data) != header.length:
        return f"short read ({len(data)} of {header.length} bytes)"
    if google_crc32c.value(data) != header.crc32c:
        return "data does not match its CRC32C"
    return data
