"""O_DIRECT helpers: aligned buffers and reads/writes that bypass the page cache.

Why: on the test machine (a VM that hands free memory back to its host) every *fresh*
page-cache page costs far more than the copy into it; a 1 GiB write through the page cache
costs 1-2 CPU-seconds, as much as uploading it. Large staging writes, part reads for uploads
and cache-block writes therefore move data between the disk and a few reused, page-aligned
buffers instead (docs/performance.md, "Fewer fresh pages").

O_DIRECT needs file offsets, lengths and memory addresses aligned to `ALIGN`. Where the
filesystem refuses it (EINVAL: tmpfs on older kernels, some network filesystems), callers
fall back to ordinary I/O.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

#: Alignment of offsets, lengths and buffers (the page size; every disk's logical block size
#: we know is this or smaller).
ALIGN: Final = 4096


def align_down(n: int) -> int:
    return n - n % ALIGN


def align_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def open_direct(path: Path | str, flags: int) -> int:
    """An O_DIRECT descriptor on an existing file, or -1 where the filesystem has none."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return -1


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of `data` at `offset` (positional: no shared file offset between threads)."""
    while data:
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        data, offset = data[n:], offset + n


class AlignedPool:
    """At most `count` page-aligned buffers of `size` bytes, reused (their pages are faulted
    in once). Thread-safe; `take` waits for a free buffer, so memory stays bounded."""

    def __init__(self, size: int, count: int) -> None:
        self.size = align_up(size)
        self._free: list[mmap.mmap] = []
        self._slots = threading.Semaphore(count)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[mmap.mmap]:
        with self._slots:
            with self._lock:
                buffer = self._free.pop() if self._free else None
            if buffer is None:
                buffer = mmap.mmap(-1, self.size)  # anonymous: page-aligned
            try:
                yield buffer
            finally:
                with self._lock:
                    self._free.append(buffer)

    def close(self) -> None:
        """Unmap the free buffers (one still in use is unmapped when it is garbage)."""
        with self._lock:
            for buffer in self._free:
                buffer.close()
            self._free.clear()


def pread_direct(fd: int, length: int, offset: int, pool: AlignedPool) -> bytes:
    """`length` bytes at `offset` (aligned) read with O_DIRECT from `fd` (fewer at the end of
    the file), through a pooled buffer; the kernel writes back any dirty page-cache pages of
    the range first, so buffered writes made before are seen."""
    if offset % ALIGN:
        raise ValueError(f"unaligned O_DIRECT read at {offset}")
    chunks: list[bytes] = []
    with pool.take() as buffer, memoryview(buffer) as view:
        done = 0
        while done < length:
            want = align_up(min(length - done, pool.size))
            got = os.preadv(fd, [view[:want]], offset + done)
            take = min(got, length - done)
            chunks.append(bytes(view[:take]))
            done += take
            if got < want:  # end of file
                break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
