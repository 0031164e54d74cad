"""What the block cache's component tests share: a clock that ticks, an opener that closes
what it opened, and the block files on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wsfuse.cache.blockcache import BlockCache


class Tick:
    """A clock that advances one second per call, so the LRU order is exact."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def cache_opener(
    cache_dir: Path, block_size: int, **defaults: Any
) -> Iterator[Callable[..., BlockCache]]:
    """For a fixture: opens caches on `cache_dir` (one at a time; `block_size`, no free-space
    guard and `defaults` unless given) and closes whatever is left open."""
    opened: list[BlockCache] = []

    def open_(**kwargs: Any) -> BlockCache:
        kwargs.setdefault("block_size", block_size)
        kwargs.setdefault("min_free", 0)
        for name, value in defaults.items():
            kwargs.setdefault(name, value)
        cache = BlockCache(cache_dir, **kwargs)
        opened.append(cache)
        return cache

    yield open_
    for cache in opened:
        cache.close()


def files_on_disk(cache_dir: Path) -> set[bytes]:
    """Ids of the files under blocks/ (block files and run files)."""
    return {bytes.fromhex(p.name) for p in (cache_dir / "blocks").glob("*/*")}
