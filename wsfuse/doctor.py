"""`wsfuse doctor`: check everything a mount needs and say, one line per problem, what to do.

Each check returns `Check(ok, message)`; the command prints them all (so one run shows every
problem, not just the first) and exits 0 only when all passed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wsfuse.backends import Backend
from wsfuse.errors import BackendError, NotFound
from wsfuse.units import format_size

#: The version of packaging/pyfuse3/build.py's edits this wsfuse expects (its PATCH_LEVEL).
PYFUSE3_PATCH_LEVEL = 3

# Below this much free space the cache cannot hold even a few blocks plus write staging.
MIN_CACHE_FREE = 1 << 30


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    message: str


def check_fuse(dev_fuse: Path = Path("/dev/fuse")) -> Iterator[Check]:
    if not dev_fuse.exists():
        yield Check(
            False,
            f"{dev_fuse} is missing: load the fuse module (modprobe fuse) or, in a "
            "container, run with --device /dev/fuse --cap-add SYS_ADMIN",
        )
    elif not os.access(dev_fuse, os.R_OK | os.W_OK):
        yield Check(
            False,
            f"{dev_fuse} is not readable and writable by this user: add the user to "
            "the 'fuse' group or run as root",
        )
    else:
        yield Check(True, f"{dev_fuse} is usable")
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        yield Check(False, "fusermount3 is not installed: apt-get install fuse3")
    else:
        yield Check(True, f"fusermount3 found at {fusermount}")
    if importlib.util.find_spec("pyfuse3") is None:
        yield Check(
            False,
            "the pyfuse3 module is missing: pip install pyfuse3 (needs libfuse3-dev, "
            "pkg-config and gcc)",
        )
    else:
        yield pyfuse3_build()


def pyfuse3_build() -> Check:
    """Whether pyfuse3 carries the current version of wsfuse's edits
    (packaging/pyfuse3/build.py). Without them a mount works, and its cold reads are slower:
    the GIL is held while each reply is copied."""
    pyfuse3 = importlib.import_module("pyfuse3")  # only once known to be installed
    level = getattr(pyfuse3, "WSFUSE_PATCH", 0)
    if level == PYFUSE3_PATCH_LEVEL:
        return Check(True, "pyfuse3 is installed, with wsfuse's edits (replies without the GIL)")
    which = f"an older version ({level}) of wsfuse's edits" if level else "without wsfuse's edits"
    return Check(
        True,
        f"pyfuse3 is installed {which}: reads work, cold reads are slower; "
        "python packaging/pyfuse3/build.py builds it with the current ones",
    )


def check_cache_dir(path: Path) -> Iterator[Check]:
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if probe_dir != path and not os.access(probe_dir, os.W_OK):
        yield Check(
            False,
            f"cache directory {path} cannot be created ({probe_dir} is not "
            "writable): choose another with --cache-dir",
        )
        return
    if probe_dir == path and not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
        yield Check(
            False,
            f"cache directory {path} is not a writable directory: fix its "
            "permissions or choose another with --cache-dir",
        )
        return
    free = shutil.disk_usage(probe_dir).free
    if free < MIN_CACHE_FREE:
        yield Check(
            False,
            f"only {format_size(free)} free for the cache at {path}: free some "
            "space or choose a bigger disk with --cache-dir",
        )
    else:
        yield Check(True, f"cache directory {path} is writable ({format_size(free)} free)")


def check_bucket(backend: Backend, *, write_test: bool) -> Iterator[Check]:
    try:
        backend.check_bucket()
        page = backend.list("", delimiter="/", page_size=1)
    except BackendError as exc:
        yield Check(False, str(exc))
        return
    yield Check(True, f"bucket {backend.name} is reachable and can be listed")
    if page.objects:
        key = page.objects[0].key
        try:
            backend.get_range(key, 0, 1)
            yield Check(True, f"bucket {backend.name} is readable")
        except NotFound:
            yield Check(
                True, f"bucket {backend.name} is readable (a listed key vanished meanwhile)"
            )
        except BackendError as exc:
            yield Check(False, f"cannot read from {backend.name}: {exc}")
    if write_test:
        yield from _write_test(backend)


def _write_test(backend: Backend) -> Iterator[Check]:
    key = f".wsfuse-doctor-{uuid.uuid4().hex}"
    payload = b"wsfuse doctor write test\n"
    try:
        backend.put(key, payload)
        if backend.get_range(key, 0, len(payload)) != payload:
            yield Check(False, f"wrote {key} to {backend.name} but read back different bytes")
        else:
            yield Check(
                True, f"bucket {backend.name} is writable (wrote, read back and deleted {key})"
            )
    except BackendError as exc:
        yield Check(False, f"cannot write to {backend.name}: {exc}")
    finally:
        try:
            backend.delete(key)
        except BackendError as exc:
            yield Check(False, f"could not delete the test object {key}: {exc}")


def run_checks(checks: list[Callable[[], Iterator[Check]]], emit: Callable[[str], None]) -> bool:
    all_ok = True
    for check in checks:
        for result in check():
            all_ok &= result.ok
            emit(("ok       " if result.ok else "PROBLEM  ") + result.message)
    return all_ok
