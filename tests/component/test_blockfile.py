"""Block files written with O_DIRECT (padded, aligned data), their fallbacks, and the format
versions the cache reads."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google_crc32c import value as crc32c

from wsfuse import directio
from wsfuse.cache import blockfile, schema
from wsfuse.cache.blockcache import BlockCache
from wsfuse.cache.schema import BlockKey, block_id
from wsfuse.testing.ramp import ramp

BS = 64 * 1024


def data_of(bkey: BlockKey, size: int = BS) -> bytes:
    return ramp(f"{bkey.key}@{bkey.etag}", bkey.index * BS, size)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlockCache]:
    c = BlockCache(tmp_path / "cache", block_size=BS, capacity=1 << 30, min_free=0)
    yield c
    c.close()


def block_file(cache: BlockCache, bkey: BlockKey) -> Path:
    return cache.directory / schema.block_relpath(block_id(bkey))


def stored(path: Path, bkey: BlockKey) -> tuple[int, bytes]:
    """(where the data starts, the whole file) of a block file."""
    raw = path.read_bytes()
    header = schema.check_block_header(raw, bkey)
    assert not isinstance(header, str), header
    return header.header_size + header.pad, raw


def test_a_direct_block_lines_the_datas_pages_up_with_the_files_and_reads_back(
    cache: BlockCache,
) -> None:
    bkey = BlockKey("dir/file.bin", "etag1", 3)
    data = data_of(bkey)
    cache.put(bkey, data, direct=True)
    start, raw = stored(block_file(cache, bkey), bkey)
    hsize = schema.header_size(bkey)
    lead = -blockfile.data_address(data) % directio.ALIGN
    assert (start + lead) % directio.ALIGN == 0  # the data's first page boundary, in the file
    assert raw[hsize:start] == bytes(start - hsize)
    assert raw[start : start + BS] == data
    assert len(raw) % directio.ALIGN == 0  # whole pages, the last one padded with zeros
    assert raw[start + BS :] == bytes(len(raw) - start - BS)
    assert len(raw) - (start + BS) < directio.ALIGN
    assert cache.get(bkey) == data
    assert cache._files.direct_supported  # this test's filesystem took O_DIRECT


def test_a_direct_write_sends_the_datas_own_pages_and_copies_under_two_pages_of_them(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwritev = os.pwritev
    calls: list[list[tuple[object, int]]] = []  # (what each piece views, its length)

    def spy(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append([(b.obj, len(b)) for b in buffers])  # the views are released after
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(blockfile.os, "pwritev", spy)
    bkey = BlockKey("k", "e", 1)
    data = data_of(bkey)
    cache.put(bkey, data, direct=True)
    [pieces] = calls
    own = [n for obj, n in pieces if obj is data]
    lead = -blockfile.data_address(data) % directio.ALIGN
    tail = (BS - lead) % directio.ALIGN
    assert own == [BS - lead - tail]
    copied = directio.align_up(schema.header_size(bkey) + lead) + (directio.ALIGN if tail else 0)
    assert sum(n for obj, n in pieces if obj is not data) == copied
    assert cache.get(bkey) == data


def bytes_with_lead(wanted: Callable[[int, int], bool], sizes: list[int]) -> bytes:
    """A `bytes` of one of `sizes` whose data's distance to its first page boundary in memory
    (`lead`) satisfies `wanted(lead, size)`: allocation addresses are the allocator's, so
    allocate (and hold) until one fits."""
    held = []
    for i in range(2048):
        size = sizes[i % len(sizes)]
        data = bytes([i % 251]) * size
        if wanted(-blockfile.data_address(data) % directio.ALIGN, size):
            return data
        held.append(data)
    pytest.skip("the allocator never placed a buffer as this case needs")


@pytest.mark.parametrize(
    "case",
    ["data starts on a page", "data ends on a page", "one page past the boundary"],
)
def test_direct_writes_of_every_layout_read_back(cache: BlockCache, case: str) -> None:
    align = directio.ALIGN
    sizes = [BS - 16 * j for j in range(256)]
    data = {
        "data starts on a page": lambda: bytes_with_lead(lambda lead, size: lead == 0, [BS]),
        "data ends on a page": lambda: bytes_with_lead(
            lambda lead, size: lead > 0 and (size - lead) % align == 0, sizes
        ),
        "one page past the boundary": lambda: bytes_with_lead(
            lambda lead, size: size == lead + align, [align + 16 * j for j in range(256)]
        ),
    }[case]()
    bkey = BlockKey("k", "e", 2)
    cache.put(bkey, data, direct=True)
    start, raw = stored(block_file(cache, bkey), bkey)
    assert raw[start : start + len(data)] == data
    assert len(raw) == directio.align_up(start + len(data))
    assert cache.get(bkey) == data


@pytest.mark.parametrize("direct_read", [False, True], ids=["buffered read", "direct read"])
@pytest.mark.parametrize("where", ["pad field", "padding", "trailing zeros", "data"])
def test_a_flipped_byte_in_a_direct_block_is_a_miss(
    cache: BlockCache, caplog: pytest.LogCaptureFixture, where: str, direct_read: bool
) -> None:
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey), direct=True)
    path = block_file(cache, bkey)
    start, raw_bytes = stored(path, bkey)
    offset = {
        "pad field": 10,
        "padding": start - 1,
        "trailing zeros": len(raw_bytes) - 1,
        "data": start + 5000,
    }[where]
    if where == "padding" and start == schema.header_size(bkey):
        where, offset = "trailing zeros", len(raw_bytes) - 1  # no padding this time
    if where == "trailing zeros" and len(raw_bytes) == start + BS:
        where, offset = "data", start + 5000  # the data ends on a page: nothing after it
    raw = bytearray(raw_bytes)
    raw[offset] ^= 0x01
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        got = cache.get(bkey, direct=direct_read)
    assert cache._reader.direct_supported  # a direct read went the O_DIRECT way
    if where in ("padding", "trailing zeros"):
        # The zeros are not covered by the CRC (the header says where the data is and how
        # long): the data is still exactly what was stored.
        assert got == data_of(bkey)
    else:
        assert got is None
        assert "is corrupt" in caplog.text
        assert not path.exists()


def test_blocks_that_cannot_be_direct_are_written_through_the_page_cache(
    cache: BlockCache,
) -> None:
    short = BlockKey("k", "e", 7)
    cache.put(short, data_of(short, 1000), direct=True)  # not a page past its page boundary
    long_key = BlockKey("x" * (2 * blockfile.MAX_DIRECT_HEADER), "e", 0)
    cache.put(long_key, data_of(long_key), direct=True)  # header too long for the buffers
    for bkey, size in ((short, 1000), (long_key, BS)):
        assert block_file(cache, bkey).stat().st_size == schema.header_size(bkey) + size
        assert cache.get(bkey) == data_of(bkey, size)


def test_a_filesystem_without_o_direct_falls_back_once_and_keeps_every_block(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_open = os.open
    refused: list[str] = []

    def no_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            refused.append(path)
            # As tmpfs did: the file is created, then O_DIRECT refused.
            os.close(real_open(path, flags & ~os.O_DIRECT, mode))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(blockfile.os, "open", no_direct)
    keys = [BlockKey("k", "e", i) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="wsfuse.cache.blockfile"):
        for bkey in keys:
            cache.put(bkey, data_of(bkey), direct=True)
    assert len(refused) == 1  # tried once, then buffered for good
    assert not cache._files.direct_supported
    assert "refuses O_DIRECT" in caplog.text
    for bkey in keys:
        assert cache.get(bkey) == data_of(bkey)
    assert not list((cache.directory / schema.TMP_DIR).iterdir())


def rewrite(cache: BlockCache, bkey: BlockKey, version: int, pad: int, trailing: int) -> None:
    """Replace `bkey`'s block file by one as a daemon writing `version` would have, with
    `trailing` zero bytes after the data (-1: up to the next page boundary)."""
    data = data_of(bkey)
    header = bytearray(schema.pack_block_header(bkey, len(data), crc32c(data), pad))
    header[4:6] = version.to_bytes(2, "little")
    body = bytes(header) + bytes(pad) + data
    if trailing < 0:
        trailing = -len(body) % directio.ALIGN
        assert trailing  # the case is meant to have some
    block_file(cache, bkey).write_bytes(body + bytes(trailing))


@pytest.mark.parametrize(
    ("version", "pad", "trailing", "reads"),
    [
        (1, 0, 0, True),
        (1, 16, 0, False),  # version 1 had no padding
        (2, 16, 0, True),
        (2, 16, -1, False),  # nor had version 2 anything after the data
        (3, 16, 0, True),
        (3, 16, -1, True),  # zeros up to the next page: an O_DIRECT write's last page
        (3, 16, 1, False),  # anything else after the data is not
        (3, 16, directio.ALIGN, False),
    ],
)
@pytest.mark.parametrize("direct_read", [False, True], ids=["buffered read", "direct read"])
def test_block_files_of_every_format_version_read_as_their_version_allows(
    cache: BlockCache, version: int, pad: int, trailing: int, reads: bool, direct_read: bool
) -> None:
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey))
    rewrite(cache, bkey, version, pad, trailing)
    assert cache.get(bkey, direct=direct_read) == (data_of(bkey) if reads else None)
    assert cache._reader.direct_supported


def test_pack_block_header_refuses_padding_of_a_page_or_more() -> None:
    with pytest.raises(ValueError, match="padding"):
        schema.pack_block_header(BlockKey("k", "e", 0), 10, 0, pad=schema.MAX_PAD)


def test_direct_padding_puts_the_datas_page_boundary_on_a_page_of_the_file() -> None:
    for size in (directio.ALIGN * 2, BS, BS + 1, 3 * BS + 100):
        data = bytes(size)
        lead = -blockfile.data_address(data) % directio.ALIGN
        for hsize in (34, 200, blockfile.MAX_DIRECT_HEADER):
            pad = blockfile.direct_padding(hsize, data)
            assert pad is not None and 0 <= pad < directio.ALIGN
            assert (hsize + pad + lead) % directio.ALIGN == 0
    assert blockfile.direct_padding(100, bytes(1000)) is None  # no whole page in it
    assert blockfile.direct_padding(100, b"") is None
    assert blockfile.direct_padding(100, bytearray(BS)) is None  # only bytes stay in place
    assert blockfile.direct_padding(blockfile.MAX_DIRECT_HEADER + 1, bytes(BS)) is None


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(address, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_direct_read_leaves_the_block_file_out_of_the_page_cache(cache: BlockCache) -> None:
    """What `direct` reads are for: a sequential re-read from the cache files puts each block
    in the reader's FUSE page cache; the block file's own pages would be a second copy."""
    direct, buffered = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    for bkey in (direct, buffered):
        cache.put(bkey, data_of(bkey))  # through the page cache
        drop_from_page_cache(block_file(cache, bkey))
        assert resident_pages(block_file(cache, bkey)) == 0
    assert cache.get(direct, direct=True) == data_of(direct)
    assert cache.get(buffered) == data_of(buffered)
    assert resident_pages(block_file(cache, direct)) == 0
    assert resident_pages(block_file(cache, buffered)) > 0


def test_a_direct_read_sees_a_block_written_through_the_page_cache_just_before(
    cache: BlockCache,
) -> None:
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey))  # dirty pages: the kernel writes them back first
    assert cache.get(bkey, direct=True) == data_of(bkey)
    short = BlockKey("k", "e", 9)
    cache.put(short, data_of(short, 1000))
    assert cache.get(short, direct=True) == data_of(short, 1000)


def test_direct_reads_of_a_long_key_or_an_oversized_file_go_through_the_page_cache(
    cache: BlockCache, caplog: pytest.LogCaptureFixture
) -> None:
    long_key = BlockKey("x" * (2 * blockfile.MAX_DIRECT_HEADER), "e", 0)
    cache.put(long_key, data_of(long_key))
    assert cache.get(long_key, direct=True) == data_of(long_key)
    # A file larger than any block file: the buffer cannot tell how large; the checks can.
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey))
    path = block_file(cache, bkey)
    path.write_bytes(path.read_bytes() + bytes(2 * BS))
    with caplog.at_level(logging.WARNING):
        assert cache.get(bkey, direct=True) is None
    assert "file is" in caplog.text and "header says" in caplog.text


@pytest.mark.parametrize("refused", ["open", "read"])
def test_direct_reads_refused_by_the_filesystem_fall_back_once(
    cache: BlockCache,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    refused: str,
) -> None:
    keys = [BlockKey("k", "e", i) for i in range(3)]
    for bkey in keys:
        cache.put(bkey, data_of(bkey), direct=True)
    attempts: list[str] = []
    real_open, real_preadv = os.open, os.preadv
    direct_fds: set[int] = set()

    def open_(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT and refused == "open":
            attempts.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, mode)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if fd in direct_fds:
            direct_fds.discard(fd)
            attempts.append(str(fd))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(blockfile.os, "open", open_)
    monkeypatch.setattr(directio.os, "open", open_)
    monkeypatch.setattr(blockfile.os, "preadv", preadv)
    with caplog.at_level(logging.INFO, logger="wsfuse.cache.blockfile"):
        for bkey in keys:
            assert cache.get(bkey, direct=True) == data_of(bkey)
    assert len(attempts) == 1  # tried once, then through the page cache for good
    assert "refuses O_DIRECT" in caplog.text and "read through the page cache" in caplog.text
    assert not cache._files.direct_supported  # and writes no longer try it either
    assert cache.statistics().corrupt == 0


def test_an_empty_block_file_read_direct_is_a_truncated_header(
    cache: BlockCache, caplog: pytest.LogCaptureFixture
) -> None:
    """The pooled buffer holds an earlier block's bytes: only what this read got is parsed."""
    first, second = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    for bkey in (first, second):
        cache.put(bkey, data_of(bkey), direct=True)
    assert cache.get(first, direct=True) == data_of(first)
    block_file(cache, second).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert cache.get(second, direct=True) is None
    assert "truncated header" in caplog.text


def test_a_direct_read_that_fails_otherwise_asks_the_page_cache_and_keeps_the_block(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey), direct=True)
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(blockfile.os, "preadv", preadv)
    assert cache.get(bkey, direct=True) == data_of(bkey)
    assert cache.statistics().corrupt == 0
    assert cache._reader.direct_supported  # not EINVAL: O_DIRECT is still tried next time
