"""BlockCache run files (`put_run`): several consecutive blocks of one version in one file,
written with O_DIRECT in one call; read, evicted, invalidated, dropped when corrupt and
recovered at startup as a unit, and the same LRU as block files against a reference model.

Blocks here are 16 KiB `bytes`: long enough that O_DIRECT can always write them from where
they lie in memory (`blockfile.direct_padding`), so every eligible run becomes a run file.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.component.caches import Tick, cache_opener, files_on_disk
from tests.component.threads import run_workers
from wsfuse.cache import blockcache, blockfile, schema
from wsfuse.cache.blockcache import BlockCache
from wsfuse.cache.schema import BlockKey, BlockRecord, block_id
from wsfuse.testing.ramp import ramp

BS = 16 * 1024


def data_of(bkey: BlockKey, size: int = BS) -> bytes:
    return ramp(f"{bkey.key}@{bkey.etag}", bkey.index * BS, size)


def run_of(key: str, first: int, count: int, etag: str = "e1") -> list[BlockKey]:
    return [BlockKey(key, etag, first + k) for k in range(count)]


def put_run(cache: BlockCache, bkeys: list[BlockKey]) -> list[bytes]:
    blocks = [data_of(b) for b in bkeys]
    cache.put_run(bkeys, blocks, {k: BlockCache.checksum(b) for k, b in enumerate(blocks)})
    return blocks


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def open_cache(cache_dir: Path) -> Iterator[Callable[..., BlockCache]]:
    yield from cache_opener(cache_dir, BS, capacity=1 << 30, clock=Tick())


def assert_consistent(cache: BlockCache) -> None:
    """Memory, index and files agree, run files included (nothing in flight)."""
    assert not cache._writing and not cache._unlinking and not cache._doomed
    assert cache._reserved == 0 and cache._reserved_disk == 0
    files = set(cache._entries)
    assert cache._cached_bytes == sum(cache._entries.values())
    assert set(cache._runs) == {f for f in files if f in cache._runs}  # no run left behind
    blocks = {b for f in files for b in cache._runs.get(f, (f,))}
    assert set(cache._members) == {b for f in cache._runs for b in cache._runs[f]}
    recorded = dict(cache.index.items(schema.DB_BLOCKS))
    assert set(recorded) == blocks
    for bid, value in recorded.items():
        record = BlockRecord.unpack(value)
        assert record.file_id(bid) == cache._members.get(bid, (bid,))[0]
    assert files_on_disk(cache.directory) == files
    assert cache.statistics().blocks == len(blocks)


def test_a_run_is_one_file_and_every_block_reads_back(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache()
    bkeys = run_of("data/shard-0", 4, 16)
    blocks = put_run(cache, bkeys)
    assert files_on_disk(cache_dir) == {block_id(bkeys[0])}
    for bkey, data in zip(bkeys, blocks, strict=True):
        assert cache.contains(bkey)
        assert cache.get(bkey) == data
        assert cache.get(bkey, direct=True) == data
    assert not cache.contains(BlockKey("data/shard-0", "e1", 3))
    assert not cache.contains(BlockKey("data/shard-0", "e1", 20))
    stats = cache.statistics()
    assert (stats.blocks, stats.cached_bytes, stats.bytes_written) == (16, 16 * BS, 16 * BS)
    # Each block's image starts on a page boundary of the file (O_DIRECT reads it alone).
    assert all(offset % 4096 == 0 for _, offset in cache._members.values())
    assert_consistent(cache)


def test_a_short_last_block_and_an_object_tail(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    bkeys = run_of("tail", 0, 3)
    blocks = [data_of(bkeys[0]), data_of(bkeys[1]), data_of(bkeys[2], 9000)]
    cache.put_run(bkeys, blocks, {})  # no checksums given: the cache computes them
    assert [cache.get(b) for b in bkeys] == blocks
    assert len(cache._runs) == 1
    assert_consistent(cache)


def test_blocks_of_a_run_file_survive_a_restart(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache()
    first = put_run(cache, run_of("a", 0, 8))
    single = BlockKey("b", "e1", 0)
    cache.put(single, data_of(single), direct=True)
    cache.close()
    cache = open_cache()
    assert [cache.get(b) for b in run_of("a", 0, 8)] == first
    assert cache.get(single) == data_of(single)
    assert cache.statistics().blocks == 9
    assert_consistent(cache)


def test_startup_removes_a_run_file_without_records_and_records_without_their_file(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache()
    put_run(cache, run_of("orphan", 0, 4))
    put_run(cache, run_of("stale", 0, 4))
    orphan, stale = block_id(BlockKey("orphan", "e1", 0)), block_id(BlockKey("stale", "e1", 0))
    cache.close()
    cache = open_cache()
    # behind the cache's back: the orphan's records and the stale one's file go
    cache.index.delete_many(schema.DB_BLOCKS, [block_id(b) for b in run_of("orphan", 0, 4)])
    (cache_dir / schema.block_relpath(stale)).unlink()
    cache.close()
    cache = open_cache()
    assert files_on_disk(cache_dir) == set(), (orphan.hex(), stale.hex())
    assert not any(cache.contains(b) for b in run_of("orphan", 0, 4) + run_of("stale", 0, 4))
    assert dict(cache.index.items(schema.DB_BLOCKS)) == {}
    assert_consistent(cache)


def test_a_run_file_is_evicted_whole_and_runs_are_cut_to_a_quarter_of_the_capacity(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    cache = open_cache(capacity=16 * BS)
    put_run(cache, run_of("a", 0, 16))  # cut into runs of 4 blocks
    assert len(cache._runs) == 4 and all(len(r) == 4 for r in cache._runs.values())
    assert cache.statistics().cached_bytes == 16 * BS
    assert cache.get(BlockKey("a", "e1", 0)) is not None  # the first run is now the newest
    put_run(cache, run_of("b", 0, 2))  # evicts the least recent run file: blocks 4-7
    assert [cache.contains(BlockKey("a", "e1", i)) for i in range(16)] == (
        [True] * 4 + [False] * 4 + [True] * 8
    )
    stats = cache.statistics()
    assert stats.evictions == 1 and stats.blocks == 14
    assert_consistent(cache)


def test_a_tiny_cache_puts_a_run_block_by_block(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache(capacity=3 * BS)
    bkeys = run_of("a", 0, 5)
    blocks = put_run(cache, bkeys)
    assert not cache._runs
    assert [cache.get(b) for b in bkeys[2:]] == blocks[2:]
    assert_consistent(cache)


def test_a_run_with_a_block_already_cached_is_put_block_by_block(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache()
    bkeys = run_of("a", 0, 6)
    cache.put(bkeys[2], data_of(bkeys[2]))
    put_run(cache, run_of("a", 3, 2))  # a run file of blocks 3-4
    blocks = put_run(cache, bkeys)
    assert [cache.get(b) for b in bkeys] == blocks
    assert cache.statistics().blocks == 6
    assert len(cache._runs) == 1  # 3-4 only; the rest went one by one
    assert_consistent(cache)


def test_a_run_must_be_consecutive_blocks_of_one_version(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache()
    with pytest.raises(ValueError, match="consecutive"):
        put_run(cache, [BlockKey("a", "e1", 0), BlockKey("a", "e1", 2)])
    with pytest.raises(ValueError, match="consecutive"):
        put_run(cache, [BlockKey("a", "e1", 0), BlockKey("a", "e2", 1)])
    with pytest.raises(ValueError, match="block keys for"):
        cache.put_run(run_of("a", 0, 2), [b""], {})
    assert cache.statistics().blocks == 0
    assert_consistent(cache)


def test_invalidating_an_object_drops_its_run_files(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache()
    put_run(cache, run_of("a", 0, 8))
    put_run(cache, run_of("a", 8, 8, etag="e2"))
    kept = put_run(cache, run_of("b", 0, 4))
    assert cache.invalidate_object("a") == 16
    assert not any(cache.contains(b) for b in run_of("a", 0, 8) + run_of("a", 8, 8, "e2"))
    assert [cache.get(b) for b in run_of("b", 0, 4)] == kept
    put_run(cache, run_of("a", 0, 8))  # and cached again
    assert cache.contains(BlockKey("a", "e1", 7))
    assert_consistent(cache)


def test_a_corrupt_block_drops_its_whole_run_file(
    open_cache: Callable[..., BlockCache], cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = open_cache()
    bkeys = run_of("a", 0, 4)
    blocks = put_run(cache, bkeys)
    fid, offset = cache._members[block_id(bkeys[2])]
    path = cache_dir / schema.block_relpath(fid)
    with open(path, "r+b") as f:
        f.seek(offset + 8192)
        f.write(b"\xff" * 16)
    assert cache.get(bkeys[1]) == blocks[1]
    with caplog.at_level(logging.WARNING):
        assert cache.get(bkeys[2]) is None
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert not any(cache.contains(b) for b in bkeys)
    assert not path.exists()
    stats = cache.statistics()
    assert stats.corrupt == 1 and stats.blocks == 0
    assert_consistent(cache)


def test_a_run_invalidated_while_it_is_written_is_not_cached(
    open_cache: Callable[..., BlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache()
    real_write = cache._files.write_run

    def write_then_invalidate(path: str, slots: Any, *, reuse: bool = False) -> bool | None:
        written = real_write(path, slots, reuse=reuse)
        assert cache.invalidate_object("a") == 0  # nothing cached yet: the put is doomed
        return written

    monkeypatch.setattr(cache._files, "write_run", write_then_invalidate)
    put_run(cache, run_of("a", 0, 4))
    assert not any(cache.contains(b) for b in run_of("a", 0, 4))
    assert_consistent(cache)


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_o_direct_refused_puts_the_run_block_by_block(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    refused_at: str,
) -> None:
    """A filesystem that refuses O_DIRECT (as tmpfs did: at open, after creating the file,
    or at the write): the run's blocks go one by one through the page cache, without a
    warning or a file left behind."""
    cache = open_cache()
    real_open, real_pwritev = os.open, os.pwritev
    direct_fds: set[int] = set()

    def no_direct_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT and refused_at == "open":
            os.close(real_open(path, flags & ~os.O_DIRECT, mode))
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, mode)
        (direct_fds.add if flags & os.O_DIRECT else direct_fds.discard)(fd)
        return fd

    def no_direct_write(fd: int, buffers: Any, offset: int) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(blockfile.os, "open", no_direct_open)
    monkeypatch.setattr(blockfile.os, "pwritev", no_direct_write)
    bkeys = run_of("a", 0, 4)
    with caplog.at_level(logging.WARNING):
        blocks = put_run(cache, bkeys)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not cache._files.direct_supported
    assert not cache._runs
    assert [cache.get(b) for b in bkeys] == blocks
    stats = cache.statistics()
    assert (stats.blocks, stats.skipped, stats.reused_files) == (4, 0, 0)
    assert not os.listdir(cache_dir / "tmp")
    assert_consistent(cache)


def test_a_run_file_written_over_a_spare_counts_as_reused(
    open_cache: Callable[..., BlockCache],
) -> None:
    """A run file may write over an evicted block file (its own victim, kept as a spare):
    that counts once in `reused_files`; a run file written as a new file does not."""
    cache = open_cache(capacity=8 * BS)
    put_run(cache, run_of("a", 0, 2))
    assert cache.statistics().reused_files == 0
    for i in range(8):  # single blocks fill the cache, evicting the run file
        b = BlockKey("s", "e1", i)
        cache.put(b, data_of(b), direct=True)
    assert not cache._spares  # a run file is never kept as a spare
    before = cache.statistics().reused_files
    put_run(cache, run_of("b", 0, 2))  # evicts two single files, writes over one
    assert cache.statistics().reused_files == before + 1
    assert [cache.get(b) for b in run_of("b", 0, 2)] == [data_of(b) for b in run_of("b", 0, 2)]
    assert_consistent(cache)


def test_a_full_disk_leaves_no_run_file(
    open_cache: Callable[..., BlockCache],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = open_cache()

    def full(*args: Any, **kwargs: Any) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache._files, "write_run", full)
    with caplog.at_level(logging.WARNING):
        put_run(cache, run_of("a", 0, 4))
    assert any("full" in r.getMessage() for r in caplog.records)
    assert cache.statistics().skipped == 1
    assert not os.listdir(cache_dir / "tmp")
    assert_consistent(cache)


def test_concurrent_runs_and_readers_stay_consistent(
    open_cache: Callable[..., BlockCache],
) -> None:
    """Eight threads put overlapping runs, read and invalidate, with a cache that evicts:
    every block read is right, and memory, index and files agree at the end."""
    cache = open_cache(capacity=48 * BS)

    def worker(n: int) -> None:
        for i in range(30):
            key = f"k{(n + i) % 3}"
            first = (n * 7 + i * 3) % 24
            bkeys = run_of(key, first, 1 + (i % 6))
            put_run(cache, bkeys)
            for b in bkeys:
                got = cache.get(b)
                assert got is None or got == data_of(b)
            if i % 10 == 9:
                cache.invalidate_object(key)

    run_workers(worker, 8)
    assert_consistent(cache)
    for key in ("k0", "k1", "k2"):
        for b in run_of(key, 0, 30):
            got = cache.get(b)
            assert got is None or got == data_of(b)


class RunCacheMachine(RuleBasedStateMachine):
    """The cache, fed runs and single blocks, against a reference model: an LRU of files
    (a run file, or one block's) with the same byte capacity, evicted file by file."""

    CAPACITY = 16 * BS

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="wsfuse-runs-model-"))
        self.clock = Tick()
        # file (its blocks, in order) -> data bytes, least recent first
        self.model: OrderedDict[tuple[BlockKey, ...], int] = OrderedDict()
        self.cache = self._open()

    def _open(self) -> BlockCache:
        return BlockCache(
            self.dir, block_size=BS, capacity=self.CAPACITY, min_free=0, clock=self.clock
        )

    def teardown(self) -> None:
        self.cache.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _file_of(self, bkey: BlockKey) -> tuple[BlockKey, ...] | None:
        return next((f for f in self.model if bkey in f), None)

    def _add(self, blocks: tuple[BlockKey, ...]) -> None:
        self.model[blocks] = len(blocks) * BS
        while sum(self.model.values()) > self.CAPACITY:
            self.model.popitem(last=False)

    @rule(
        key=st.sampled_from(["a", "b"]),
        first=st.integers(0, 8),
        count=st.integers(1, 7),
    )
    def put_run(self, key: str, first: int, count: int) -> None:
        bkeys = run_of(key, first, count)
        put_run(self.cache, bkeys)
        most = self.CAPACITY // 4 // BS
        for start in range(0, count, most):
            piece = tuple(bkeys[start : start + most])
            present = [f for b in piece if (f := self._file_of(b)) is not None]
            if len(piece) > 1 and not present:
                self._add(piece)
                continue
            for b in piece:  # block by block, as `put` does
                self._put_block(b)

    def _put_block(self, bkey: BlockKey) -> None:
        """The model of `put`: a cached block's file is touched, else the block gets its own."""
        f = self._file_of(bkey)
        if f is not None:
            self.model.move_to_end(f)
        else:
            self._add((bkey,))

    @rule(key=st.sampled_from(["a", "b"]), index=st.integers(0, 15))
    def put_one(self, key: str, index: int) -> None:
        bkey = BlockKey(key, "e1", index)
        self.cache.put(bkey, data_of(bkey), direct=True)
        self._put_block(bkey)

    @rule(key=st.sampled_from(["a", "b"]), index=st.integers(0, 15))
    def get(self, key: str, index: int) -> None:
        bkey = BlockKey(key, "e1", index)
        f = self._file_of(bkey)
        assert self.cache.get(bkey) == (data_of(bkey) if f is not None else None)
        if f is not None:
            self.model.move_to_end(f)

    @rule(key=st.sampled_from(["a", "b"]))
    def invalidate(self, key: str) -> None:
        dropped = [f for f in self.model if f[0].key == key]
        assert self.cache.invalidate_object(key) == sum(map(len, dropped))
        for f in dropped:
            del self.model[f]

    @precondition(lambda self: bool(self.model))
    @rule()
    def restart(self) -> None:
        self.cache.close()
        self.cache = self._open()

    @invariant()
    def same_files_and_order(self) -> None:
        assert list(self.cache._entries) == [block_id(f[0]) for f in self.model]
        assert [self.cache._runs.get(block_id(f[0]), (block_id(f[0]),)) for f in self.model] == [
            tuple(map(block_id, f)) for f in self.model
        ]
        assert self.cache.statistics().cached_bytes == sum(self.model.values())


TestRunCacheModel = RunCacheMachine.TestCase
TestRunCacheModel.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize("first", ["run", "own"])
def test_a_read_that_finds_its_file_put_again_in_another_layout_looks_again(
    open_cache: Callable[..., BlockCache],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    first: str,
) -> None:
    """Between a read's look and its open, the object is invalidated and its first block put
    again alone (or, the other way round, a block's own file becomes a run file's name): the
    read finds another layout under the name it looked up. It looks again; nothing is called
    corrupt and the fresh file stays."""
    cache = open_cache()
    bkeys = run_of("a", 0, 4)
    if first == "run":  # a member's reader finds block 0's own file under the run's name
        put_run(cache, bkeys)
        reader, replace = bkeys[2], lambda: cache.put(bkeys[0], data_of(bkeys[0]), direct=True)
    else:  # block 0's reader finds a run file under its name
        cache.put(bkeys[0], data_of(bkeys[0]), direct=True)
        reader, replace = bkeys[0], lambda: put_run(cache, bkeys)
    real_read = blockcache.read_block_file
    raced = []

    def read_after_a_swap(
        path: str, bkey: BlockKey, block_size: int, offset: int | None = None
    ) -> bytes | str:
        if not raced:
            raced.append(1)
            cache.invalidate_object("a")
            replace()
        return real_read(path, bkey, block_size, offset)

    monkeypatch.setattr(blockcache, "read_block_file", read_after_a_swap)
    with caplog.at_level(logging.WARNING):
        got = cache.get(reader)
    assert got == (None if first == "run" else data_of(reader))  # block 2 is gone now
    assert raced and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert cache.statistics().corrupt == 0
    assert cache.contains(bkeys[0])  # the fresh file stays
    assert_consistent(cache)


def test_startup_trusts_the_first_blocks_record_about_what_a_file_is(
    open_cache: Callable[..., BlockCache], cache_dir: Path
) -> None:
    """Records left by a removal whose index update failed: run records naming a file that
    its first block's record says is that block's own, and run records whose first block's
    record is gone. The first kind are dropped and the own file kept; the second's file goes."""
    cache = open_cache()
    put_run(cache, run_of("a", 0, 4))
    leftover = [(b, v) for b, v in cache.index.items(schema.DB_BLOCKS)]
    cache.invalidate_object("a")
    a0 = BlockKey("a", "e1", 0)
    cache.put(a0, data_of(a0), direct=True)  # a0's own file, under the run's old name
    cache.index.put_many(schema.DB_BLOCKS, [(b, v) for b, v in leftover if b != block_id(a0)])
    put_run(cache, run_of("b", 0, 4))
    cache.index.delete_many(schema.DB_BLOCKS, [block_id(BlockKey("b", "e1", 0))])
    cache.close()
    cache = open_cache()
    assert cache.get(a0) == data_of(a0)
    assert not any(cache.contains(b) for b in run_of("a", 1, 3) + run_of("b", 0, 4))
    assert cache.statistics().blocks == 1
    assert_consistent(cache)


def test_a_short_last_block_goes_alone_and_the_rest_still_makes_a_run_file(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache()
    bkeys = run_of("a", 0, 5)
    blocks = [data_of(b) for b in bkeys[:4]] + [data_of(bkeys[4], 100)]
    cache.put_run(bkeys, blocks, {})
    assert list(cache._runs.values()) == [tuple(block_id(b) for b in bkeys[:4])]
    assert [cache.get(b) for b in bkeys] == blocks
    assert_consistent(cache)


def test_threads_reading_run_files_with_o_direct_while_they_are_evicted_and_recycled(
    open_cache: Callable[..., BlockCache],
) -> None:
    """O_DIRECT reads at members' offsets while runs and single blocks evict each other and
    single files are recycled: every block read is right, and it all agrees at the end."""
    cache = open_cache(capacity=24 * BS)

    def worker(n: int) -> None:
        for i in range(40):
            key = f"k{(n + i) % 4}"
            if i % 3 == 0:
                b = BlockKey(key, "e1", 30 + i % 5)
                cache.put(b, data_of(b), direct=True)
            else:
                put_run(cache, run_of(key, (n * 5 + i * 2) % 20, 2 + i % 5))
            for j in range(0, 24, 3):
                b = BlockKey(key, "e1", j)
                got = cache.get(b, direct=bool(j % 2))
                assert got is None or got == data_of(b)

    run_workers(worker, 8)
    assert_consistent(cache)
    assert cache.statistics().evictions > 0
