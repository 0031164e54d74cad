"""How keys become a tree: names, directories, clashes, hidden keys.

Key `a/b/c` is file `/a/b/c`; directories are implicit from prefixes, or explicit `a/b/`
markers. A key that cannot be a path (empty, `.` or `..` segment, NUL, a segment over 255
bytes) is hidden and counted, never breaks a listing. When `a` is both a file and a prefix,
the directory wins and the file is hidden (and counted).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass

from wsfuse.backends.base import ListPage, ObjectInfo

NAME_MAX = 255
# Internal keys at the bucket root: the local bucket's work area and GCS composite uploads.
RESERVED_ROOT_NAMES = frozenset({".wsfuse", ".wsfuse-uploads"})


def valid_name(name: str) -> bool:
    return (
        name not in ("", ".", "..")
        and "\0" not in name
        and "/" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX
    )


def child_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def dir_prefix(path: str) -> str:
    """The key prefix of the directory at `path` ("" for the root)."""
    return f"{path}/" if path else ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory: a file (with its LIST info) or a directory."""

    name: str
    is_dir: bool
    size: int = 0
    etag: str = ""
    mtime: float = 0.0

    @classmethod
    def file(cls, name: str, info: ObjectInfo) -> Entry:
        return cls(name, False, info.size, info.etag, info.mtime)


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory's entries in name order, and how many keys were hidden."""

    entries: tuple[Entry, ...]
    by_name: dict[str, Entry]
    hidden: int
    fetched_at: float  # wall-clock seconds, so a persisted listing ages across restarts
    has_local: bool = False  # includes files written here and not uploaded yet
    # The directory's own `dir/` marker was listed (its POSIX attributes live there); None:
    # not known (a listing persisted before this was recorded).
    marker: bool | None = False

    @classmethod
    def build(
        cls,
        path: str,
        pages: Iterable[ListPage],
        fetched_at: float,
        extra: Iterable[Entry] = (),
    ) -> Listing:
        prefix = dir_prefix(path)
        n = len(prefix)
        files: dict[str, Entry] = {}
        dirs: dict[str, Entry] = {}
        hidden = 0
        marker = False
        for page in pages:
            for info in page.objects:
                name = info.key[n:]
                if name == "":
                    marker = True  # the directory's own marker: not an entry
                    continue
                if not valid_name(name) or (not path and name in RESERVED_ROOT_NAMES):
                    hidden += 1
                    continue
                files[name] = Entry.file(name, info)
            for p in page.prefixes:
                name = p[n:-1]
                if not valid_name(name) or (not path and name in RESERVED_ROOT_NAMES):
                    hidden += 1
                    continue
                dirs[name] = Entry(name, True, mtime=fetched_at)
        for name in files.keys() & dirs.keys():
            hidden += 1  # the directory wins
            del files[name]
        local = {e.name: e for e in extra if e.name not in dirs}
        merged = {**files, **local, **dirs}
        return cls(_in_name_order(merged), merged, hidden, fetched_at, bool(local), marker)

    def with_entry(self, entry: Entry) -> Listing:
        """This listing with `entry` added (or replacing the one of its name). A binary search
        and copies of the tuple and the name map (C loops) instead of a re-sort in Python: a
        directory that gains its files one create at a time re-sorted all of them on every
        create."""
        entries = self.entries
        i = bisect.bisect_left(entries, entry.name, key=_name)
        after = i + 1 if i < len(entries) and entries[i].name == entry.name else i
        by_name = dict(self.by_name)
        by_name[entry.name] = entry
        return self._edited((*entries[:i], entry, *entries[after:]), by_name)

    def without_entry(self, name: str) -> Listing:
        """This listing without the entry `name` (which it has)."""
        entries = self.entries
        i = bisect.bisect_left(entries, name, key=_name)
        by_name = dict(self.by_name)
        del by_name[name]
        if i == len(entries) or entries[i].name != name:  # never: built in step with by_name
            return self._edited(_in_name_order(by_name), by_name)
        return self._edited((*entries[:i], *entries[i + 1 :]), by_name)

    def _edited(self, entries: tuple[Entry, ...], by_name: dict[str, Entry]) -> Listing:
        return Listing(entries, by_name, self.hidden, self.fetched_at, marker=self.marker)

    def encode(self) -> bytes:
        rows = [[e.name, int(e.is_dir), e.size, e.etag, e.mtime] for e in self.entries]
        doc = {"v": 1, "t": self.fetched_at, "h": self.hidden, "m": self.marker, "e": rows}
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Listing | None:
        try:
            doc = json.loads(raw)
            if doc.get("v") != 1:
                return None
            entries = tuple(Entry(r[0], bool(r[1]), r[2], r[3], r[4]) for r in doc["e"])
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        marker = doc.get("m")
        return cls(
            entries,
            {e.name: e for e in entries},
            int(doc["h"]),
            float(doc["t"]),
            marker=marker if isinstance(marker, bool) else None,
        )


def _in_name_order(by_name: dict[str, Entry]) -> tuple[Entry, ...]:
    return tuple(by_name[k] for k in sorted(by_name))


def _name(entry: Entry) -> str:
    return entry.name
