"""Fetching blocks of one object version: single-flight, the prefetch budget, hand-off in memory.

A handle reads one version of an object (`PinnedObject`: key, etag, size). Blocks are fetched
by ranged GETs with If-Match on that etag, so a read never mixes versions: if the object was
replaced, the GET fails with `PreconditionFailed` and the read fails (EIO), while blocks of the
pinned version already in the cache keep serving.

`BlockFetcher` is shared by all handles of a mount: it owns the in-flight table (one GET per
missing block at a time; everybody else waits on it), the prefetch memory budget and the
disk writes of fetched blocks. What to fetch, and when, is decided per handle by
`reader.Reader` (and, across the files of a directory, by `dirahead`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from wsfuse.aio import AsyncBackend
from wsfuse.cache import BlockCache, BlockKey
from wsfuse.config import MountConfig
from wsfuse.errors import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PinnedObject:
    key: str
    etag: str  # fetched with If-Match on this
    size: int
    cache_etag: str = ""  # the blocks' identity in the cache ("" = etag)

    def block(self, index: int) -> BlockKey:
        return BlockKey(self.key, self.cache_etag or self.etag, index)


class FetchCancelled(Exception):
    """The fetch a reader waited on was read-ahead that got cancelled: fetch it again."""


@dataclass(slots=True)
class _Pending:
    """One block being fetched or loaded; waiters block on `done`.

    A read-ahead block holds one unit of the prefetch budget from the start of its fetch until
    both of its holders let go: the write to the disk cache (fetches only) and the hand-off to
    the reader that asked for it (`ReadAhead.ready`). So the budget bounds every fetched byte
    in memory, whether it waits for the disk or for the reader.
    """

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None
    holds: int = 0

    async def wait(self) -> bytes:
        # A block already there is returned without a trio checkpoint: a sequential reader
        # finds nearly every block ready, and each checkpoint is a trip through the scheduler
        # (an epoll call that lets a worker thread take the GIL from the trio thread).
        if not self.done.is_set():
            await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


class _FetchStart:
    """Whether a fetch's worker thread has sent its request, decided once under a lock.

    A worker thread cannot be stopped in the middle of its GET: once it has begun, its bytes
    arrive whatever happens. So cancelling read-ahead (a seek, a close) stops only the fetches
    whose thread has not begun, and those never send a request; one already on its way is let
    go by its reader and finishes as any fetch does, into the cache (`ReadAhead.cancel`).
    """

    __slots__ = ("_begun", "_cancelled", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._begun = False
        self._cancelled = False

    def begin(self) -> bool:
        """In the worker thread, before the request: False if the fetch was cancelled first
        (then the thread sends none)."""
        with self._lock:
            self._begun = not self._cancelled
            return self._begun

    def cancel(self) -> bool:
        """On the trio thread: True if the fetch had not begun and now never will, False if
        its GET is on its way."""
        with self._lock:
            self._cancelled = not self._begun
            return self._cancelled

    @property
    def cancelled(self) -> bool:
        return self._cancelled


@dataclass(slots=True)
class ReadAhead:
    """The read-ahead of one handle: its fetches and loads in flight (cancelled together on
    seek-away or close) and the blocks they produced that the reader has not taken yet.

    Handing those blocks over in memory is what makes a cold sequential read cheap: without
    it, nearly every block would be written to the cache file and read straight back from it
    on the trio thread.
    """

    release: Callable[[_Pending], None]
    stats: FetchStats
    # Fetches (with their thread's state) and loads (None) in flight.
    scopes: dict[trio.CancelScope, _FetchStart | None] = field(default_factory=dict)
    ready: dict[BlockKey, _Pending] = field(default_factory=dict)

    def take(self, bkey: BlockKey) -> _Pending | None:
        """The read-ahead block `bkey`, handed over (its budget released), or None."""
        pending = self.ready.pop(bkey, None)
        if pending is not None:
            self.release(pending)
        return pending

    def drop(self, bkey: BlockKey, pending: _Pending) -> None:
        if self.ready.get(bkey) is pending:
            del self.ready[bkey]
            self.release(pending)

    def cancel(self) -> None:
        """Stop what has not started; a GET already on its way finishes into the cache (its
        bytes come anyway), and nothing of it is handed to this reader any more."""
        for scope, fetch in self.scopes.items():
            if fetch is None or fetch.cancel():
                scope.cancel()
            else:
                self.stats.prefetch_detached += 1
        self.scopes.clear()
        ready, self.ready = self.ready, {}
        for pending in ready.values():
            self.release(pending)


@dataclass(slots=True)
class FetchStats:
    demand_fetches: int = 0
    prefetches: int = 0
    prefetch_cancelled: int = 0
    prefetch_detached: int = 0  # cancelled after its GET had started: finished into the cache
    prefetch_skipped_budget: int = 0
    cache_hits: int = 0
    inflight_joins: int = 0
    handoffs: int = 0  # blocks read from read-ahead memory, not from the cache files
    disk_loads: int = 0  # cached blocks read ahead from the cache files in worker threads
    fast_link_streams: int = 0  # streams whose first GET was fast: larger read-ahead GETs


class BlockFetcher:
    """Single-flight block fetching into the cache. Owned by the trio thread."""

    def __init__(
        self,
        backend: AsyncBackend,
        cache: BlockCache,
        config: MountConfig,
        nursery: trio.Nursery,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.block_size = config.block_size
        self.nursery = nursery
        # GUARDED_BY: trio thread. INVARIANT: a key is here only while a task fetches it.
        self.inflight: dict[BlockKey, _Pending] = {}
        # Read-ahead bytes held in memory (in blocks), see `_Pending`.
        self.budget_blocks = max(1, config.prefetch_budget // config.block_size)
        self.budget = trio.Semaphore(self.budget_blocks)
        # Disk writes of fetched blocks. Each holds its blocks' read-ahead budget until it
        # lands, and on a busy daemon a write waits for the GIL at every system call: with 4 at
        # a time, writes held most of the budget and starved read-ahead (a cold 1 GiB read
        # found the budget spent in 80% of its reads; with 8, in almost none).
        self.disk_limiter = trio.CapacityLimiter(8)
        # Read-ahead from the cache files: enough reads in flight to keep an NVMe queue busy.
        self.load_limiter = trio.CapacityLimiter(8)
        self.stats = FetchStats()

    def block_count(self, obj: PinnedObject) -> int:
        return -(-obj.size // self.block_size)

    def new_readahead(self) -> ReadAhead:
        return ReadAhead(self.release, self.stats)

    def release(self, pending: _Pending) -> None:
        """One holder of a read-ahead block lets go; the last one returns its budget."""
        pending.holds -= 1
        if pending.holds == 0:
            self.budget.release()

    async def get_block(
        self,
        obj: PinnedObject,
        index: int,
        *,
        fetch_blocks: int = 1,
        group: ReadAhead | None = None,
    ) -> bytes:
        """Block `index` of `obj`: handed over by `group`'s read-ahead, from a fetch in
        flight, from the cache, or fetched now together with up to `fetch_blocks - 1`
        following blocks in one GET."""
        while True:
            bkey = obj.block(index)
            pending = group.take(bkey) if group is not None else None
            if pending is not None:
                self.stats.handoffs += 1
            else:
                pending = self.inflight.get(bkey)
            if pending is None:
                data = self.cache.get(bkey)
                if data is not None:
                    self.stats.cache_hits += 1
                    return data
                self.stats.demand_fetches += 1
                self.start_fetch(obj, index, fetch_blocks, group=None)
                pending = self.inflight[bkey]
            else:
                self.stats.inflight_joins += 1
            try:
                return await pending.wait()
            except FetchCancelled:
                continue  # read-ahead was cancelled or its cached copy vanished: fetch

    def _take_budget(self, run: list[BlockKey]) -> list[BlockKey]:
        """The prefix of `run` that spare budget covers (read-ahead never waits for it)."""
        taken = 0
        for _ in run:
            try:
                self.budget.acquire_nowait()
            except trio.WouldBlock:
                break
            taken += 1
        if taken == 0:
            self.stats.prefetch_skipped_budget += 1
        return run[:taken]

    def is_available(self, bkey: BlockKey) -> bool:
        """Cached or on its way (no I/O)."""
        return bkey in self.inflight or self.cache.contains(bkey)

    def start_fetch(
        self,
        obj: PinnedObject,
        first: int,
        count: int,
        *,
        group: ReadAhead | None,
        handoff: bool = True,
    ) -> int:
        """Start one GET for the run of missing blocks from `first` (at most `count`); returns
        how many blocks it covers (0 if `first` is cached or in flight already).

        With a `group` this is read-ahead: it holds budget, its blocks are handed to the
        group's reader (unless not `handoff`: then they only go to the cache), and cancelling
        the group stops it if its GET has not started (else it finishes into the cache).
        """
        last = min(first + count, self.block_count(obj))
        run: list[BlockKey] = []
        for i in range(first, last):
            bkey = obj.block(i)
            if bkey in self.inflight or self.cache.contains(bkey):
                break
            run.append(bkey)
        if not run:
            return 0
        scope = trio.CancelScope()
        start = _FetchStart()
        if group is not None:
            run = self._take_budget(run)
            if not run:
                return 0
            group.scopes[scope] = start
            self.stats.prefetches += 1
        for bkey in run:
            pending = self.inflight[bkey] = _Pending()
            if group is not None:
                pending.holds = 1  # the disk write
                if handoff:
                    pending.holds += 1  # and the reader
                    group.ready[bkey] = pending
        # Blocks handed to a reader from memory are not read back soon: written with O_DIRECT.
        direct = group is None or handoff
        self.nursery.start_soon(self._fetch, obj, run, scope, group, direct, start)
        return len(run)

    def start_load(self, obj: PinnedObject, first: int, count: int, *, group: ReadAhead) -> int:
        """Read ahead the run of cached blocks from `first` (at most `count`) from the cache
        files in a worker thread; returns how many blocks it covers (0 if `first` is not
        cached, in flight, or there is no budget). Without it, a sequential re-read from the
        disk cache would wait for one 1 MiB file read at a time, on the trio thread."""
        last = min(first + count, self.block_count(obj))
        run: list[BlockKey] = []
        for i in range(first, last):
            bkey = obj.block(i)
            if bkey in self.inflight or bkey in group.ready or not self.cache.contains(bkey):
                break
            run.append(bkey)
        run = self._take_budget(run) if run else run
        if not run:
            return 0
        scope = trio.CancelScope()
        group.scopes[scope] = None
        for bkey in run:
            pending = self.inflight[bkey] = _Pending()
            pending.holds = 1  # the reader
            group.ready[bkey] = pending
        self.nursery.start_soon(self._load, run, scope, group)
        return len(run)

    async def _fetch(
        self,
        obj: PinnedObject,
        run: list[BlockKey],
        scope: trio.CancelScope,
        group: ReadAhead | None,
        direct: bool,
        start: _FetchStart,
    ) -> None:
        pendings = [self.inflight[b] for b in run]
        error: BaseException = FetchCancelled()
        try:
            blocks: list[bytes] = []
            crcs: dict[int, int] = {}
            # Read-ahead nobody will take from memory (a directory's next files) is stored
            # by the worker thread that fetched it: one thread hop per file, not two.
            # (`direct` is False exactly for read-ahead without a hand-off, see `start_fetch`)
            store_there = group is not None and not direct
            with scope:
                blocks = await self._get_blocks(
                    obj, run, crcs, store=store_there, direct=direct, start=start
                )
            if scope.cancelled_caught or start.cancelled:
                self.stats.prefetch_cancelled += 1  # before its request: nothing was fetched
                return
            for pending, block in zip(pendings, blocks, strict=True):
                pending.data = block
                pending.done.set()
            if not store_there:
                # Keep the in-flight entries until the blocks are on disk, so that nobody
                # starts a second GET for them in between.
                async with self.disk_limiter:
                    await trio.to_thread.run_sync(self._store, run, blocks, crcs, direct)
        except Exception as exc:
            error = exc
            log.debug("fetch of %r blocks %d+%d failed: %s", obj.key, run[0].index, len(run), exc)
        finally:
            self._finish(run, pendings, error, scope, group)
            if group is not None:
                for bkey, pending in zip(run, pendings, strict=True):
                    if pending.data is None:
                        group.drop(bkey, pending)  # nothing to hand over
                    self.release(pending)  # the disk write's hold

    async def _load(self, run: list[BlockKey], scope: trio.CancelScope, group: ReadAhead) -> None:
        pendings = [self.inflight[b] for b in run]
        try:
            with scope:
                async with self.load_limiter:
                    blocks = await trio.to_thread.run_sync(self._load_sync, run)
                for pending, block in zip(pendings, blocks, strict=True):
                    if block is not None:
                        pending.data = block
                        pending.done.set()
                        self.stats.disk_loads += 1
        finally:
            # Blocks that vanished from the cache meanwhile get FetchCancelled: the reader
            # fetches them on demand.
            self._finish(run, pendings, FetchCancelled(), scope, group)
            for bkey, pending in zip(run, pendings, strict=True):
                if pending.data is None:
                    group.drop(bkey, pending)

    def _load_sync(self, run: list[BlockKey]) -> list[bytes | None]:
        # With O_DIRECT: the reader's FUSE page cache will hold these bytes; the cache files'
        # pages would be a second, fresh copy of them (blockfile.BlockFileReader). Loads run
        # only for read-ahead of files larger than `whole_object_max` (`Reader.read`), never
        # for a directory's small files, whose blocks were just written through the page
        # cache (an O_DIRECT read of those would first wait for their writeback).
        return [self.cache.get(bkey, direct=True) for bkey in run]

    def _finish(
        self,
        run: list[BlockKey],
        pendings: list[_Pending],
        error: BaseException,
        scope: trio.CancelScope,
        group: ReadAhead | None,
    ) -> None:
        for bkey, pending in zip(run, pendings, strict=True):
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()
            if self.inflight.get(bkey) is pending:
                del self.inflight[bkey]
        if group is not None:
            group.scopes.pop(scope, None)

    async def _get_blocks(
        self,
        obj: PinnedObject,
        run: list[BlockKey],
        crcs: dict[int, int],
        *,
        store: bool = False,
        direct: bool = True,
        start: _FetchStart,
    ) -> list[bytes]:
        """The blocks of `run` in one GET, each block's checksum put in `crcs` (by its index
        in `run`) by the receiving thread as the block arrives, while its bytes are still in
        the CPU's cache; with `store`, also written to the cache by that thread (only once
        they are known to be whole). No request, and no blocks, if `start` was cancelled
        before the thread began."""
        bs = self.block_size
        offset = run[0].index * bs
        length = min(len(run) * bs, obj.size - offset)
        checksum = self.cache.checksum

        def on_block(i: int, block: bytes) -> None:
            crcs[i] = checksum(block)

        def check(blocks: list[bytes]) -> None:
            got = sum(map(len, blocks))
            if got != length or len(blocks) != len(run):
                raise BackendError(
                    f"{obj.key!r}: expected {length} bytes at {offset}, got {got}", key=obj.key
                )

        def check_and_store(blocks: list[bytes]) -> None:
            check(blocks)
            if store:
                self._store(run, blocks, crcs, direct)

        return await self.backend.get_blocks_then(
            obj.key,
            offset,
            length,
            bs,
            check_and_store,
            if_match=obj.etag,
            on_block=on_block,
            begin=start.begin,
        )

    def _store(
        self, run: list[BlockKey], blocks: list[bytes], crcs: dict[int, int], direct: bool
    ) -> None:
        if direct:  # in run files: one file per GET, not one per block
            self.cache.put_run(run, blocks, crcs)
            return
        for i, (bkey, block) in enumerate(zip(run, blocks, strict=True)):
            self.cache.put(bkey, block, direct=False, crc=crcs.get(i))
