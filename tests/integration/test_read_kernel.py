"""What the kernel does with what wsfuse tells it, seen through a real mount: the page cache kept
across opens of an unchanged file, 1 MiB read requests, the metadata TTL as the kernel's
attribute and entry timeouts, inode numbers that survive the kernel forgetting them, and the
metadata a remount starts with. The daemon's `kernel_*` counters (`wsfuse status`) say which
requests reached it; request counts are taken at the S3 server."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BLOCK, S3Bucket
from wsfuse.testing.ramp import ramp

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sysfs, drop_caches)")


def _delta(before: dict[str, Any], after: dict[str, Any], *names: str) -> int:
    return sum(int(after[n]) - int(before[n]) for n in names)


def test_reopening_an_unchanged_file_is_served_by_the_page_cache(
    bucket: S3Bucket, mounter: Any
) -> None:
    size = 8 * BLOCK
    bucket.put("kc", ramp("kc", 0, size))
    m = mounter("--metadata-ttl", "1")
    path = m.path / "kc"
    assert path.read_bytes() == ramp("kc", 0, size)
    before, gets = m.status(), bucket.gets("kc")
    assert path.read_bytes() == ramp("kc", 0, size)  # a new open: keep_cache
    after = m.status()
    assert _delta(before, after, "kernel_reads") == 0  # every byte came from the page cache
    assert bucket.gets("kc") == gets
    # Replaced remotely: once the TTL has passed, a new open must not see the old pages.
    bucket.put("kc", ramp("kc-new", 0, size))
    time.sleep(1.2)
    assert path.read_bytes() == ramp("kc-new", 0, size)
    assert _delta(after, m.status(), "kernel_read_bytes") == size


@needs_root
def test_sequential_reads_reach_the_daemon_as_1_mib_requests(
    bucket: S3Bucket, mounter: Any
) -> None:
    size = 16 * BLOCK
    bucket.put("seq", ramp("seq", 0, size))
    m = mounter()
    before = m.status()
    with open(m.path / "seq", "rb", buffering=0) as f:
        got = b"".join(iter(lambda: f.read(BLOCK), b""))
    assert got == ramp("seq", 0, size)
    after = m.status()
    assert after["kernel_largest_read"] == 1 << 20
    assert _delta(before, after, "kernel_read_bytes") == size
    assert _delta(before, after, "kernel_reads") <= size // (1 << 20) + 2


def test_the_metadata_ttl_is_the_kernels_attribute_and_entry_timeout(
    bucket: S3Bucket, mounter: Any
) -> None:
    bucket.put("t", b"x")
    kept = mounter("--metadata-ttl", "60")
    (kept.path / "t").stat()
    before = kept.status()
    for _ in range(20):
        assert (kept.path / "t").stat().st_size == 1
    assert _delta(before, kept.status(), "kernel_lookups", "kernel_getattrs") == 0
    every_time = mounter("--metadata-ttl", "0", cache_dir=kept.cache_dir.with_name("cache2"))
    (every_time.path / "t").stat()
    before = every_time.status()
    for _ in range(20):
        assert (every_time.path / "t").stat().st_size == 1
    assert _delta(before, every_time.status(), "kernel_lookups", "kernel_getattrs") >= 20


def test_metadata_ttl_0_gives_close_to_open(bucket: S3Bucket, mounter: Any) -> None:
    bucket.put("cto", b"old")
    m = mounter("--metadata-ttl", "0")
    path = m.path / "cto"
    assert path.read_bytes() == b"old"
    bucket.put("cto", b"new and longer")
    assert path.stat().st_size == len(b"new and longer")  # no waiting for a TTL
    assert path.read_bytes() == b"new and longer"
    bucket.delete("cto")
    with pytest.raises(FileNotFoundError):
        path.stat()
    bucket.put("cto", b"back")
    assert path.read_bytes() == b"back"  # nor for a negative entry


@needs_root
def test_inode_numbers_survive_the_kernel_forgetting_them(bucket: S3Bucket, mounter: Any) -> None:
    bucket.put_many({f"d/{i}": ramp(f"d/{i}", 0, 100 + i) for i in range(20)})
    m = mounter()
    directory = m.path / "d"
    directory_ino = directory.stat().st_ino
    inodes = {name: (directory / name).stat().st_ino for name in os.listdir(directory)}
    assert len(inodes) == 20 and len(set(inodes.values())) == 20
    assert {e.name: e.inode() for e in os.scandir(directory)} == inodes  # readdir agrees
    forgets = m.status()["kernel_forgets"]
    deadline = time.monotonic() + 10
    while m.status()["kernel_forgets"] <= forgets:  # the kernel drops its dentries and inodes
        assert time.monotonic() < deadline, "the kernel sent no FORGET"
        Path("/proc/sys/vm/drop_caches").write_text("2")
        time.sleep(0.2)
    assert {name: (directory / name).stat().st_ino for name in inodes} == inodes
    for name in inodes:
        assert (directory / name).read_bytes() == ramp(f"d/{name}", 0, 100 + int(name))
    assert directory.stat().st_ino == directory_ino


def test_a_remount_starts_with_the_metadata_it_had(bucket: S3Bucket, mounter: Any) -> None:
    bucket.put_many({f"warm/{i:02d}": b"w" * i for i in range(30)})
    m = mounter()
    names = sorted(os.listdir(m.path / "warm"))
    sizes = {n: (m.path / "warm" / n).stat().st_size for n in names}
    m.stop()
    m2 = mounter()
    bucket.server.reset_stats()
    assert sorted(os.listdir(m2.path / "warm")) == names
    assert {n: (m2.path / "warm" / n).stat().st_size for n in names} == sizes
    assert bucket.server.count("LIST", bucket=bucket.name) == 0
    assert bucket.server.count("HEAD", bucket=bucket.name) == 0
