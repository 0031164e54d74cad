#!/usr/bin/env bash
# The main job on the embedded default bucket: set up, check the machine (wsfuse doctor), mount
# the bucket with default settings, show it working (list, read, re-read from the cache, status),
# and unmount. Set WSFUSE_DEMO_MOUNT to choose the mount point (default /mnt/ws).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ws=.venv/bin/wsfuse
mnt=${WSFUSE_DEMO_MOUNT:-/mnt/ws}

echo "== wsfuse doctor (FUSE, cache directory, embedded bucket, write test)"
$ws doctor --write-test

echo "== seeding the embedded bucket with a small dataset (through the backend API)"
.venv/bin/python - <<'PY'
from wsfuse.backends.localdir import LocalDirBackend
from wsfuse.storage_uri import embedded_bucket_dir
from wsfuse.testing.ramp import ramp

bucket = LocalDirBackend(str(embedded_bucket_dir()), create=True)
bucket.put("demo/README.txt", b"Hello from the wsfuse embedded bucket.\n")
for i in range(3):
    key = f"demo/shards/shard-{i:03d}.bin"
    bucket.put(key, ramp(key, 0, 24 * 1024 * 1024))
print("bucket:", bucket.name)
PY

mkdir -p "$mnt"
cleanup() { $ws unmount "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
echo "== wsfuse mount $mnt (embedded default bucket; returns once mounted)"
$ws mount "$mnt"
echo "== ls -l $mnt/demo $mnt/demo/shards"
ls -l "$mnt/demo" "$mnt/demo/shards"
echo "== cat $mnt/demo/README.txt"
cat "$mnt/demo/README.txt"
echo "== reading the shards: first from the bucket through the NVMe cache, then again"
.venv/bin/python - "$mnt" <<'PY'
import sys, time
from pathlib import Path

from wsfuse.testing.ramp import ramp

shards = sorted(Path(sys.argv[1], "demo", "shards").iterdir())
for label in ("first read", "second read (kernel page cache)"):
    blobs = [bytearray(shard.stat().st_size) for shard in shards]  # no allocation in the timing
    start, total = time.perf_counter(), 0
    for shard, buf in zip(shards, blobs):
        with open(shard, "rb", buffering=0) as f:
            total += f.readinto(buf)
    secs = time.perf_counter() - start
    exact = all(b == ramp(f"demo/shards/{s.name}", 0, len(b)) for s, b in zip(shards, blobs))
    print(f"{label}: {total >> 20} MiB in {secs:.3f} s ({total / secs / 1e6:.0f} MB/s), "
          f"byte-exact: {exact}")
PY
echo "== wsfuse status $mnt"
$ws status "$mnt"
echo "== wsfuse unmount $mnt"
$ws unmount "$mnt"
trap - EXIT
echo "demo finished: mounted, listed, read, cached, unmounted"
