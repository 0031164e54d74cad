"""What a block cache at its capacity costs per stored block: evicted files written over
(recycle.py) against deleted and created again, in the same run.

A data set larger than the cache makes every stored block evict one. This fills a
`BlockCache` to its capacity, then stores `--blocks` more 1 MiB blocks with O_DIRECT (as
the fetcher stores a cold read's blocks), in alternating rounds of the two variants, each in
a fresh directory under `--dir` (deleted at the end), and prints the medians of wall time
and of the storing thread's CPU per block, and their ratios.

    .venv/bin/python bench/cache_churn.py [--dir /var/tmp] [--blocks 1024] [--capacity-mib 256]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from wsfuse.cache.blockcache import BlockCache
from wsfuse.cache.recycle import RECYCLE_FILES
from wsfuse.cache.schema import BlockKey

MIB = 1 << 20


def one_round(
    directory: Path, spare_files: int, capacity_blocks: int, blocks: int
) -> tuple[float, float]:
    """(wall µs, CPU µs) per block stored into a full cache."""
    payload = [os.urandom(MIB) for _ in range(16)]
    cache = BlockCache(
        directory,
        block_size=MIB,
        capacity=capacity_blocks * MIB,
        min_free=0,
        spare_files=spare_files,
    )
    try:
        crcs = [cache.checksum(p) for p in payload]
        for i in range(capacity_blocks):
            cache.put(BlockKey("fill", "e", i), payload[i % 16], direct=True, crc=crcs[i % 16])
        wall, cpu = time.perf_counter(), time.thread_time()
        for i in range(blocks):
            cache.put(BlockKey("churn", "e", i), payload[i % 16], direct=True, crc=crcs[i % 16])
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        stats = cache.statistics()
        assert stats.evictions >= blocks, stats
        assert (stats.reused_files > 0) == (spare_files > 0), stats
    finally:
        cache.close()
    return wall / blocks * 1e6, cpu / blocks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--blocks", type=int, default=1024)
    parser.add_argument("--capacity-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wsfuse-cache-churn-", dir=args.dir))
    variants = {"written over": RECYCLE_FILES, "deleted + created": 0}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                wall, cpu = one_round(
                    scratch / f"{r}-{variants[name]}",
                    variants[name],
                    args.capacity_mib,
                    args.blocks,
                )
                results[name].append((wall, cpu))
                print(f"round {r + 1} {name:18} {wall:7.0f} µs wall {cpu:6.0f} µs CPU per block")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in results.items()
    }
    (rw, rc), (dw, dc) = med["written over"], med["deleted + created"]
    print(f"median, written over:      {rw:7.0f} µs wall {rc:6.0f} µs CPU per block")
    print(f"median, deleted + created: {dw:7.0f} µs wall {dc:6.0f} µs CPU per block")
    print(f"ratio (written over / deleted + created): wall {rw / dw:.2f}, CPU {rc / dc:.2f}")


if __name__ == "__main__":
    main()
