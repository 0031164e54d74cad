"""Mount configuration: every tunable in one frozen dataclass, each default with its reason.

`docs/configuration.md` lists the same options for users; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class MountConfig:
    cache_dir: Path
    # 1 MiB blocks: the kernel sends 1 MiB read requests (read_ahead_kb=1024, max_pages=256),
    # so one request is one block file read and one CRC check; random 4 KiB readers fetch at
    # most 1 MiB each (peers fetch 8-64 MiB per miss).
    block_size: int = MiB
    # The cache budget. 50 GiB holds a typical dataset shard set on a node's NVMe.
    cache_size: int = 50 * GiB
    # Leave this much free on the cache disk whatever the budget says: other jobs share it.
    min_free: int = 5 * GiB
    # How long listings and attributes are trusted (and what the kernel is told). A minute is
    # gcsfuse's default: datasets rarely change under a running job; 0 gives close-to-open.
    metadata_ttl: float = 60.0
    # A ranged GET of 8 MiB amortises S3's ~20 ms time-to-first-byte (8 MiB at ~100 MB/s per
    # stream is ~80 ms) and is the part size of boto3 and mountpoint-s3.
    fetch_size: int = 8 * MiB
    # Sequential read-ahead grows from one fetch to this much in flight per open file: 64 MiB is
    # 8 parallel 8 MiB GETs, enough to fill ~2 GB/s at 20 ms TTFB, without the peers' habit of
    # downloading hundreds of MiB on every miss.
    prefetch_max: int = 64 * MiB
    # ...in GETs of this size instead, when the file's first GET showed a connection far faster
    # than S3 gives one (`fast_link_rate`, time to first byte included): there the window is
    # not limited per connection but by the CPU, and half as many requests and streams cost
    # ~0.1 CPU-s per GiB less (a cold read 8% faster on the 2-core test VM). Against S3 (~90
    # MB/s per connection) 8 MiB GETs keep 8 connections busy, twice as many.
    fast_fetch_size: int = 16 * MiB
    fast_link_rate: float = 150e6
    # All prefetched-but-unconsumed bytes across files: bounds daemon memory by configuration,
    # never by file size (RSS target 300 MiB with ~100 MiB of interpreter and libraries).
    prefetch_budget: int = 128 * MiB
    # Objects up to this size are fetched whole by the first read: one request per small file.
    whole_object_max: int = 8 * MiB
    # A file written through the mount stays in the block cache after its upload only up to
    # this size. Copying a just-uploaded file into cache blocks reads and writes it on the
    # cache disk once more (~0.65 CPU s/GiB on the test VM) while the writer is already busy
    # with its next file: back-to-back 1 GiB checkpoints were 15% slower for it. Configs,
    # logs and small artifacts are read back; checkpoints rarely are on the node that wrote
    # them (JuiceFS keeps large writes' blocks only with --cache-large-write; mountpoint-s3
    # never caches writes).
    cache_written_max: int = 64 * MiB
    # Concurrent backend requests (and HTTP connections): 16 ranged GETs for prefetch plus
    # headroom for lookups and listings.
    backend_concurrency: int = 32
    # S3 listings carry no user metadata (modes, owners, mtimes, symlinks). A listed directory
    # with at most this many entries gets one HEAD per entry (16 at a time) so that `ls -l`,
    # `cp -a`, `rsync -a` and `tar` see them; larger directories (datasets) skip that cost and
    # show the mount's defaults until an entry is looked up on its own. 0 = never.
    metadata_heads_max: int = 1000
    uid: int = os.getuid()
    gid: int = os.getgid()
    file_mode: int = 0o644
    dir_mode: int = 0o755
    read_only: bool = False
    allow_other: bool = False


#: The defaults, for help texts and docs (the cache directory is resolved per mount).
DEFAULTS = MountConfig(cache_dir=Path("/dev/null"))
