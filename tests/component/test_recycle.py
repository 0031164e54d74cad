"""Evicted block files written over by the next O_DIRECT puts (recycle.py), on a real disk."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.component.caches import cache_opener
from tests.component.threads import run_workers
from wsfuse import directio
from wsfuse.cache import blockcache, recycle, schema
from wsfuse.cache.blockcache import BlockCache
from wsfuse.cache.recycle import FilePool
from wsfuse.cache.schema import BlockKey, block_id
from wsfuse.testing.ramp import ramp

BS = 64 * 1024  # large enough for O_DIRECT writes (a 4 KiB block is not a page past its start)


def data_of(bkey: BlockKey, size: int = BS) -> bytes:
    return ramp(f"{bkey.key}@{bkey.etag}", bkey.index * BS, size)


def block_file(cache: BlockCache, bkey: BlockKey) -> Path:
    return cache.directory / schema.block_relpath(block_id(bkey))


def spares_on_disk(cache: BlockCache) -> list[str]:
    return sorted(os.listdir(cache.directory / schema.TMP_DIR))


@pytest.fixture
def open_cache(tmp_path: Path) -> Iterator[Callable[..., BlockCache]]:
    yield from cache_opener(tmp_path / "cache", BS)


# ---------------------------------------------------------------------------- the pool


def test_the_pool_keeps_files_up_to_its_limit_and_hands_them_out(tmp_path: Path) -> None:
    pool = FilePool(str(tmp_path), limit=2)
    files = [tmp_path / f"f{i}" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    inodes = {f.stat().st_ino for f in files[:2]}
    assert pool.give(str(files[0])) and pool.give(str(files[1]))
    assert not pool.give(str(files[2]))  # full: still the caller's
    assert files[2].exists() and len(pool) == 2
    taken = [tmp_path / "a", tmp_path / "b"]
    assert all(pool.take(str(t)) for t in taken)
    assert {t.stat().st_ino for t in taken} == inodes
    assert not pool.take(str(tmp_path / "c")) and len(pool) == 0
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "f2"]


def test_a_missing_file_is_not_kept_and_a_spare_removed_behind_the_pools_back_is_skipped(
    tmp_path: Path,
) -> None:
    pool = FilePool(str(tmp_path))
    assert not pool.give(str(tmp_path / "nothing-here"))
    assert len(pool) == 0
    for name in ("x", "y"):
        (tmp_path / name).write_bytes(b"1")
        assert pool.give(str(tmp_path / name))
    newest = max((p for p in tmp_path.iterdir()), key=lambda p: p.name)
    newest.unlink()  # the spare taken first (last in): gone
    assert pool.take(str(tmp_path / "z"))
    assert (tmp_path / "z").exists() and len(pool) == 0


def test_closing_the_pool_deletes_its_spares_and_refuses_more(tmp_path: Path) -> None:
    pool = FilePool(str(tmp_path))
    (tmp_path / "x").write_bytes(b"1")
    assert pool.give(str(tmp_path / "x"))
    pool.close()
    assert not os.listdir(tmp_path)
    (tmp_path / "y").write_bytes(b"1")
    assert not pool.give(str(tmp_path / "y"))
    assert not pool.take(str(tmp_path / "z"))


# ---------------------------------------------------------------------------- in the cache


def test_evicted_files_are_written_over_by_the_next_direct_puts(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache(capacity=4 * BS)
    first = [BlockKey("old", "e", i) for i in range(4)]
    for bkey in first:
        cache.put(bkey, data_of(bkey), direct=True)
    old_inodes = {block_file(cache, b).stat().st_ino for b in first}
    second = [BlockKey("new", "e", i) for i in range(4)]
    for bkey in second:
        cache.put(bkey, data_of(bkey), direct=True)
    stats = cache.statistics()
    # Each put evicts first, then writes over the file it evicted.
    assert stats.evictions == 4 and stats.reused_files == 4
    assert {block_file(cache, b).stat().st_ino for b in second} == old_inodes
    assert not spares_on_disk(cache)
    for bkey in second:
        assert cache.get(bkey) == data_of(bkey)
        assert cache.get(bkey, direct=True) == data_of(bkey)
    assert all(not cache.contains(b) for b in first)
    cache.invalidate_object("new")  # removals keep their files for the next puts
    assert len(spares_on_disk(cache)) == 4
    cache.close()
    assert not spares_on_disk(cache)  # closing deletes the spares


def test_a_short_block_written_over_a_longer_file_is_cut_to_its_length(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache(capacity=BS)
    full, short = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    cache.put(full, data_of(full), direct=True)
    cache.put(short, data_of(short, 20_000), direct=True)  # evicts `full`, reuses its file
    assert cache.statistics().reused_files == 1
    path = block_file(cache, short)
    header = schema.check_block_header(path.read_bytes(), short)
    assert not isinstance(header, str), header
    end = header.header_size + header.pad + header.length
    assert path.stat().st_size == directio.align_up(end)
    assert cache.get(short) == data_of(short, 20_000)
    cache.close()
    cache = open_cache(capacity=BS)  # and a restart's reconciliation agrees
    assert cache.get(short, direct=True) == data_of(short, 20_000)


def test_buffered_puts_create_new_files_and_leave_the_spares(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache(capacity=2 * BS)
    keys = [BlockKey("k", "e", i) for i in range(4)]
    for bkey in keys:
        cache.put(bkey, data_of(bkey))  # through the page cache: never over an old file
    stats = cache.statistics()
    assert stats.evictions == 2 and stats.reused_files == 0
    assert len(spares_on_disk(cache)) == 2
    assert all(cache.get(b) == data_of(b) for b in keys[2:])


def test_near_the_free_space_guard_evicted_files_are_deleted(
    open_cache: Callable[..., BlockCache],
) -> None:
    # 10 blocks above the guard: less than twice what the pool may hold.
    cache = open_cache(capacity=2 * BS, min_free=1 << 30, disk_free=lambda: (1 << 30) + 10 * BS)
    keys = [BlockKey("k", "e", i) for i in range(5)]
    for bkey in keys:
        cache.put(bkey, data_of(bkey), direct=True)
    stats = cache.statistics()
    assert stats.evictions == 3 and stats.reused_files == 0
    assert not spares_on_disk(cache)


def test_a_file_being_read_is_deleted_not_written_over(
    open_cache: Callable[..., BlockCache],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader has opened the block's file when a put evicts it: the file is deleted (the
    reader's descriptor keeps it whole), not handed to the put to write over."""
    cache = open_cache(capacity=BS)
    mine, other = BlockKey("mine", "e", 0), BlockKey("other", "e", 0)
    cache.put(mine, data_of(mine), direct=True)
    real_read = blockcache.read_block_file

    def read_while_evicted(
        path: str, bkey: BlockKey, block_size: int, offset: int | None = None
    ) -> bytes | str:
        fd = os.open(path, os.O_RDONLY)  # opened before the eviction
        try:
            cache.put(other, data_of(other), direct=True)  # evicts `mine`
            assert not os.path.exists(path)
            return real_read(f"/proc/self/fd/{fd}", bkey, block_size, offset)
        finally:
            os.close(fd)

    monkeypatch.setattr(blockcache, "read_block_file", read_while_evicted)
    with caplog.at_level(logging.WARNING):
        assert cache.get(mine) == data_of(mine)  # what it opened, whole
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    stats = cache.statistics()
    assert stats.evictions == 1 and stats.reused_files == 0 and stats.corrupt == 0
    assert not spares_on_disk(cache) and not cache._reading
    monkeypatch.setattr(blockcache, "read_block_file", real_read)
    assert cache.get(other) == data_of(other) and not cache.contains(mine)


def test_a_file_being_read_with_o_direct_or_invalidated_is_deleted_not_written_over(
    open_cache: Callable[..., BlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, on the O_DIRECT read path, and with the block invalidated (an object
    overwritten) rather than evicted."""
    cache = open_cache(capacity=4 * BS)
    mine, other = BlockKey("mine", "e", 0), BlockKey("other", "e", 0)
    cache.put(mine, data_of(mine), direct=True)
    real_read = cache._reader.read

    def read_while_invalidated(path: str, bkey: BlockKey, offset: int | None) -> bytes | str:
        fd = os.open(path, os.O_RDONLY)
        try:
            assert cache.invalidate_object("mine") == 1
            cache.put(other, data_of(other), direct=True)  # would take a spare if there were one
            return real_read(f"/proc/self/fd/{fd}", bkey, offset)
        finally:
            os.close(fd)

    monkeypatch.setattr(cache._reader, "read", read_while_invalidated)
    assert cache.get(mine, direct=True) == data_of(mine)
    assert cache.statistics().reused_files == 0 and not spares_on_disk(cache)
    monkeypatch.undo()
    assert cache.get(other, direct=True) == data_of(other)


def test_a_drain_wins_over_a_give_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = FilePool(str(tmp_path))
    (tmp_path / "x").write_bytes(b"1")
    real_rename = os.rename

    def rename_then_drain(src: str, dst: str) -> None:
        real_rename(src, dst)
        pool.drain()  # another thread found the disk near the guard meanwhile

    monkeypatch.setattr(recycle.os, "rename", rename_then_drain)
    assert pool.give(str(tmp_path / "x"))  # handled: the file is gone, not kept
    monkeypatch.undo()
    assert len(pool) == 0 and not os.listdir(tmp_path)


def test_a_corrupt_block_is_dropped_as_corrupt_while_other_blocks_go_and_not_reused(
    open_cache: Callable[..., BlockCache],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = open_cache(capacity=4 * BS)
    bad = BlockKey("bad", "e", 0)
    cache.put(bad, data_of(bad), direct=True)
    path = block_file(cache, bad)
    raw = bytearray(path.read_bytes())
    raw[-5000] ^= 0xFF
    path.write_bytes(bytes(raw))
    real_read = blockcache.read_block_file
    churn = iter(range(1000))

    def read_while_others_are_evicted(
        p: str, bkey: BlockKey, block_size: int, offset: int | None = None
    ) -> bytes | str:
        for _ in range(2):  # other blocks come and go meanwhile
            other = BlockKey("other", "e", next(churn))
            cache.put(other, data_of(other), direct=True)
            cache.invalidate_object("other")
        return real_read(p, bkey, block_size, offset)

    monkeypatch.setattr(blockcache, "read_block_file", read_while_others_are_evicted)
    bad_inode = path.stat().st_ino
    with caplog.at_level(logging.WARNING):
        assert cache.get(bad) is None
    assert "corrupt" in caplog.text
    stats = cache.statistics()
    assert stats.corrupt == 1 and not cache.contains(bad)
    spares = cache.directory / schema.TMP_DIR
    assert spares_on_disk(cache)  # the churn's evicted files are kept...
    # ...but not the bad one: deleted.
    assert bad_inode not in {(spares / n).stat().st_ino for n in spares_on_disk(cache)}
    assert not path.exists()


def test_a_spare_that_cannot_take_o_direct_is_replaced_by_a_new_file(
    open_cache: Callable[..., BlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache(capacity=BS)
    a, b = BlockKey("k", "e", 0), BlockKey("k", "e", 1)
    cache.put(a, data_of(a), direct=True)
    real_open = os.open

    def refuse_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse_direct)
    cache.put(b, data_of(b), direct=True)  # takes `a`'s file, O_DIRECT refused: buffered
    monkeypatch.setattr(os, "open", real_open)
    assert cache.statistics().reused_files == 0
    assert cache.get(b) == data_of(b)
    path = block_file(cache, b)
    header = schema.check_block_header(path.read_bytes(), b)
    assert not isinstance(header, str), header
    # Written anew through the page cache: no zeros after the data up to a page.
    assert path.stat().st_size == header.header_size + header.pad + BS
    assert path.stat().st_size % directio.ALIGN
    assert not spares_on_disk(cache)


def test_the_pool_is_bounded(open_cache: Callable[..., BlockCache]) -> None:
    cache = open_cache(capacity=(recycle.RECYCLE_FILES + 8) * 4096, block_size=4096)
    keys = [BlockKey("k", "e", i) for i in range(3 * recycle.RECYCLE_FILES + 8)]
    for bkey in keys:
        cache.put(bkey, data_of(bkey, 4096))  # 4 KiB: buffered, so no spare is taken
    assert len(spares_on_disk(cache)) == len(cache._spares) == recycle.RECYCLE_FILES
    assert cache.statistics().evictions == 2 * recycle.RECYCLE_FILES


def test_near_the_free_space_guard_the_spares_are_deleted(
    open_cache: Callable[..., BlockCache],
) -> None:
    free = [100 << 30]
    cache = open_cache(capacity=2 * BS, min_free=1 << 30, disk_free=lambda: free[0])
    keys = [BlockKey("k", "e", i) for i in range(4)]
    for bkey in keys:
        cache.put(bkey, data_of(bkey))  # buffered: the evicted files stay spares
    assert len(spares_on_disk(cache)) == 2
    free[0] = (1 << 30) + 10 * BS  # something else filled the disk
    last = BlockKey("k", "e", 9)
    cache.put(last, data_of(last))
    assert not spares_on_disk(cache) and len(cache._spares) == 0
    assert cache.get(last) == data_of(last)


def test_no_spares_are_kept_once_o_direct_is_refused(
    open_cache: Callable[..., BlockCache],
) -> None:
    cache = open_cache(capacity=2 * BS)
    keys = [BlockKey("k", "e", i) for i in range(3)]
    for bkey in keys:
        cache.put(bkey, data_of(bkey))
    assert len(spares_on_disk(cache)) == 1
    cache._files.support.refused("a test")  # as after an EINVAL: nothing will take them
    nxt = BlockKey("k", "e", 3)
    cache.put(nxt, data_of(nxt))
    assert not spares_on_disk(cache)


def test_readers_and_direct_puts_on_a_full_cache_from_8_threads(
    open_cache: Callable[..., BlockCache], caplog: pytest.LogCaptureFixture
) -> None:
    """Files are written over all the time while other threads read: every read is a miss or
    the exact block, never a corrupt one."""
    cache = open_cache(capacity=6 * BS)
    universe = [BlockKey(f"o{k}", "e", i) for k in range(4) for i in range(5)]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(100):
            bkey = rng.choice(universe)
            if seed % 2:
                cache.put(bkey, data_of(bkey), direct=True)
            else:
                assert cache.get(bkey, direct=rng.random() < 0.5) in (None, data_of(bkey))

    with caplog.at_level(logging.WARNING):
        errors = run_workers(worker)
    assert not errors
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    stats = cache.statistics()
    assert stats.corrupt == 0 and stats.hits > 0 and stats.reused_files > 0
    assert not cache._reading
    assert len(spares_on_disk(cache)) == len(cache._spares) <= recycle.RECYCLE_FILES
    for bkey in universe:
        assert cache.get(bkey) in (None, data_of(bkey))
