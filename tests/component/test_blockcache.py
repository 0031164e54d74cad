"""BlockCache: round trips, verification of every read, LRU eviction, the free-space guard,
disk-full handling, crash recovery at startup, the directory lock, and concurrent use.

Block content is ramp data (`wsfuse.testing.ramp`) of the block's own key, version and
offset, so any block or slice can be checked without storing what was written.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.component.caches import Tick, cache_opener, files_on_disk
from tests.component.threads import run_workers
from wsfuse.cache import blockcache, schema, space
from wsfuse.cache.blockcache import BlockCache
from wsfuse.cache.index import MetadataIndex
from wsfuse.cache.lock import CacheDirLock
from wsfuse.cache.schema import BlockKey, block_id
from wsfuse.errors import UserError
from wsfuse.testing.ramp import ramp

REPO = Path(__file__).resolve().parents[2]
BS = 4096  # small blocks keep the tests fast; one test uses the 1 MiB default


def block_data(bkey: BlockKey, size: int = BS, block_size: int = BS) -> bytes:
    return ramp(f"{bkey.key}@{bkey.etag}", bkey.index * block_size, size)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def open_cache(cache_dir: Path) -> Iterator[Callable[..., BlockCache]]:
    """Opens caches on `cache_dir` (one at a time) and closes whatever is left open."""
    yield from cache_opener(cache_dir, BS, capacity=1 << 30, clock=Tick())


def block_path(cache_dir: Path, bkey: BlockKey) -> Path:
    return cache_dir / schema.block_relpath(block_id(bkey))


def assert_consistent(cache: BlockCache) -> None:
    """Memory, index and files agree (nothing in flight), and the byte count is right."""
    entries = dict(cache._entries)
    assert not cache._writing and not cache._unlinking and not cache._doomed
    assert cache._reserved == 0 and cache._reserved_disk == 0 and cache._unlinking_bytes == 0
    assert cache._cached_bytes == sum(entries.values())
    assert cache._cached_bytes <= cache.statistics().capacity
    recorded = {bid for bid, _ in cache.index.items(schema.DB_BLOCKS)}
    assert recorded == set(entries)
    assert files_on_disk(cache.directory) == set(entries)
    # Nothing in tmp/ but the evicted files kept for reuse (recycle.py).
    spares = os.listdir(cache.directory / "tmp")
    assert all(name.startswith("free.") for name in spares), spares
    assert len(spares) == len(cache._spares)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------- basics


def test_round_trip_of_a_1mib_block(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache(block_size=1 << 20)
    bkey = BlockKey("data/train-000.tar", '"9b2cf535f27731c974343645a3985328"', 3)
    data = block_data(bkey, 1 << 20, 1 << 20)
    assert cache.get(bkey) is None
    assert not cache.contains(bkey)
    cache.put(bkey, data)
    assert cache.contains(bkey)
    assert cache.get(bkey) == data
    assert cache.get_slice(bkey, 1000, 24) == data[1000:1024]
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.blocks, stats.cached_bytes) == (2, 1, 1, 1 << 20)
    assert stats.bytes_written == 1 << 20
    assert_consistent(cache)


@pytest.mark.parametrize("direct", [False, True])
def test_a_checksum_computed_by_the_caller_is_recorded(
    open_cache: Callable[..., BlockCache], caplog: pytest.LogCaptureFixture, direct: bool
) -> None:
    """The fetcher checksums blocks as they arrive and passes the sum to `put`: the right
    one is what the file carries; a wrong one makes the block a logged miss, never wrong data."""
    cache = open_cache()
    good, bad = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    data_good, data_bad = block_data(good), block_data(bad)
    assert BlockCache.checksum(data_good) == google_crc32c.value(data_good)
    cache.put(good, data_good, direct=direct, crc=BlockCache.checksum(data_good))
    cache.put(bad, data_bad, direct=direct, crc=BlockCache.checksum(data_bad) ^ 1)
    assert cache.get(good) == data_good
    with caplog.at_level(logging.WARNING):
        assert cache.get(bad) is None
    assert any("is corrupt" in m for m in warnings_of(caplog))
    assert_consistent(cache)


def test_last_block_may_be_short(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    bkey = BlockKey("k", "e", 7)
    cache.put(bkey, block_data(bkey, 100))
    assert cache.get(bkey) == block_data(bkey, 100)
    assert cache.get_slice(bkey, 90, 50) == block_data(bkey, 100)[90:]
    assert cache.get_slice(bkey, 200, 10) == b""
    empty = BlockKey("empty", "e", 0)
    cache.put(empty, b"")
    assert cache.get(empty) == b""
    with pytest.raises(ValueError, match="larger than the block size"):
        cache.put(BlockKey("k", "e", 0), b"x" * (BS + 1))
    assert cache.statistics().cached_bytes == 100


def test_blocks_are_version_addressed(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    old, new = BlockKey("k", "v1", 0), BlockKey("k", "v2", 0)
    cache.put(old, block_data(old))
    assert cache.get(new) is None
    cache.put(new, block_data(new))
    assert cache.get(old) == block_data(old)
    assert cache.get(new) == block_data(new)
    assert cache.get(BlockKey("k", "v1", 1)) is None
    # Keys that only differ in where the separator would be are different blocks.
    a, b = BlockKey("a\x00b", "c", 0), BlockKey("a", "b\x00c", 0)
    cache.put(a, block_data(a))
    assert cache.get(b) is None


def test_putting_a_cached_block_again_writes_nothing(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, block_data(bkey))
    cache.put(bkey, block_data(bkey))
    assert cache.statistics().bytes_written == BS
    assert_consistent(cache)


def test_unicode_and_long_keys(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    for bkey in (BlockKey("données/é🙂.bin", "e", 0), BlockKey("x" * 1024, "y" * 200, 2**40)):
        cache.put(bkey, block_data(bkey))
        assert cache.get(bkey) == block_data(bkey)


def test_invalidate_object_drops_every_version(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    doomed = [BlockKey("k", etag, i) for etag in ("v1", "v2") for i in range(3)]
    kept = [BlockKey("k2", "v1", 0), BlockKey("kk", "v1", 0)]
    for bkey in doomed + kept:
        cache.put(bkey, block_data(bkey))
    assert cache.invalidate_object("k") == 6
    assert not any(cache.contains(b) for b in doomed)
    assert all(cache.get(b) == block_data(b) for b in kept)
    assert cache.invalidate_object("k") == 0
    assert cache.statistics().evictions == 0
    assert_consistent(cache)


def test_closed_cache_misses_and_ignores_puts(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    bkey = BlockKey("k", "e", 0)
    cache.put(bkey, block_data(bkey))
    cache.close()
    cache.close()
    assert cache.get(bkey) is None
    cache.put(BlockKey("k", "e", 1), block_data(bkey))


# ---------------------------------------------------------------------------- verification

KEY = BlockKey("dir/file.bin", "etag1", 5)
KLEN = len(KEY.key.encode())
HEADER_FIELDS = {
    "magic": 0,
    "version": 4,
    "key length": 6,
    "etag length": 8,
    "reserved": 10,
    "crc": 12,
    "index": 16,
    "length": 24,
    "key": 32 + 3,
    "etag": 32 + KLEN + 1,
    "data": 32 + KLEN + 5 + 100,
    "last data byte": 32 + KLEN + 5 + BS - 1,
}


@pytest.mark.parametrize("offset", HEADER_FIELDS.values(), ids=HEADER_FIELDS.keys())
def test_a_flipped_byte_is_a_miss_and_drops_the_block(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    offset: int,
) -> None:
    cache = open_cache()
    cache.put(KEY, block_data(KEY))
    path = block_path(cache_dir, KEY)
    raw = bytearray(path.read_bytes())
    # Not the lowest bit: version 3 ^ 1 is version 2, which reads this same file correctly.
    raw[offset] ^= 0x10
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        assert cache.get(KEY) is None
    [message] = warnings_of(caplog)
    assert "is corrupt" in message and "'dir/file.bin'" in message and "block 5" in message
    assert not path.exists()
    assert not cache.contains(KEY)
    assert cache.index.get(schema.DB_BLOCKS, block_id(KEY)) is None
    stats = cache.statistics()
    assert (stats.corrupt, stats.misses, stats.hits, stats.blocks) == (1, 1, 0, 0)
    # A dropped block can be cached again.
    cache.put(KEY, block_data(KEY))
    assert cache.get(KEY) == block_data(KEY)
    assert_consistent(cache)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="half"),
        pytest.param(lambda raw: raw[:-1], id="one byte short"),
        pytest.param(lambda raw: raw[:20], id="inside the header"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: raw + b"\x00", id="trailing byte"),
    ],
)
@pytest.mark.parametrize("direct", [False, True], ids=["buffered read", "direct read"])
def test_truncated_or_extended_file_is_a_miss(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    mangle: Callable[[bytes], bytes],
    direct: bool,
) -> None:
    cache = open_cache()
    cache.put(KEY, block_data(KEY))
    path = block_path(cache_dir, KEY)
    path.write_bytes(mangle(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        got = cache.get(KEY, direct=True) if direct else cache.get_slice(KEY, 0, 10)
        assert got is None
    assert cache._reader.direct_supported  # the O_DIRECT way said so, not a fallback
    assert len(warnings_of(caplog)) == 1
    assert not path.exists()
    assert_consistent(cache)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered read", "direct read"])
def test_a_block_file_swapped_for_another_is_a_miss(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    direct: bool,
) -> None:
    """A file that is intact but belongs to another block (a collision, a bad copy)."""
    cache = open_cache()
    other = BlockKey(KEY.key, KEY.etag, KEY.index + 1)
    cache.put(KEY, block_data(KEY))
    cache.put(other, block_data(other))
    shutil.copyfile(block_path(cache_dir, other), block_path(cache_dir, KEY))
    with caplog.at_level(logging.WARNING):
        assert cache.get(KEY, direct=direct) is None
    assert "header says block 6" in warnings_of(caplog)[0]
    assert cache.get(other) == block_data(other)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered read", "direct read"])
def test_a_file_removed_behind_the_cache_is_a_miss(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    direct: bool,
) -> None:
    cache = open_cache()
    cache.put(KEY, block_data(KEY))
    block_path(cache_dir, KEY).unlink()
    with caplog.at_level(logging.WARNING):
        assert cache.get(KEY, direct=direct) is None
    assert "file is missing" in warnings_of(caplog)[0]
    assert_consistent(cache)


def test_a_file_lost_to_evictions_racing_the_read_is_not_called_corrupt(
    open_cache: Callable[..., BlockCache],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between `get`'s look at the index and its read, another thread may evict the block and
    put it back, more than once on a busy small cache (CI saw it twice in a row): each lost
    read is looked at again, never logged or dropped as corrupt."""
    cache = open_cache()
    data = block_data(KEY)
    cache.put(KEY, data)
    real_read = blockcache.read_block_file
    races = 0

    def read_racing_an_eviction(
        path: str, bkey: BlockKey, block_size: int, offset: int | None = None
    ) -> bytes | str:
        nonlocal races
        if races == blockcache.GET_ATTEMPTS - 1:
            return real_read(path, bkey, block_size, offset)
        races += 1
        cache.invalidate_object(bkey.key)  # evicted after the look, before the open
        try:
            return real_read(path, bkey, block_size, offset)
        finally:
            cache.put(bkey, data)  # and put back before the next look

    monkeypatch.setattr(blockcache, "read_block_file", read_racing_an_eviction)
    with caplog.at_level(logging.WARNING):
        assert cache.get(KEY) == data
    assert races == blockcache.GET_ATTEMPTS - 1
    assert warnings_of(caplog) == []
    assert cache.statistics().corrupt == 0
    assert_consistent(cache)


def test_a_read_that_races_evictions_every_time_is_a_quiet_miss_that_can_be_cached_again(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every look sees some other block removed and finds this block's file gone (it really
    is): a miss without a warning, and the block leaves the index, so the refetched data can
    be cached again instead of being refetched forever."""
    cache = open_cache()
    other = BlockKey(KEY.key + "-other", KEY.etag, 0)
    data = block_data(KEY)
    cache.put(KEY, data)
    block_path(cache_dir, KEY).unlink()
    real_read = blockcache.read_block_file

    def read_while_others_are_evicted(
        path: str, bkey: BlockKey, block_size: int, offset: int | None = None
    ) -> bytes | str:
        cache.put(other, block_data(other))
        cache.invalidate_object(other.key)  # some other block's eviction, every time
        return real_read(path, bkey, block_size, offset)

    monkeypatch.setattr(blockcache, "read_block_file", read_while_others_are_evicted)
    with caplog.at_level(logging.WARNING):
        assert cache.get(KEY) is None
    assert warnings_of(caplog) == []
    assert not cache.contains(KEY)
    monkeypatch.setattr(blockcache, "read_block_file", real_read)
    cache.put(KEY, data)
    assert cache.get(KEY) == data
    assert_consistent(cache)


# ---------------------------------------------------------------------------- eviction


def test_lru_eviction_to_capacity(
    open_cache: Callable[..., BlockCache], cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = open_cache(capacity=3 * BS)
    a, b, c, d, e = (BlockKey("k", "e", i) for i in range(5))
    with caplog.at_level(logging.WARNING):
        for bkey in (a, b, c):
            cache.put(bkey, block_data(bkey))
        assert cache.get(a) is not None  # a is now more recent than b and c
        cache.put(d, block_data(d))
        assert not cache.contains(b)
        assert not block_path(cache_dir, b).exists()
        assert all(cache.contains(x) for x in (a, c, d))
        cache.put(a, block_data(a))  # a put of a cached block refreshes it too
        cache.put(e, block_data(e))
        assert not cache.contains(c)
        assert all(cache.contains(x) for x in (a, d, e))
    stats = cache.statistics()
    assert (stats.evictions, stats.blocks, stats.cached_bytes) == (2, 3, 3 * BS)
    assert warnings_of(caplog) == []
    assert_consistent(cache)


def test_short_blocks_are_counted_by_their_size(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache(capacity=BS + 100)
    big, small = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    cache.put(big, block_data(big))
    cache.put(small, block_data(small, 100))
    assert cache.contains(big) and cache.contains(small)
    assert cache.statistics().cached_bytes == BS + 100


def test_a_block_larger_than_the_capacity_is_not_cached(
    open_cache: Callable[..., BlockCache], caplog: pytest.LogCaptureFixture
) -> None:
    cache = open_cache(capacity=BS // 2)
    small, big = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    cache.put(small, block_data(small, 100))
    with caplog.at_level(logging.WARNING):
        cache.put(big, block_data(big))
    assert not cache.contains(big)
    assert cache.contains(small)  # nothing evicted for a block that could never fit
    assert cache.statistics().skipped == 1
    assert warnings_of(caplog) == []  # a configuration matter, not worth a warning per block


class FakeDisk:
    """Free space of a disk of `size` bytes that holds only the cache's block files."""

    def __init__(self, cache_dir: Path, size: int) -> None:
        self.cache_dir = cache_dir
        self.size = size

    def used(self) -> int:
        return sum(p.stat().st_size for p in (self.cache_dir / "blocks").glob("*/*"))

    def __call__(self) -> int:
        return self.size - self.used()


def test_free_space_is_sampled_far_from_the_guard_and_measured_near_it(
    open_cache: Callable[..., BlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `statvfs` per second while far above the guard (blocks written since are counted
    as used), one per put when close to it."""
    free = [50 << 30]
    calls = []

    def statvfs_free() -> int:
        calls.append(free[0])
        return free[0]

    cache = open_cache(min_free=1 << 30)
    monkeypatch.setattr(cache, "_statvfs_free", statvfs_free)
    monkeypatch.setattr(space, "FREE_SAMPLE_SECONDS", 3600.0)  # no wall-clock race
    keys = [BlockKey("k", "e", i) for i in range(8)]
    for bkey in keys[:4]:
        cache.put(bkey, block_data(bkey))
    assert len(calls) == 1
    assert cache._sampled_free() < free[0] - 4 * BS  # what was written since is counted

    free[0] = (1 << 30) + (1 << 29)  # half a GiB above the guard: measure every time
    cache._free_sample = None  # (as when the interval has passed)
    for bkey in keys[4:]:
        cache.put(bkey, block_data(bkey))
    assert len(calls) == 1 + 4
    assert all(cache.contains(k) for k in keys)

    free[0] = (1 << 30) - 1  # something else filled the disk: the next put sees it at once
    cache.put(BlockKey("k", "e", 99), block_data(keys[0]))
    assert len(calls) == 6
    assert cache.statistics().evictions >= 1  # and evicts to stay above the guard


def test_free_space_guard(
    open_cache: Callable[..., BlockCache], cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    min_free = 10 * BS
    file_size = schema.header_size(BlockKey("k", "e", 0)) + BS
    disk = FakeDisk(cache_dir, min_free + 3 * file_size + file_size // 2)  # room for 3 blocks
    cache = open_cache(min_free=min_free, disk_free=disk)
    keys = [BlockKey("k", "e", i) for i in range(6)]
    with caplog.at_level(logging.WARNING):
        for bkey in keys:
            cache.put(bkey, block_data(bkey))
            assert disk() >= min_free
        assert [cache.contains(k) for k in keys] == [False] * 3 + [True] * 3
        assert cache.statistics().evictions == 3
        assert warnings_of(caplog) == []

        # Something else fills the disk below the guard: everything is evicted, nothing cached.
        disk.size = min_free - 1
        for i in range(6, 10):
            cache.put(BlockKey("k", "e", i), block_data(keys[0]))
    assert cache.statistics().blocks == 0
    assert cache.statistics().skipped == 4
    [message] = warnings_of(caplog)  # rate-limited: one warning for four blocks
    assert "below the guard" in message
    assert "(--min-free)" in message  # the flag a user can change
    assert_consistent(cache)


def test_disk_full_skips_the_block_with_one_warning(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = open_cache()
    kept = BlockKey("k", "e", 0)
    cache.put(kept, block_data(kept))
    real_pwritev = os.pwritev
    calls = 0

    def full_disk(fd: int, buffers: list[memoryview], offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls % 2:  # a partial write first, then ENOSPC: a temp file with some bytes
            return real_pwritev(fd, [buffers[0][:10]], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full_disk)
    with caplog.at_level(logging.WARNING):
        for i in range(1, 4):
            cache.put(BlockKey("k", "e", i), block_data(kept))  # never raises
    [message] = warnings_of(caplog)
    assert "disk is full" in message
    assert cache.statistics().skipped == 3
    assert not any(cache.contains(BlockKey("k", "e", i)) for i in range(1, 4))
    assert_consistent(cache)  # no temp file left behind, no partial block

    monkeypatch.undo()
    cache.put(BlockKey("k", "e", 1), block_data(kept))
    assert cache.get(BlockKey("k", "e", 1)) == block_data(kept)
    assert cache.get(kept) == block_data(kept)


def test_index_failure_skips_the_block(
    open_cache: Callable[..., BlockCache],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lmdb

    cache = open_cache()

    def map_full(*args: object, **kwargs: object) -> None:
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    monkeypatch.setattr(cache.index, "put_many", map_full)
    with caplog.at_level(logging.WARNING):
        cache.put(KEY, block_data(KEY))
    assert "cannot record it in the index" in warnings_of(caplog)[0]
    monkeypatch.undo()
    assert_consistent(cache)  # the renamed file was removed again


# ---------------------------------------------------------------------------- restart


def test_warm_restart_keeps_blocks_and_lru_order(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache(capacity=3 * BS)
    a, b, c, d = (BlockKey("k", "e", i) for i in range(4))
    for bkey in (a, b, c):
        cache.put(bkey, block_data(bkey))
    assert cache.get(a) is not None  # only in memory until close() flushes it
    cache.close()

    cache = open_cache(capacity=3 * BS)
    assert cache.statistics().blocks == 3
    assert cache.get(c) == block_data(c)  # order now: b, a, c
    cache.put(d, block_data(d))
    assert not cache.contains(b)
    assert all(cache.get(x) == block_data(x) for x in (a, c, d))
    assert_consistent(cache)


def test_restart_with_a_smaller_capacity_evicts_the_oldest(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache()
    keys = [BlockKey("k", "e", i) for i in range(5)]
    for bkey in keys:
        cache.put(bkey, block_data(bkey))
    cache.close()
    cache = open_cache(capacity=2 * BS)
    assert [cache.contains(k) for k in keys] == [False, False, False, True, True]
    assert_consistent(cache)


def test_startup_removes_crash_debris(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache()
    kept, orphan, lost = BlockKey("k", "e", 0), BlockKey("k", "e", 1), BlockKey("k", "e", 2)
    for bkey in (kept, orphan, lost):
        cache.put(bkey, block_data(bkey))
    cache.close()
    # Killed between rename and index record: a complete file the index does not know.
    with MetadataIndex(cache_dir / "index") as index:
        index.delete_many(schema.DB_BLOCKS, [block_id(orphan)])
    # A record whose file is gone (removed by hand, or a crash during removal).
    block_path(cache_dir, lost).unlink()
    # Killed while writing: a temp file; plus junk nobody should put there.
    (cache_dir / "tmp" / f"{block_id(kept).hex()}.7.tmp").write_bytes(b"partial")
    junk = [
        cache_dir / "blocks" / "00" / "junk",
        cache_dir / "blocks" / "00" / block_id(kept).hex().upper(),
        cache_dir / "blocks" / "zz" / "x",
        cache_dir / "blocks" / "stray",
    ]
    wrong_fanout = (schema.fanout_of(block_id(kept)) + 1) % 256
    junk.append(cache_dir / "blocks" / f"{wrong_fanout:02x}" / block_id(kept).hex())
    for path in junk:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"?")

    cache = open_cache()
    assert cache.get(kept) == block_data(kept)
    assert not cache.contains(orphan) and not cache.contains(lost)
    assert not block_path(cache_dir, orphan).exists()
    assert cache.statistics().blocks == 1
    assert not any(path.exists() for path in junk)
    assert not (cache_dir / "blocks" / "zz").exists()
    assert_consistent(cache)


def test_opening_makes_every_fanout_directory_and_a_removed_one_is_made_again(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    """All 256 fanout directories exist once the cache is open, so the first fill of a cache
    makes no directories; one removed behind the cache's back is made by the put needing it."""
    cache = open_cache()
    fanouts = {p.name for p in (cache_dir / "blocks").iterdir() if p.is_dir()}
    assert fanouts == {f"{fan:02x}" for fan in range(schema.FANOUT)}
    bkey = BlockKey("k", "e", 0)
    block_path(cache_dir, bkey).parent.rmdir()
    cache.put(bkey, block_data(bkey))
    assert cache.get(bkey) == block_data(bkey)
    assert_consistent(cache)


def test_a_disk_too_full_for_the_fanout_directories_still_opens_the_cache(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk at opening time is a warning, not a failed mount: puts make their fanout
    directory when they need it (and are skipped while the disk is full)."""
    import errno
    import os

    from wsfuse.cache import recovery

    real_mkdir = os.mkdir

    def full(path: str, *args: object, **kw: object) -> None:
        if os.path.basename(os.path.dirname(path)) == "blocks":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_mkdir(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(recovery.os, "mkdir", full)
    cache = open_cache()
    assert "cannot make the cache's fanout directories" in caplog.text
    monkeypatch.undo()
    bkey = BlockKey("k", "e", 3)
    cache.put(bkey, block_data(bkey))
    assert cache.get(bkey) == block_data(bkey)


def test_startup_of_many_blocks_is_fast(tmp_path: Path) -> None:
    """Reconciling 3,000 blocks: printed, and bounded generously against slow CI disks (the
    report's benchmark measures larger caches)."""
    import time

    directory = tmp_path / "cache"
    with BlockCache(directory, block_size=64, capacity=1 << 30, min_free=0) as cache:
        for i in range(3000):
            cache.put(BlockKey(f"obj{i % 97}", "e", i), b"x" * 64)
    started = time.perf_counter()
    with BlockCache(directory, block_size=64, capacity=1 << 30, min_free=0) as cache:
        elapsed = time.perf_counter() - started
        assert cache.statistics().blocks == 3000
    print(f"startup with 3,000 blocks: {elapsed * 1000:.0f} ms")
    assert elapsed < 5


# ---------------------------------------------------------------------------- locking

LOCKED_MESSAGE = (
    "cache directory {dir} is in use by another wsfuse process (pid {pid}); "
    "use a different --cache-dir or unmount the other mount"
)


def test_second_lock_in_process_fails(cache_dir: Path) -> None:
    with CacheDirLock.acquire(cache_dir) as lock:
        assert (cache_dir / "lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError) as info:
            CacheDirLock.acquire(cache_dir)
        assert str(info.value) == LOCKED_MESSAGE.format(dir=cache_dir, pid=os.getpid())
    assert not lock.held
    CacheDirLock.acquire(cache_dir).release()


def test_a_second_cache_on_the_same_directory_fails(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache()
    with pytest.raises(UserError, match="is in use by another wsfuse process"):
        BlockCache(cache_dir, capacity=1 << 20, min_free=0)
    cache.close()
    open_cache()  # close() released the lock


def test_cache_with_a_lock_and_index_from_the_caller(cache_dir: Path) -> None:
    with CacheDirLock.acquire(cache_dir) as lock, MetadataIndex(cache_dir / "index") as index:
        with BlockCache(cache_dir, capacity=1 << 20, min_free=0, index=index, lock=lock) as cache:
            cache.put(KEY, block_data(KEY, 10))
        # Both stay the caller's: still held and open after the cache closed.
        assert lock.held
        assert index.get(schema.DB_BLOCKS, block_id(KEY)) is not None
    with pytest.raises(ValueError, match="not held"):
        BlockCache(cache_dir, capacity=1 << 20, min_free=0, lock=lock)


def test_lock_held_by_another_process(cache_dir: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from wsfuse.cache.lock import CacheDirLock\n"
        "lock = CacheDirLock.acquire(Path(sys.argv[1]))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(cache_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as info:
            CacheDirLock.acquire(cache_dir)
        assert str(info.value) == LOCKED_MESSAGE.format(dir=cache_dir, pid=proc.pid)
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            BlockCache(cache_dir, capacity=1 << 20, min_free=0)
        proc.kill()  # like kill -9: the kernel drops the lock with the process
        proc.wait(timeout=30)
    with BlockCache(cache_dir, capacity=1 << 20, min_free=0):
        pass


# ---------------------------------------------------------------------------- concurrency


def test_the_same_block_from_8_threads(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    barrier = threading.Barrier(8)
    results: list[bytes | None] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            cache.put(KEY, block_data(KEY))
            results.append(cache.get(KEY))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Every reader got the block or (if its put lost the race to another writer and its get
    # came before that writer's commit) a miss; never anything else.
    assert all(r in (None, block_data(KEY)) for r in results)
    assert cache.get(KEY) == block_data(KEY)
    assert cache.statistics().bytes_written == BS
    assert_consistent(cache)


def block_size_of(bkey: BlockKey) -> int:
    return BS if bkey.index < 3 else BS // 3  # index 3 is the short last block


def test_concurrent_random_operations_are_consistent(
    open_cache: Callable[..., BlockCache], caplog: pytest.LogCaptureFixture
) -> None:
    cache = open_cache(capacity=12 * BS)
    universe = [
        BlockKey(f"obj{k}", f"v{v}", i) for k in range(4) for v in range(2) for i in range(4)
    ]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(400):
            bkey = rng.choice(universe)
            expected = block_data(bkey, block_size_of(bkey))
            op = rng.random()
            if op < 0.4:
                cache.put(bkey, expected)
            elif op < 0.8:
                assert cache.get(bkey) in (None, expected)
            elif op < 0.9:
                assert cache.get_slice(bkey, 100, 50) in (None, expected[100:150])
            elif op < 0.95:
                cache.contains(bkey)
                cache.statistics()
            else:
                cache.invalidate_object(bkey.key)

    with caplog.at_level(logging.WARNING):
        errors = run_workers(worker)
    assert not errors
    assert warnings_of(caplog) == []
    stats = cache.statistics()
    assert stats.corrupt == 0 and stats.hits > 0 and stats.evictions > 0
    assert_consistent(cache)
    cached = [b for b in universe if cache.contains(b)]
    cache.close()
    cache = open_cache(capacity=12 * BS)
    assert all(cache.get(b) == block_data(b, block_size_of(b)) for b in cached)
    assert_consistent(cache)


class CacheMachine(RuleBasedStateMachine):
    """The cache against a reference model: an LRU dict with the same byte capacity.

    With a clock that ticks on every access, the cache's contents and LRU order must match the
    model exactly, across restarts too.
    """

    CAPACITY = 5 * 1000

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="wsfuse-cache-model-"))
        self.clock = Tick()
        self.model: OrderedDict[BlockKey, bytes] = OrderedDict()
        self.cache = self._open()

    def _open(self) -> BlockCache:
        return BlockCache(
            self.dir, block_size=1000, capacity=self.CAPACITY, min_free=0, clock=self.clock
        )

    def teardown(self) -> None:
        self.cache.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    keys = st.builds(
        BlockKey, st.sampled_from(["a", "b", "c/d"]), st.sampled_from(["1", "2"]), st.integers(0, 3)
    )

    @staticmethod
    def data_of(bkey: BlockKey) -> bytes:
        return block_data(bkey, 1000 if bkey.index < 3 else 300, 1000)

    @rule(bkey=keys)
    def put(self, bkey: BlockKey) -> None:
        self.cache.put(bkey, self.data_of(bkey))
        if bkey in self.model:
            self.model.move_to_end(bkey)
            return
        self.model[bkey] = self.data_of(bkey)
        while sum(len(v) for v in self.model.values()) > self.CAPACITY:
            self.model.popitem(last=False)

    @rule(bkey=keys)
    def get(self, bkey: BlockKey) -> None:
        expected = self.model.get(bkey)
        assert self.cache.get(bkey) == expected
        if expected is not None:
            self.model.move_to_end(bkey)

    @rule(key=st.sampled_from(["a", "b", "c/d", "c"]))
    def invalidate(self, key: str) -> None:
        dropped = [b for b in self.model if b.key == key]
        assert self.cache.invalidate_object(key) == len(dropped)
        for b in dropped:
            del self.model[b]

    @precondition(lambda self: bool(self.model))
    @rule()
    def restart(self) -> None:
        self.cache.close()
        self.cache = self._open()

    @invariant()
    def same_contents_and_order(self) -> None:
        order = [block_id(b) for b in self.model]
        assert list(self.cache._entries) == order
        assert self.cache.statistics().cached_bytes == sum(len(v) for v in self.model.values())


TestCacheModel = CacheMachine.TestCase
TestCacheModel.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
