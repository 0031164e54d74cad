"""Where the local block cache lives.

Default root: `/mnt/local_storage/wsfuse` when `/mnt/local_storage` exists (the node's NVMe on
Anyscale workspaces), else the user cache directory. Each bucket URI gets its own subdirectory,
named from the URI so that two mounts of different buckets never share blocks.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import platformdirs

from wsfuse.storage_uri import StorageURI

LOCAL_STORAGE = Path("/mnt/local_storage")


def default_cache_root(local_storage: Path = LOCAL_STORAGE) -> Path:
    if local_storage.is_dir():
        return local_storage / "wsfuse"
    return Path(platformdirs.user_cache_dir("wsfuse"))


def cache_dir_for(uri: StorageURI, root: Path | None = None) -> Path:
    """`ROOT/<readable-name>-<hash>`: readable for people, unique per URI."""
    text = str(uri)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80].strip("_")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return (root or default_cache_root()) / f"{readable}-{digest}"
