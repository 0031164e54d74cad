"""Model-based: random sets of bucket keys → the mounted tree equals a reference model of the
namespace rules (implicit dirs, markers, hidden invalid keys, the directory wins a clash)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import S3Bucket

SEGMENT = st.sampled_from(["a", "b", "c", "d e", "ü", "x.y", "", ".", "..", "n" * 260])
KEY = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)
KEYS = st.sets(KEY.filter(lambda k: k not in ("", "/")), min_size=1, max_size=12)


def model_tree(keys: set[str]) -> dict[str, Any]:
    """The tree the namespace rules promise: {name: None (file) | subtree (dir)}."""

    def valid(seg: str) -> bool:
        return seg not in ("", ".", "..") and len(seg.encode()) <= 255

    root: dict[str, Any] = {}
    files: list[list[str]] = []
    for key in keys:
        is_marker = key.endswith("/")
        segs = key.rstrip("/").split("/") if is_marker else key.split("/")
        # A key is visible only down to its first invalid segment: the directories above it
        # exist (their prefix lists), the rest is hidden.
        for depth, seg in enumerate(segs):
            if not valid(seg):
                segs = segs[:depth]
                is_marker = True  # what remains is a chain of directories
                break
        if not segs:
            continue
        node = root
        for seg in segs[:-1]:
            node = node.setdefault(seg, {})
        if is_marker or len(segs) < len(key.split("/")):
            node.setdefault(segs[-1], {})
        else:
            files.append(segs)
    for segs in files:
        node = root
        for seg in segs[:-1]:
            node = node.setdefault(seg, {})
        if segs[-1] not in node:  # the directory wins a clash
            node[segs[-1]] = None
    return root


def mounted_tree(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in os.scandir(path):
        out[entry.name] = mounted_tree(Path(entry.path)) if entry.is_dir() else None
    return out


_case = itertools.count()


def test_mounted_tree_matches_model(bucket: S3Bucket, mounter: Any) -> None:
    m = mounter("--metadata-ttl", "0")

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(keys=KEYS)
    def check(keys: set[str]) -> None:
        prefix = f"case{next(_case)}"
        bucket.put_many({f"{prefix}/{k}": b"z" for k in keys})
        assert mounted_tree(m.path / prefix) == model_tree(keys), sorted(keys)

    check()
