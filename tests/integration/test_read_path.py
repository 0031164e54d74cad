"""The read path through a real FUSE mount over the local S3 server; request counts are taken
at the server, not from wsfuse's own counters."""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BLOCK, S3Bucket
from wsfuse.config import DEFAULTS
from wsfuse.mount import control_socket_path
from wsfuse.testing.ramp import ramp

SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17]


def test_ramp_objects_read_whole_ranges_and_mmap(bucket: S3Bucket, mounter: Any) -> None:
    for size in SIZES:
        bucket.put(f"ramp/{size}", ramp(f"ramp/{size}", 0, size))
    m = mounter()
    rng = random.Random(7)
    for size in SIZES:
        path = m.path / "ramp" / str(size)
        assert path.stat().st_size == size
        assert path.read_bytes() == ramp(f"ramp/{size}", 0, size)
        with open(path, "rb") as f:
            for _ in range(20):
                off = rng.randrange(0, size + 10)
                n = rng.randrange(0, 3 * BLOCK)
                f.seek(off)
                assert f.read(n) == ramp(f"ramp/{size}", off, max(0, min(n, size - off)))
            if size:
                with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                    assert mm[:] == ramp(f"ramp/{size}", 0, size)
                    off = size // 2
                    assert mm[off : off + 4096] == ramp(f"ramp/{size}", off, min(4096, size - off))


@pytest.mark.slow
def test_100_mib_object_byte_exact(bucket: S3Bucket, mounter: Any) -> None:
    size = 100 * 1024 * 1024
    bucket.put("big", ramp("big", 0, size))
    m = mounter()
    with open(m.path / "big", "rb") as f:
        off = 0
        while chunk := f.read(4 * 1024 * 1024 + 123):
            assert chunk == ramp("big", off, len(chunk)), f"mismatch at {off}"
            off += len(chunk)
    assert off == size
    # sequential prefetch must not read the object more than ~once
    assert bucket.get_bytes("big") <= 1.1 * size
    rng = random.Random(100)
    with open(m.path / "big", "rb") as f:
        for _ in range(30):
            off = rng.randrange(0, size)
            n = rng.randrange(1, 3 * BLOCK)
            f.seek(off)
            assert f.read(n) == ramp("big", off, min(n, size - off)), f"range at {off}"
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert len(mm) == size
            for _ in range(30):
                off = rng.randrange(0, size - 4096)
                assert mm[off : off + 4096] == ramp("big", off, 4096), f"mmap at {off}"
            assert mm[:] == ramp("big", 0, size)


def test_listing_2500_keys_nested_dirs_and_hidden_keys(bucket: S3Bucket, mounter: Any) -> None:
    bucket.put_many({f"many/{i:05d}": b"x" for i in range(2500)})
    keys = [
        "a/b/c/d.txt",
        "a/b/e.txt",
        "a/f.txt",
        "bad//empty-seg",
        "x" * 300,
        "dots/./x",
        "clash",
        "clash/inner",
    ]
    bucket.put_many({key: b"y" for key in keys})
    m = mounter()
    names = os.listdir(m.path / "many")
    assert sorted(names) == [f"{i:05d}" for i in range(2500)]
    assert sorted(os.listdir(m.path)) == ["a", "bad", "clash", "dots", "many"]
    assert sorted(os.listdir(m.path / "a")) == ["b", "f.txt"]
    assert sorted(os.listdir(m.path / "a" / "b")) == ["c", "e.txt"]
    assert (m.path / "a" / "b" / "c" / "d.txt").read_bytes() == b"y"
    assert (m.path / "a" / "b").is_dir()
    assert os.listdir(m.path / "bad") == []  # "bad//empty-seg" cannot be a path
    assert os.listdir(m.path / "dots") == []
    assert (m.path / "clash").is_dir()  # the directory wins over the file "clash"
    assert os.listdir(m.path / "clash") == ["inner"]
    with pytest.raises(FileNotFoundError):
        (m.path / "nope").stat()


def test_readdir_under_concurrent_change_skips_and_repeats_nothing(
    bucket: S3Bucket, mounter: Any
) -> None:
    """The kernel reads a large directory in many READDIR requests, each from the offset where
    the last one ended; entries created and removed in between (here and in the bucket) must
    not shift those offsets: no name is returned twice, none that stays is skipped."""
    names = {f"{i:05d}" for i in range(2500)}
    bucket.put_many({f"chg/{n}": b"x" for n in names})
    m = mounter()
    directory = m.path / "chg"
    seen: list[str] = []
    with os.scandir(directory) as entries:
        for n, entry in enumerate(entries):
            seen.append(entry.name)
            if n == 100:
                (directory / "00000-new").write_bytes(b"n")  # sorts before the offset
                (directory / "zzzzz-new").write_bytes(b"n")  # and after it
                os.unlink(directory / "02000")  # not returned yet
                bucket.put("chg/01500-remote", b"r")
    assert len(seen) == len(set(seen)), "a name was returned twice"
    assert names - {"02000"} <= set(seen), "a name that stayed was skipped"
    assert "02000" not in os.listdir(directory)
    assert {"00000-new", "zzzzz-new"} <= set(os.listdir(directory))


def test_stat_after_listing_makes_no_head(bucket: S3Bucket, mounter: Any) -> None:
    for i in range(50):
        bucket.put(f"d/{i}", b"z" * i)
    m = mounter()
    os.listdir(m.path / "d")
    bucket.server.reset_stats()
    for i in range(50):
        assert (m.path / "d" / str(i)).stat().st_size == i
        assert (m.path / "d" / str(i)).read_bytes() == b"z" * i
    assert bucket.server.count("HEAD", bucket=bucket.name) == 0
    assert bucket.server.count("LIST", bucket=bucket.name) == 0


def test_warm_remount_makes_zero_gets(bucket: S3Bucket, mounter: Any) -> None:
    data = ramp("w", 0, 5 * BLOCK + 3)
    bucket.put("dir/w", data)
    m = mounter()
    assert (m.path / "dir" / "w").read_bytes() == data
    m.stop()
    bucket.server.reset_stats()
    m2 = mounter()
    assert (m2.path / "dir" / "w").read_bytes() == data
    assert bucket.gets() == 0


def test_two_concurrent_readers_of_one_block_make_one_get(bucket: S3Bucket, mounter: Any) -> None:
    """Two handles read different pages of one uncached block (the same page would be one
    kernel read: the second reader would wait on the page lock, not on the daemon)."""
    bucket.put("one", ramp("one", 0, BLOCK))
    m = mounter("-o", "metadata_ttl=600")
    (m.path / "one").stat()
    before = m.status()
    # Both readers arrive while the GET is in flight: 0.6 s was once not enough in a full
    # suite on a busy 2-core machine (one reader found the block cached).
    bucket.server.latency = 2.0
    try:
        results: dict[int, bytes] = {}

        def read(offset: int) -> None:
            with open(m.path / "one", "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
                results[offset] = os.pread(f.fileno(), 4096, offset)

        threads = [threading.Thread(target=read, args=(off,)) for off in (0, BLOCK // 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        bucket.server.latency = 0
    assert results == {off: ramp("one", off, 4096) for off in (0, BLOCK // 2)}
    after = m.status()
    assert after["kernel_reads"] - before["kernel_reads"] == 2  # both reached the daemon...
    # ...while the GET was in flight: each read waited on it (the first reader on the fetch
    # it started; a reader arriving after it would have found the block cached)...
    assert after["inflight_joins"] - before["inflight_joins"] == 2
    assert bucket.gets("one") == 1  # ...and it fetched the block once


def test_random_4k_reads_fetch_at_most_a_block_each(bucket: S3Bucket, mounter: Any) -> None:
    size = 64 * BLOCK
    bucket.put("rand", ramp("rand", 0, size))
    m = mounter()
    rng = random.Random(3)
    n = 20
    with open(m.path / "rand", "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        for _ in range(n):
            off = rng.randrange(0, size - 4096)
            assert os.pread(f.fileno(), 4096, off) == ramp("rand", off, 4096)
    assert bucket.get_bytes("rand") <= n * BLOCK


def test_sequential_read_ahead_starts_small_grows_and_runs_in_parallel(
    bucket: S3Bucket, mounter: Any
) -> None:
    size = 64 * BLOCK
    bucket.put("par", ramp("par", 0, size))
    m = mounter()
    (m.path / "par").stat()
    bucket.server.reset_stats()
    bucket.server.delays.reset_overlap()
    bucket.server.latency = 0.05
    try:
        with open(m.path / "par", "rb", buffering=0) as f:
            assert f.read(BLOCK) == ramp("par", 0, BLOCK)  # a reader of the head only...
        head_bytes = bucket.get_bytes("par")
        deadline = time.monotonic() + 10
        while m.status()["cache_bytes"] < head_bytes and time.monotonic() < deadline:
            time.sleep(0.05)  # what it fetched, cancelled read-ahead included, is stored
            head_bytes = bucket.get_bytes("par")
        with open(m.path / "par", "rb", buffering=0) as f:
            got = b"".join(iter(lambda: f.read(BLOCK), b""))
    finally:
        bucket.server.latency = 0
    assert head_bytes <= 2 * DEFAULTS.fetch_size  # ...does not start the whole window
    assert got == ramp("par", 0, size)
    assert bucket.get_bytes("par") <= 1.1 * size
    assert bucket.server.delays.peak_overlap >= 2, "read-ahead GETs did not overlap"


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_read_ahead_memory_is_bounded_by_the_budget_not_by_the_readers(
    bucket: S3Bucket, mounter: Any
) -> None:
    """Eight slow sequential readers would each grow a 64 MiB window (512 MiB in all): the
    prefetch budget (128 MiB) bounds what the daemon holds, whatever the files' sizes."""
    readers, size = 8, 96 * BLOCK
    bucket.put_many({f"mem/{i}": ramp(f"mem/{i}", 0, size) for i in range(readers)})
    m = mounter()
    os.listdir(m.path / "mem")
    assert m.proc is not None
    baseline = _peak_rss(m.proc.pid)
    failures: list[str] = []

    def read(i: int) -> None:
        with open(m.path / "mem" / str(i), "rb", buffering=0) as f:
            off = 0
            while chunk := f.read(BLOCK):
                if chunk != ramp(f"mem/{i}", off, len(chunk)):
                    failures.append(f"mem/{i} at {off}")
                off += len(chunk)
                time.sleep(0.002)  # slower than read-ahead: the windows fill up

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    grown = _peak_rss(m.proc.pid) - baseline
    # 156 MiB measured; 498 MiB with the budget lifted
    assert grown < DEFAULTS.prefetch_budget + 128 * BLOCK, f"peak RSS grew {grown >> 20} MiB"
    assert m.status()["prefetch_skipped_budget"] > 0  # the budget, not the windows, stopped it


def test_a_larger_read_ahead_kb_still_reads_one_stream(bucket: S3Bucket, mounter: Any) -> None:
    """With read_ahead_kb above the 1 MiB request size the kernel sends a sequential reader's
    read-ahead as several requests at once, served in any order: still one stream, fetched in
    fetch-sized GETs, each byte once."""
    size = 48 * BLOCK
    bucket.put("ra", ramp("ra", 0, size))
    m = mounter()
    st = os.stat(m.path)
    read_ahead = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    try:
        read_ahead.write_text("8192")
    except OSError as exc:
        pytest.skip(f"cannot set {read_ahead}: {exc}")
    got = bytearray()
    with open(m.path / "ra", "rb", buffering=0) as f:
        while chunk := f.read(BLOCK):
            got += chunk
    assert got == ramp("ra", 0, size)
    assert bucket.get_bytes("ra") == size
    assert bucket.gets("ra") <= size // (8 * BLOCK) + 3


def _block_files(cache_dir: Path) -> list[Path]:
    return [
        p
        for p in (cache_dir).rglob("*")
        if p.is_file() and "blocks" in p.parts and not p.name.endswith(".tmp")
    ]


def test_the_cache_stays_within_cache_size(bucket: S3Bucket, mounter: Any, tmp_path: Path) -> None:
    size = 16 * BLOCK
    bucket.put("e", ramp("e", 0, size))
    m = mounter("--cache-size", "4M")
    assert (m.path / "e").read_bytes() == ramp("e", 0, size)
    status = m.status()
    assert status["cache_capacity"] == 4 * BLOCK
    assert 0 < status["cache_bytes"] <= 4 * BLOCK
    assert 0 < _block_files_settled(tmp_path / "cache", 4) <= 4
    status = m.status()
    assert status["cache_evictions"] >= 16 - 4
    if _takes_o_direct(tmp_path):
        # Blocks handed to the reader are stored with O_DIRECT, over the files just evicted.
        assert status["cache_reused_files"] >= 1
    m.stop()
    bucket.server.reset_stats()
    m2 = mounter("--cache-size", "4M")  # what was evicted comes from the bucket again
    assert (m2.path / "e").read_bytes() == ramp("e", 0, size)
    # (the blocks it kept are evicted by the first ones read again before they are reached:
    # a sequential pass larger than the cache is LRU's worst case)
    assert size - 4 * BLOCK <= bucket.get_bytes("e") <= size
    assert _block_files_settled(tmp_path / "cache", 4) <= 4


def _takes_o_direct(directory: Path) -> bool:
    try:
        os.close(os.open(directory / "o-direct-probe", os.O_RDWR | os.O_CREAT | os.O_DIRECT))
    except OSError:
        return False
    finally:
        (directory / "o-direct-probe").unlink(missing_ok=True)
    return True


def _block_files_settled(cache: Path, limit: int) -> int:
    """How many block files `cache` holds once there are at most `limit` (or after 5 s): a
    block is renamed into place just before its eviction victim's file is removed, so for a
    moment there can be one more."""
    deadline = time.monotonic() + 5
    while len(_block_files(cache)) > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(_block_files(cache))


def test_corrupt_cache_block_is_refetched_and_logged(
    bucket: S3Bucket, mounter: Any, tmp_path: Path
) -> None:
    data = ramp("c", 0, BLOCK)
    bucket.put("c", data)
    m = mounter()
    assert (m.path / "c").read_bytes() == data
    m.stop()
    files = _block_files(tmp_path / "cache")
    assert len(files) == 1
    raw = bytearray(files[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # in the data (a file may end with zeros after it)
    files[0].write_bytes(bytes(raw))
    bucket.server.reset_stats()
    m2 = mounter()
    assert (m2.path / "c").read_bytes() == data
    assert bucket.gets("c") == 1
    m2.stop()
    assert "WARNING" in m2.log() and "corrupt" in m2.log().lower()


def test_kill9_while_filling_cache_then_remount_reads_exact(
    bucket: S3Bucket, mounter: Any, tmp_path: Path
) -> None:
    size = 40 * BLOCK
    bucket.put("k9", ramp("k9", 0, size))
    m = mounter()
    bucket.server.latency = 0.3
    try:
        with open(m.path / "k9", "rb") as f:
            f.read(2 * BLOCK)  # read-ahead GETs are now in flight (0.3 s each)
            deadline = time.monotonic() + 5
            while m.status()["cache_blocks"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # the first GET's blocks reach the disk and the index
            m.kill9()
    except OSError:
        pass  # the read may fail when the daemon dies under it
    finally:
        bucket.server.latency = 0
    stored = len(_block_files(tmp_path / "cache"))
    assert 0 < stored < 40, "the daemon was not killed in the middle of filling its cache"
    bucket.server.reset_stats()
    m2 = mounter()
    with open(m2.path / "k9", "rb") as f:
        off = 0
        while chunk := f.read(3 * BLOCK + 5):
            assert chunk == ramp("k9", off, len(chunk)), f"mismatch at {off}"
            off += len(chunk)
    assert off == size
    assert bucket.get_bytes("k9") < size  # what was stored whole before the kill served


def test_remote_overwrite_mid_read_never_mixes_versions(bucket: S3Bucket, mounter: Any) -> None:
    size = 64 * BLOCK  # larger than the first read and its read-ahead
    bucket.put("v", ramp("v-old", 0, size))
    m = mounter("--metadata-ttl", "1")
    with open(m.path / "v", "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(f.fileno(), 4096, 0) == ramp("v-old", 0, 4096)
        bucket.put("v", ramp("v-new", 0, size))
        # the cached block of the pinned version still serves
        assert os.pread(f.fileno(), 4096, 100) == ramp("v-old", 100, 4096)
        # data of the old version that is not cached is gone: EIO, never new bytes
        with pytest.raises(OSError) as err:
            os.pread(f.fileno(), 4096, 60 * BLOCK)
        assert err.value.errno == 5

    time.sleep(1.2)
    assert (m.path / "v").read_bytes() == ramp("v-new", 0, size)
    assert "no longer version" in m.log() or "PreconditionFailed" in m.log() or "412" in m.log()


def test_status_command(bucket: S3Bucket, mounter: Any, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    size = 3 * BLOCK
    bucket.put("s", ramp("s", 0, size))
    m = mounter()
    assert (m.path / "s").read_bytes() == ramp("s", 0, size)
    deadline = time.monotonic() + 10
    while (cold := m.status())["cache_blocks"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # blocks handed to the reader from memory reach the disk after it
    assert cold["backend_bytes"] == size == bucket.get_bytes("s")
    assert cold["backend_requests"] >= bucket.gets("s") >= 1
    assert cold["cache_blocks"] == 3 and cold["cache_bytes"] == size
    assert cold["cache_hits"] == 0 and cold["hit_ratio"] == 0
    assert cold["demand_fetches"] + cold["prefetches"] >= 1
    assert cold["pending_uploads"] == [] and cold["open_handles"] == 0
    # The control socket lives under the cache directory, not in the mounted tree.
    control = Path(os.fsdecode(os.getxattr(m.path, "user.wsfuse.control")))
    assert control.is_socket() and control == control_socket_path(m.cache_dir)
    if len(os.fsencode(m.cache_dir / "control.sock")) < 100:
        assert control.parent == m.cache_dir
    assert not [n for n in os.listdir(m.path) if "wsfuse" in n or n.endswith(".sock")]
    m.stop()
    warm = mounter()  # the same cache directory: every block is a hit
    assert (warm.path / "s").read_bytes() == ramp("s", 0, size)
    out = subprocess.run(
        [sys.executable, "-m", "wsfuse", "status", str(warm.path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = json.loads(out)
    assert status["cache_hits"] == 3 and status["cache_misses"] == 0
    assert status["hit_ratio"] == 1.0
    assert status["backend_bytes"] == 0
    human = subprocess.run(
        [sys.executable, "-m", "wsfuse", "status", str(warm.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "hit ratio                1.000" in human
    assert "cache bytes              3.0 MiB" in human
