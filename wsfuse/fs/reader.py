"""The read path: version-pinned block fetching with single-flight and sequential prefetch.

A handle reads one version of an object (`PinnedObject`: key, etag, size). Blocks are fetched
by ranged GETs with If-Match on that etag, so a read never mixes versions: if the object was
replaced, the GET fails with `PreconditionFailed` and the read fails (EIO), while blocks of the
pinned version already in the cache keep serving.

`BlockFetcher` is shared by all handles of a mount: it owns the in-flight table (one GET per
missing block at a time; everybody else waits on it) and the prefetch memory budget.
`Reader` is per handle: it detects sequential access and grows its read-ahead window from
one fetch towards `prefetch_max`; a seek elsewhere cancels its read-ahead and shrinks the
window back, so random readers never trigger large downloads.
"""

from __future__ import annotations

import logging
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


@dataclass(slots=True)
class ReadAhead:
    """The read-ahead fetches of one handle, cancelled together on seek-away or close."""

    scopes: set[trio.CancelScope] = field(default_factory=set)

    def cancel(self) -> None:
        for scope in self.scopes:
            scope.cancel()
        self.scopes.clear()


class FetchCancelled(Exception):
    """The fetch a reader waited on was read-ahead that got cancelled: fetch it again."""


@dataclass(slots=True)
class _Pending:
    """One block being fetched; waiters block on `done`."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None

    async def wait(self) -> bytes:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


@dataclass(slots=True)
class FetchStats:
    demand_fetches: int = 0
    prefetches: int = 0
    prefetch_cancelled: int = 0
    prefetch_skipped_budget: int = 0
    cache_hits: int = 0
    inflight_joins: int = 0


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
        # Prefetched bytes held in memory between the GET and the cache write (in blocks).
        self.budget = trio.Semaphore(max(1, config.prefetch_budget // config.block_size))
        # Disk writes of fetched blocks: few at a time, they are sequential writes to one disk.
        self.disk_limiter = trio.CapacityLimiter(4)
        self.stats = FetchStats()

    def block_count(self, obj: PinnedObject) -> int:
        return -(-obj.size // self.block_size)

    async def get_block(self, obj: PinnedObject, index: int, *, fetch_blocks: int = 1) -> bytes:
        """Block `index` of `obj`: from the cache, from a fetch in flight, or fetched now
        together with up to `fetch_blocks - 1` following blocks in one GET."""
        while True:
            bkey = obj.block(index)
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
                continue  # read-ahead was cancelled; fetch on demand

    def start_fetch(
        self, obj: PinnedObject, first: int, count: int, *, group: ReadAhead | None
    ) -> int:
        """Start one GET for the run of missing blocks from `first` (at most `count`); returns
        how many blocks it covers (0 if `first` is cached or in flight already).

        With a `group` this is read-ahead: it holds budget, and cancelling the group stops it.
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
        if group is not None:
            # Read-ahead only runs on spare budget; demand fetches never wait for it.
            taken = 0
            for _ in run:
                try:
                    self.budget.acquire_nowait()
                except trio.WouldBlock:
                    break
                taken += 1
            if taken == 0:
                self.stats.prefetch_skipped_budget += 1
                return 0
            run = run[:taken]
            group.scopes.add(scope)
            self.stats.prefetches += 1
        for bkey in run:
            self.inflight[bkey] = _Pending()
        self.nursery.start_soon(self._fetch, obj, run, scope, group)
        return len(run)

    async def _fetch(
        self,
        obj: PinnedObject,
        run: list[BlockKey],
        scope: trio.CancelScope,
        group: ReadAhead | None,
    ) -> None:
        pendings = [self.inflight[b] for b in run]
        error: BaseException = FetchCancelled()
        try:
            blocks: list[bytes] = []
            with scope:
                blocks = await self._get_blocks(obj, run)
            if scope.cancelled_caught:
                self.stats.prefetch_cancelled += 1
                return
            for pending, block in zip(pendings, blocks, strict=True):
                pending.data = block
                pending.done.set()
            # Keep the in-flight entries until the blocks are on disk, so that nobody
            # starts a second GET for them in between.
            async with self.disk_limiter:
                await trio.to_thread.run_sync(self._store, run, blocks)
        except Exception as exc:
            error = exc
            log.debug("fetch of %r blocks %d+%d failed: %s", obj.key, run[0].index, len(run), exc)
        finally:
            for bkey, pending in zip(run, pendings, strict=True):
                if not pending.done.is_set():
                    pending.error = error
                    pending.done.set()
                if self.inflight.get(bkey) is pending:
                    del self.inflight[bkey]
            if group is not None:
                group.scopes.discard(scope)
                for _ in run:
                    self.budget.release()

    async def _get_blocks(self, obj: PinnedObject, run: list[BlockKey]) -> list[bytes]:
        bs = self.block_size
        offset = run[0].index * bs
        length = min(len(run) * bs, obj.size - offset)
        data = await self.backend.get_range(obj.key, offset, length, if_match=obj.etag)
        if len(data) != length:
            raise BackendError(
                f"{obj.key!r}: expected {length} bytes at {offset}, got {len(data)}", key=obj.key
            )
        if len(run) == 1:
            return [data]
        view = memoryview(data)
        return [bytes(view[i * bs : (i + 1) * bs]) for i in range(len(run))]

    def _store(self, run: list[BlockKey], blocks: list[bytes]) -> None:
        for bkey, block in zip(run, blocks, strict=True):
            self.cache.put(bkey, block)


class Reader:
    """Reads of one open handle. Owned by the trio thread."""

    def __init__(self, fetcher: BlockFetcher, obj: PinnedObject, config: MountConfig) -> None:
        self.fetcher = fetcher
        self.obj = obj
        bs = config.block_size
        self.block_size = bs
        self.fetch_blocks = max(1, config.fetch_size // bs)
        self.max_window = max(self.fetch_blocks, config.prefetch_max // bs)
        self.whole = obj.size <= config.whole_object_max
        self.next_offset = 0
        self.window = 0  # read-ahead in blocks; grows while reads are sequential
        self.ahead_until = 0  # blocks below this were fetched or requested by read-ahead
        self.readahead = ReadAhead()

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self.obj.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        sequential = offset == self.next_offset or (
            self.next_offset and abs(offset - self.next_offset) < bs
        )
        if sequential:
            self.window = min(max(self.window * 2, self.fetch_blocks), self.max_window)
        else:
            self.cancel_readahead()
            self.window = 0
            self.ahead_until = 0
        self.next_offset = end
        if self.whole:
            fetch = self.fetcher.block_count(self.obj)  # small object: one GET for all of it
        elif sequential:
            fetch = self.fetch_blocks
        else:
            fetch = last - first + 1  # random: exactly what was asked for
        # Start the demand fetch before read-ahead, so that it covers its whole run in one GET.
        if self.fetcher.start_fetch(self.obj, first, fetch, group=None):
            self.fetcher.stats.demand_fetches += 1
        if sequential and self.window and not self.whole:
            self._read_ahead(last + 1)
        if first == last:
            block = await self.fetcher.get_block(self.obj, first, fetch_blocks=fetch)
            start = offset - first * bs
            if start == 0 and end - offset == len(block):
                return block
            return memoryview(block)[start : end - first * bs]
        parts: list[bytes] = []
        for i in range(first, last + 1):
            parts.append(
                await self.fetcher.get_block(self.obj, i, fetch_blocks=fetch - (i - first))
            )
        data = b"".join(parts)
        start = offset - first * bs
        return memoryview(data)[start : start + end - offset]

    def _read_ahead(self, start: int) -> None:
        """Keep `window` blocks after `start` fetched or in flight, in fetch-sized GETs."""
        total = self.fetcher.block_count(self.obj)
        target = min(start + self.window, total)
        i = max(start, self.ahead_until)
        # Only whole fetches (or the object's tail): topping the window up by the one block
        # each read consumes would turn read-ahead into 1 MiB GETs.
        while i < target and (target - i >= self.fetch_blocks or target == total):
            covered = self.fetcher.start_fetch(
                self.obj, i, min(self.fetch_blocks, target - i), group=self.readahead
            )
            if covered == 0:
                bkey = self.obj.block(i)
                if bkey not in self.fetcher.inflight and not self.fetcher.cache.contains(bkey):
                    break  # out of budget: try again on the next read
                covered = 1
            i += covered
        self.ahead_until = i

    def cancel_readahead(self) -> None:
        self.readahead.cancel()

    def close(self) -> None:
        self.cancel_readahead()
