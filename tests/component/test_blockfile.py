"""Block files written with O_DIRECT (padded, aligned data), their fallbacks, and the format
versions the cache reads."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_a_direct_block_has_page_aligned_data_and_reads_back(cache: BlockCache) -> None:
    bkey = BlockKey("dir/file.bin", "etag1", 3)
    cache.put(bkey, data_of(bkey), direct=True)
    raw = block_file(cache, bkey).read_bytes()
    hsize = schema.header_size(bkey)
    assert len(raw) == directio.ALIGN + BS  # header padded to one page
    assert raw[hsize : directio.ALIGN] == bytes(directio.ALIGN - hsize)
    assert raw[directio.ALIGN :] == data_of(bkey)
    assert cache.get(bkey) == data_of(bkey)
    assert cache._files.direct_supported  # this test's filesystem took O_DIRECT


@pytest.mark.parametrize("where", ["pad field", "padding", "data"])
def test_a_flipped_byte_in_a_direct_block_is_a_miss(
    cache: BlockCache, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey), direct=True)
    path = block_file(cache, bkey)
    offset = {"pad field": 10, "padding": schema.header_size(bkey) + 7, "data": 5000}[where]
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        got = cache.get(bkey)
    if where == "padding":
        # The zeros are not covered by the CRC (the header says how many there are): the data
        # is still exactly what was stored.
        assert got == data_of(bkey)
    else:
        assert got is None
        assert "is corrupt" in caplog.text
        assert not path.exists()


def test_blocks_that_cannot_be_direct_are_written_through_the_page_cache(
    cache: BlockCache,
) -> None:
    short = BlockKey("k", "e", 7)
    cache.put(short, data_of(short, 1000), direct=True)  # not whole pages
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


def test_version_1_blocks_still_read_and_a_v1_header_with_padding_does_not(
    cache: BlockCache,
) -> None:
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, data_of(bkey))  # buffered: no padding
    path = block_file(cache, bkey)
    raw = bytearray(path.read_bytes())
    raw[4:6] = (1).to_bytes(2, "little")  # what a version-1 daemon wrote
    path.write_bytes(raw)
    assert cache.get(bkey) == data_of(bkey)

    other = BlockKey("k", "e", 1)
    cache.put(other, data_of(other), direct=True)
    path = block_file(cache, other)
    raw = bytearray(path.read_bytes())
    raw[4:6] = (1).to_bytes(2, "little")  # version 1 had no padding
    path.write_bytes(raw)
    assert cache.get(other) is None


def test_pack_block_header_refuses_padding_of_a_page_or_more() -> None:
    with pytest.raises(ValueError, match="padding"):
        schema.pack_block_header(BlockKey("k", "e", 0), 10, 0, pad=schema.MAX_PAD)


def test_direct_padding_rules() -> None:
    assert blockfile.direct_padding(100, 4096) == 4096 - 100
    assert blockfile.direct_padding(4096, 8192) == 0
    assert blockfile.direct_padding(100, 4095) is None
    assert blockfile.direct_padding(100, 0) is None
    assert blockfile.direct_padding(blockfile.MAX_DIRECT_HEADER + 1, 4096) is None
