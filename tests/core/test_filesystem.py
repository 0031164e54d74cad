"""The filesystem core driven directly (no kernel): namespace, single-flight, prefetch, pins."""

from __future__ import annotations

import errno
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from wsfuse.backends.faults import FaultInjectingBackend
from wsfuse.backends.memory import MemoryBackend
from wsfuse.cache import BlockCache, BlockKey
from wsfuse.config import DEFAULTS, MountConfig
from wsfuse.errors import BackendError, PreconditionFailed
from wsfuse.fs.core import ROOT_INO, Filesystem, FsError
from wsfuse.testing.ramp import ramp

MiB = 1 << 20


class Harness:
    def __init__(
        self, fs: Filesystem, backend: MemoryBackend, faulty: FaultInjectingBackend
    ) -> None:
        self.fs = fs
        self.backend = backend
        self.faulty = faulty

    async def path_ino(self, path: str) -> int:
        ino = ROOT_INO
        for name in filter(None, path.split("/")):
            ino = (await self.fs.lookup(ino, name)).ino
        return ino

    async def read_all(self, path: str, chunk: int = MiB) -> bytes:
        fh, _ = await self.fs.open(await self.path_ino(path), write=False)
        out = bytearray()
        try:
            while data := await self.fs.read(fh, len(out), chunk):
                out += data
        finally:
            await self.fs.release(fh)
        return bytes(out)


def make_config(tmp_path: Path, **kw: object) -> MountConfig:
    # 8 MiB read-ahead GETs whatever this machine's speed (the fast-link tests set the rate)
    kw.setdefault("fast_link_rate", float("inf"))
    return replace(DEFAULTS, cache_dir=tmp_path / "cache", min_free=0, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    backend = MemoryBackend()
    faulty = FaultInjectingBackend(backend)
    config = make_config(tmp_path)
    cache = BlockCache(config.cache_dir, block_size=config.block_size, capacity=1 << 30, min_free=0)
    try:
        async with trio.open_nursery() as nursery:
            yield Harness(
                Filesystem(faulty, config, cache, nursery, index=cache.index), backend, faulty
            )
            nursery.cancel_scope.cancel()
    finally:
        cache.close()


async def test_lookup_and_readdir_from_one_listing(h: Harness) -> None:
    for key in ["d/a", "d/b", "d/sub/c", "top"]:
        h.backend.put(key, key.encode())
    d = await h.fs.lookup(ROOT_INO, "d")
    assert d.is_dir
    fh = h.fs.opendir(d.ino)
    entries = list(await h.fs.readdir(fh, 0))
    assert [(e.name, e.is_dir) for _, _, e in entries] == [
        ("a", False),
        ("b", False),
        ("sub", True),
    ]
    assert [n for n, _, _ in entries] == [1, 2, 3]  # offsets: the next entry's index
    assert [e.name for _, _, e in await h.fs.readdir(fh, 2)] == ["sub"]
    h.fs.releasedir(fh)
    before = dict(h.backend.counts)
    a = await h.fs.lookup(d.ino, "a")
    assert (a.size, a.is_dir) == (3, False)
    with pytest.raises(FsError) as err:
        await h.fs.lookup(d.ino, "missing")
    assert err.value.errno == errno.ENOENT
    assert dict(h.backend.counts) == before  # answered from the listing


async def test_readdir_makes_inodes_only_for_entries_taken(h: Harness) -> None:
    for i in range(3000):
        h.backend.put(f"big/{i:05d}", b"")
    big = await h.fs.lookup(ROOT_INO, "big")
    fh = h.fs.opendir(big.ino)
    known = len(h.fs.inodes)
    taken = []
    for start in range(0, 3000, 30):  # the kernel's way: a few dozen entries per call
        entries = await h.fs.readdir(fh, start)
        taken += [e.name for _, _, e in itertools.islice(entries, 30)]
        # (entries beyond what was taken are never made into inodes)
        assert len(h.fs.inodes) == known + len(taken)
    assert taken == [f"{i:05d}" for i in range(3000)]
    h.fs.releasedir(fh)


async def test_listing_after_lookup_reuses_the_lookups_page(h: Harness) -> None:
    for key in ["d/a", "d/b", "d/sub/c"]:
        h.backend.put(key, key.encode())
    d = await h.fs.lookup(ROOT_INO, "d")  # HEAD d + LIST d/ (first page)
    assert h.backend.counts["list"] == 1
    fh = h.fs.opendir(d.ino)
    assert [e.name for _, _, e in await h.fs.readdir(fh, 0)] == ["a", "b", "sub"]
    h.fs.releasedir(fh)
    assert h.backend.counts["list"] == 1  # `ls` right after `stat`: no second LIST


async def test_a_change_after_the_lookup_is_listed(h: Harness) -> None:
    for key in ["e/a", "e/b"]:
        h.backend.put(key, key.encode())
    e = await h.fs.lookup(ROOT_INO, "e")
    await h.fs.unlink(e.ino, "a")  # through the mount: the kept page is stale now
    h.fs.listings.clear()
    fh = h.fs.opendir(e.ino)
    assert [x.name for _, _, x in await h.fs.readdir(fh, 0)] == ["b"]
    h.fs.releasedir(fh)


async def test_attributes_of_a_dataset_without_metadata_cost_a_sample_of_heads(
    h: Harness,
) -> None:
    for i in range(200):
        h.backend.put(f"ds/{i:04d}", b"x")  # uploaded by another tool: no POSIX metadata
    await h.fs.lookup(ROOT_INO, "ds")
    heads = h.backend.counts["head"]
    await h.fs.listing("ds")
    assert h.backend.counts["head"] - heads <= 16


async def test_attributes_are_learned_when_the_objects_carry_them(h: Harness) -> None:
    for i in range(60):
        meta = {"mode": str(0o100640 if i % 2 else 0o100600)}
        h.backend.put(f"own/{i:04d}", b"x", metadata=meta)
    await h.fs.lookup(ROOT_INO, "own")
    h.fs.listings.clear()
    await h.fs.listing("own")
    own = await h.fs.lookup(ROOT_INO, "own")
    heads = h.backend.counts["head"]
    modes = [(await h.fs.lookup(own.ino, f"{i:04d}")).attrs.mode for i in range(60)]
    assert h.backend.counts["head"] == heads  # all known from the listing's HEADs
    assert modes == [0o100640 if i % 2 else 0o100600 for i in range(60)]


async def test_a_directory_listed_within_the_ttl_is_looked_up_without_a_request(
    h: Harness,
) -> None:
    h.backend.put("implicit/a", b"1")
    await h.fs.listing("implicit")  # listed, e.g. by the last mount (the index keeps it)
    assert not h.fs._fresh_listing("")  # the root is not: the lookup cannot use it
    calls = sum(h.backend.counts.values())
    node = await h.fs.lookup(ROOT_INO, "implicit")
    assert node.is_dir
    assert sum(h.backend.counts.values()) == calls  # neither HEAD nor LIST


async def test_a_listed_directory_whose_marker_attributes_are_unknown_is_looked_up(
    h: Harness,
) -> None:
    h.backend.put("explicit/", b"", metadata={"mode": str(0o040700)})
    h.backend.put("explicit/a", b"1")
    listing = await h.fs.listing("explicit")
    assert listing.marker is True
    heads = h.backend.counts["head"]
    node = await h.fs.lookup(ROOT_INO, "explicit")  # its mode is in the marker: read it
    assert h.backend.counts["head"] > heads
    assert node.attrs.mode == 0o040700
    h.fs.forget([(node.ino, 1)])
    heads, lists = h.backend.counts["head"], h.backend.counts["list"]
    again = await h.fs.lookup(ROOT_INO, "explicit")  # now known: no request
    assert again.ino == node.ino and again.attrs.mode == 0o040700
    assert (h.backend.counts["head"], h.backend.counts["list"]) == (heads, lists)


async def test_negative_lookups_are_cached(h: Harness) -> None:
    for _ in range(3):
        with pytest.raises(FsError):
            await h.fs.lookup(ROOT_INO, "ghost")
    assert h.backend.counts["head"] == 1


async def test_readdir_offsets_survive_concurrent_change(h: Harness) -> None:
    for i in range(10):
        h.backend.put(f"x/{i:02d}", b"")
    x = await h.fs.lookup(ROOT_INO, "x")
    fh = h.fs.opendir(x.ino)
    first = list(await h.fs.readdir(fh, 0))
    h.backend.put("x/000-new", b"")  # sorts first: would shift every offset of a fresh listing
    h.fs.listings.clear()
    rest = list(await h.fs.readdir(fh, 5))
    assert [e.name for _, _, e in rest] == [e.name for _, _, e in first[5:]]


async def test_two_readers_of_one_block_make_one_get(h: Harness) -> None:
    h.backend.put("big", ramp("big", 0, 32 * MiB))
    ino = await h.path_ino("big")
    h.faulty.latency = 0.05
    fh1, _ = await h.fs.open(ino, write=False)
    fh2, _ = await h.fs.open(ino, write=False)
    results: list[bytes] = []

    async def read(fh: int) -> None:
        results.append(bytes(await h.fs.read(fh, 20 * MiB + 10, 4096)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, fh1)
        nursery.start_soon(read, fh2)
    assert results == [ramp("big", 20 * MiB + 10, 4096)] * 2
    assert h.backend.counts["get_range"] == 1
    assert h.backend.bytes_read == MiB  # a random read fetches its block, nothing more


async def test_sequential_reads_prefetch_and_read_each_byte_once(h: Harness) -> None:
    size = 100 * MiB + 5
    h.backend.put("seq", ramp("seq", 0, size))
    assert await h.read_all("seq") == ramp("seq", 0, size)
    assert h.backend.bytes_read == size
    assert h.fs.fetcher.stats.prefetches > 0
    # 8 MiB GETs: about size / 8 MiB requests, not one per 1 MiB block
    assert h.backend.counts["get_range"] <= size // (8 * MiB) + 3


def record_get_sizes(h: Harness, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = h.backend.get_range

    def recording(key: str, offset: int, length: int, **kw: str | None) -> bytes:
        sizes.append(length)
        return real(key, offset, length, **kw)

    monkeypatch.setattr(h.backend, "get_range", recording)
    return sizes


async def test_a_fast_first_get_makes_read_ahead_send_larger_gets(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first 8 MiB GET far faster than S3 gives one connection (here: memory) means the CPU,
    not the connection, limits the stream: read-ahead then sends 16 MiB GETs (half as many
    requests and streams for the same 64 MiB window)."""
    sizes = record_get_sizes(h, monkeypatch)
    h.fs.config = replace(h.fs.config, fast_link_rate=1.0)  # memory: fast, however slow CI is
    size = 100 * MiB
    h.backend.put("fast", ramp("fast", 0, size))
    assert await h.read_all("fast") == ramp("fast", 0, size)
    assert h.fs.fetcher.stats.fast_link_streams == 1
    assert sizes[0] == 8 * MiB  # the first GET, which measured the link
    assert max(sizes) == 16 * MiB
    assert h.backend.bytes_read == size  # each byte once, whatever the GET size


async def test_a_first_get_as_slow_as_s3_keeps_read_ahead_in_8_mib_gets(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 MiB in 0.1 s or more is ~80 MB/s, one S3 connection's rate: read-ahead keeps many 8
    MiB GETs in flight (more connections), as before."""
    sizes = record_get_sizes(h, monkeypatch)
    h.fs.config = replace(h.fs.config, fast_link_rate=DEFAULTS.fast_link_rate)
    size = 48 * MiB
    h.backend.put("slow", ramp("slow", 0, size))
    h.faulty.latency = 0.1
    assert await h.read_all("slow") == ramp("slow", 0, size)
    assert h.fs.fetcher.stats.fast_link_streams == 0
    assert max(sizes) == 8 * MiB
    assert h.backend.bytes_read == size


async def test_only_a_stream_read_from_its_start_times_its_first_get(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that starts elsewhere, or whose first block was cached, makes no measurement:
    its read-ahead keeps 8 MiB GETs."""
    sizes = record_get_sizes(h, monkeypatch)
    h.fs.config = replace(h.fs.config, fast_link_rate=1.0)
    size = 48 * MiB
    h.backend.put("mid", ramp("mid", 0, size))
    fh, _ = await h.fs.open(await h.path_ino("mid"), write=False)
    for i in range(4, 48):  # sequential from 4 MiB on
        assert await h.fs.read(fh, i * MiB, MiB) == ramp("mid", i * MiB, MiB)
    await h.fs.release(fh)
    assert h.fs.fetcher.stats.fast_link_streams == 0
    assert max(sizes) == 8 * MiB
    # From the start now: blocks 4 on are cached, so its first GET is 4 blocks, not timed.
    assert await h.read_all("mid") == ramp("mid", 0, size)
    assert h.fs.fetcher.stats.fast_link_streams == 0


async def test_cold_sequential_read_hands_blocks_over_in_memory(h: Harness) -> None:
    size = 40 * MiB
    h.backend.put("cold", ramp("cold", 0, size))
    assert await h.read_all("cold") == ramp("cold", 0, size)
    stats = h.fs.fetcher.stats
    # Nearly every block comes from read-ahead memory, not from its just-written cache file.
    assert stats.handoffs >= 40 - 10
    assert h.fs.cache.statistics().hits <= 10
    await wait_for_idle_fetcher(h)
    assert h.fs.cache.statistics().blocks == 40  # and all of them were cached for re-reads


async def test_fetched_blocks_are_cached_with_the_receiving_threads_checksums(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetcher checksums each block as it arrives (`get_blocks(on_block=)`) and hands
    the sums to the cache write (block by block, or a run file's), which then does not read
    the block a second time for them."""
    size = 20 * MiB + 5
    data = ramp("sums", 0, size)
    h.backend.put("sums", data)
    given: dict[int, int | None] = {}
    put = BlockCache.put

    def recording_put(
        cache: BlockCache,
        bkey: BlockKey,
        block: bytes,
        *,
        direct: bool = False,
        crc: int | None = None,
    ) -> None:
        given[bkey.index] = crc
        put(cache, bkey, block, direct=direct, crc=crc)

    put_run = BlockCache.put_run

    def recording_put_run(
        cache: BlockCache, bkeys: list[BlockKey], blocks: list[bytes], crcs: dict[int, int]
    ) -> None:
        given.update((bkey.index, crcs.get(k)) for k, bkey in enumerate(bkeys))
        put_run(cache, bkeys, blocks, crcs)

    monkeypatch.setattr(BlockCache, "put", recording_put)
    monkeypatch.setattr(BlockCache, "put_run", recording_put_run)
    assert await h.read_all("sums") == data
    await wait_for_idle_fetcher(h)
    assert sorted(given) == list(range(21))
    for index, crc in given.items():
        assert crc == BlockCache.checksum(data[index * MiB : (index + 1) * MiB])


async def test_sequential_reread_from_disk_cache_is_read_ahead(h: Harness) -> None:
    size = 40 * MiB + 7
    h.backend.put("warm", ramp("warm", 0, size))
    assert await h.read_all("warm") == ramp("warm", 0, size)
    await wait_for_idle_fetcher(h)
    gets = h.backend.counts["get_range"]
    assert await h.read_all("warm") == ramp("warm", 0, size)
    assert h.backend.counts["get_range"] == gets  # all from the disk cache
    assert h.fs.fetcher.stats.disk_loads >= 30  # loaded ahead in worker threads


async def test_unaligned_sequential_reads_fetch_each_byte_once(h: Harness) -> None:
    size = 30 * MiB + 123
    h.backend.put("odd", ramp("odd", 0, size))
    assert await h.read_all("odd", chunk=300_001) == ramp("odd", 0, size)
    assert h.backend.bytes_read == size
    assert h.fs.cache.statistics().hits <= 8


async def test_reordered_sequential_reads_keep_their_readahead(h: Harness) -> None:
    # With a large read_ahead_kb the kernel sends several 1 MiB reads of one stream at once,
    # and they are served in any order: that is still a sequential reader.
    size = 64 * MiB
    h.backend.put("ra", ramp("ra", 0, size))
    fh, _ = await h.fs.open(await h.path_ino("ra"), write=False)
    got: dict[int, bytes] = {}

    async def read(offset: int) -> None:
        got[offset] = bytes(await h.fs.read(fh, offset, MiB))

    await read(0)  # the kernel's first request of a stream is the one the reader waits on
    shuffle = random.Random(3).shuffle
    for group in range(MiB, size, 8 * MiB):
        offsets = list(range(group, min(group + 8 * MiB, size), MiB))
        shuffle(offsets)
        async with trio.open_nursery() as nursery:
            for offset in offsets:
                nursery.start_soon(read, offset)
    await h.fs.release(fh)
    assert b"".join(got[o] for o in sorted(got)) == ramp("ra", 0, size)
    assert h.fs.fetcher.stats.prefetch_cancelled == 0
    assert h.backend.bytes_read == size  # every byte fetched once
    assert h.backend.counts["get_range"] <= size // (8 * MiB) + 3


async def test_strided_reads_after_a_header_read_do_not_read_ahead(h: Harness) -> None:
    # A header read at 0 is sequential; what follows jumps 4 MiB at a time. Only the first
    # window may be read ahead: reads near the front must not grow it, and the budget (shared
    # by the whole mount) must not stay held.
    h.backend.put("s", ramp("s", 0, 200 * MiB))
    fh, _ = await h.fs.open(await h.path_ino("s"), write=False)
    offsets = range(0, 200 * MiB, 4 * MiB)
    for offset in offsets:
        assert bytes(await h.fs.read(fh, offset, 4096)) == ramp("s", offset, 4096)
    fetcher = h.fs.fetcher
    assert h.backend.bytes_read <= (fetcher.budget_blocks // 16 + len(offsets)) * MiB
    await h.fs.release(fh)
    await wait_for_idle_fetcher(h)
    assert fetcher.budget.value == fetcher.budget_blocks


async def test_random_reads_after_a_header_read_fetch_what_they_touch(h: Harness) -> None:
    size = 64 * MiB
    h.backend.put("r", ramp("r", 0, size))
    fh, _ = await h.fs.open(await h.path_ino("r"), write=False)
    rng = random.Random(11)
    offsets = [0] + [rng.randrange(size - 4096) for _ in range(100)]
    for offset in offsets:
        assert bytes(await h.fs.read(fh, offset, 4096)) == ramp("r", offset, 4096)
    touched = {offset // MiB for offset in offsets}
    # the header read's 8-block fetch, then only what was touched; no read-ahead grows
    assert h.backend.bytes_read <= (8 + len(touched)) * MiB
    assert h.fs.fetcher.stats.prefetches <= 2
    await h.fs.release(fh)


async def test_a_short_jump_then_sequential_reads_get_read_ahead_again(h: Harness) -> None:
    # A jump within the read-ahead window is first taken for reordering; a reader that goes
    # on from there is a new stream after a few reads, with its own read-ahead.
    h.backend.put("j", ramp("j", 0, 200 * MiB))
    fh, _ = await h.fs.open(await h.path_ino("j"), write=False)
    for offset in [*range(0, 8 * MiB, MiB), *range(40 * MiB, 100 * MiB, MiB)]:
        assert bytes(await h.fs.read(fh, offset, MiB)) == ramp("j", offset, MiB)
    reader = h.fs.file_handle(fh).reader
    assert reader.next_offset == 100 * MiB
    assert reader.window == reader.max_window
    await h.fs.release(fh)


@pytest.mark.parametrize("stop", ["close", "seek"])
async def test_readahead_budget_is_returned(h: Harness, stop: str) -> None:
    h.backend.put("b", ramp("b", 0, 200 * MiB))
    fetcher = h.fs.fetcher
    fh, _ = await h.fs.open(await h.path_ino("b"), write=False)
    for i in range(12):
        assert await h.fs.read(fh, i * MiB, MiB) == ramp("b", i * MiB, MiB)
    assert fetcher.budget.value < fetcher.budget_blocks  # read-ahead holds blocks
    if stop == "seek":
        assert await h.fs.read(fh, 150 * MiB, 10) == ramp("b", 150 * MiB, 10)
    await h.fs.release(fh)
    await wait_for_idle_fetcher(h)
    assert fetcher.budget.value == fetcher.budget_blocks


async def read_files(h: Harness, names: list[str]) -> dict[str, bytes]:
    await h.fs.listing("shard")
    return {name: await h.read_all(f"shard/{name}") for name in names}


def put_shard(h: Harness, count: int, size: int) -> list[str]:
    names = [f"{i:05d}.bin" for i in range(count)]
    for name in names:
        h.backend.put(f"shard/{name}", ramp(name, 0, size))
    return names


async def test_files_read_in_name_order_are_fetched_ahead(h: Harness) -> None:
    names = put_shard(h, 120, 128 * 1024)
    got = await read_files(h, names)
    assert got == {name: ramp(name, 0, 128 * 1024) for name in names}
    # Nearly every file was requested before it was opened, and none twice.
    assert h.fs.dir_ahead.files_requested >= 100
    await wait_for_idle_fetcher(h)
    assert h.backend.counts["get_range"] == 120
    assert h.fs.fetcher.budget.value == h.fs.fetcher.budget_blocks


async def test_files_fetched_ahead_are_cached_before_they_are_opened(h: Harness) -> None:
    """Directory read-ahead stores what it fetched from the worker thread that fetched it:
    files never opened are in the block cache once the fetches are done, and a failed
    fetch stores nothing (the file is fetched again when it is opened)."""
    names = put_shard(h, 40, 64 * 1024)
    h.faulty.fail("get_range", BackendError("boom"), key="shard/00012.bin")
    await read_files(h, names[:6])
    await wait_for_idle_fetcher(h)

    def cached(name: str) -> bool:
        etag = h.backend.head(f"shard/{name}").etag
        return h.fs.cache.contains(BlockKey(f"shard/{name}", etag, 0))

    # read-ahead runs in name order from where the reader is: the files after the sixth
    # that it fetched are a prefix of the rest, all cached but the one that failed
    ahead = [name for name in names[6:] if cached(name) or name == "00012.bin"]
    assert len(ahead) >= 8 and ahead == names[6 : 6 + len(ahead)]
    assert not cached("00012.bin")
    gets = h.backend.counts["get_range"]
    got = await read_files(h, names[6:])
    assert got == {name: ramp(name, 0, 64 * 1024) for name in names[6:]}
    await wait_for_idle_fetcher(h)
    # every file once, and 00012 once more (its failed fetch stored nothing)
    assert h.backend.counts["get_range"] == gets + (40 - 6 - len(ahead)) + 1


async def test_interleaved_readers_in_name_order_are_fetched_ahead(h: Harness) -> None:
    names = put_shard(h, 160, 64 * 1024)
    await h.fs.listing("shard")

    async def reader(j: int) -> None:
        for name in names[j::8]:
            assert await h.read_all(f"shard/{name}") == ramp(name, 0, 64 * 1024)

    async with trio.open_nursery() as nursery:
        for j in range(8):
            nursery.start_soon(reader, j)
    assert h.fs.dir_ahead.files_requested >= 100
    await wait_for_idle_fetcher(h)
    assert h.backend.counts["get_range"] == 160


async def test_shuffled_files_are_not_fetched_ahead(h: Harness) -> None:
    names = put_shard(h, 300, 16 * 1024)
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    got = await read_files(h, shuffled)
    assert all(got[name] == ramp(name, 0, 16 * 1024) for name in names)
    assert h.fs.dir_ahead.files_requested <= 10  # chance alignments only
    assert h.backend.counts["get_range"] == 300  # and nothing fetched twice


async def wait_for_idle_fetcher(h: Harness) -> None:
    with trio.fail_after(10):
        while h.fs.fetcher.inflight:
            await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()


async def test_small_objects_are_fetched_whole_in_one_get(h: Harness) -> None:
    h.backend.put("small", ramp("small", 0, 3 * MiB + 1))
    assert await h.read_all("small", chunk=128 * 1024) == ramp("small", 0, 3 * MiB + 1)
    assert h.backend.counts["get_range"] == 1


async def test_seek_away_cancels_readahead(h: Harness) -> None:
    h.backend.put("f", ramp("f", 0, 200 * MiB))
    fh, _ = await h.fs.open(await h.path_ino("f"), write=False)
    h.faulty.latency = 0.2
    for i in range(4):  # sequential: the window grows
        await h.fs.read(fh, i * MiB, MiB)
    assert h.fs.fetcher.inflight
    await h.fs.read(fh, 150 * MiB, 4096)  # seek away
    stats = h.fs.fetcher.stats
    assert stats.prefetch_cancelled + stats.prefetch_detached > 0
    with trio.fail_after(30):  # what was let go finishes; nothing else starts
        while h.fs.fetcher.inflight:
            await trio.sleep(0.05)
    await h.fs.release(fh)


async def test_cancelled_readahead_gets_finish_into_the_cache(h: Harness) -> None:
    """A worker thread cannot be stopped in the middle of its GET, so cancelling read-ahead
    stops only what has not started: a GET on its way is let go by its reader, keeps its
    blocks in flight (a read of one joins it: no second GET) and finishes into the cache."""
    h.backend.put("f", ramp("f", 0, 200 * MiB))
    ino = await h.path_ino("f")
    fh, _ = await h.fs.open(ino, write=False)
    h.faulty.latency = 0.2
    for i in range(4):  # sequential: read-ahead starts
        await h.fs.read(fh, i * MiB, MiB)
    await trio.testing.wait_all_tasks_blocked()  # its GETs are in their worker threads
    ahead = sorted(bkey.index for bkey in h.fs.fetcher.inflight)
    assert len(ahead) > 8
    await trio.sleep(0.05)  # (not needed for correctness: more of the GETs have begun)
    await h.fs.read(fh, 150 * MiB, 4096)  # seek away: the read-ahead is let go
    assert h.fs.fetcher.stats.prefetch_detached > 0
    other, _ = await h.fs.open(ino, write=False)
    last = ahead[-1]
    assert bytes(await h.fs.read(other, last * MiB, 4096)) == ramp("f", last * MiB, 4096)
    etag = h.fs.inodes[ino].etag
    with trio.fail_after(30):
        while h.fs.fetcher.inflight:
            await trio.sleep(0.05)
    # Every block fetched was fetched once and kept (a read of a block let go joined its
    # GET; a fetch cancelled before its thread began sent no request).
    cached = sum(h.fs.cache.contains(BlockKey("f", etag, i)) for i in range(200))
    assert h.backend.bytes_read == cached * MiB
    assert cached > 8 + 1  # more than the first GET and the seek's block: read-ahead kept
    await h.fs.release(fh)
    await h.fs.release(other)


async def test_handle_is_pinned_to_its_version(h: Harness) -> None:
    h.backend.put("v", ramp("old", 0, 40 * MiB))
    ino = await h.path_ino("v")
    fh, _ = await h.fs.open(ino, write=False)
    assert bytes(await h.fs.read(fh, 0, 4096)) == ramp("old", 0, 4096)
    h.backend.put("v", ramp("new", 0, 40 * MiB))
    assert bytes(await h.fs.read(fh, 10, 100)) == ramp("old", 10, 100)  # cached: still served
    with pytest.raises(PreconditionFailed):
        await h.fs.read(fh, 30 * MiB, 4096)  # gone: an error, never the new bytes


async def test_keep_cache_only_when_unchanged(tmp_path: Path, h: Harness) -> None:
    h.backend.put("k", b"one")
    ino = await h.path_ino("k")
    _, keep = await h.fs.open(ino, write=False)
    assert keep is False  # first open: nothing in the page cache to keep
    _, keep = await h.fs.open(ino, write=False)
    assert keep is True
    h.backend.put("k", b"two")
    h.fs.inodes[ino].validated_at = 0  # the TTL expired
    _, keep = await h.fs.open(ino, write=False)
    assert keep is False
    assert h.fs.inodes[ino].size == 3


async def test_invalid_names_and_clashes_are_hidden_and_counted(h: Harness) -> None:
    for key in ["ok", "a//b", "c/./d", "clash", "clash/x", "n" * 300, ".wsfuse-uploads/1/00001"]:
        h.backend.put(key, b"")
    listing = await h.fs.listing("")
    assert [e.name for e in listing.entries] == ["a", "c", "clash", "ok"]
    assert (await h.fs.listing("a")).entries == ()
    assert h.fs.hidden_keys >= 4
