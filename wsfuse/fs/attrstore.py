"""What we know of objects' POSIX attributes (mode, owner, mtime, symlink-ness), keyed by path
and version, kept in memory and in the index's "objects" DB so a remount remembers them.

S3 listings carry no user metadata, so attributes come from HEADs (of small directories, see
`MountConfig.metadata_heads_max`), from GCS listings (which do carry metadata), and from our own
writes. An entry is valid only for the version (etag) it was learned from.
"""

from __future__ import annotations

import hashlib
import json

from wsfuse.cache import MetadataIndex
from wsfuse.fs.posixmeta import PosixAttrs

OBJECTS_DB = "objects"
DIR_VERSION = "dir"  # directories have no single version: their marker's attributes


def _key(path: str) -> bytes:
    raw = b"a/" + path.encode("utf-8", "surrogateescape")
    return raw if len(raw) <= 480 else b"h/" + hashlib.sha256(raw).digest()


class AttrStore:
    def __init__(self, index: MetadataIndex | None) -> None:
        self.index = index
        self._mem: dict[str, tuple[str, PosixAttrs]] = {}

    def get(self, path: str, version: str) -> PosixAttrs | None:
        known = self._mem.get(path)
        if known is None and self.index is not None:
            raw = self.index.get(OBJECTS_DB, _key(path))
            if raw is not None:
                doc = json.loads(raw)
                known = (
                    doc["v"],
                    PosixAttrs(doc.get("m"), doc.get("u"), doc.get("g"), doc.get("t")),
                )
                self._mem[path] = known
        if known is not None and known[0] == version:
            return known[1]
        return None

    def put_many(self, items: list[tuple[str, str, PosixAttrs]]) -> None:
        rows = []
        for path, version, attrs in items:
            self._mem[path] = (version, attrs)
            doc = {"v": version, "m": attrs.mode, "u": attrs.uid, "g": attrs.gid, "t": attrs.mtime}
            rows.append((_key(path), json.dumps(doc).encode()))
        if self.index is not None and rows:
            self.index.put_many(OBJECTS_DB, rows)

    def put(self, path: str, version: str, attrs: PosixAttrs) -> None:
        self.put_many([(path, version, attrs)])

    def drop_tree(self, path: str) -> None:
        """Forget `path` and everything under it (a directory renamed or removed)."""
        prefix = path + "/"
        for known in [p for p in self._mem if p == path or p.startswith(prefix)]:
            del self._mem[known]
        if self.index is not None:
            rows = self.index.items(OBJECTS_DB, _key(prefix))
            self.index.delete_many(OBJECTS_DB, [k for k, _ in rows] + [_key(path)])

    def drop(self, path: str) -> None:
        self._mem.pop(path, None)
        if self.index is not None:
            self.index.delete_many(OBJECTS_DB, [_key(path)])
