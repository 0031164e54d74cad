"""POSIX attributes of a directory's listed entries, learned when it is listed.

S3 lists no user metadata, so modes, owners and mtimes stored by our writes (s3fs conventions)
cost a HEAD per entry. Those HEADs are worth their round trips only where they make `ls -l`,
`cp -a`, `rsync -a` and `tar` right: in directories of at most `heads_max` entries, and only if
a sample shows that the objects carry any (a dataset uploaded by other tools carries none).
GCS listings include metadata, which is taken as it comes.
"""

from __future__ import annotations

import trio

from wsfuse.aio import AsyncBackend
from wsfuse.backends.base import ListPage
from wsfuse.errors import NotFound
from wsfuse.fs import posixmeta
from wsfuse.fs.attrstore import DIR_VERSION, AttrStore
from wsfuse.fs.namespace import Entry, Listing, child_path, dir_prefix
from wsfuse.fs.posixmeta import PosixAttrs

# Keys HEADed first to learn whether a listed directory's objects carry POSIX metadata.
ATTRIBUTE_SAMPLE = 16
# HEADs in flight while learning one directory's attributes.
HEADS_IN_FLIGHT = 16


async def learn_listed_attributes(
    backend: AsyncBackend,
    store: AttrStore,
    path: str,
    pages: list[ListPage],
    listing: Listing,
    *,
    heads_max: int,
) -> None:
    """Record in `store` the attributes of `listing`'s entries not known yet for their
    version: from the listing's own metadata where `pages` carry it, else by HEADs (see the
    module docstring)."""
    learned: list[tuple[str, str, PosixAttrs]] = []
    unknown: list[Entry] = []
    with_meta = {o.key: o for p in pages for o in p.objects if o.metadata is not None}
    for entry in listing.entries:
        child = child_path(path, entry.name)
        version = DIR_VERSION if entry.is_dir else entry.etag
        if store.get(child, version) is not None:
            continue
        info = with_meta.get(dir_prefix(child) if entry.is_dir else child)
        if info is not None:
            learned.append((child, version, posixmeta.decode(info.metadata)))
        else:
            unknown.append(entry)
    if unknown and len(listing.entries) <= heads_max:
        limiter = trio.CapacityLimiter(HEADS_IN_FLIGHT)
        with_posix = 0

        async def head(entry: Entry) -> None:
            nonlocal with_posix
            child = child_path(path, entry.name)
            async with limiter:
                try:
                    info = await backend.head(dir_prefix(child) if entry.is_dir else child)
                except NotFound:
                    return
            if entry.is_dir or info.etag == entry.etag:
                version = DIR_VERSION if entry.is_dir else info.etag
                attrs = posixmeta.decode(info.metadata)
                with_posix += attrs != PosixAttrs()
                learned.append((child, version, attrs))

        async def heads(entries: list[Entry]) -> None:
            async with trio.open_nursery() as nursery:
                for entry in entries:
                    nursery.start_soon(head, entry)

        # A sample first, spread over the directory.
        step = max(1, len(unknown) // ATTRIBUTE_SAMPLE)
        sample = unknown[::step][:ATTRIBUTE_SAMPLE]
        await heads(sample)
        if with_posix:
            sampled = {id(e) for e in sample}
            await heads([e for e in unknown if id(e) not in sampled])
    store.put_many(learned)
