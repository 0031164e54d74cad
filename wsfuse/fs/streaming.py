"""Streaming uploads: a sequential writer's full parts start uploading while it still writes,
so closing a large checkpoint waits only for the tail.

A `StreamingUpload` follows one staging file. `feed(size)` (from `write`, sync) starts a part
task for every full part now staged; `finish(size)` (from `flush`) uploads the rest and
completes; any write into a range already sent makes the stream `broken`, and the caller then
aborts it and uploads the whole file the ordinary way.

Part sizes grow (8 MiB for the first 1,000 parts, then 16 MiB, ...): S3 allows parts of
different sizes, and the final size is unknown while streaming, yet 10,000 parts must cover it.

A part's bytes come from the writer's own write buffers when it wrote them in one contiguous
run (`absorb`): reading a part back from the staging file made the writer's next staging
write queue behind an 8 MiB read on the same disk (every 8th 1 MiB write took 13-17 ms
instead of ~2). At most `MEMORY_PARTS` such bodies are held at once; beyond that, or after
any write out of sequence, a part is read back from the staging file as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from wsfuse.aio import AsyncBackend
from wsfuse.backends.base import DEFAULT_PART_SIZE, MAX_PARTS, ObjectInfo, PartInfo
from wsfuse.errors import BackendError

log = logging.getLogger(__name__)

PARALLEL_PARTS = 8
MEMORY_PARTS = 4  # part bodies held from write buffers at once (memory bound: 4 x part size)


@dataclass
class PartSources:
    """Where streamed parts' bodies came from, over a mount's life (`wsfuse status`): a part
    read back from the staging file costs a disk read that the writer's buffers would have
    saved (a slow store holds more parts in flight than `MEMORY_PARTS`)."""

    from_memory: int = 0
    read_back: int = 0


def streaming_part_size(number: int) -> int:
    """Size of part `number` (1-based): 8 MiB x (1 + (number - 1) // 1000)."""
    return DEFAULT_PART_SIZE * (1 + (number - 1) // 1000)


class StreamingUpload:
    """Owned by the trio thread; part bodies are read from the staging file in worker threads
    (`read(length, offset)`, thread-safe)."""

    def __init__(
        self,
        backend: AsyncBackend,
        key: str,
        read: Callable[[int, int], bytes],
        metadata: Mapping[str, str],
        nursery: trio.Nursery,
        *,
        on_upload_id: Callable[[str], None] | None = None,
        sources: PartSources | None = None,
    ) -> None:
        self.backend = backend
        self.sources = sources if sources is not None else PartSources()
        self.key = key
        self.read = read
        self.metadata = dict(metadata)
        self.nursery = nursery
        self.on_upload_id = on_upload_id
        self.upload_id: str | None = None
        self._created = trio.Event()
        self._creating = False
        self.parts: dict[int, PartInfo] = {}
        self.sent_until = 0  # bytes covered by started parts
        self.next_number = 1
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.error: Exception | None = None
        self.broken = False
        self._limiter = trio.CapacityLimiter(PARALLEL_PARTS)
        # The writer's buffers since `sent_until`, while they are one contiguous run.
        self._chunks: list[bytes] = []
        self._chunked = 0  # their total length
        self.bodies_in_memory = 0  # parts in flight whose body came from write buffers
        self.parts_from_memory = 0  # counters, for tests and `wsfuse status`
        self.parts_read_back = 0

    def absorb(self, data: bytes, offset: int) -> None:
        """`data` was just staged at `offset`: keep it while it extends the bytes written
        contiguously from `sent_until` (the next part's start); anything else drops them."""
        if offset == self.sent_until + self._chunked and not self.broken and self.error is None:
            self._chunks.append(data)
            self._chunked += len(data)
        else:
            self._chunks, self._chunked = [], 0

    def feed(self, size: int) -> None:
        """Start uploading every full part that `size` staged bytes now contain."""
        if self.broken or self.error is not None:
            self._chunks, self._chunked = [], 0  # nothing more will be sent from memory
            return
        while size - self.sent_until >= streaming_part_size(self.next_number):
            if self.next_number > MAX_PARTS - 1:
                self.broken = True  # leave room for the tail; fall back to a full upload
                return
            self._start_part(
                self.next_number, self.sent_until, streaming_part_size(self.next_number)
            )

    def overwrote(self, offset: int) -> None:
        """A write at `offset`: if that range was already sent, the stream is no longer valid."""
        if offset < self.sent_until:
            self.broken = True

    def _start_part(self, number: int, offset: int, length: int) -> None:
        body = self._take_body(length)
        self.next_number = number + 1
        self.sent_until = offset + length
        self.in_flight += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._send, number, offset, length, body)

    def _take_body(self, length: int) -> list[bytes] | None:
        """The next part's `length` bytes from the write buffers (as the buffers: the worker
        thread joins them, not the trio thread), if they hold all of them and the memory bound
        allows; the rest stays for the part after. Only a buffer that straddles the part's end
        is cut (copied)."""
        chunks, total = self._chunks, self._chunked
        self._chunks, self._chunked = [], 0
        if total < length or self.bodies_in_memory >= MEMORY_PARTS:
            return None
        taken: list[bytes] = []
        size = 0
        for i, chunk in enumerate(chunks):
            if size + len(chunk) <= length:
                taken.append(chunk)
                size += len(chunk)
                continue
            cut = length - size
            if cut:
                taken.append(chunk[:cut])
            rest = [chunk[cut:], *chunks[i + 1 :]]
            self._chunks, self._chunked = rest, total - length
            break
        self.bodies_in_memory += 1
        return taken

    async def _ensure_created(self) -> str:
        if self.upload_id is None and not self._creating:
            self._creating = True
            raw = self.backend.backend
            try:
                self.upload_id = await self.backend.run_sync(
                    lambda: raw.create_multipart(self.key, metadata=self.metadata)
                )
                if self.on_upload_id is not None:
                    self.on_upload_id(self.upload_id)
            finally:
                self._created.set()
        await self._created.wait()
        if self.upload_id is None:
            raise BackendError(f"could not start a multipart upload of {self.key!r}", key=self.key)
        return self.upload_id

    async def _send(self, number: int, offset: int, length: int, body: list[bytes] | None) -> None:
        try:
            upload_id = await self._ensure_created()
            raw = self.backend.backend

            def part() -> PartInfo:
                if body is not None:
                    data = b"".join(body)  # one buffer is returned as it is: no copy
                    body.clear()  # the buffers are not held twice while the part uploads
                else:
                    data = self.read(length, offset)
                if len(data) != length:
                    raise BackendError(f"staging file of {self.key!r} shrank", key=self.key)
                return raw.upload_part(self.key, upload_id, number, data)

            async with self._limiter:
                self.parts[number] = await self.backend.run_sync(part)
            if body is not None:
                self.parts_from_memory += 1
                self.sources.from_memory += 1
            else:
                self.parts_read_back += 1
                self.sources.read_back += 1
        except Exception as exc:
            if self.error is None:
                self.error = exc
        finally:
            if body is not None:
                self.bodies_in_memory -= 1
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def finish(self, size: int) -> ObjectInfo:
        """Upload what is left after the streamed parts and complete; raises on any failure
        (the caller aborts)."""
        if size < self.sent_until:
            self.broken = True
        while size - self.sent_until > 0 and not self.broken:
            number = self.next_number
            length = min(streaming_part_size(number), size - self.sent_until)
            self._start_part(number, self.sent_until, length)
        await self._idle.wait()
        if self.error is not None:
            raise self.error
        if self.broken:
            raise BackendError(f"streaming upload of {self.key!r} was invalidated", key=self.key)
        upload_id = await self._ensure_created()
        parts = [self.parts[n] for n in sorted(self.parts)]
        raw = self.backend.backend
        return await self.backend.run_sync(
            lambda: raw.complete_multipart(self.key, upload_id, parts)
        )

    async def abort(self) -> None:
        self.broken = True
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            if self.upload_id is not None:
                raw, upload_id = self.backend.backend, self.upload_id
                try:
                    await self.backend.run_sync(lambda: raw.abort_multipart(self.key, upload_id))
                except Exception as exc:  # recorded in the pending record: recovery aborts it
                    log.warning("could not abort upload %s of %r: %s", upload_id, self.key, exc)
