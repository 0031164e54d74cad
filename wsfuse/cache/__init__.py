"""The L1 cache on the node's local disk: block files with self-verifying headers, indexed
in LMDB, one daemon per cache directory. Formats: `wsfuse.cache.schema`; design:
docs/cache.md."""

from __future__ import annotations

from wsfuse.cache.blockcache import DEFAULT_BLOCK_SIZE, BlockCache, CacheStatistics
from wsfuse.cache.index import MetadataIndex
from wsfuse.cache.lock import CacheDirLock
from wsfuse.cache.schema import BlockKey

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "BlockCache",
    "BlockKey",
    "CacheDirLock",
    "CacheStatistics",
    "MetadataIndex",
]
