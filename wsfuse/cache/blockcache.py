"""`BlockCache`: the L1 cache of object blocks on the node's local disk.

One file per block (`blocks/XX/<id>`), each with a self-verifying header, or one run file per
GET of consecutive blocks (`put_run`, each block's image at its offset, named by the first
block's id), recorded in the LMDB index (`MetadataIndex`, "blocks" DB) once complete. Every
read checks the header against the requested `BlockKey` and the data against its CRC32C, so
whatever happened to the disk, the index or the process, a block is either served exactly as
it was fetched or treated as a miss (and dropped, with a WARNING).

Concurrency protocol (the long form is in docs/cache.md). The cache is called from trio worker
threads, concurrently. One `threading.Lock` guards all in-memory state; file reads and writes
run outside it, the short namespace steps (rename into place + index record) inside it, so the
in-memory map, the index and the files change together:

    LOCK ORDER: BlockCache._lock before LMDB's write lock (the index never calls back); the
    spare files' FilePool lock is never taken under it.

Where each block id is (cached, being written, being removed), the bytes it takes and which
blocks to evict are `CacheSpace`'s (space.py); the puts are `CacheWrites`' (writes.py), which
extends it and which BlockCache extends; reconciling the directory with the index at startup
is recovery.py.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import google_crc32c
import lmdb

from wsfuse import directio
from wsfuse.cache import schema
from wsfuse.cache.accesstimes import AccessTimes
from wsfuse.cache.blockfile import (
    MAX_DIRECT_HEADER,
    BlockFileReader,
    BlockFileWriter,
    DirectSupport,
    read_block_file,
)
from wsfuse.cache.index import MetadataIndex
from wsfuse.cache.lock import CacheDirLock
from wsfuse.cache.recovery import reconcile
from wsfuse.cache.recycle import RECYCLE_FILES, FilePool
from wsfuse.cache.schema import BlockKey, block_id, block_relpath
from wsfuse.cache.space import DiskFree
from wsfuse.cache.writes import CacheWrites

log = logging.getLogger(__name__)

#: One block per FUSE read request: the kernel sends 1 MiB reads when the mount's max_read
#: and read_ahead_kb allow it (reference/measurements.md), so a read touches one block file.
DEFAULT_BLOCK_SIZE: Final = 1 << 20
#: At most one WARNING per this many seconds about blocks not cached (disk full, free-space
#: guard): the condition usually lasts, and one line per 1 MiB read would flood the log.
SKIP_WARNING_INTERVAL: Final = 60.0

#: Reads of a block file that vanish under a concurrent eviction before `get` calls it a miss.
GET_ATTEMPTS: Final = 4

#: Wall-clock seconds for access times (injectable so tests control the LRU order).
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of the cache's counters (since it was opened) and size."""

    #: bytes of block data cached (headers and filesystem rounding not included)
    cached_bytes: int
    capacity: int
    blocks: int
    hits: int
    #: gets that returned None, corrupt blocks included
    misses: int
    #: blocks dropped because their file failed verification or could not be read
    corrupt: int
    #: blocks removed to stay within the capacity or the free-space guard
    evictions: int
    #: block data bytes written by `put`
    bytes_written: int
    #: puts not cached: no room (capacity, free-space guard) or a failed write
    skipped: int
    #: puts written over an evicted block's file instead of a new one (recycle.py)
    reused_files: int = 0


class BlockCache(CacheWrites):
    """Blocks of object versions, as files in `directory`, bounded by `capacity` bytes of data
    and by keeping at least `min_free` bytes free on the filesystem.

    Thread-safe. Nothing raises to a reader for a cache problem: a bad block is a miss, a
    block that cannot be stored is not cached (one rate-limited WARNING). Only programming
    errors raise (`ValueError` for a block larger than `block_size`).

    `spare_files`: evicted files kept for later puts to write over (recycle.py; 0: none).

    The constructor takes the directory's `CacheDirLock` (unless the caller passes the one it
    holds), opens the index at `directory/index` (unless given one, which then stays the
    caller's to close) and reconciles files and index; that scan is disk I/O (about 10 ms per
    10,000 blocks), so construct it in a worker thread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        capacity: int,
        min_free: int,
        index: MetadataIndex | None = None,
        lock: CacheDirLock | None = None,
        disk_free: DiskFree | None = None,
        clock: Clock = time.time,
        spare_files: int = RECYCLE_FILES,
    ) -> None:
        if block_size <= 0 or capacity < 0 or min_free < 0:
            raise ValueError("block_size must be positive, capacity and min_free non-negative")
        super().__init__(capacity=capacity, min_free=min_free, disk_free=disk_free)
        self._directory = directory
        self._block_size = block_size
        self._clock = clock
        self._dir = os.fspath(directory)
        self._tmp_dir = os.path.join(self._dir, schema.TMP_DIR)
        self._tmp_names = itertools.count()  # next() is atomic under the GIL
        direct = DirectSupport()
        self._files = BlockFileWriter(direct)
        self._reader = BlockFileReader(block_size, support=direct)
        self._spares = FilePool(self._tmp_dir, spare_files)

        self._lock = threading.Lock()
        # GUARDED_BY: _lock (everything below, and CacheSpace's state: see space.py)
        self._atimes = AccessTimes()
        # Reads in progress per file id: `_remove` deletes their files, never recycles them.
        self._reading: Counter[bytes] = Counter()
        self._hits = self._misses = self._corrupt = 0
        self._bytes_written = self._skipped = self._reused = 0
        self._last_skip_warning = -math.inf
        self._skips_unreported = 0
        self._closed = False

        self._owns_lock = lock is None
        if lock is None:
            lock = CacheDirLock.acquire(directory)
        elif not lock.held or lock.directory != directory:
            raise ValueError(f"the CacheDirLock passed is not held for {directory}")
        self._dir_lock = lock
        self._owns_index = index is None
        try:
            self._index = MetadataIndex(directory / schema.INDEX_DIR) if index is None else index
            try:
                self._recover()
            except BaseException:
                if self._owns_index:
                    self._index.close()
                raise
        except BaseException:
            if self._owns_lock:
                lock.release()
            raise

    # ------------------------------------------------------------------ public API

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def index(self) -> MetadataIndex:
        """The index the cache records blocks in (shared with the filesystem core)."""
        return self._index

    def contains(self, bkey: BlockKey) -> bool:
        """Whether the block is cached (in-memory mirror of the index; no I/O). A later `get`
        can still miss: the block may be evicted, or found corrupt, in between."""
        bid = block_id(bkey)
        with self._lock:
            return self._where_locked(bid)[0] in self._entries

    def get(self, bkey: BlockKey, *, direct: bool = False) -> bytes | None:
        """The block's data, or None on a miss. A block whose file fails verification (header,
        length, CRC32C) or cannot be read is logged, dropped, and reported as a miss.

        `direct`: read the file with O_DIRECT, past the page cache (a sequential re-read from
        the cache files, whose blocks end up in the reader's FUSE page cache anyway); without
        it, through the page cache, where a block written shortly before still is."""
        bid = block_id(bkey)
        for _attempt in range(GET_ATTEMPTS):
            with self._lock:
                # `fid`: the file's id, the block's own or its run file's (with `offset`)
                fid, offset = self._where_locked(bid)
                if self._closed or fid not in self._entries:
                    self._misses += 1
                    return None
                removals = self._removals
                self._reading[fid] += 1
            path = self._path(fid)
            try:
                result = self._read_file(fid, path, bkey, direct, offset)
            except FileNotFoundError:
                with self._lock:
                    if self._removals != removals:
                        # Evicted or invalidated (and perhaps put again) between the check
                        # and the open: look again.
                        continue
                # Nothing was removed meanwhile: the file went behind the cache's back.
                self._drop_corrupt(fid, bkey, path, "its file is missing")
                return None
            if isinstance(result, str):
                with self._lock:
                    moved = self._where_locked(bid) != (fid, offset)
                if moved:
                    # Removed and put again under the same name in another layout (a run
                    # file, or its first block's own file) before we opened it: look again.
                    continue
                self._drop_corrupt(fid, bkey, path, result)
                return None
            now = self._clock()
            with self._lock:
                self._hits += 1
                if fid in self._entries:
                    self._entries.move_to_end(fid)
                    self._atimes.note(fid, now)
                batch = self._atimes.take() if self._atimes.due() else None
            if batch:
                AccessTimes.write(self._index, batch)
            return result
        # Something was removed every time we looked (a small cache evicts on nearly every
        # put): a miss, without a warning. The entry goes too: if its file is in fact gone, a
        # later put must store the block again (put leaves a cached block alone).
        with self._lock:
            self._misses += 1
            fid = self._where_locked(bid)[0]
            victim = self._pop_locked(fid, evicted=False) if fid in self._entries else None
        if victim is not None:
            self._remove([victim], recycle=False)
        return None

    def _read_file(
        self, fid: bytes, path: str, bkey: BlockKey, direct: bool, offset: int | None
    ) -> bytes | str:
        """The verified block (at `offset` in a run file), or why not; FileNotFoundError if
        the file is gone. The caller counted this read in `_reading` (released here):
        meanwhile an eviction deletes the file instead of handing it to a put to write over
        (recycle.py), so what the reader opened stays whole, as a deleted file does behind an
        open descriptor."""
        try:
            if direct:
                return self._reader.read(path, bkey, offset)
            return read_block_file(path, bkey, self._block_size, offset)
        except FileNotFoundError:
            raise
        except OSError as exc:
            return f"cannot read it: {exc}"
        finally:
            with self._lock:
                self._reading[fid] -= 1
                if not self._reading[fid]:
                    del self._reading[fid]

    def get_slice(self, bkey: BlockKey, offset: int, length: int) -> bytes | None:
        """Bytes `[offset, offset + length)` of the block (fewer at its end), or None on a miss.
        The whole block is read: its CRC covers all of it."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        data = self.get(bkey)
        if data is None:
            return None
        if offset == 0 and length >= len(data):
            return data
        return data[offset : offset + length]

    @staticmethod
    def checksum(data: bytes) -> int:
        """The CRC32C `put` records for `data`. A caller that has the block's bytes in the
        CPU's cache anyway (just received) computes it there and passes it to `put`: on data
        that has gone back to memory the same sum costs about three times as much."""
        crc: int = google_crc32c.value(data)
        return crc

    def invalidate_object(self, key: str) -> int:
        """Drop every cached block of `key`, whatever its version (to free space early when an
        object is deleted or replaced; correctness never depends on it). Blocks of `key` being
        written are dropped when their put completes. Returns how many blocks were dropped."""
        prefix = schema.object_prefix(key)
        victims: list[tuple[bytes, int]] = []
        with self._lock:
            # A read transaction under the lock is fine: it never waits for LMDB's write lock.
            for bid, _ in self._index.items(schema.DB_BLOCKS, prefix):
                member = self._members.get(bid)
                if member is not None:
                    if member[0] in self._entries:  # a run file: all its blocks go
                        victims.append(self._pop_locked(member[0], evicted=False))
                elif bid in self._entries:
                    victims.append(self._pop_locked(bid, evicted=False))
                elif bid not in self._writing and bid not in self._unlinking:
                    # A record without an entry (a removal that failed half-way): clean it too.
                    self._unlinking[bid] = 0
                    victims.append((bid, 0))
            self._doomed.update(bid for bid in self._writing if bid.startswith(prefix))
            dropped = sum(len(self._runs[f]) if f in self._runs else 1 for f, _ in victims)
        if victims:
            self._remove(victims)
        return dropped

    def statistics(self) -> CacheStatistics:
        with self._lock:
            in_runs = sum(len(self._runs[f]) - 1 for f in self._entries if f in self._runs)
            return CacheStatistics(
                cached_bytes=self._cached_bytes,
                capacity=self._capacity,
                blocks=len(self._entries) + in_runs,
                hits=self._hits,
                misses=self._misses,
                corrupt=self._corrupt,
                evictions=self._evictions,
                bytes_written=self._bytes_written,
                skipped=self._skipped,
                reused_files=self._reused,
            )

    def sync(self) -> None:
        """Persist pending access times and make the index durable."""
        self._flush_atimes()
        self._index.sync()

    def close(self) -> None:
        """Persist access times, sync the index, close it (if the cache opened it) and release
        the directory lock (if the cache took it). Idempotent. Calls still running in other
        threads finish as misses or skipped puts; the mount drains its workers first anyway."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._flush_atimes()
            self._index.sync()
        finally:
            try:
                self._files.close()
                self._reader.close()
                self._spares.close()
            finally:
                if self._owns_index:
                    self._index.close()
                if self._owns_lock:
                    self._dir_lock.release()

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def _drop_corrupt(self, fid: bytes, bkey: BlockKey, path: str, reason: str) -> None:
        log.warning(
            "cache block %d of %r (etag %r) is corrupt: %s; dropped %s, it will be fetched again",
            bkey.index,
            bkey.key,
            bkey.etag,
            reason,
            path,
        )
        with self._lock:
            self._corrupt += 1
            self._misses += 1
            if fid not in self._entries:
                return  # already evicted or invalidated by another thread
            victim = self._pop_locked(fid, evicted=False)
        self._remove([victim], recycle=False)  # a file that failed is not reused

    # ------------------------------------------------------------------ removal and skips

    def _remove(self, victims: Sequence[tuple[bytes, int]], *, recycle: bool = True) -> None:
        """Delete the files and records of `victims` (ids in `_unlinking`), outside the lock:
        freeing a file's extents is the slow part of eviction. With `recycle`, far from the
        free-space guard and where puts write with O_DIRECT, a few files nobody is reading
        are kept for the next puts to write over instead (recycle.py); near the guard, the
        spares are deleted too."""
        with self._lock:
            room = self._files.direct_supported and self._room_to_recycle_locked(
                self._spares.limit * (self._block_size + MAX_DIRECT_HEADER + 2 * directio.ALIGN)
            )
            # Run files are not kept: the spares are budgeted as single blocks.
            runs = {fid: self._runs[fid] for fid, _ in victims if fid in self._runs}
            keep = (
                {f for f, _ in victims if f not in self._reading and f not in runs}
                if room and recycle
                else set()
            )
        if not room:
            self._spares.drain()
        for fid, _ in victims:
            path = self._path(fid)
            if fid in keep and self._spares.give(path):
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove cache block %s: %s", path, exc)
        try:
            # After the files: a crash in between leaves records without files, which the
            # next startup drops (the other order would leave orphan files, also cleaned).
            self._index.delete_many(
                schema.DB_BLOCKS, [bid for fid, _ in victims for bid in runs.get(fid, (fid,))]
            )
        except lmdb.Error as exc:
            log.warning("cannot remove %d block records from the index: %s", len(victims), exc)
        with self._lock:
            for fid, size in victims:
                if self._unlinking.pop(fid, None) is not None:
                    self._unlinking_bytes -= size
                for bid in runs.get(fid, ()):
                    self._members.pop(bid, None)
                self._runs.pop(fid, None)

    def _skip(self, reason: str, warn: bool = False) -> None:
        """Count a put that was not cached; WARN at most once per `SKIP_WARNING_INTERVAL`.
        The spare files are deleted: no room or a failed write, their space is better free."""
        self._spares.drain()
        now = time.monotonic()
        with self._lock:
            self._skipped += 1
            if not warn:
                log.debug("block not cached: %s", reason)
                return
            self._skips_unreported += 1
            if now - self._last_skip_warning < SKIP_WARNING_INTERVAL:
                return
            count, self._skips_unreported = self._skips_unreported, 0
            self._last_skip_warning = now
        log.warning(
            "not caching blocks: %s (%d block(s) since the last such warning); reads still "
            "work, from the bucket",
            reason,
            count,
        )

    def _flush_atimes(self) -> None:
        with self._lock:
            batch = self._atimes.take()
        AccessTimes.write(self._index, batch)

    # ------------------------------------------------------------------ startup

    def _recover(self) -> None:
        """Reconcile the directory with the index after whatever happened before (crash
        debris in tmp/, block files the index does not record, records whose file is gone:
        recovery.py); rebuild the LRU from the recorded access times; evict down to the
        capacity (it may have been lowered)."""
        started = time.monotonic()
        found = reconcile(self._dir, self._tmp_dir, self._index)
        live = sorted(found.live)
        with self._lock:
            self._entries = OrderedDict((fid, size) for _, fid, size, _ in live)
            for _, fid, _, members in live:
                if members is not None:
                    self._runs[fid] = tuple(bid for bid, _ in members)
                    self._members.update((bid, (fid, offset)) for bid, offset in members)
            self._cached_bytes = sum(self._entries.values())
            victims = []
            while self._cached_bytes > self._capacity:
                victims.append(self._pop_lru_locked())
        if victims:
            self._remove(victims)
        log.info(
            "block cache %s: %d blocks (%d bytes) recovered, %d orphan files and %d stale "
            "records removed, %d evicted to fit the capacity, in %.3f s",
            self._dir,
            sum(1 if members is None else len(members) for *_, members in live) - len(victims),
            self._cached_bytes,
            found.orphans,
            found.stale,
            len(victims),
            time.monotonic() - started,
        )

    # ------------------------------------------------------------------ helpers

    def _path(self, bid: bytes) -> str:
        return f"{self._dir}/{block_relpath(bid)}"
