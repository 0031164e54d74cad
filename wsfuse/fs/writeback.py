"""Write-back: the staging file of an inode written through this mount, its upload to the
bucket, and the pending-upload records that let a later daemon finish what a crash left.

The promise: when `close()` (FLUSH) or `fsync()` returns 0, the bytes are in the bucket; when
an upload fails, the caller gets EIO and the staged data is kept and recorded as pending in the
index, so nothing written is lost. RELEASE comes after `close()` has returned (its error is
lost), so it is never where data is made safe; it only finishes what mmap writes left.

The namespace is not kept here: `Filesystem` owns the inodes, handles and listings, and hears
of what this module changes in them through two callbacks (`on_uploaded`, `on_abandoned`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from wsfuse.errors import BucketNotFound, NotFound, PreconditionFailed
from wsfuse.fs import posixmeta
from wsfuse.fs.namespace import Entry
from wsfuse.fs.posixmeta import PosixAttrs
from wsfuse.fs.staging import Staging
from wsfuse.fs.streaming import PartSources, StreamingUpload
from wsfuse.fs.upload import MULTIPART_THRESHOLD, upload_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsfuse.aio import AsyncBackend
    from wsfuse.backends.base import ObjectInfo
    from wsfuse.cache import BlockCache, MetadataIndex
    from wsfuse.config import MountConfig
    from wsfuse.fs.attrstore import AttrStore
    from wsfuse.fs.core import Inode
    from wsfuse.fs.fetcher import BlockFetcher

log = logging.getLogger(__name__)

PENDING_DB = "pending"
#: Files up to this size keep the bytes of their single PUT until release, which copies them
#: into the cache from memory instead of reading the staging file back from disk (64 KiB
#: creates: ~0.15 daemon CPU-ms less per file, and no disk read)...
KEEP_BODY_MAX = 1 << 20
#: ...as long as all kept bytes stay within this: files fsync'ed or flushed and held open
#: keep theirs until their release, next upload or close.
KEPT_BODIES_MAX = 64 << 20


class WriteBack:
    """Staging files, their uploads, and the pending records of the uploads not yet done.

    Every method runs on the trio thread. The state it shares with `Filesystem` (the
    `staged` set, the attribute store) is handed in, not copied: both keep it current."""

    def __init__(
        self,
        backend: AsyncBackend,
        config: MountConfig,
        cache: BlockCache,
        fetcher: BlockFetcher,
        attr_store: AttrStore,
        part_sources: PartSources,
        *,
        index: MetadataIndex | None,
        clock: Callable[[], float],
        staged: set[int],
        on_uploaded: Callable[[Inode, Entry], None],
        on_abandoned: Callable[[Inode], None],
    ) -> None:
        """`on_uploaded(node, entry)`: an upload made `entry` the file's listing entry.
        `on_abandoned(node)`: a file created here lost its only data to a failed write; it was
        never in the bucket, so it leaves the namespace."""
        self.backend = backend
        self.config = config
        self.cache = cache
        self.fetcher = fetcher
        self.attr_store = attr_store
        self.part_sources = part_sources
        self.index = index
        self.clock = clock
        # INVARIANT: see Filesystem.staged (the same set).
        self.staged = staged
        # Bytes of single PUTs kept for the cache copy at release (`KEPT_BODIES_MAX`).
        self.kept_body_bytes = 0
        self._on_uploaded = on_uploaded
        self._on_abandoned = on_abandoned

    # ------------------------------------------------------------------ staging

    async def start_writing(self, node: Inode, *, truncate: bool) -> None:
        """Give `node` a staging file holding its current content (or none, if truncating)."""
        if self.config.read_only:
            from wsfuse.fs.core import FsError  # noqa: PLC0415 - core imports this module

            raise FsError(errno.EROFS)
        if node.staging is None:
            staging = Staging(self.config.cache_dir / "staging")
            staging.on_body_bytes = self._body_bytes
            try:
                if not truncate and node.size:
                    await self._fill_staging(node, staging)
            except BaseException:
                staging.close(remove=True)
                raise
            node.staging = staging
            self.staged.add(node.ino)
        if truncate and node.staging.size:
            node.staging.truncate(0)
        if truncate:
            node.staging.touch()  # O_TRUNC changes the file even when it was empty
            node.size = 0
        self.record_pending(node, "open")

    async def _fill_staging(self, node: Inode, staging: Staging) -> None:
        """Copy the object's bytes into `staging`, block by block through the cache."""
        obj = node.pinned()
        bs = self.config.block_size
        fetch = max(1, self.config.fetch_size // bs)
        for index in range(self.fetcher.block_count(obj)):
            data = await self.fetcher.get_block(obj, index, fetch_blocks=fetch)
            os.pwrite(staging.fd, data, index * bs)
        staging.size = node.size
        os.ftruncate(staging.fd, node.size)

    def write(self, node: Inode, offset: int, data: bytes) -> int:
        """Stage `data` at `offset` of `node` (opened for writing); a sequential writer past the
        multipart threshold also starts streaming its full parts to the bucket."""
        assert node.staging is not None
        staging = node.staging
        before = staging.size
        if node.stream is not None:
            node.stream.overwrote(offset)
        n = staging.pwrite(data, offset)
        node.size = staging.size
        if node.stream is None and offset == before and staging.size >= MULTIPART_THRESHOLD:
            node.stream = stream = self._start_stream(node)
            if stream is not None:
                stream.feed(staging.size)  # the full parts staged so far: read back
                tail = stream.sent_until  # this write's bytes past them start the next part
                if offset <= tail < offset + n:
                    stream.absorb(data[tail - offset : n], tail)
        elif node.stream is not None:
            node.stream.absorb(data if n == len(data) else data[:n], offset)
            node.stream.feed(staging.size)
        node.mtime = self.clock()
        if node.attrs.mtime is not None:  # an mtime set by utimens no longer holds
            node.attrs = PosixAttrs(node.attrs.mode, node.attrs.uid, node.attrs.gid, None)
        return n

    def _upload_attrs(self, node: Inode) -> PosixAttrs:
        a = node.attrs
        return PosixAttrs(
            a.mode if a.mode is not None else stat.S_IFREG | self.config.file_mode,
            a.uid if a.uid is not None else self.config.uid,
            a.gid if a.gid is not None else self.config.gid,
            # Only an mtime set explicitly (utimens: tar, rsync, cp -p) is stored; otherwise the
            # object's Last-Modified, the time the upload completed, is the truth.
            a.mtime,
        )

    def _start_stream(self, node: Inode) -> StreamingUpload | None:
        """A sequential writer passed the multipart threshold: start sending its parts now."""
        if node.unlinked or node.staging is None:
            return None
        return StreamingUpload(
            self.backend,
            node.path,
            node.staging.read_uncached,
            posixmeta.encode(self._upload_attrs(node)),
            self.fetcher.nursery,
            on_upload_id=lambda uid: self.record_pending(node, "uploading", upload_id=uid),
            sources=self.part_sources,
        )

    async def drop_stream(self, node: Inode) -> None:
        """Abort the multipart upload `node` was streaming, if any."""
        stream, node.stream = node.stream, None
        if stream is not None:
            await stream.abort()

    async def upload(self, node: Inode) -> None:
        """Make the bucket hold the staged bytes; raise (and keep them pending) if it cannot."""
        staging = node.staging
        if staging is None or not staging.dirty or node.unlinked:
            return
        if staging.write_error is not None:
            self.record_pending(node, "incomplete")
            await self.drop_stream(node)
            raise OSError(staging.write_error, f"a write to {node.path!r} failed; not uploaded")
        version = staging.version
        log.debug("uploading %r: %d bytes, version %d", node.path, staging.size, version)
        attrs = self._upload_attrs(node)
        info: ObjectInfo | None = None
        stream, node.stream = node.stream, None
        if stream is not None:
            # (a file renamed while it streamed: its parts went to the old key)
            if (
                stream.broken
                or stream.key != node.path
                or stream.metadata != posixmeta.encode(attrs)
            ):
                await stream.abort()
            else:
                try:
                    info = await stream.finish(staging.size)
                except Exception as exc:
                    log.info(
                        "streamed upload of %r failed (%s); uploading it whole", node.path, exc
                    )
                    await stream.abort()
        body: list[bytes] = []
        keep_body = (
            staging.size <= min(KEEP_BODY_MAX, self.config.cache_written_max)
            and self.kept_body_bytes + staging.size <= KEPT_BODIES_MAX
        )
        try:
            if info is None:
                info = await upload_file(
                    self.backend,
                    node.path,
                    staging.fd,
                    staging.size,
                    posixmeta.encode(attrs),
                    on_upload_id=lambda uid: self.record_pending(node, "uploading", upload_id=uid),
                    on_body=body.append if keep_body else None,
                )
        except Exception:
            staging.failed_version = version
            self.record_pending(node, "failed", closed=True)
            raise
        if node.staging is staging:
            staging.uploaded_version = version
            staging.keep_body(body[0] if body else None, version)
            if staging.version == version:  # no write arrived while uploading
                self.forget_pending(node)
        node.etag, node.cache_etag, node.attrs = info.etag, None, attrs
        node.mtime = attrs.mtime if attrs.mtime is not None else info.mtime
        node.validated_at = self.clock()
        self.attr_store.put(node.path, info.etag, attrs)
        self._on_uploaded(
            node,
            Entry(
                node.path.rpartition("/")[2],
                False,
                staging.size,
                info.etag,
                attrs.mtime or info.mtime,
            ),
        )

    async def finish_staging(self, node: Inode) -> None:
        """The last handle is closed: a clean staging file becomes cache blocks of the uploaded
        version (no re-download to read it back) if it is at most `cache_written_max` long,
        and goes away; a dirty one stays pending."""
        staging = node.staging
        if node.unlinked:
            await self.drop_stream(node)
        if staging is not None and staging.write_error is not None:
            # The writer was told its write failed (a full disk): the partial bytes are not a
            # file anybody meant; free the disk instead of keeping them.
            log.warning(
                "discarding the partial write of %r: %s",
                node.path,
                os.strerror(staging.write_error),
            )
            await self.drop_stream(node)
            node.staging = None
            self.staged.discard(node.ino)
            staging.close(remove=True)
            self.forget_pending(node)
            if node.etag:
                node.validated_at = 0.0  # back to the bucket's version, whatever its size
            else:  # created here, never uploaded: never in the bucket
                self._on_abandoned(node)
            return
        if staging is None or (staging.dirty and not node.unlinked):
            return
        node.staging = None
        self.staged.discard(node.ino)
        keep = not node.unlinked and node.etag and staging.size <= self.config.cache_written_max
        obj = node.pinned() if keep else None
        bs = self.config.block_size
        # The uploaded bytes, if kept and still the staged version's.
        body = staging.uploaded_body if staging.body_version == staging.version else None
        staging.drop_body()  # here, on the trio thread, which owns the budget

        def to_cache_and_remove() -> None:
            # In a worker thread, the unlink too: a file's blocks are freed there, and on the
            # trio thread it held up the next file's create (~0.25 ms per small file).
            try:
                if obj is not None:
                    for index in range(self.fetcher.block_count(obj)):
                        if body is not None:
                            data = body[index * bs : (index + 1) * bs]
                        else:
                            data = staging.read_uncached(bs, index * bs)
                        self.cache.put(obj.block(index), data, direct=True)
            except OSError as exc:  # the bucket has the file: only the cache copy is lost
                log.warning("could not keep %r in the cache after its upload: %s", node.path, exc)
            finally:
                staging.close(remove=True)

        # Shielded: once the file is off `node`, nothing else would remove it (bounded work).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(to_cache_and_remove)
        # An open for writing meanwhile has recorded its own staging file under this path,
        # and an unlinked file's record went with the unlink (the path may be another's now).
        if node.staging is None and not node.unlinked:
            self.forget_pending(node)

    def _body_bytes(self, delta: int) -> None:
        self.kept_body_bytes += delta

    # ------------------------------------------------------------------ pending records

    def record_pending(self, node: Inode, state: str, **extra: object) -> None:
        """Persist that `node`'s staged data is not (all) in the bucket: `recover_pending` of a
        later daemon finds it there."""
        if self.index is None or node.staging is None:
            return
        record: dict[str, object] = {
            "key": node.path,
            "staging": str(node.staging.path),
            "state": state,
            "base_etag": node.etag or None if state == "open" else None,
            "size": node.staging.size,
            "time": self.clock(),
            "meta": posixmeta.encode(node.attrs),
            **extra,
        }
        old = self.index.get(PENDING_DB, _pending_key(node.path))
        if old is not None:
            prev = json.loads(old)
            record["base_etag"] = prev.get("base_etag")
            if "upload_id" not in record and prev.get("upload_id"):
                record["upload_id"] = prev["upload_id"]
        try:
            self.index.put_many(
                PENDING_DB, [(_pending_key(node.path), json.dumps(record).encode())]
            )
        except Exception as exc:  # a full disk: the staged file itself still holds the data
            log.error("could not record pending upload of %r: %s", node.path, exc)  # noqa: TRY400

    def forget_pending(self, node: Inode) -> None:
        """`node`'s staged data is in the bucket, or nobody wants it any more."""
        if self.index is not None:
            self.index.delete_many(PENDING_DB, [_pending_key(node.path)])

    def pending_uploads(self) -> list[dict[str, object]]:
        if self.index is None:
            return []
        return [json.loads(v) for _, v in self.index.items(PENDING_DB)]

    async def recover_pending(self) -> list[str]:
        """Finish what a previous daemon left (run before mounting): abort its multipart
        uploads; upload staged data whose close() failed, but only over the version it was
        opened from (else keep it as a conflict copy beside it); keep listing data of files
        that were never closed (a crash mid-write), uploading nothing of them."""
        if self.index is None:
            return []
        report: list[str] = []
        raw = self.backend.backend
        for rkey, value in self.index.items(PENDING_DB):
            rec = json.loads(value)
            key, staging_path = str(rec["key"]), Path(str(rec["staging"]))
            upload_id = rec.pop("upload_id", None)
            if upload_id:
                try:
                    await self.backend.run_sync(partial(raw.abort_multipart, key, str(upload_id)))
                except Exception as exc:
                    log.warning(
                        "could not abort multipart upload %s of %r: %s", upload_id, key, exc
                    )
                self.index.put_many(PENDING_DB, [(rkey, json.dumps(rec).encode())])
            if not os.path.exists(staging_path):
                report.append(f"{key}: staged data is gone ({staging_path}); record dropped")
                self.index.delete_many(PENDING_DB, [rkey])
                continue
            if rec["state"] in ("open", "uploading") and rec.get("closed") is not True:
                report.append(
                    f"{key}: was never closed (the daemon stopped mid-write); its staged data is "
                    f"kept at {staging_path}, not uploaded"
                )
                continue
            report.append(await self._recover_one(rkey, rec, key, staging_path))
        for line in report:
            log.warning("recovery: %s", line)
        return report

    async def _recover_one(
        self, rkey: bytes, rec: dict[str, object], key: str, staging_path: Path
    ) -> str:
        base = rec.get("base_etag") or None
        try:
            current: str | None = (await self.backend.head(key)).etag
        except NotFound:
            current = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        conflict = f"{key}.wsfuse-conflict-{stamp}"
        target = key if current == base else conflict
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        fd = os.open(staging_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if target == key:
                # The HEAD above is only a shortcut: the store checks the version again as the
                # object appears, so a write landing in between is never overwritten.
                try:
                    await upload_file(
                        self.backend,
                        key,
                        fd,
                        size,
                        meta,  # type: ignore[arg-type]
                        if_match=base if isinstance(base, str) else None,
                        if_none_match=base is None,
                    )
                except (PreconditionFailed, NotFound) as exc:
                    if isinstance(exc, BucketNotFound):
                        raise
                    target = conflict
            if target != key:
                await upload_file(self.backend, target, fd, size, meta)  # type: ignore[arg-type]
        except Exception as exc:
            return f"{key}: upload failed again ({exc}); staged data kept at {staging_path}"
        finally:
            os.close(fd)
        os.unlink(staging_path)
        if self.index is not None:
            self.index.delete_many(PENDING_DB, [rkey])
        if target != key:
            return f"{key}: changed in the bucket since it was opened; saved as {target}"
        return f"{key}: uploaded ({size} bytes)"


def _pending_key(path: str) -> bytes:
    """LMDB keys are at most 511 bytes; S3 keys up to 1024."""
    raw = path.encode("utf-8", "surrogateescape")
    return raw if len(raw) <= 480 else raw[:400] + hashlib.sha256(raw).hexdigest().encode()
