"""The write path driven directly (memory backend): write-through, failure handling, the
namespace operations, and recovery of pending uploads."""

from __future__ import annotations

import errno
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.core.test_filesystem import Harness, make_config
from wsfuse.backends.base import ObjectInfo
from wsfuse.backends.faults import FaultInjectingBackend
from wsfuse.backends.memory import MemoryBackend
from wsfuse.cache import BlockCache
from wsfuse.errors import BackendError, NotFound, Transient
from wsfuse.fs import posixmeta, writeback
from wsfuse.fs.attrstore import DIR_VERSION
from wsfuse.fs.core import ROOT_INO, Filesystem, FsError
from wsfuse.fs.namespace import Entry
from wsfuse.fs.staging import Staging
from wsfuse.fs.streaming import MEMORY_PARTS
from wsfuse.fs.writeback import KEEP_BODY_MAX
from wsfuse.testing.ramp import ramp

MiB = 1 << 20


class WHarness(Harness):
    async def create(self, path: str, data: bytes = b"", mode: int = 0o644) -> tuple[int, int]:
        parent, _, name = path.rpartition("/")
        fh, node = await self.fs.create(await self.path_ino(parent), name, mode, 1000, 1000)
        if data:
            await self.fs.write(fh, 0, data)
        return fh, node.ino

    async def write_file(self, path: str, data: bytes) -> None:
        fh, _ = await self.create(path, data)
        await self.fs.flush(fh)
        await self.fs.release(fh)


@asynccontextmanager
async def _harness(
    tmp_path: Path, backend: MemoryBackend, **config_kw: object
) -> AsyncIterator[WHarness]:
    faulty = FaultInjectingBackend(backend)
    config = make_config(tmp_path, **config_kw)
    cache = BlockCache(config.cache_dir, block_size=config.block_size, capacity=1 << 30, min_free=0)
    try:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(faulty, config, cache, nursery, index=cache.index)
            yield WHarness(fs, backend, faulty)
            nursery.cancel_scope.cancel()
    finally:
        cache.close()


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[WHarness]:
    async with _harness(tmp_path, MemoryBackend()) as h:
        yield h


async def test_close_puts_the_object_with_posix_metadata(w: WHarness) -> None:
    await w.write_file("f.txt", b"hello")
    info = w.backend.head("f.txt")
    assert w.backend.get_range("f.txt", 0, 100) == b"hello"
    attrs = posixmeta.decode(info.metadata)
    assert attrs.mode == stat.S_IFREG | 0o644
    assert (attrs.uid, attrs.gid) == (1000, 1000)
    assert attrs.mtime is None  # not set explicitly: Last-Modified is the mtime
    node = await w.fs.setattr(await w.path_ino("f.txt"), mtime=1_600_000_000.5)
    assert posixmeta.decode(w.backend.head("f.txt").metadata).mtime == 1_600_000_000.5
    assert node.mtime == 1_600_000_000.5


async def test_flush_uploads_only_when_changed(w: WHarness) -> None:
    fh, _ = await w.create("g", b"abc")
    await w.fs.flush(fh)
    await w.fs.flush(fh)  # a dup'ed descriptor closing: nothing changed since
    assert w.backend.counts["put"] == 1
    await w.fs.write(fh, 3, b"d")
    await w.fs.fsync(fh)
    assert w.backend.counts["put"] == 2
    await w.fs.release(fh)
    assert w.backend.get_range("g", 0, 10) == b"abcd"


async def test_large_files_use_parallel_multipart(w: WHarness) -> None:
    size = 40 * MiB + 3
    fh, _ = await w.create("big")
    for off in range(0, size, 4 * MiB):
        await w.fs.write(fh, off, ramp("big", off, min(4 * MiB, size - off)))
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert w.backend.counts["upload_part"] == 6  # 8 MiB parts, the last of 3 bytes
    assert w.backend.get_range("big", 0, size) == ramp("big", 0, size)
    # read back from the cache: the staged bytes became blocks of the new version
    before = w.backend.counts["get_range"]
    assert await w.read_all("big") == ramp("big", 0, size)
    assert w.backend.counts["get_range"] == before


async def test_failed_upload_is_an_error_keeps_data_and_is_pending(w: WHarness) -> None:
    fh, _ = await w.create("doomed", b"precious")
    w.faulty.fail("put", Transient("503"), times=100)
    with pytest.raises(BackendError):
        await w.fs.flush(fh)
    pending = w.fs.writeback.pending_uploads()
    assert [p["key"] for p in pending] == ["doomed"]
    assert pending[0]["state"] == "failed"
    assert Path(str(pending[0]["staging"])).read_bytes() == b"precious"
    # readers on this node still see the written data
    assert bytes(await w.fs.read(fh, 0, 100)) == b"precious"
    await w.fs.release(fh)
    assert Path(str(pending[0]["staging"])).exists()


async def test_recovery_uploads_over_the_opened_version_or_keeps_a_conflict_copy(
    tmp_path: Path,
) -> None:
    backend = MemoryBackend()
    backend.put("same", b"v1")
    backend.put("changed", b"v1")
    async with _harness(tmp_path, backend) as h:
        for key in ("same", "changed"):
            fh, _ = await h.fs.open(await h.path_ino(key), write=True, truncate=True)
            await h.fs.write(fh, 0, b"mine")
            h.faulty.fail("put", Transient("503"), times=100, key=key)
            with pytest.raises(BackendError):
                await h.fs.flush(fh)
            await h.fs.release(fh)
        fh, _ = await h.create("unclosed", b"partial")  # never closed: the daemon "dies"
    backend.put("changed", b"someone else's")
    async with _harness(tmp_path, backend) as h:
        report = await h.fs.writeback.recover_pending()
        assert backend.get_range("same", 0, 10) == b"mine"
        assert backend.get_range("changed", 0, 100) == b"someone else's"
        conflicts = [k for k in backend.key_list() if k.startswith("changed.wsfuse-conflict-")]
        assert len(conflicts) == 1
        assert backend.get_range(conflicts[0], 0, 10) == b"mine"
        assert "unclosed" not in backend.key_list()
        assert [p["key"] for p in h.fs.writeback.pending_uploads()] == ["unclosed"]
        assert any("never closed" in line for line in report)


@pytest.mark.parametrize("existed", [True, False], ids=["over-a-version", "new-file"])
@pytest.mark.parametrize("size", [8, 17 * MiB], ids=["put", "multipart"])
async def test_recovery_never_overwrites_a_write_landing_after_its_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existed: bool, size: int
) -> None:
    """Recovery HEADs the key, then uploads: another client's write in between must survive
    (the upload is conditional on the version it was opened from, up to the multipart
    completion), and the recovered data goes beside it as a conflict copy."""
    backend = MemoryBackend()
    if existed:
        backend.put("f", b"v1")
    data = ramp("f", 0, size)
    async with _harness(tmp_path, backend) as h:
        if existed:
            fh, _ = await h.fs.open(await h.path_ino("f"), write=True, truncate=True)
            await h.fs.write(fh, 0, data)
        else:
            fh, _ = await h.create("f", data)
        for op in ("put", "complete_multipart"):
            h.faulty.fail(op, Transient("503"), times=100, key="f")
        with pytest.raises(BackendError):
            await h.fs.flush(fh)
        await h.fs.release(fh)
    real_head = backend.head

    def racing_head(key: str) -> ObjectInfo:
        try:
            return real_head(key)  # what recovery checks: the version it opened, or none
        finally:
            if key == "f":
                backend.put("f", b"someone else's")  # lands between the check and the upload

    monkeypatch.setattr(backend, "head", racing_head)
    async with _harness(tmp_path, backend) as h:
        report = await h.fs.writeback.recover_pending()
        assert h.fs.writeback.pending_uploads() == []
    assert backend.get_range("f", 0, 100) == b"someone else's"
    conflicts = [k for k in backend.key_list() if k.startswith("f.wsfuse-conflict-")]
    assert len(conflicts) == 1
    assert backend.get_range(conflicts[0], 0, size) == data
    assert any("saved as" in line for line in report), report


async def test_unlinked_open_file_stays_readable_and_writable(w: WHarness) -> None:
    w.backend.put("u", ramp("u", 0, 3 * MiB))
    ino = await w.path_ino("u")
    fh, _ = await w.fs.open(ino, write=False)
    await w.fs.unlink(ROOT_INO, "u")
    assert "u" not in w.backend.key_list()
    assert bytes(await w.fs.read(fh, MiB, 100)) == ramp("u", MiB, 100)
    with pytest.raises(FsError):
        await w.fs.lookup(ROOT_INO, "u")
    await w.fs.release(fh)
    assert w.fs.writeback.pending_uploads() == []


async def test_mkdir_rmdir_and_not_empty(w: WHarness) -> None:
    d = await w.fs.mkdir(ROOT_INO, "d", 0o750, 0, 0)
    assert "d/" in w.backend.key_list()
    assert posixmeta.decode(w.backend.head("d/").metadata).mode == stat.S_IFDIR | 0o750
    w.backend.put("d/sub/deep", b"x")  # an implicit child, made elsewhere
    w.fs.listings.clear()
    with pytest.raises(FsError) as err:
        await w.fs.rmdir(ROOT_INO, "d")
    assert err.value.errno == errno.ENOTEMPTY
    w.backend.delete("d/sub/deep")
    await w.fs.rmdir(ROOT_INO, "d")
    assert "d/" not in w.backend.key_list()
    with pytest.raises(FsError):
        await w.fs.lookup(ROOT_INO, "d")
    assert ("d", True) not in w.fs.by_path and d.is_dir


async def test_rename_file_replaces_target_and_moves_directories(w: WHarness) -> None:
    await w.write_file("a", b"AAA")
    await w.write_file("b", b"BBB")
    await w.fs.rename(ROOT_INO, "a", ROOT_INO, "b", 0)
    assert w.backend.key_list() == ["b"]
    assert w.backend.get_range("b", 0, 10) == b"AAA"
    for key in ["dir/x", "dir/sub/y"]:
        w.backend.put(key, key.encode())
    w.fs.listings.clear()
    await w.fs.rename(ROOT_INO, "dir", ROOT_INO, "moved", 0)
    assert sorted(w.backend.key_list()) == ["b", "moved/", "moved/sub/y", "moved/x"]
    assert await w.read_all("moved/sub/y") == b"dir/sub/y"
    with pytest.raises(FsError) as err:
        await w.fs.rename(ROOT_INO, "b", ROOT_INO, "moved", 0)
    assert err.value.errno == errno.EISDIR


async def test_rename_moves_the_live_directory_not_a_removed_one_of_the_same_name(
    w: WHarness,
) -> None:
    """A removed directory's inode keeps its last path (the kernel may still hold it). When a
    live directory later sits at that path and its parent is renamed, the live one must move:
    the removed one used to take its place, with its old mode (issue 4 b: 0o600 for 0o700)."""
    z = await w.fs.mkdir(ROOT_INO, "z", 0o700, 0, 0)  # the older inode: iterated first
    a = await w.fs.mkdir(ROOT_INO, "a", 0o755, 0, 0)
    removed = await w.fs.mkdir(a.ino, "b", 0o600, 0, 0)
    await w.fs.rmdir(a.ino, "b")
    await w.fs.rename(ROOT_INO, "z", a.ino, "b", 0)  # z becomes a/b: same path as `removed`
    await w.fs.rename(ROOT_INO, "a", ROOT_INO, "c", 0)
    node = await w.fs.lookup(await w.path_ino("c"), "b")
    assert node is z and node is not removed
    assert node.attrs.mode == stat.S_IFDIR | 0o700
    assert posixmeta.decode(w.backend.head("c/b/").metadata).mode == stat.S_IFDIR | 0o700
    assert removed.path == "a/b"  # not moved: it is in no namespace
    assert w.fs.attr_store.get("c/b", DIR_VERSION) == node.attrs  # what a remount remembers


async def test_rename_moves_the_live_file_not_an_unlinked_one_of_the_same_name(
    w: WHarness,
) -> None:
    await w.write_file("y", b"live")  # the older inode: iterated first
    await w.write_file("x", b"gone")
    gone = await w.path_ino("x")
    await w.fs.unlink(ROOT_INO, "x")
    await w.fs.rename(ROOT_INO, "y", ROOT_INO, "x", 0)
    live = await w.path_ino("x")
    await w.fs.setattr(live, mode=0o600)
    await w.fs.rename(ROOT_INO, "x", ROOT_INO, "z", 0)
    node = await w.fs.lookup(ROOT_INO, "z")
    assert node.ino == live != gone
    assert node.attrs.mode == stat.S_IFREG | 0o600
    assert await w.read_all("z") == b"live"


async def test_chmod_keeps_cached_content(w: WHarness) -> None:
    w.backend.put("c", ramp("c", 0, 2 * MiB))
    assert await w.read_all("c") == ramp("c", 0, 2 * MiB)
    gets = w.backend.counts["get_range"]
    node = await w.fs.setattr(await w.path_ino("c"), mode=0o600)
    assert posixmeta.decode(w.backend.head("c").metadata).mode == stat.S_IFREG | 0o600
    assert node.attrs.mode == stat.S_IFREG | 0o600
    assert await w.read_all("c") == ramp("c", 0, 2 * MiB)
    assert w.backend.counts["get_range"] == gets


async def test_truncate_shrink_and_grow(w: WHarness) -> None:
    await w.write_file("t", b"0123456789")
    ino = await w.path_ino("t")
    await w.fs.setattr(ino, size=4)
    assert w.backend.get_range("t", 0, 100) == b"0123"
    await w.fs.setattr(ino, size=6)
    assert w.backend.get_range("t", 0, 100) == b"0123\0\0"


async def test_symlink_roundtrip(w: WHarness) -> None:
    node = await w.fs.symlink(ROOT_INO, "ln", "target/path", 0, 0)
    assert node.attrs.is_symlink
    assert w.backend.get_range("ln", 0, 100) == b"target/path"
    assert stat.S_ISLNK(posixmeta.decode(w.backend.head("ln").metadata).mode or 0)
    assert await w.fs.readlink(node.ino) == "target/path"


async def test_created_file_is_listed_before_its_upload(w: WHarness) -> None:
    fh, _ = await w.create("n1", b"data")
    w.fs.listings.clear()
    listing = await w.fs.listing("")
    assert "n1" in listing.by_name
    await w.fs.release(fh)


async def test_only_files_up_to_cache_written_max_stay_cached_after_their_upload(
    tmp_path: Path,
) -> None:
    """Copying a just-uploaded checkpoint into cache blocks costs as much disk as writing it,
    and back-to-back checkpoints paid for it while writing the next one: larger files are
    not kept, and their staging file goes all the same."""
    async with _harness(tmp_path, MemoryBackend(), cache_written_max=2 * MiB) as w:
        small, large = ramp("small", 0, 2 * MiB), ramp("large", 0, 2 * MiB + 1)
        await w.write_file("small", small)
        await w.write_file("large", large)
        assert list((w.fs.config.cache_dir / "staging").iterdir()) == []
        before = w.backend.counts["get_range"]
        assert await w.read_all("small") == small
        assert w.backend.counts["get_range"] == before  # kept: read from the cache
        assert await w.read_all("large") == large
        assert w.backend.counts["get_range"] > before  # not kept: read from the bucket
        assert w.fs.writeback.pending_uploads() == []


async def test_cache_written_max_0_keeps_no_written_file(tmp_path: Path) -> None:
    async with _harness(tmp_path, MemoryBackend(), cache_written_max=0) as w:
        await w.write_file("one-byte", b"x")
        before = w.backend.counts["get_range"]
        assert await w.read_all("one-byte") == b"x"
        assert w.backend.counts["get_range"] > before


async def test_a_failed_copy_into_the_cache_still_removes_the_staging_file(
    w: WHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The upload succeeded: the cache copy is only an optimisation, and a disk error while
    making it must not leave the staging file or its pending record behind."""

    def broken(self: Staging, length: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Staging, "read_uncached", broken)
    data = ramp("f", 0, KEEP_BODY_MAX + 1)  # too large to keep its PUT's bytes: read back
    await w.write_file("f", data)
    assert list((w.fs.config.cache_dir / "staging").iterdir()) == []
    assert w.fs.writeback.pending_uploads() == []
    assert "could not keep 'f' in the cache" in caplog.text
    monkeypatch.undo()
    assert await w.read_all("f") == data  # from the bucket


async def test_a_small_file_goes_into_the_cache_from_its_put_without_a_read_back(
    w: WHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The bytes of a small file's PUT are kept until its release copies them into the cache:
    the staging file is not read back, and the file is then read from the cache."""

    def no_read_back(self: Staging, length: int, offset: int) -> bytes:
        raise AssertionError("the staging file was read back")

    monkeypatch.setattr(Staging, "read_uncached", no_read_back)
    data = ramp("small", 0, KEEP_BODY_MAX)
    fh, _ = await w.create("small", data)
    await w.fs.flush(fh)
    await w.fs.write(fh, 5, b"again")  # the kept bytes are of the uploaded version only
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert "could not keep" not in caplog.text
    assert list((w.fs.config.cache_dir / "staging").iterdir()) == []
    expected = data[:5] + b"again" + data[10:]
    assert w.backend.get_range("small", 0, len(data)) == expected
    before = w.backend.counts["get_range"]
    assert await w.read_all("small") == expected
    assert w.backend.counts["get_range"] == before  # from the cache


async def test_sequential_writer_streams_parts_before_close(w: WHarness) -> None:
    size = 40 * MiB + 5
    fh, _ = await w.create("ckpt")
    for off in range(0, size, MiB):
        await w.fs.write(fh, off, ramp("ckpt", off, min(MiB, size - off)))
    await trio.sleep(0.2)  # let the part uploads run
    streamed = w.backend.counts["upload_part"]
    assert streamed >= 4  # full 8 MiB parts went out while writing
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert w.backend.counts["upload_part"] == streamed + 1  # only the tail at close
    assert w.backend.get_range("ckpt", 0, size) == ramp("ckpt", 0, size)
    assert w.backend.list_multipart("") == []


async def test_streamed_parts_come_from_the_write_buffers_within_a_memory_bound(
    w: WHarness,
) -> None:
    """A contiguous writer's parts are sent from its own write buffers (no read-back of the
    staging file), at most MEMORY_PARTS at a time however slow the store; a write out of
    sequence makes the part it lands in read back from the staging file, with the right
    bytes either way."""
    w.faulty.latency = 0.05  # parts pile up while the writer goes on
    size = 64 * MiB + 123
    fh, ino = await w.create("mem")
    node = w.fs.inode(ino)
    peak = 0
    chunk = 3 * MiB // 2  # writes that straddle part boundaries
    for off in range(0, size, chunk):
        await w.fs.write(fh, off, ramp("mem", off, min(chunk, size - off)))
        if node.stream is not None:
            peak = max(peak, node.stream.bodies_in_memory)
    # a rewrite inside the part being gathered (not yet sent): that part is read back
    stream = node.stream
    assert stream is not None
    at = stream.sent_until + 10
    await w.fs.write(fh, at, b"late")
    await w.fs.write(fh, size, ramp("mem", size, 1000))
    await trio.sleep(0)
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert 1 <= peak <= MEMORY_PARTS
    assert stream.parts_from_memory >= 3
    assert stream.parts_read_back >= 3  # the first two (before streaming) and the rewritten
    expected = bytearray(ramp("mem", 0, size + 1000))
    expected[at : at + 4] = b"late"
    assert w.backend.get_range("mem", 0, size + 1000) == bytes(expected)
    assert w.backend.list_multipart("") == []


async def test_an_unaligned_writer_streams_from_memory_after_the_first_parts(
    w: WHarness,
) -> None:
    """Writes of 1.5 MiB straddle part boundaries, and the one that starts the stream ends
    past its last full part: its tail starts the next part in memory, so only the parts
    staged before streaming began are read back."""
    size = 40 * MiB + 77
    fh, ino = await w.create("odd")
    chunk = 3 * MiB // 2
    for off in range(0, size, chunk):
        await w.fs.write(fh, off, ramp("odd", off, min(chunk, size - off)))
        await trio.sleep(0.01)  # let finished parts return their memory
    stream = w.fs.inode(ino).stream
    assert stream is not None
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert stream.parts_read_back == 2
    assert stream.parts_from_memory == stream.next_number - 1 - 2
    stats = w.fs.statistics()  # what `wsfuse status` shows, summed over the mount's streams
    assert stats["streamed_parts_read_back"] == 2
    assert stats["streamed_parts_from_memory"] == stream.parts_from_memory
    assert w.backend.get_range("odd", 0, size) == ramp("odd", 0, size)


async def test_renaming_a_file_while_it_streams_keeps_its_bytes(w: WHarness) -> None:
    """Its streamed parts went to the old key: the upload under the new name must not
    complete that stream (the bytes would land under the old name, then be deleted)."""
    size = 30 * MiB
    fh, _ = await w.create("before")
    for off in range(0, size, MiB):
        await w.fs.write(fh, off, ramp("ck", off, MiB))
    await trio.sleep(0.1)
    await w.fs.rename(ROOT_INO, "before", ROOT_INO, "after", 0)
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert w.backend.get_range("after", 0, size + 1000) == ramp("ck", 0, size)
    with pytest.raises(NotFound):
        w.backend.head("before")
    assert w.backend.list_multipart("") == []


async def test_a_failed_stream_part_stops_holding_write_buffers(w: WHarness) -> None:
    """After a part upload failed, nothing more is sent from memory: the writer's buffers
    are not kept (a long checkpoint would otherwise pile up in the daemon), and close still
    uploads the file whole."""
    w.faulty.fail("upload_part", BackendError("refused"), times=1)
    size = 48 * MiB
    fh, ino = await w.create("f")
    for off in range(0, 24 * MiB, MiB):
        await w.fs.write(fh, off, ramp("f", off, MiB))
    stream = w.fs.inode(ino).stream
    assert stream is not None
    with trio.fail_after(5):
        while stream.error is None:
            await trio.sleep(0.01)
    for off in range(24 * MiB, size, MiB):
        await w.fs.write(fh, off, ramp("f", off, MiB))
        assert stream._chunked <= MiB  # the last write at most, never piling up
    await w.fs.flush(fh)
    await w.fs.release(fh)
    assert w.backend.get_range("f", 0, size) == ramp("f", 0, size)
    assert w.backend.list_multipart("") == []


async def test_overwriting_a_streamed_part_falls_back_to_a_whole_upload(w: WHarness) -> None:
    size = 30 * MiB
    fh, _ = await w.create("rw")
    for off in range(0, size, MiB):
        await w.fs.write(fh, off, ramp("rw", off, MiB))
    await trio.sleep(0.2)
    await w.fs.write(fh, 100, b"PATCHED")  # inside part 1, already sent
    await w.fs.flush(fh)
    await w.fs.release(fh)
    expected = bytearray(ramp("rw", 0, size))
    expected[100:107] = b"PATCHED"
    assert w.backend.get_range("rw", 0, size) == bytes(expected)
    assert w.backend.list_multipart("") == []  # the streamed upload was aborted


async def test_unlinking_a_file_being_streamed_aborts_its_upload(w: WHarness) -> None:
    fh, _ = await w.create("gone")
    for off in range(0, 20 * MiB, MiB):
        await w.fs.write(fh, off, b"x" * MiB)
    await trio.sleep(0.2)
    await w.fs.unlink(ROOT_INO, "gone")
    await w.fs.release(fh)
    assert w.backend.list_multipart("") == []
    assert "gone" not in w.backend.key_list()


async def test_an_older_listing_does_not_undo_a_newer_upload(w: WHarness) -> None:
    """A LIST that started before our upload and answers after it names the older version:
    it must not replace what the upload taught the inode (size, ETag, mode)."""
    await w.write_file("m", b"data")
    ino = await w.path_ino("m")
    before = w.fs.inode(ino).etag
    await w.write_file("m", b"longer data")
    node = await w.fs.setattr(ino, mode=0o600)
    after = node.etag
    assert after != before and node.attrs.mode == stat.S_IFREG | 0o600
    stale = Entry("m", False, 4, before, 1_000.0)
    w.fs._remember("m", False, stale, node.validated_at - 1.0)  # fetched before the upload
    assert (node.etag, node.size) == (after, len(b"longer data"))
    assert node.attrs.mode == stat.S_IFREG | 0o600
    newer = Entry("m", False, 5, "someone-else", 2_000.0)
    w.fs._remember("m", False, newer, node.validated_at + 1.0)  # a later change elsewhere
    assert (node.etag, node.size) == ("someone-else", 5)


async def test_a_removed_inode_is_not_revalidated_against_its_old_path(w: WHarness) -> None:
    """After the TTL, getattr of an inode that was removed (the kernel may still hold it)
    must not HEAD its old path: a new file there is somebody else."""
    await w.write_file("u", b"old")
    ino = await w.path_ino("u")
    fh, _ = await w.fs.open(ino, write=False)
    await w.fs.unlink(ROOT_INO, "u")
    await w.fs.release(fh)
    w.backend.put("u", b"a new file at the old name")
    node = w.fs.inode(ino)
    node.validated_at = 0.0  # long past the TTL
    heads = w.backend.counts["head"]
    assert (await w.fs.getattr(ino)).size == 3
    assert w.backend.counts["head"] == heads


async def test_the_staged_set_follows_every_staging_file_and_feeds_listings(
    w: WHarness,
) -> None:
    def check() -> None:
        expected = {i for i, n in w.fs.inodes.items() if n.staging is not None}
        assert w.fs.staged == expected

    async def names() -> list[str]:
        w.fs.listings.clear()  # a fresh remote listing: local files must be merged in
        fh = w.fs.opendir(ROOT_INO)
        try:
            return [e.name for _, _, e in await w.fs.readdir(fh, 0)]
        finally:
            w.fs.releasedir(fh)

    fh_a, _ = await w.create("a", b"not uploaded yet")
    check()
    assert "a" in await names()  # only in staging: the bucket has no "a"
    await w.fs.flush(fh_a)
    await w.fs.release(fh_a)
    check()
    fh_b, ino_b = await w.create("b", b"bye")
    await w.fs.flush(fh_b)
    await w.fs.unlink(ROOT_INO, "b")  # while open: its bytes live on in staging
    check()
    assert ino_b in w.fs.staged and "b" not in await names()
    await w.fs.release(fh_b)
    check()
    assert w.fs.staged == set()
    assert await names() == ["a"]


async def test_an_open_while_the_last_release_finishes_keeps_its_pending_record(
    w: WHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel does not wait for RELEASE: an open for writing can arrive while the last
    release still copies the file into the cache and removes its staging file in a worker
    thread. The new staging file's pending record (what a crash would recover) must survive
    that release, and the old staging file must still go."""
    fh, node = await w.create("f", b"one")
    await w.fs.flush(fh)
    released = threading.Event()
    close = Staging.close

    def slow_close(self: Staging, *, remove: bool) -> None:
        released.wait(10)
        close(self, remove=remove)

    monkeypatch.setattr(Staging, "close", slow_close)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.fs.release, fh)
        await trio.sleep(0.05)  # the release waits in its worker thread
        fh2, _ = await w.fs.open(node, write=True, truncate=True)
        await w.fs.write(fh2, 0, b"two")
        released.set()
    monkeypatch.undo()
    assert [r["key"] for r in w.fs.writeback.pending_uploads()] == ["f"]
    assert len(list((w.fs.config.cache_dir / "staging").iterdir())) == 1  # the new one
    await w.fs.flush(fh2)
    await w.fs.release(fh2)
    assert w.fs.writeback.pending_uploads() == []
    assert list((w.fs.config.cache_dir / "staging").iterdir()) == []
    assert await w.read_all("f") == b"two"


async def test_kept_put_bodies_stay_within_their_budget_and_are_let_go(
    w: WHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files flushed and held open keep their PUT's bytes only within the budget; a write
    makes them stale (not used), and release, the next upload or close lets them go."""
    monkeypatch.setattr(writeback, "KEPT_BODIES_MAX", 100 * 1024)
    handles = []
    for name in ("a", "b", "c"):
        fh, _ = await w.create(name, ramp(name, 0, 64 * 1024))
        await w.fs.flush(fh)
        handles.append(fh)
    assert w.fs.writeback.kept_body_bytes == 64 * 1024  # one fits, the others read back
    await w.fs.write(handles[0], 0, b"new")  # "a" is dirty: its kept bytes are stale
    for fh in handles:
        await w.fs.release(fh)  # "a", dirty, is uploaded again by its release
    assert w.fs.writeback.kept_body_bytes == 0
    assert await w.read_all("a") == b"new" + ramp("a", 3, 64 * 1024 - 3)
    for name in ("b", "c"):
        assert await w.read_all(name) == ramp(name, 0, 64 * 1024)
