"""The async face of a backend: every call runs in a worker thread behind a named limiter.

The trio thread never blocks on the network. Reads may be abandoned on cancellation (they are
idempotent and the client's read timeout bounds how long the thread lingers); writes are not
(a cancelled PUT must not leave us unsure whether it happened while we pretend it did not).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import trio

from wsfuse.backends.base import Backend, ListPage, ObjectInfo, OnBlock

T = TypeVar("T")


class AsyncBackend:
    def __init__(self, backend: Backend, *, concurrency: int) -> None:
        self.backend = backend
        # Sized to the HTTP connection pool: more threads would only queue inside urllib3.
        self.limiter = trio.CapacityLimiter(concurrency)
        self.limiter_name = "backend"
        self.requests = 0
        self.bytes_received = 0

    async def _run(self, fn: Callable[[], T], *, abandon: bool) -> T:
        self.requests += 1
        return await trio.to_thread.run_sync(fn, limiter=self.limiter, abandon_on_cancel=abandon)

    async def head(self, key: str) -> ObjectInfo:
        return await self._run(partial(self.backend.head, key), abandon=True)

    async def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        data = await self._run(
            partial(self.backend.get_range, key, offset, length, if_match=if_match), abandon=True
        )
        self.bytes_received += len(data)
        return data

    async def get_blocks(
        self,
        key: str,
        offset: int,
        length: int,
        block_size: int,
        *,
        if_match: str | None = None,
        on_block: OnBlock | None = None,
    ) -> list[bytes]:
        """A ranged GET already cut into blocks in the worker thread (the trio thread then
        copies nothing); `on_block` runs in that thread too (`Backend.get_blocks`)."""
        blocks = await self._run(
            partial(
                self.backend.get_blocks,
                key,
                offset,
                length,
                block_size,
                if_match=if_match,
                on_block=on_block,
            ),
            abandon=True,
        )
        self.bytes_received += sum(map(len, blocks))
        return blocks

    async def get_blocks_then(
        self,
        key: str,
        offset: int,
        length: int,
        block_size: int,
        then: Callable[[list[bytes]], None],
        *,
        if_match: str | None = None,
        on_block: OnBlock | None = None,
        begin: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        """`get_blocks`, then `then(blocks)` in the same worker thread: one thread hop
        instead of two when the blocks only go to the disk cache. Abandoned on cancellation
        like any read: `then` must be safe to run late (a cache write is). `begin()` runs in
        the worker thread before the request is sent; if it answers False, no request is sent
        and the answer is no blocks (the caller has cancelled)."""

        def fetch_and_then() -> list[bytes]:
            if begin is not None and not begin():
                return []
            blocks = self.backend.get_blocks(
                key, offset, length, block_size, if_match=if_match, on_block=on_block
            )
            then(blocks)
            return blocks

        blocks = await self._run(fetch_and_then, abandon=True)
        self.bytes_received += sum(map(len, blocks))
        return blocks

    async def list(
        self, prefix: str, *, delimiter: str | None = "/", token: str | None = None
    ) -> ListPage:
        return await self._run(
            partial(self.backend.list, prefix, delimiter=delimiter, token=token), abandon=True
        )

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Any other backend call (writes): not abandoned on cancellation."""
        return await self._run(fn, abandon=False)
