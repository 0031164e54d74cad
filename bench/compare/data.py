"""The data sets of issue 5, seeded into the local server without latency.

- one 1 GiB object (`data/big.bin`, ramp bytes, so every read can be checked);
- N objects of 128 KiB in one prefix (`small/`, 2,000 by default);
- N keys of 1 KiB in one prefix (`list/`, 10,000 by default), no directory markers.

Local copies (a 1 GiB file, the 1 KiB files) serve the local-file and passthrough ceilings.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.env import BUCKET, GiB, KiB, log
from bench.harness.server import seed, write_local_copy
from wsfuse.testing.ramp import ramp

BIG_KEY = "data/big.bin"
SMALL_PREFIX = "small/"
LIST_PREFIX = "list/"
SMALL_SIZE = 128 * KiB
LIST_SIZE = KiB


@dataclass
class DataSets:
    big_size: int = GiB
    small_count: int = 2000
    list_count: int = 10_000

    def small_keys(self) -> list[str]:
        return [f"{SMALL_PREFIX}f-{i:05d}.bin" for i in range(self.small_count)]

    def list_keys(self) -> list[str]:
        return [f"{LIST_PREFIX}k-{i:05d}" for i in range(self.list_count)]


def put_many(client: Any, keys: list[str], size: int, threads: int = 16) -> None:
    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=ramp(key, 0, size))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, keys))


def seed_all(client: Any, data: DataSets, *, big: bool, small: bool, listing: bool) -> None:
    if big:
        rate = seed(client, BIG_KEY, data.big_size)
        log(f"seeded {BIG_KEY} ({data.big_size / GiB:g} GiB) at {rate:.0f} MB/s")
    if small:
        put_many(client, data.small_keys(), SMALL_SIZE)
        log(f"seeded {data.small_count} x 128 KiB under {SMALL_PREFIX}")
    if listing:
        put_many(client, data.list_keys(), LIST_SIZE)
        log(f"seeded {data.list_count} x 1 KiB under {LIST_PREFIX}")


def local_copies(root: Path, data: DataSets, *, big: bool, listing: bool) -> Path:
    """The same bytes and names under `root` (which the passthrough serves); returns root."""
    if big:
        write_local_copy(root / BIG_KEY, BIG_KEY, data.big_size)
    if listing:
        (root / LIST_PREFIX).mkdir(parents=True, exist_ok=True)
        for key in data.list_keys():
            with open(root / key, "wb") as f:
                f.write(ramp(key, 0, LIST_SIZE))
    os.sync()
    return root


def delete_prefix(client: Any, prefix: str) -> int:
    """Delete every object under `prefix` (harness clean-up, not measured)."""
    n = 0
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for page in pages:
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": objs, "Quiet": True})
            n += len(objs)
    return n
