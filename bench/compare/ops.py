"""The file operations the workloads are made of, each returning a `Sample`.

They run in this process (threads for several readers) or as `fio`, and check what they read:
ramp data, so a wrong byte is an error, not a fast result.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.harness.env import KiB, MiB
from bench.harness.meter import Sample
from wsfuse.testing.ramp import ramp

READ_SIZE = MiB


def sequential_read(path: Path, key: str, size: int, *, verify_every: int = 16) -> Sample:
    """Read the whole file with 1 MiB reads, checking every `verify_every`-th MiB."""
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    total = index = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        t0 = time.perf_counter()
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            if index % verify_every == 0 and view[:n] != ramp(key, total, n):
                raise AssertionError(f"{path}: wrong bytes at offset {total}")
            total += n
            index += 1
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    if total != size:
        raise AssertionError(f"{path}: read {total} bytes, expected {size}")
    return Sample(bytes=total, seconds=elapsed)


def read_files(
    directory: Path,
    order: str,
    readers: int,
    budget: float,
    *,
    names: list[str] | None = None,
    prefix: str = "",
    size: int = 128 * KiB,
    seed: int = 1,
) -> tuple[Sample, list[str]]:
    """List `directory` (unless `names` is given, e.g. for the warm pass), then read its files
    whole: `order` "name" (sorted) or "shuffled"; reader i takes files i, i+R, i+2R, ... and
    each stops when `budget` seconds have passed. Returns the sample and the names read."""
    t0 = time.perf_counter()
    if names is None:
        listed = sorted(os.listdir(directory))
        if order == "shuffled":
            import random

            random.Random(seed).shuffle(listed)
        names = listed
    deadline = t0 + budget
    done: list[list[str]] = [[] for _ in range(readers)]
    errors: list[BaseException] = []

    def reader(i: int) -> None:
        buf = bytearray(size + 1)
        try:
            for j, name in enumerate(names[i::readers]):
                if time.perf_counter() > deadline:
                    return
                fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    n = os.readv(fd, [buf])
                    while n < len(buf):
                        m = os.readv(fd, [memoryview(buf)[n:]])
                        if m == 0:
                            break
                        n += m
                finally:
                    os.close(fd)
                if n != size:
                    raise AssertionError(f"{name}: {n} bytes, expected {size}")
                if j % 32 == 0 and buf[:4096] != ramp(prefix + name, 0, 4096):
                    raise AssertionError(f"{name}: wrong bytes")
                done[i].append(name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    read = [n for d in done for n in d]
    extra = {"files": len(read), "of": len(names), "readers": readers, "order": order}
    return Sample(bytes=len(read) * size, seconds=elapsed, ops=len(read), extra=extra), read


def scan(directory: Path, expect: int) -> Sample:
    """`os.scandir` + `lstat` of every entry (what `ls -l` does)."""
    t0 = time.perf_counter()
    n = 0
    with os.scandir(directory) as it:
        for entry in it:
            entry.stat(follow_symlinks=False)
            n += 1
    elapsed = time.perf_counter() - t0
    if n != expect:
        raise AssertionError(f"{directory}: {n} entries, expected {expect}")
    return Sample(seconds=elapsed, ops=n)


_PATTERN = ramp("bench-write", 0, 8 * MiB)


def write_file(path: Path, size: int, chunk: int = MiB) -> Sample:
    """Write `size` bytes with `chunk`-sized writes and close; the time includes close()."""
    view = memoryview(_PATTERN)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        off = 0
        while off < size:
            n = min(chunk, size - off)
            p = off % len(_PATTERN)
            off += os.write(fd, view[p : p + n])
    finally:
        os.close(fd)
    return Sample(bytes=size, seconds=time.perf_counter() - t0)


def create_files(directory: Path, count: int, size: int, budget: float) -> Sample:
    """One writer creates `count` files of `size` bytes (one write, close) until `budget` s."""
    body = _PATTERN[:size]
    t0 = time.perf_counter()
    deadline = t0 + budget
    n = 0
    for i in range(count):
        if time.perf_counter() > deadline:
            break
        fd = os.open(directory / f"f-{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        n += 1
    elapsed = time.perf_counter() - t0
    return Sample(bytes=n * size, seconds=elapsed, ops=n, extra={"files": n, "of": count})


def fio_random(path: Path, bs: str, runtime: float, size: int, timeout: float) -> Sample:
    """fio random reads (psync, one job, buffered, page cache of the file invalidated first)
    for `runtime` seconds; `extra["mib_blocks_touched"]`: the distinct 1 MiB blocks its reads
    touched (from fio's I/O log), which bounds what a filesystem that fetches 1 MiB blocks
    needs from the bucket."""
    fd, iolog = tempfile.mkstemp(prefix="fio-", suffix=".iolog")
    os.close(fd)
    argv = ["fio", "--name=rand", f"--filename={path}", "--readonly", "--rw=randread"]
    argv += [f"--bs={bs}", "--ioengine=psync", f"--size={size}", "--invalidate=1"]
    argv += [f"--runtime={runtime:g}", "--time_based", "--randrepeat=1", "--output-format=json"]
    argv += [f"--write_iolog={iolog}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        touched = blocks_in_iolog(Path(iolog), MiB)
    finally:
        os.unlink(iolog)
    if proc.returncode != 0:
        raise RuntimeError(f"fio failed ({proc.returncode}): {proc.stderr[-1000:]}")
    job = json.loads(proc.stdout[proc.stdout.index("{") :])["jobs"][0]["read"]
    pct = job.get("clat_ns", {}).get("percentile", {})
    sample = Sample(
        bytes=int(job["io_bytes"]),
        seconds=job["runtime"] / 1000,
        ops=int(job["total_ios"]),
        extra={"bs": bs, "iops": round(job["iops"], 1), "mib_blocks_touched": touched},
    )
    if pct:
        sample.extra["p50_ms"] = round(pct.get("50.000000", 0) / 1e6, 3)
        sample.extra["p99_ms"] = round(pct.get("99.000000", 0) / 1e6, 3)
    return sample


def blocks_in_iolog(iolog: Path, block: int) -> int:
    """Distinct `block`-sized blocks read in a fio I/O log: "file read offset length" per
    I/O (version 2), with a timestamp in front (version 3), among lines that add and open
    files."""
    touched: set[int] = set()
    with open(iolog) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[-3] == "read":
                offset, length = int(parts[-2]), int(parts[-1])
                touched.update(range(offset // block, (offset + length - 1) // block + 1))
    return len(touched)
