"""Block files on disk: written and read through the page cache or with O_DIRECT, verified.

Why O_DIRECT: a block fetched for a reader is handed to it from memory, so the copy on disk is
only for later (a remount, an evicted page). Writing it through the page cache costs a fresh
page-cache page per 4 KiB, a memory copy and later writeback work: 0.9-2.1 CPU-seconds per GiB
on the 2-core test machine, about as much as everything else the daemon does for a cold read.
An O_DIRECT write costs about half of that (docs/performance.md, "Fewer fresh pages"). Blocks
that will be read back soon (a directory's small files read ahead) still go through the page
cache, where the read finds them.

O_DIRECT needs the file offset, the length and the memory address of every piece aligned to
`directio.ALIGN`. The block's own bytes are written where they lie in memory, not copied
into an aligned buffer first (that copy was a quarter of a put's CPU): the data's pages from
its first page boundary on go straight from the `bytes` object, and the padding between
header and data is chosen so that this boundary falls on a page boundary of the file too.
Only the header with the data's bytes before that boundary, and the last partial page, are
copied into a small pooled buffer, the latter padded with zeros; so a block file may end
with zeros after its data, up to the next page boundary (format version 3). Filesystems
without O_DIRECT (tmpfs on older kernels, some FUSE or network filesystems) answer EINVAL;
the cache then writes and reads its block files through the page cache for the rest of its
life (`DirectSupport`, one decision for both).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
from collections.abc import Sequence
from typing import Final, NamedTuple

import google_crc32c

from wsfuse import directio
from wsfuse.cache import schema
from wsfuse.cache.schema import BlockKey

log = logging.getLogger(__name__)

ALIGN: Final = directio.ALIGN
#: Headers (key + etag) longer than this are written through the page cache: the copy
#: buffers stay small, and keys that long are rare.
MAX_DIRECT_HEADER: Final = 2 * ALIGN
#: Room for the copied head of an O_DIRECT write: header, padding and the data before its
#: first page boundary in memory, which together end on the first page boundary at or after
#: the header's end (at most `MAX_DIRECT_HEADER + ALIGN` bytes); the last page follows it.
_HEAD: Final = MAX_DIRECT_HEADER + ALIGN
#: Copy buffers (head, then the last partial page). Puts come from the fetcher's disk writers
#: and the post-upload copy, so a put practically never waits for one.
DIRECT_BUFFERS: Final = 8
#: The most blocks one run file holds (`BlockFileWriter.write_run`): a GET's run is 8 or 16.
RUN_SLOTS: Final = 32
#: Copy room per block of a run: its head, then its last partial page.
_SLOT_COPY: Final = _HEAD + ALIGN


def data_address(data: bytes) -> int:
    """Where `data`'s bytes lie in memory (CPython bytes never move)."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


def direct_padding(header_size: int, data: bytes) -> int | None:
    """Zero bytes between header and data that put the data's first page boundary in memory
    on a page boundary of the file, or None when this block cannot be written with O_DIRECT
    (not a `bytes`, header too long, or too short to hold a whole page past that boundary)."""
    if type(data) is not bytes or header_size > MAX_DIRECT_HEADER:
        return None
    lead = -data_address(data) % ALIGN
    if len(data) < lead + ALIGN:
        return None
    return -(header_size + lead) % ALIGN


def block_file_size(header_size: int, direct_pad: int | None, size: int) -> int:
    """The bytes a block file of `size` data bytes takes: with O_DIRECT (`direct_pad` not
    None), padded after the header and rounded up to a page."""
    if direct_pad is None:
        return header_size + size
    return directio.align_up(header_size + direct_pad + size)


class DirectSupport:
    """Whether the cache's filesystem takes O_DIRECT, until it first answers EINVAL. One for a
    cache's writes and reads together: a filesystem that refuses it refuses both."""

    def __init__(self) -> None:
        self.ok = True

    def refused(self, how: object) -> None:
        if self.ok:
            self.ok = False
            log.info(
                "the cache filesystem refuses O_DIRECT (%s): block files are written and read "
                "through the page cache",
                how,
            )


class BlockFileWriter:
    """Writes block files. Thread-safe (the copy buffers come from an `AlignedPool`)."""

    def __init__(self, support: DirectSupport | None = None) -> None:
        self._buffers = directio.AlignedPool(_SLOT_COPY, DIRECT_BUFFERS)
        self._run_buffers = directio.AlignedPool(RUN_SLOTS * _SLOT_COPY, DIRECT_BUFFERS)
        self.support = support or DirectSupport()

    @property
    def direct_supported(self) -> bool:
        return self.support.ok

    def write(
        self, path: str, header: bytes, pad: int, data: bytes, *, direct: bool, reuse: bool = False
    ) -> bool:
        """Create `path` (exclusively) holding `header`, `pad` zero bytes, then `data`.
        With `direct`, and when `pad` was `direct_padding`'s for this `data` and the
        filesystem allows it, with O_DIRECT (then with zeros after the data up to a page).
        With `reuse`, `path` is an old block file (recycle.py), written over and cut to
        length; where O_DIRECT does not apply it is deleted and created anew. Returns
        whether an old file was written over."""
        if direct and self.direct_supported and direct_padding(len(header), data) == pad:
            with self._buffers.take() as buffer:
                if self._write_direct(path, buffer, header, pad, data, reuse):
                    return reuse
        if reuse:
            unlink_quietly(path)  # a buffered write over it could read its old pages first
        _write_buffered(path, (header, bytes(pad), data) if pad else (header, data))
        return False

    def write_run(self, path: str, slots: Sequence[Slot], *, reuse: bool = False) -> bool | None:
        """Create `path` (exclusively; with `reuse`, an old block file written over) holding
        `slots` one after the other, each exactly what `write` would make of it with
        O_DIRECT (header, padding, data, zeros up to a page), so each starts on a page
        boundary: at most `RUN_SLOTS`, every `pad` `direct_padding`'s for its data. One
        open, one `pwritev`, one close for the whole run. Returns whether an old file was
        written over, or None when the filesystem refuses O_DIRECT (nothing is left behind:
        the caller writes the blocks one by one, through the page cache)."""
        if len(slots) > RUN_SLOTS:
            raise ValueError(f"{len(slots)} blocks in one run file, at most {RUN_SLOTS}")
        if not self.direct_supported:
            return None
        with self._run_buffers.take() as buffer, memoryview(buffer) as copied:
            views: list[memoryview] = []  # released before the buffer goes back to the pool
            try:
                pieces: list[memoryview] = []
                for k, slot in enumerate(slots):
                    own = memoryview(slot.data)
                    room = copied[k * _SLOT_COPY : (k + 1) * _SLOT_COPY]
                    new = _direct_pieces(room, own, slot.header, slot.pad)
                    views += (own, room, *new)
                    pieces += new
                written = self._pwritev_direct(path, pieces, reuse)
            finally:
                for view in views:
                    view.release()
        return reuse if written else None

    def close(self) -> None:
        self._buffers.close()
        self._run_buffers.close()

    def _write_direct(
        self, path: str, buffer: mmap.mmap, header: bytes, pad: int, data: bytes, reuse: bool
    ) -> bool:
        """False when the filesystem refuses O_DIRECT (nothing is left behind)."""
        with memoryview(buffer) as copied, memoryview(data) as own:
            pieces = _direct_pieces(copied, own, header, pad)
            try:
                return self._pwritev_direct(path, pieces, reuse)
            finally:
                for piece in pieces:  # not left to an exception's frames: the buffer is pooled
                    piece.release()

    def _pwritev_direct(self, path: str, pieces: list[memoryview], reuse: bool) -> bool:
        """Write `pieces` (page-aligned, whole pages) to `path` from offset 0 with O_DIRECT,
        in one call; False when the filesystem refuses O_DIRECT (nothing is left behind)."""
        expected = sum(map(len, pieces))
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT
        if not reuse:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Linux may create the file before it refuses O_DIRECT (tmpfs did): the name is
            # this put's alone, and the buffered write that follows needs it free.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.support.refused(str(exc))  # not `exc`: its frames hold the pieces
            return False
        try:
            # One call; a short O_DIRECT write leaves an unaligned rest that could not be
            # written the same way, and only happens when the disk is full.
            if os.pwritev(fd, pieces, 0) != expected:
                raise OSError(errno.ENOSPC, "short write")
            if reuse and os.fstat(fd).st_size != expected:
                os.ftruncate(fd, expected)  # an old file longer than this block
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise  # the caller removes the temp file
            os.unlink(path)
            self.support.refused(str(exc))
            return False
        finally:
            os.close(fd)
        return True


class Slot(NamedTuple):
    """One block of a run file: its header, the padding `direct_padding` chose, its data."""

    header: bytes
    pad: int
    data: bytes


def _direct_pieces(room: memoryview, own: memoryview, header: bytes, pad: int) -> list[memoryview]:
    """The pieces of one block's O_DIRECT image: its head (header, `pad` zeros and the data
    before its first page boundary in memory) and its last partial page padded with zeros,
    both copied into `room` (`_SLOT_COPY` bytes, page-aligned), and between them the data's
    whole pages where they lie in `own`."""
    start = len(header) + pad
    # `pad` was chosen (`direct_padding`) so that start + lead is a multiple of ALIGN: the
    # data's bytes before its first page boundary in memory, without asking again.
    lead = -start % ALIGN
    head = start + lead
    body_end = lead + (len(own) - lead) // ALIGN * ALIGN
    tail = len(own) - body_end
    room[: len(header)] = header
    room[len(header) : start] = bytes(pad)
    room[start:head] = own[:lead]
    pieces = [room[:head], own[lead:body_end]]
    if tail:
        room[_HEAD : _HEAD + tail] = own[body_end:]
        room[_HEAD + tail : _SLOT_COPY] = bytes(ALIGN - tail)
        pieces.append(room[_HEAD:_SLOT_COPY])
    return pieces


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


def read_block_file(
    path: str, bkey: BlockKey, block_size: int, offset: int | None = None
) -> bytes | str:
    """The verified data of the block file at `path`, or why it is not acceptable. With an
    `offset`, of the block there in the run file at `path` (`BlockFileWriter.write_run`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        at = offset or 0
        hsize = schema.header_size(bkey)
        header = schema.check_block_header(os.pread(fd, hsize, at), bkey)
        if isinstance(header, str):
            return header
        wrong = _check_layout(header, os.fstat(fd).st_size - at, block_size, offset is not None)
        if wrong is not None:
            return wrong
        # Straight into the bytes object we return: no copy after the kernel's.
        data = os.pread(fd, header.length, at + header.header_size + header.pad)
    finally:
        os.close(fd)
    return _check_data(data, header)


class BlockFileReader:
    """Reads whole block files with O_DIRECT, each in one read into a pooled page-aligned
    buffer, then one copy into the `bytes` returned. Thread-safe.

    Why: a buffered read puts every block file's pages in the page cache first, fresh pages
    that the test VM's host makes expensive (see the module docstring) and a second copy of
    data the reader's FUSE page cache holds anyway. The caller chooses: blocks read back soon
    after a buffered write (a directory's small files read ahead) are in the page cache, and
    the fetcher reads those, as every demand read, with `read_block_file`.
    """

    def __init__(
        self, block_size: int, count: int = DIRECT_BUFFERS, support: DirectSupport | None = None
    ) -> None:
        # A file written with O_DIRECT: header (at most MAX_DIRECT_HEADER), padding (less
        # than a page), the data and zeros up to a page; one page more tells a file too
        # large for the buffer from one that fits exactly.
        self._pool = directio.AlignedPool(block_size + MAX_DIRECT_HEADER + 3 * ALIGN, count)
        self._block_size = block_size
        self.support = support or DirectSupport()

    @property
    def direct_supported(self) -> bool:
        return self.support.ok

    def read(self, path: str, bkey: BlockKey, offset: int | None = None) -> bytes | str:
        """As `read_block_file`; through the page cache where O_DIRECT does not apply."""
        if not self.direct_supported or schema.header_size(bkey) > MAX_DIRECT_HEADER:
            return read_block_file(path, bkey, self._block_size, offset)
        try:
            result = self._read_direct(path, bkey, offset)
        except FileNotFoundError:
            raise  # the caller tells an eviction from a file lost behind its back
        except OSError as exc:
            # Something only the O_DIRECT way can hit (an mmap refused, an errno other than
            # EINVAL for O_DIRECT): the page cache decides, so a readable block is not dropped.
            log.debug("O_DIRECT read of %s failed (%s): reading it buffered", path, exc)
            result = None
        if result is None:
            return read_block_file(path, bkey, self._block_size, offset)
        return result

    def _read_direct(self, path: str, bkey: BlockKey, offset: int | None) -> bytes | str | None:
        """As `read`, or None where only the page cache can tell (O_DIRECT refused, a file
        larger than any block file). A block in a run file starts on a page boundary, and
        the buffer holds the largest block's image, so one read covers it."""
        fd = directio.open_direct(path, os.O_RDONLY)
        if fd < 0:
            self.support.refused("open")
            return None
        try:
            with self._pool.take() as buffer, memoryview(buffer) as view:
                in_run = offset is not None
                try:
                    got = os.preadv(fd, [view], offset or 0)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.support.refused("read")
                    return None
                if got == len(view) and not in_run:
                    return None  # larger than any block file: let the checks say why
                hsize = min(got, schema.header_size(bkey))  # a short file: "truncated header"
                header = schema.check_block_header(bytes(view[:hsize]), bkey)
                if isinstance(header, str):
                    return header
                wrong = _check_layout(header, got, self._block_size, in_run)
                if wrong is not None:
                    return wrong
                start = header.header_size + header.pad
                data = bytes(view[start : start + header.length])
        finally:
            os.close(fd)
        return _check_data(data, header)

    def close(self) -> None:
        self._pool.close()


def _check_layout(
    header: schema.BlockHeader, file_size: int, block_size: int, in_run: bool = False
) -> str | None:
    """Why a file of `file_size` bytes (from the block's header on) cannot hold what `header`
    says, or None. A block in a run file is followed by the next one's image."""
    if header.length > block_size:
        return f"header says {header.length} bytes, more than a block"
    end = header.header_size + header.pad + header.length
    if in_run:
        if file_size < directio.align_up(end) or header.version < 3:
            return f"{file_size} bytes left in the run file, the block's image needs {end}"
        return None
    # Version 3 files written with O_DIRECT end with zeros up to the next page boundary.
    if file_size != end and (header.version < 3 or file_size != directio.align_up(end)):
        return f"file is {file_size} bytes, header says {end}"
    return None


def _check_data(data: bytes, header: schema.BlockHeader) -> bytes | str:
    if len(data) != header.length:
        return f"short read ({len(data)} of {header.length} bytes)"
    if google_crc32c.value(data) != header.crc32c:
        return "data does not match its CRC32C"
    return data


def unlink_quietly(path: str) -> None:
    """Remove the file at `path` if it is there; a failure is logged, never raised (a file
    the cache cannot remove costs space, not correctness)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
