"""Uploading a staging file: one PUT under the multipart threshold, else a multipart upload
whose parts are read from the staging file and sent in parallel.

Part bodies are read inside the worker thread that sends them, so memory holds at most
`parallel_parts` parts, whatever the file's size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import trio

from wsfuse.aio import AsyncBackend
from wsfuse.backends.base import ObjectInfo, PartInfo, part_size_for
from wsfuse.errors import BackendError

log = logging.getLogger(__name__)

# Below this, one PUT: a multipart upload costs three extra round trips.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
# Parts in flight per upload: 8 x 8 MiB saturates a ~1 GB/s link at 20 ms TTFB.
PARALLEL_PARTS = 8


async def upload_file(
    backend: AsyncBackend,
    key: str,
    fd: int,
    size: int,
    metadata: Mapping[str, str],
    *,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    parallel_parts: int = PARALLEL_PARTS,
    on_upload_id: object = None,
    if_match: str | None = None,
    if_none_match: bool = False,
    on_body: Callable[[bytes], None] | None = None,
) -> ObjectInfo:
    """Upload `size` bytes of `fd` to `key`; returns the new object's info or raises.

    `if_match` / `if_none_match`: only over that version / only if there is none, checked by
    the store when the object appears (the PUT, or the multipart completion); otherwise
    `PreconditionFailed` (or `NotFound`) and nothing changed. `on_body`: given the bytes of a
    single PUT once the store has them (a caller that keeps small files need not read them
    back); not called for a multipart upload."""
    meta = dict(metadata)
    if size < multipart_threshold:

        def put() -> ObjectInfo:
            data = os.pread(fd, size, 0)
            if len(data) != size:
                raise BackendError(f"staging file of {key!r} is shorter than {size} bytes", key=key)
            info = backend.backend.put(
                key, data, metadata=meta, if_match=if_match, if_none_match=if_none_match
            )
            if on_body is not None:
                on_body(data)
            return info

        return await backend.run_sync(put)
    part_size = part_size_for(size)
    upload_id = await backend.run_sync(lambda: backend.backend.create_multipart(key, metadata=meta))
    if callable(on_upload_id):
        on_upload_id(upload_id)
    count = -(-size // part_size)
    parts: list[PartInfo | None] = [None] * count
    limiter = trio.CapacityLimiter(parallel_parts)
    failures: list[Exception] = []

    async def send(number: int, nursery: trio.Nursery) -> None:
        offset = (number - 1) * part_size
        length = min(part_size, size - offset)

        def part() -> PartInfo:
            data = os.pread(fd, length, offset)
            return backend.backend.upload_part(key, upload_id, number, data)

        try:
            async with limiter:
                parts[number - 1] = await backend.run_sync(part)
        except Exception as exc:  # the first failure stops the others; it is what we raise
            failures.append(exc)
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            for number in range(1, count + 1):
                nursery.start_soon(send, number, nursery)
        if failures:
            raise failures[0]
        done = [p for p in parts if p is not None]
        return await backend.run_sync(
            lambda: backend.backend.complete_multipart(
                key, upload_id, done, if_match=if_match, if_none_match=if_none_match
            )
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await backend.run_sync(lambda: backend.backend.abort_multipart(key, upload_id))
            except Exception as exc:  # the upload stays recorded: recovery aborts it
                log.warning("could not abort multipart upload %s of %r: %s", upload_id, key, exc)
        raise
