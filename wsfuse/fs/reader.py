"""The read path of one open handle: sequential detection and a growing read-ahead window.

`Reader` detects sequential access and grows its read-ahead window from one fetch towards
`prefetch_max`; a seek elsewhere cancels its read-ahead and shrinks the window back, so random
readers never trigger large downloads. The blocks themselves come from the mount's shared
`fetcher.BlockFetcher` (single-flight GETs, the prefetch budget, the disk cache).
"""

from __future__ import annotations

import trio

from wsfuse.config import MountConfig
from wsfuse.fs.fetcher import BlockFetcher, PinnedObject

#: Reads in a row that may land near a stream's front without extending it (the kernel's
#: concurrent read-ahead requests served out of order: at most read_ahead_kb / 1 MiB of them
#: at a time). One more is a seek: a reader that jumped a little way and goes on reading from
#: there gets its own read-ahead after this many reads.
REORDER_LIMIT = 16


class Reader:
    """Reads of one open handle. Owned by the trio thread."""

    def __init__(self, fetcher: BlockFetcher, obj: PinnedObject, config: MountConfig) -> None:
        self.fetcher = fetcher
        self._obj = obj
        bs = config.block_size
        self.block_size = bs
        self.fetch_blocks = max(1, config.fetch_size // bs)
        self.max_window = max(self.fetch_blocks, config.prefetch_max // bs)
        # Read-ahead GETs: fetch_blocks each, or more once the first GET showed a fast link
        # (`_size_readahead`).
        self.readahead_blocks = self.fetch_blocks
        # (at most half the window, so that a GET is always on its way while one is read)
        self._fast_blocks = max(
            self.fetch_blocks, min(self.max_window // 2, config.fast_fetch_size // bs)
        )
        self._fast_rate = config.fast_link_rate
        self.whole = obj.size <= config.whole_object_max
        self.next_offset = 0  # the stream's front: where a sequential reader reads next
        self.window = 0  # read-ahead in blocks; grows while reads are sequential
        # Reads ahead of the front served out of order (start -> end), absorbed once the
        # front reaches them, and how many reads in a row did not extend it (see `_follow`).
        self.reordered: dict[int, int] = {}
        self.out_of_order = 0
        self.ahead_until = 0  # blocks below this were fetched or requested by read-ahead
        self.readahead = fetcher.new_readahead()
        # The block the last sequential read ended inside of: the next read starts in it, and
        # read-ahead has already handed it over. At most one block per unaligned reader.
        self.last: tuple[int, bytes] | None = None

    @property
    def obj(self) -> PinnedObject:
        return self._obj

    @obj.setter
    def obj(self, obj: PinnedObject) -> None:
        """Re-pinned (the file was renamed, or its metadata rewritten): blocks read ahead
        under the old identity are let go."""
        if obj != self._obj:
            self.cancel_readahead()
            self.last = None
        self._obj = obj

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self.obj.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        step = self._follow(offset, end)
        sequential = step is True
        if self.whole:
            fetch = self.fetcher.block_count(self.obj)  # small object: one GET for all of it
        elif sequential:
            fetch = self.fetch_blocks
        else:
            fetch = last - first + 1  # random: exactly what was asked for
        # Start the demand fetch before read-ahead, so that it covers its whole run in one GET.
        first_get: float | None = None  # when this read sent the stream's first GET
        if (self.last is None or self.last[0] != first) and (
            started := self.fetcher.start_fetch(self.obj, first, fetch, group=None)
        ):
            self.fetcher.stats.demand_fetches += 1
            if sequential and offset == 0 and started == self.fetch_blocks and not self.whole:
                first_get = trio.current_time()
        if sequential and self.window and not self.whole:
            self._read_ahead(last + 1)
        start = offset - first * bs
        parts = [await self._block(i, fetch - (i - first)) for i in range(first, last + 1)]
        if first_get is not None:  # only the read that sent it times it (its block 0 came)
            self._size_readahead(trio.current_time() - first_get)
        # Keep the block a sequential read ended in, if it ended inside it (see `last`); a
        # read served out of order leaves the stream's as it was.
        if sequential:
            ends_inside = end % bs != 0 and end != self.obj.size
            self.last = (last, parts[-1]) if ends_inside else None
        elif step is False:
            self.last = None
        if first == last:
            block = parts[0]
            if start == 0 and end - offset == len(block):
                return block
            return memoryview(block)[start : end - first * bs]
        return memoryview(b"".join(parts))[start : start + end - offset]

    def _follow(self, offset: int, end: int) -> bool | None:
        """What the read `[offset, end)` does to the stream: True = extends it (sequential:
        the window grows), None = one of the stream's own requests served out of order
        (nothing changes), False = a seek (read-ahead cancelled, the window back to none).

        The kernel sends a sequential reader's read-ahead as several requests at once when
        `read_ahead_kb` exceeds the request size, and they are served in any order: a read
        within the window of the front is one of those, not a seek. Only reads that extend
        the front grow the window, so a reader that jumps around after one sequential read
        (a header, then records) never gets more read-ahead than that first window.
        """
        bs = self.block_size
        front = self.next_offset
        if offset == front or (front > 0 and abs(offset - front) < bs):
            self.window = min(max(self.window * 2, self.fetch_blocks), self.max_window)
            self.next_offset = max(front, end)
            self.out_of_order = 0
            for start in sorted(self.reordered):  # reads served ahead that the front reached
                if start > self.next_offset:
                    break
                self.next_offset = max(self.next_offset, self.reordered.pop(start))
            return True
        reach = self.window * bs
        if front - reach < offset < front + reach and self.out_of_order < REORDER_LIMIT:
            self.out_of_order += 1
            if offset > front:
                self.reordered[offset] = max(end, self.reordered.get(offset, end))
            return None
        self.cancel_readahead()
        self.window = 0
        self.ahead_until = 0
        self.next_offset = end
        self.reordered.clear()
        self.out_of_order = 0
        return False

    async def _block(self, index: int, fetch_blocks: int) -> bytes:
        if self.last is not None and self.last[0] == index:
            return self.last[1]
        return await self.fetcher.get_block(
            self.obj, index, fetch_blocks=fetch_blocks, group=self.readahead
        )

    def _size_readahead(self, elapsed: float) -> None:
        """After the stream's first GET (`fetch_blocks`, sent when the file's first block was
        read): its rate, time to first byte included, says what one connection gives. From
        S3 that is ~60-90 MB/s, and read-ahead keeps `fetch_size` GETs so that its window is
        many connections; far faster means a link where the CPU, not the connection, is the
        limit, and read-ahead sends fewer, larger GETs (`fast_fetch_size`). Decided once per
        stream, while few GETs share the link."""
        rate = self.fetch_blocks * self.block_size / max(elapsed, 1e-6)
        if rate >= self._fast_rate:
            self.readahead_blocks = self._fast_blocks
            self.fetcher.stats.fast_link_streams += 1

    def _read_ahead(self, start: int) -> None:
        """Keep `window` blocks after `start` fetched, loaded or in flight, in fetch-sized
        runs: missing blocks by GET, cached ones from the cache files."""
        fetcher = self.fetcher
        total = fetcher.block_count(self.obj)
        target = min(start + self.window, total)
        i = max(start, self.ahead_until)
        # Only whole fetches (or the object's tail): topping the window up by the one block
        # each read consumes would turn read-ahead into 1 MiB GETs.
        run = self.readahead_blocks
        while i < target and (target - i >= run or target == total):
            count = min(run, target - i)
            covered = fetcher.start_fetch(self.obj, i, count, group=self.readahead) or (
                fetcher.start_load(self.obj, i, count, group=self.readahead)
            )
            if covered == 0:
                bkey = self.obj.block(i)
                if bkey not in fetcher.inflight and bkey not in self.readahead.ready:
                    break  # out of budget: try again on the next read
                covered = 1
            i += covered
        self.ahead_until = i

    def cancel_readahead(self) -> None:
        self.readahead.cancel()

    def close(self) -> None:
        self.cancel_readahead()
        self.last = None
