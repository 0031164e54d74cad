"""Build and install pyfuse3 with the GIL released while a read reply is copied into the kernel.

pyfuse3 3.5.0 calls `fuse_reply_buf` for every read holding the GIL. Each 1 MiB reply is a
kernel copy into the page cache of ~0.1-0.3 ms during which none of wsfuse's worker threads
(receiving GET bodies, checksumming and writing cache blocks) can run Python, and each of them
delays the next reply when it holds the GIL. Releasing it around that call made a cold 1 GiB
read 7-10% faster on the 2-core test machine (docs/performance.md, session 8); replies under
`RELEASE_GIL_FROM` keep it. The edit is safe: the reply's buffer stays exported (`Py_buffer`)
until the call returns, the request pointer is a C field of the handler's `_Container`, which
the running coroutine holds, and libfuse's reply functions are thread-safe (libfuse's own loops
call them from many threads).

Not released: reading the next request from /dev/fuse (`fuse_session_receive_buf`). For a
write that read is a 1 MiB copy too, but releasing the GIL there let worker threads take it
and the trio thread then waited to get it back: 1 GiB writes ran at ~245 instead of ~280 MB/s
(version 1 of these edits did it; measured in alternating runs).

Upstream pyfuse3 does not do this yet; this script applies the edit to the pinned sdist,
checking that each original text matches exactly once, so a different pyfuse3 fails loudly
instead of being patched wrongly. The module then carries `WSFUSE_PATCH` (the edits' version),
which `wsfuse doctor` reports.

    .venv/bin/python packaging/pyfuse3/build.py   # run by scripts/setup.sh
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.5.0"
PATCH_LEVEL = 3
#: Replies at least this large give the GIL away while copied: a small one is copied in a few
#: microseconds, less than taking the GIL back from a busy worker can cost.
RELEASE_GIL_FROM = 64 * 1024
#: The Cython that generated the sdist's own C; the edited .pyx is compiled with it again.
CYTHON = "Cython==3.2.4"

#: fuse_read_async's reply (handlers.pxi): the only fuse_reply_buf from a Py_buffer.
_REPLY = "ret = fuse_reply_buf(c.req, <const_char*> pybuf.buf, <size_t> pybuf.len)\n"

#: (file under src/pyfuse3, original text, replacement): each original must occur exactly once.
EDITS: list[tuple[str, str, str]] = [
    (
        "handlers.pxi",
        f"        {_REPLY}",
        "        # wsfuse: the kernel copies a large reply without the GIL (packaging/pyfuse3)\n"
        f"        if pybuf.len >= {RELEASE_GIL_FROM}:\n"
        f"            with nogil:\n                {_REPLY}"
        f"        else:\n            {_REPLY}",
    ),
    (
        "__init__.pyx",
        '\nlog = logging.getLogger("pyfuse3")\n',
        '\nlog = logging.getLogger("pyfuse3")\n\n'
        f"# wsfuse's edits (packaging/pyfuse3/build.py), version {PATCH_LEVEL}\n"
        f"WSFUSE_PATCH = {PATCH_LEVEL}\n",
    ),
]


def apply_edits(source: Path) -> None:
    """Apply `EDITS` to the unpacked sdist at `source`."""
    for name, old, new in EDITS:
        path = source / "src" / "pyfuse3" / name
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            raise SystemExit(
                f"pyfuse3 {VERSION}: {path.name} has the text to patch {count} times, expected 1;"
                " is this the pinned pyfuse3?"
            )
        path.write_text(text.replace(old, new))


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack regular files and directories only, all inside `dest` (Debian 12's Python 3.11.2
    predates tarfile's extraction filters)."""
    root = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise SystemExit(f"pyfuse3 sdist: unexpected member {member.name!r}")
    tar.extractall(dest)  # noqa: S202 (members checked above)


def main() -> None:
    pip = [sys.executable, "-m", "pip", "--no-cache-dir"]
    # Outside any git checkout: pyfuse3's build takes its version from git when it finds one.
    with tempfile.TemporaryDirectory(prefix="wsfuse-pyfuse3-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [*pip, "download", "-q", "--no-deps", "--no-binary", "pyfuse3", "-d", tmp,
             f"pyfuse3=={VERSION}"],
            check=True,
        )  # fmt: skip
        (sdist,) = work.glob(f"pyfuse3-{VERSION}.tar.gz")
        with tarfile.open(sdist) as tar:
            _extract(tar, work)
        source = work / f"pyfuse3-{VERSION}"
        apply_edits(source)
        constraints = work / "constraints.txt"
        constraints.write_text(CYTHON + "\n")
        env = dict(os.environ, SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3=VERSION)
        # --build-constraint needs a recent pip: scripts/setup.sh and the Dockerfile upgrade it
        subprocess.run(
            [*pip, "install", "-q", "--force-reinstall", "--no-deps",
             "--build-constraint", str(constraints), str(source)],
            check=True,
            env=env,
        )  # fmt: skip
    print(f"wsfuse setup: pyfuse3 {VERSION} built with wsfuse's edits (version {PATCH_LEVEL})")


if __name__ == "__main__":
    main()
