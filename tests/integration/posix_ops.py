"""Shared helpers for the write-path tests: a differential POSIX driver (the same operation on
two directory trees, results and errno compared after every step), tree signatures, s3fs-style
views of a bucket, and a generated source tree with odd names, modes, mtimes and symlinks.

Nothing here knows about FUSE: the driver runs on any two directories, which is how its own
correctness is checked (both sides plain directories: everything must agree).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import random
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

MiB = 1 << 20
BLOCK = MiB  # wsfuse's default block size (wsfuse.config.MountConfig.block_size)

# ------------------------------------------------------------------------------ outcomes


class Ok(NamedTuple):
    value: Any

    def __repr__(self) -> str:
        return f"ok {self.value!r}"


class Err(NamedTuple):
    errno: str  # errno.errorcode name: compared by number, shown by name

    def __repr__(self) -> str:
        return f"ERR {self.errno}"


Outcome = Ok | Err


def outcome(fn: Callable[[], Any]) -> Outcome:
    """Run `fn`: its value, or the errno it failed with (never the message)."""
    try:
        return Ok(fn())
    except OSError as exc:
        assert exc.errno is not None, f"OSError without errno: {exc!r}"
        return Err(errno.errorcode.get(exc.errno, str(exc.errno)))


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int | None:
    """The errno `fn(*args)` fails with, None if it succeeds."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


# ------------------------------------------------------------------------------ payloads


@functools.lru_cache(maxsize=32)
def _noise(seed: int) -> bytes:
    return random.Random(seed).randbytes(2 * BLOCK + 4096)


def payload(length: int, seed: int) -> bytes:
    """`length` random bytes, a function of (`seed`, `length`): no two seeds share a pattern,
    so data written at the wrong offset or through the wrong handle shows up."""
    assert length <= 2 * BLOCK + 4096
    return _noise(seed)[:length]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ------------------------------------------------------------------------------ trees


def read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, 4 * MiB):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under `root`, parents before children, sorted;
    symlinks are not followed."""
    stack = [""]
    while stack:
        rel = stack.pop()
        names = sorted(os.listdir(root / rel) if rel else os.listdir(root), reverse=True)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            st = os.lstat(root / child)
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)


def signature(
    root: Path, *, mtimes: bool = False, owners: bool = False, contents: bool = True
) -> dict[str, tuple[Any, ...]]:
    """{relative path: what must match}: kind, full st_mode, size (not of directories, whose
    size is the filesystem's business), content hash or link target; optionally st_mtime_ns
    and owners."""
    out: dict[str, tuple[Any, ...]] = {}
    for rel, st in walk(root):
        path = root / rel
        sig: tuple[Any, ...]
        if stat.S_ISDIR(st.st_mode):
            sig = ("dir", oct(st.st_mode))
        elif stat.S_ISLNK(st.st_mode):
            sig = ("symlink", oct(st.st_mode), os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            body = sha(read_nofollow(path)) if contents else None
            sig = ("file", oct(st.st_mode), st.st_size, body)
        else:
            sig = ("other", oct(st.st_mode))
        if mtimes:
            sig += (("mtime_ns", st.st_mtime_ns),)
        if owners:
            sig += (("owner", st.st_uid, st.st_gid),)
        out[rel] = sig
    return out


def diff_signatures(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two signatures (`a` = under test, `b` = reference)."""
    lines = []
    for rel in sorted(set(a) | set(b)):
        if rel not in a:
            lines.append(f"  missing under test: {rel!r} (reference: {b[rel]})")
        elif rel not in b:
            lines.append(f"  extra under test:   {rel!r} = {a[rel]}")
        elif a[rel] != b[rel]:
            lines.append(f"  differs: {rel!r}: under test {a[rel]} != reference {b[rel]}")
    return lines


# ------------------------------------------------------------------------------ stores


class StoreObject(NamedTuple):
    body: bytes
    meta: dict[str, str]


class Store(Protocol):
    """What a bucket holds, s3fs-style: `key` → body + user metadata (x-amz-meta-*)."""

    def objects(self, prefix: str) -> dict[str, StoreObject]: ...

    def get(self, key: str) -> StoreObject | None: ...


class S3Store:
    """A bucket, read with boto3."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def get(self, key: str) -> StoreObject | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return StoreObject(resp["Body"].read(), dict(resp.get("Metadata", {})))

    def objects(self, prefix: str) -> dict[str, StoreObject]:
        out = {}
        for key in self.keys(prefix):
            obj = self.get(key)
            if obj is not None:  # deleted between LIST and GET: not ours to judge here
                out[key] = obj
        return out


class DirStore:
    """A directory read as the bucket a perfect write path would have made of it (s3fs
    conventions: a file is an object, a directory a `dir/` marker, a symlink an object whose
    body is the target; `mode` metadata on each). Used in self-test mode."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _object(self, rel: str, st: os.stat_result) -> tuple[str, StoreObject]:
        path = self.root / rel
        meta = {"mode": str(st.st_mode), "uid": str(st.st_uid), "gid": str(st.st_gid)}
        meta["mtime"] = str(int(st.st_mtime))
        if stat.S_ISDIR(st.st_mode):
            return f"{rel}/", StoreObject(b"", meta)
        if stat.S_ISLNK(st.st_mode):
            return rel, StoreObject(os.fsencode(os.readlink(path)), meta)
        return rel, StoreObject(read_nofollow(path), meta)

    def objects(self, prefix: str) -> dict[str, StoreObject]:
        out = {}
        top = prefix.rstrip("/")
        if (self.root / top).is_dir():
            key, obj = self._object(top, os.lstat(self.root / top))
            out[key] = obj
            for rel, st in walk(self.root / top):
                key, obj = self._object(f"{top}/{rel}", st)
                out[key] = obj
        return {k: v for k, v in out.items() if k.startswith(prefix)}

    def get(self, key: str) -> StoreObject | None:
        rel = key.rstrip("/")
        try:
            st = os.lstat(self.root / rel)
        except FileNotFoundError:
            return None
        if key.endswith("/") != stat.S_ISDIR(st.st_mode):
            return None
        return self._object(rel, st)[1]


DEFAULT_FILE_MODE = stat.S_IFREG | 0o644
DEFAULT_DIR_MODE = stat.S_IFDIR | 0o755


def store_problems(objects: Mapping[str, StoreObject], ref_root: Path, prefix: str) -> list[str]:
    """How the bucket's objects under `prefix` (= the mounted directory `ref_root` stands for)
    differ from the reference tree, by the s3fs conventions:

    - every file is an object with its exact bytes; its mode is the `mode` metadata, or the
      mount's default 0644 when there is none;
    - every symlink is an object whose body is the target and whose `mode` has S_IFLNK;
    - every directory is a `dir/` marker or the prefix of some key (implicit); its mode is the
      marker's `mode` metadata, or the default 0755;
    - nothing else: no key for an unlinked or renamed-away file, no stray marker.
    """
    problems: list[str] = []
    seen: set[str] = set()
    entries = [("", os.lstat(ref_root)), *walk(ref_root)]
    base = prefix.rstrip("/")
    for rel, st in entries:
        key = f"{base}/{rel}" if rel else base
        if stat.S_ISDIR(st.st_mode):
            marker = objects.get(f"{key}/")
            if marker is not None:
                seen.add(f"{key}/")
            elif not any(k.startswith(f"{key}/") for k in objects):
                problems.append(f"directory {rel or '.'!r}: no marker {key + '/'!r} nor keys")
                continue
            have = int(marker.meta.get("mode", DEFAULT_DIR_MODE)) if marker else DEFAULT_DIR_MODE
            if have != st.st_mode:
                problems.append(f"directory {rel!r}: mode {oct(have)} != {oct(st.st_mode)}")
            continue
        obj = objects.get(key)
        if obj is None:
            problems.append(f"{rel!r}: no object {key!r}")
            continue
        seen.add(key)
        if stat.S_ISLNK(st.st_mode):
            want = os.fsencode(os.readlink(ref_root / rel))
            if obj.body != want:
                problems.append(f"symlink {rel!r}: body {obj.body!r} != target {want!r}")
            if int(obj.meta.get("mode", "0")) != st.st_mode:
                problems.append(f"symlink {rel!r}: metadata {obj.meta} lacks mode {st.st_mode}")
            continue
        want = read_nofollow(ref_root / rel)
        if obj.body != want:
            problems.append(
                f"file {rel!r}: object has {len(obj.body)} bytes ({sha(obj.body)}), "
                f"reference {len(want)} ({sha(want)}){first_difference(obj.body, want)}"
            )
        have = int(obj.meta.get("mode", DEFAULT_FILE_MODE))
        if have != st.st_mode:
            problems.append(f"file {rel!r}: mode {oct(have)} != {oct(st.st_mode)}")
    problems.extend(f"stray key {k!r}" for k in sorted(set(objects) - seen))
    return problems


def first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"; first difference at offset {i}"
    return "" if len(a) == len(b) else f"; one is a prefix of the other up to {min(len(a), len(b))}"


# ------------------------------------------------------------------------------ operations

# A small name space so that collisions happen: 3 names, 2 levels (12 paths), one with a
# space and a non-ASCII letter (keys are UTF-8 in the bucket).
NAMES = ("a", "b", "é x")
PATHS = NAMES + tuple(f"{d}/{n}" for d in NAMES for n in NAMES)

FLAGS: dict[str, int] = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "x": os.O_RDWR | os.O_CREAT | os.O_EXCL,
    "c+": os.O_RDWR | os.O_CREAT,
    "rt": os.O_RDWR | os.O_TRUNC,
}

# Arguments: simplest first (Hypothesis shrinks towards the first choice); a few sizes straddle
# the 1 MiB block boundary, most are small so that a step stays cheap.
CHOICES: dict[str, tuple[Any, ...]] = {
    "path": PATHS,
    "slot": (0, 1, 2, 3, 4, 5),
    "flags": tuple(FLAGS),
    "mode": (0o644, 0o600, 0o755, 0o700),
    "size": (0, 1, 100, 4095, 4096, 5000, 70_000, BLOCK - 1, BLOCK + 1),
    "offset": (0, 1, 100, 4095, 4096, 10_000, BLOCK - 2, BLOCK + 5, 2 * BLOCK + 100),
    "length": (1, 0, 10, 100, 4096, 5000, 70_000, BLOCK + 3),
    "seed": tuple(range(8)),
    "count": (1, 0, 100, 4096, 70_000, 2 * BLOCK + 200),
    "whence": (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END),
    "target": ("a", "b", "é x", "a/b", "missing", "é x/a"),
    "time": (1_500_000_000, 1_700_000_000),
}

# Operation → argument kinds.
OPS: dict[str, tuple[str, ...]] = {
    "open": ("path", "flags", "mode"),
    "close": ("slot",),
    "write": ("slot", "length", "seed"),
    "pwrite": ("slot", "offset", "length", "seed"),
    "read": ("slot", "count"),
    "pread": ("slot", "offset", "count"),
    "lseek": ("slot", "offset", "whence"),
    "ftruncate": ("slot", "size"),
    "fsync": ("slot",),
    "truncate": ("path", "size"),
    "unlink": ("path",),
    "mkdir": ("path", "mode"),
    "rmdir": ("path",),
    "rename": ("path", "path"),
    "symlink": ("target", "path"),
    "readlink": ("path",),
    "chmod": ("path", "mode"),
    "utime": ("path", "time"),
    "listdir": ("path",),
    "stat": ("path",),
    # close every handle, then the bucket must be the reference tree
    "checkpoint": (),
}

# How often each operation is drawn (a kind listed n times is n times as likely).
WEIGHTS: dict[str, int] = {
    "open": 6,
    "close": 3,
    "write": 4,
    "pwrite": 3,
    "read": 2,
    "pread": 2,
    "lseek": 1,
    "ftruncate": 2,
    "fsync": 2,
    "truncate": 1,
    "unlink": 3,
    "mkdir": 3,
    "rmdir": 2,
    "rename": 4,
    "symlink": 2,
    "readlink": 2,
    "chmod": 1,
    "utime": 1,
    "listdir": 1,
    "stat": 1,
    "checkpoint": 1,
}
WEIGHTED_KINDS = tuple(k for k in OPS for _ in range(WEIGHTS[k]))
# "open" first: Hypothesis shrinks towards the first choice, and most minimal failing cases
# begin by opening something.
assert WEIGHTED_KINDS[0] == "open"


class Op(NamedTuple):
    kind: str
    args: tuple[Any, ...]

    def __repr__(self) -> str:
        shown = []
        for kind, value in zip(OPS[self.kind], self.args, strict=True):
            if kind == "mode":
                shown.append(oct(value))
            elif kind == "whence":
                shown.append({0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END"}[value])
            elif kind == "slot":
                shown.append(f"#{value}")
            else:
                shown.append(repr(value))
        return f"{self.kind}({', '.join(shown)})"


CHECKPOINT = Op("checkpoint", ())


def is_handle_op(op: Op) -> bool:
    return OPS[op.kind][:1] == ("slot",)


def random_op(rng: random.Random) -> Op:
    kind = rng.choice(WEIGHTED_KINDS)
    return Op(kind, tuple(rng.choice(CHOICES[a]) for a in OPS[kind]))


@dataclass
class Handle:
    """One open file description on each side (parallel fds), and how it was opened."""

    fds: tuple[int, int]  # (under test, reference)
    flags: str
    path: str  # where it was opened (it may since have been renamed or unlinked)

    @property
    def readable(self) -> bool:
        return FLAGS[self.flags] & os.O_ACCMODE != os.O_WRONLY

    @property
    def writable(self) -> bool:
        return FLAGS[self.flags] & os.O_ACCMODE != os.O_RDONLY


class Divergence(AssertionError):
    pass


@dataclass
class Differential:
    """Applies `Op`s to two directories (`roots[0]` under test, `roots[1]` the reference) and
    asserts after every step that both agree: the operation's result or errno, the whole tree
    (kinds, modes, sizes, contents, link targets), and every open handle (fstat, and its
    contents read through the handle, so an unlinked or replaced file is checked too).

    With a `store`, it also checks the write-through contract: after fsync() or close() of a
    writable handle returns 0, the object at the file's current path holds exactly its
    contents (`key_prefix` + relative path is the key), and `check_store()` compares the whole
    bucket with the reference tree.
    """

    roots: tuple[Path, Path]
    store: Store | None = None
    key_prefix: str = ""
    max_handles: int = 6
    handles: list[Handle] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    steps: int = 0

    def __enter__(self) -> Differential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all(check=False)

    # -- reporting

    def fail(self, what: str) -> None:
        recent = "\n".join(self.trace[-40:])
        raise Divergence(
            f"{what}\n  after {self.steps} steps; last steps (under test | reference):\n"
            f"{recent}\n  roots: {self.roots[0]} | {self.roots[1]}"
        )

    def agree(self, label: str, a: Any, b: Any) -> None:
        self.trace.append(f"  {label}: {a!r}" + ("" if a == b else f"   !=   {b!r}"))
        if a != b:
            self.fail(f"{label}: under test {a!r} != reference {b!r}")

    # -- driving

    def both(self, fn: Callable[[Path], Any]) -> tuple[Outcome, Outcome]:
        return outcome(lambda: fn(self.roots[0])), outcome(lambda: fn(self.roots[1]))

    def on_handles(self, h: Handle, fn: Callable[[int], Any]) -> tuple[Outcome, Outcome]:
        return outcome(lambda: fn(h.fds[0])), outcome(lambda: fn(h.fds[1]))

    def apply(self, op: Op) -> None:
        self.steps += 1
        kind, args = op
        label = repr(op)
        if kind == "checkpoint":
            self.trace.append(label)
            self.close_all()
            if self.store is not None:
                self.check_store()
        elif is_handle_op(op):
            if not self.handles:
                self.trace.append(f"{label}: no handle open (nothing to do)")
                return
            h = self.handles[args[0] % len(self.handles)]
            label = f"{label} on {h.path!r} ({h.flags})"
            self.trace.append(label)
            self._handle_op(kind, h, args[1:])
        else:
            self.trace.append(label)
            self._path_op(kind, args)
        self.check()

    def _path_op(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "open":
            path, flags, mode = args
            if len(self.handles) >= self.max_handles:
                self.trace.append(f"  (at {self.max_handles} handles: closing #0 first)")
                self._close(self.handles[0], "implicit close")
            a, b = self.both(lambda r: os.open(r / path, FLAGS[flags] | os.O_CLOEXEC, mode))
            ok_a, ok_b = isinstance(a, Ok), isinstance(b, Ok)
            shown_a = "ok" if ok_a else a
            shown_b = "ok" if ok_b else b
            if ok_a and ok_b:
                self.handles.append(Handle((a.value, b.value), flags, path))
            else:
                for o in (a, b):
                    if isinstance(o, Ok):
                        os.close(o.value)
            self.agree("result", shown_a, shown_b)
            return
        fns: dict[str, Callable[[Path], Any]] = {
            "truncate": lambda r: os.truncate(r / args[0], args[1]),
            "unlink": lambda r: os.unlink(r / args[0]),
            "mkdir": lambda r: os.mkdir(r / args[0], args[1]),
            "rmdir": lambda r: os.rmdir(r / args[0]),
            "rename": lambda r: os.rename(r / args[0], r / args[1]),
            "symlink": lambda r: os.symlink(args[0], r / args[1]),
            "readlink": lambda r: os.readlink(r / args[0]),
            "chmod": lambda r: os.chmod(r / args[0], args[1]),
            "utime": lambda r: _utime_then_stat(r / args[0], args[1]),
            "listdir": lambda r: sorted(os.listdir(r / args[0])),
            "stat": lambda r: _stat_sig(os.stat(r / args[0])),
        }
        a, b = self.both(fns[kind])
        self.agree("result", a, b)

    def _handle_op(self, kind: str, h: Handle, args: tuple[Any, ...]) -> None:
        fns: dict[str, Callable[[int], Any]] = {
            "write": lambda fd: os.write(fd, payload(args[0], args[1])),
            "pwrite": lambda fd: os.pwrite(fd, payload(args[1], args[2]), args[0]),
            "read": lambda fd: _short(os.read(fd, args[0])),
            "pread": lambda fd: _short(os.pread(fd, args[1], args[0])),
            "lseek": lambda fd: os.lseek(fd, args[0], args[1]),
            "ftruncate": lambda fd: os.ftruncate(fd, args[0]),
            "fsync": os.fsync,
        }
        if kind == "close":
            self._close(h)
            return
        if kind == "lseek" and stat.S_ISDIR(os.fstat(h.fds[1]).st_mode):
            # Directory offsets are cookies whose SEEK_END/SEEK_CUR rules are each filesystem's
            # own (ext4 answers EINVAL where FUSE's generic llseek does not): not POSIX's.
            self.trace.append("  lseek on a directory handle: not compared (fs-specific)")
            return
        a, b = self.on_handles(h, fns[kind])
        self.agree("result", a, b)
        if kind == "fsync" and isinstance(a, Ok) and h.writable:
            self.check_synced("fsync", self._current_path(h))

    def _close(self, h: Handle, label: str = "result") -> None:
        self.handles.remove(h)
        # Where the file is now, found before the reference fd goes (by inode: no hard links).
        rel = self._current_path(h)
        a, b = self.on_handles(h, os.close)
        self.agree(label, a, b)
        if isinstance(a, Ok) and h.writable:
            self.check_synced("close", rel)

    def close_all(self, *, check: bool = True) -> None:
        while self.handles:
            h = self.handles[0]
            if check:
                self.trace.append(f"close-all: {h.path!r} ({h.flags})")
                self._close(h, "close")
            else:
                self.handles.remove(h)
                for fd in h.fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    # -- checking

    def _current_path(self, h: Handle) -> str | None:
        st = os.fstat(h.fds[1])
        if not stat.S_ISREG(st.st_mode) or st.st_nlink == 0:
            return None
        for rel, lst in walk(self.roots[1]):
            if (lst.st_ino, lst.st_dev) == (st.st_ino, st.st_dev):
                return rel
        return None

    def check_synced(self, what: str, rel: str | None) -> None:
        """After fsync/close of a writable handle returned 0: the object at the file's path
        `rel` (None: it has none, being unlinked) holds the file's exact contents."""
        if self.store is None:
            return
        if rel is None:
            return  # unlinked: nothing may be uploaded for it (check_store catches strays)
        want = read_nofollow(self.roots[1] / rel)
        obj = self.store.get(self.key_prefix + rel)
        have = None if obj is None else obj.body
        if have != want:
            shown = "no object" if have is None else f"{len(have)} bytes ({sha(have)})"
            self.fail(
                f"{what} returned 0 but the object {self.key_prefix + rel!r} has {shown}, "
                f"the file {len(want)} bytes ({sha(want)})"
                + ("" if have is None else first_difference(have, want))
            )

    def check(self) -> None:
        sig_a, sig_b = signature(self.roots[0]), signature(self.roots[1])
        if sig_a != sig_b:
            self.fail("trees differ:\n" + "\n".join(diff_signatures(sig_a, sig_b)))
        for i, h in enumerate(self.handles):
            a, b = self.on_handles(h, lambda fd: _stat_sig(os.fstat(fd)))
            if a != b:
                self.agree(f"fstat of handle #{i} ({h.path!r}, {h.flags})", a, b)
            if h.readable and isinstance(b, Ok) and b.value[0] == "file":
                size = b.value[2]
                a, b = self.on_handles(h, lambda fd, n=size: _whole(os.pread(fd, n, 0)))
                if a != b:
                    self.agree(f"contents through handle #{i} ({h.path!r}, {h.flags})", a, b)

    def check_store(self) -> None:
        """After every handle is closed: the bucket under `key_prefix` is the reference tree."""
        assert self.store is not None
        assert not self.handles
        problems = store_problems(
            self.store.objects(self.key_prefix), self.roots[1], self.key_prefix
        )
        if problems:
            self.fail("bucket differs from the reference tree:\n  " + "\n  ".join(problems))


def _utime_then_stat(path: Path, t: int) -> int:
    os.utime(path, (t, t))
    return os.stat(path).st_mtime_ns


def _stat_sig(st: os.stat_result) -> tuple[Any, ...]:
    if stat.S_ISDIR(st.st_mode):
        return ("dir", oct(st.st_mode))
    kind = "file" if stat.S_ISREG(st.st_mode) else "other"
    return (kind, oct(st.st_mode), st.st_size)


def _short(data: bytes) -> tuple[int, str]:
    return (len(data), sha(data))


def _whole(data: bytes) -> tuple[int, str]:
    return (len(data), sha(data))


# ------------------------------------------------------------------------------ source trees

TREE_MTIME = 1_600_000_000  # integer seconds: what s3fs's x-amz-meta-mtime and tar keep


@dataclass(frozen=True)
class Entry:
    rel: str
    kind: str  # "file" | "dir" | "symlink"
    mode: int = 0
    size: int = 0
    target: str = ""


SOURCE_TREE: tuple[Entry, ...] = (
    Entry("top.txt", "file", 0o644, 1234),
    Entry("empty", "file", 0o600, 0),
    Entry("run me.sh", "file", 0o755, 300),
    Entry("read-only.txt", "file", 0o444, 4096),
    Entry("ünïcødé ☃.bin", "file", 0o640, BLOCK + 7),
    Entry("it's (quoted) & #odd;", "file", 0o604, 17),
    Entry("nested", "dir", 0o755),
    Entry("nested/deeper", "dir", 0o750),
    Entry("nested/deeper/deepest", "dir", 0o700),
    Entry("nested/deeper/deepest/leaf.dat", "file", 0o600, 3 * BLOCK + 5),
    Entry("nested/deeper/small", "file", 0o644, 1),
    Entry("nested/sp ace dir", "dir", 0o755),
    Entry("nested/sp ace dir/f i l e", "file", 0o664, 4097),
    Entry("emptydir", "dir", 0o700),
    Entry("dïr ü", "dir", 0o755),
    Entry("dïr ü/ðata", "file", 0o644, 70_000),
    Entry("link-to-top", "symlink", target="top.txt"),
    Entry("link-to-dir", "symlink", target="nested/deeper"),
    Entry("dangling", "symlink", target="does/not/exist"),
    Entry("absolute", "symlink", target="/etc/hostname"),
    Entry("nested/deeper/up", "symlink", target="../../top.txt"),
    Entry("dïr ü/lïnk ☃", "symlink", target="ðata"),
)


def make_source_tree(root: Path, entries: tuple[Entry, ...] = SOURCE_TREE) -> None:
    """Create `entries` under `root` (which must not exist) with exact modes and distinct integer
    mtimes; directory times are set last, deepest first, as tar and rsync do."""
    root.mkdir()
    for i, e in enumerate(entries):
        path = root / e.rel
        if e.kind == "dir":
            path.mkdir()
        elif e.kind == "file":
            path.write_bytes(payload(e.size, i) if e.size <= 2 * BLOCK else _big(e.size, i))
        else:
            path.symlink_to(e.target)
    for i, e in enumerate(entries):
        path = root / e.rel
        if e.kind != "symlink":
            os.chmod(path, e.mode)
        if e.kind != "dir":
            t = TREE_MTIME + 1000 * i
            os.utime(path, (t, t), follow_symlinks=False)
    dirs = [(i, e) for i, e in enumerate(entries) if e.kind == "dir"]
    for i, e in sorted(dirs, key=lambda ie: -ie[1].rel.count("/")):
        t = TREE_MTIME + 1000 * i
        os.utime(root / e.rel, (t, t))
    os.chmod(root, 0o755)
    os.utime(root, (TREE_MTIME - 1, TREE_MTIME - 1))


def _big(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(size)


# ------------------------------------------------------------------------------ replay, shrink


def run_ops(roots: tuple[Path, Path], ops: list[Op], store: Store | None, key_prefix: str) -> int:
    """Apply `ops` to two fresh directories, then close everything and compare the trees (and
    the bucket); raises `Divergence`. Returns the number of steps."""
    with Differential(roots, store=store, key_prefix=key_prefix) as d:
        for op in ops:
            d.apply(op)
        d.apply(CHECKPOINT)
        return d.steps


def shrink(ops: list[Op], fails: Callable[[list[Op]], bool], deadline: float) -> list[Op]:
    """Delta debugging: drop chunks of `ops` (halves, quarters, ... single ops) while the rest
    still `fails`, until nothing can go or the `deadline` (time.monotonic()) passes."""
    n = 2
    while len(ops) > 1 and time.monotonic() < deadline:
        chunk = max(1, len(ops) // n)
        for start in range(0, len(ops), chunk):
            if time.monotonic() > deadline:
                return ops
            candidate = ops[:start] + ops[start + chunk :]
            if fails(candidate):
                ops = candidate
                n = max(n - 1, 2)
                break
        else:
            if chunk == 1:
                return ops
            n = min(len(ops), 2 * n)
    return ops
