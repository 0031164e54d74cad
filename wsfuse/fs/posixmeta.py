"""POSIX attributes in object metadata, in s3fs-fuse's conventions (a contract: see
docs/semantics.md): `mode` (decimal st_mode, file type bits included), `uid`, `gid`, `mtime`
(seconds since the epoch). On S3 these are `x-amz-meta-*` headers; on GCS custom metadata with
the same names. A symlink is an object whose body is the target and whose mode has S_IFLNK.
So buckets written by s3fs read back right, and vice versa.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass

#: Bumped if the encoding ever changes; written as `wsfuse-meta` for forward compatibility.
META_VERSION = "1"


@dataclass(frozen=True, slots=True)
class PosixAttrs:
    mode: int | None = None  # full st_mode (type + permission bits), None = mount default
    uid: int | None = None
    gid: int | None = None
    mtime: float | None = None

    @property
    def is_symlink(self) -> bool:
        return self.mode is not None and stat.S_ISLNK(self.mode)


def decode(metadata: Mapping[str, str] | None) -> PosixAttrs:
    """Attributes from user metadata; anything missing or malformed is None (use the default)."""
    if not metadata:
        return PosixAttrs()
    lower = {k.lower(): v for k, v in metadata.items()}

    def num(name: str, conv: type[int] | type[float]) -> int | float | None:
        raw = lower.get(name)
        if raw is None:
            return None
        try:
            value = conv(raw.strip())
        except ValueError:
            return None
        return value if value >= 0 else None

    mode = num("mode", int)
    uid = num("uid", int)
    gid = num("gid", int)
    mtime = num("mtime", float)
    return PosixAttrs(
        int(mode) if mode is not None else None,
        int(uid) if uid is not None else None,
        int(gid) if gid is not None else None,
        float(mtime) if mtime is not None else None,
    )


def encode(attrs: PosixAttrs) -> dict[str, str]:
    out: dict[str, str] = {}
    if attrs.mode is not None:
        out["mode"] = str(attrs.mode)
    if attrs.uid is not None:
        out["uid"] = str(attrs.uid)
    if attrs.gid is not None:
        out["gid"] = str(attrs.gid)
    if attrs.mtime is not None:
        # s3fs writes whole seconds; keep sub-second precision when we have it (s3fs parses
        # the integer part, so it still reads ours).
        out["mtime"] = f"{attrs.mtime:.9f}".rstrip("0").rstrip(".")
    return out
