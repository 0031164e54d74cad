"""The write path through a real FUSE mount, as tools use it: `tar -xp`, `cp -a`, `rsync -a` and
`git clone` round trips (contents, modes, mtimes, symlinks, odd names), also seen from a second
mount with an EMPTY cache; a 1 GiB sequential write that is in the bucket when close() returns;
files unlinked or renamed over while open; ENOTEMPTY on implicit directories; s3fs metadata
conventions (x-amz-meta-mode/-uid/-gid/-mtime, symlink objects) in both directions; hard links
EPERM; a failed upload reported to the caller without losing data.

Tests taking a `place` run twice: on the mount, and as a self-test on a plain local directory
(read back as a bucket s3fs-style by `DirStore`) which proves the test itself right; tests
taking `bucket`/`mounter` need the real bucket (boto3 puts, metadata, fault injection).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import shutil
import stat
import struct
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import FUSE_AVAILABLE, S3Bucket
from tests.integration.posix_ops import (
    BLOCK,
    DirStore,
    MiB,
    S3Store,
    Store,
    diff_signatures,
    errno_of,
    make_source_tree,
    payload,
    signature,
)

GiB = 1 << 30


@dataclass
class Place:
    """A directory to write into (the mount, or a plain directory in self-test mode), the
    bucket behind it read s3fs-style (keys relative to that directory), a way to put an object
    behind the mount's back, and a fresh view (a second mount with an empty cache)."""

    label: str
    path: Path
    store: Store
    put: Callable[[str, bytes], None]
    fresh_view: Callable[[], Path]

    def body(self, key: str) -> bytes | None:
        obj = self.store.get(key)
        return None if obj is None else obj.body

    def object_keys(self, prefix: str) -> list[str]:
        """Keys of objects under `prefix`, directory markers left out."""
        return sorted(k for k in self.store.objects(prefix) if not k.endswith("/"))


@pytest.fixture(params=["selftest", "mount"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "selftest":
        root = tmp_path / "local"
        root.mkdir()

        def put_local(key: str, data: bytes) -> None:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            if key.endswith("/"):  # a directory marker
                (root / key).mkdir(exist_ok=True)
            else:
                (root / key).write_bytes(data)

        yield Place("selftest", root, DirStore(root), put_local, lambda: root)
        return
    if not FUSE_AVAILABLE:
        pytest.skip("needs /dev/fuse and fusermount3 (the selftest variant ran without them)")
    bucket: S3Bucket = request.getfixturevalue("bucket")
    mounter = request.getfixturevalue("mounter")
    m = mounter()
    caches = itertools.count()

    def fresh_view() -> Path:
        # a second daemon, alive next to the first: what it shows came from the bucket
        return Path(mounter(cache_dir=tmp_path / f"other{next(caches)}").path)

    yield Place(
        "mount", m.path, S3Store(bucket.server.client(), bucket.name), bucket.put, fresh_view
    )


def run(*cmd: str | Path) -> str:
    """Run a tool (never with cwd= on the mount: see `git`)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    )
    return proc.stdout


def assert_same_tree(src: Path, dst: Path, *, mtimes: bool = True) -> None:
    """`diff -r` finds no difference (symlinks compared as links), and every entry has the same
    kind, st_mode, size, contents or target and (by default) st_mtime_ns, per os.lstat."""
    run("diff", "-r", "--no-dereference", src, dst)
    a, b = signature(dst, mtimes=mtimes), signature(src, mtimes=mtimes)
    assert a == b, f"{dst} differs from {src}:\n" + "\n".join(diff_signatures(a, b))


# ------------------------------------------------------------------------------ tools


def test_tar_xp_round_trip_and_cold_remount(place: Place, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source_tree(src)
    archive = tmp_path / "src.tar"
    run("tar", "-cf", archive, "-C", src, ".")
    dst = place.path / "restored"
    dst.mkdir()
    run("tar", "-xpf", archive, "-C", dst)
    assert_same_tree(src, dst)
    # the same tree from a daemon that has never seen it: everything came from the bucket
    assert_same_tree(src, place.fresh_view() / "restored")


def test_cp_a_round_trip(place: Place, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source_tree(src)
    run("cp", "-a", src, place.path / "copy")
    assert_same_tree(src, place.path / "copy")
    back = tmp_path / "back"
    run("cp", "-a", place.fresh_view() / "copy", back)
    assert_same_tree(src, back)


def test_rsync_a_round_trip_and_incremental_update(place: Place, tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (apt-get install rsync)")
    src = tmp_path / "src"
    make_source_tree(src)
    dst = place.path / "rs"
    run("rsync", "-a", f"{src}/", f"{dst}/")
    assert_same_tree(src, dst)
    # Change the source: same size new bytes (rsync writes a temp file and renames it over the
    # old one), a new file, a deleted file, a chmod, a new symlink, a retargeted symlink.
    (src / "top.txt").write_bytes(payload(1234, 99))
    os.utime(src / "top.txt", (1_650_000_000, 1_650_000_000))
    (src / "nested" / "new file").write_bytes(b"new\n")
    (src / "empty").unlink()
    os.chmod(src / "run me.sh", 0o700)
    os.symlink("nested/new file", src / "new-link")
    (src / "link-to-top").unlink()
    os.symlink("run me.sh", src / "link-to-top")
    # integer seconds, as everywhere here: s3fs's x-amz-meta-mtime has no fraction
    for p in ("nested/new file", "new-link", "link-to-top", "nested", "."):
        os.utime(src / p, (1_650_000_100, 1_650_000_100), follow_symlinks=False)
    run("rsync", "-a", "--delete", f"{src}/", f"{dst}/")
    assert_same_tree(src, dst)
    # nothing left to do: sizes, mtimes, modes, links all match what rsync compares
    assert run("rsync", "-a", "--delete", "-n", "-i", f"{src}/", f"{dst}/") == ""
    back = tmp_path / "back"
    run("rsync", "-a", f"{place.fresh_view() / 'rs'}/", f"{back}/")
    assert_same_tree(src, back)


GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(*args: str | Path, cwd: Path | None = None) -> str:
    # `git -C`, never subprocess's cwd=: the child would chdir into the mount before exec,
    # while this process (which also runs the S3 server the daemon needs for that lookup) waits
    # for the exec; with a cold mount that lookup deadlocks until the daemon's 30 s timeout.
    where = ["-C", str(cwd)] if cwd is not None else []
    proc = subprocess.run(
        ["git", *where, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **GIT_ENV},
    )
    assert proc.returncode == 0, f"git {args} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.stdout


def test_git_clone_commit_and_fsck(place: Place, tmp_path: Path) -> None:
    """git: lock files renamed over their targets, 0444 objects, packs read by mmap, chmod."""
    src = tmp_path / "repo"
    make_source_tree(src)
    git("init", "-q", "-b", "main", src)
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "one", cwd=src)
    (src / "top.txt").write_bytes(b"second version\n")
    git("commit", "-q", "-am", "two", cwd=src)
    clone = place.path / "clone"
    git("clone", "-q", f"file://{src}", clone)
    git("fsck", "--full", "--strict", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    (clone / "added.txt").write_text("made on the mount\n")
    git("add", "added.txt", cwd=clone)
    git("commit", "-q", "-m", "three", cwd=clone)
    assert len(git("log", "--oneline", cwd=clone).splitlines()) == 3
    fresh = place.fresh_view() / "clone"
    git("fsck", "--full", "--strict", cwd=fresh)
    assert len(git("log", "--oneline", cwd=fresh).splitlines()) == 3
    # stat data differ on another mount (inode numbers): status refreshes, contents match
    assert git("status", "--porcelain", cwd=fresh) == ""


# ------------------------------------------------------------------------------ write-through


@pytest.mark.slow
def test_1gib_sequential_write_is_in_the_bucket_right_after_close(place: Place) -> None:
    size, chunk = GiB, MiB
    base = random.Random(0).randbytes(chunk)
    want = hashlib.sha256()
    fd = os.open(place.path / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // chunk):
            block = struct.pack("<Q", i) + base[8:]  # no two blocks alike
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
            want.update(block)
    finally:
        os.close(fd)
    # right after close, no sleep: the object is complete
    if isinstance(place.store, S3Store):
        client, name = place.store.client, place.store.bucket
        assert client.head_object(Bucket=name, Key="big.bin")["ContentLength"] == size
        body = client.get_object(Bucket=name, Key="big.bin")["Body"]
        have, n = hashlib.sha256(), 0
        while data := body.read(8 * MiB):
            have.update(data)
            n += len(data)
        client.delete_object(Bucket=name, Key="big.bin")  # 1 GiB of the server's memory
    else:
        have, n = hashlib.sha256(), 0
        with open(place.path / "big.bin", "rb") as f:
            while data := f.read(8 * MiB):
                have.update(data)
                n += len(data)
    assert n == size
    assert have.hexdigest() == want.hexdigest()


def test_close_and_fsync_put_the_bytes_in_the_bucket_immediately(place: Place) -> None:
    data = payload(3 * BLOCK // 2, 1)
    with open(place.path / "ckpt.pt", "wb") as f:
        f.write(data)
    assert place.body("ckpt.pt") == data  # right after close, no sleep
    open(place.path / "empty", "wb").close()
    assert place.body("empty") == b""
    # fsync: the bytes so far are in the bucket while the file is still open
    fd = os.open(place.path / "log.txt", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"epoch 1\n")
        os.fsync(fd)
        assert place.body("log.txt") == b"epoch 1\n"
        os.write(fd, b"epoch 2\n")
        os.fsync(fd)
        assert place.body("log.txt") == b"epoch 1\nepoch 2\n"
        os.write(fd, b"epoch 3\n")
    finally:
        os.close(fd)
    assert place.body("log.txt") == b"epoch 1\nepoch 2\nepoch 3\n"
    # append, and an overwrite in the middle
    with open(place.path / "log.txt", "ab") as f:
        f.write(b"epoch 4\n")
    assert place.body("log.txt") == b"epoch 1\nepoch 2\nepoch 3\nepoch 4\n"
    with open(place.path / "ckpt.pt", "r+b") as f:
        f.seek(BLOCK - 2)
        f.write(b"XXXX")  # across the block boundary
    assert place.body("ckpt.pt") == data[: BLOCK - 2] + b"XXXX" + data[BLOCK + 2 :]
    # the atomic checkpoint pattern (torch.save to a temporary, fsync, rename, fsync the dir)
    (place.path / "ckpts").mkdir()
    tmp, final = place.path / "ckpts" / ".ckpt.tmp", place.path / "ckpts" / "model.pt"
    for version in (b"v1" * 5000, b"v2" * 7000):
        with open(tmp, "wb") as f:
            f.write(version)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dfd = os.open(place.path / "ckpts", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        assert place.body("ckpts/model.pt") == version
        assert place.body("ckpts/.ckpt.tmp") is None
    # truncate/ftruncate, shrinking and growing
    os.truncate(place.path / "ckpt.pt", 10)
    assert place.body("ckpt.pt") == data[:10]
    with open(place.path / "ckpt.pt", "r+b") as f:
        os.ftruncate(f.fileno(), 20)
    assert place.body("ckpt.pt") == data[:10] + b"\0" * 10


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    """A zip written as torch.save's writer does: streamed members whose local headers are
    patched afterwards (a seek back into bytes already written, i.e. into an uploaded part)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as w:
                for off in range(0, len(data), MiB):
                    w.write(data[off : off + MiB])


def test_torch_save_like_zip_with_seek_back(place: Place, tmp_path: Path) -> None:
    members = {
        "archive/data.pkl": payload(1000, 1),
        "archive/data/0": random.Random(1).randbytes(40 * MiB + 3),  # several 8 MiB parts
        "archive/data/1": payload(BLOCK + 5, 2),
    }
    _write_zip(tmp_path / "local.pt", members)
    want = (tmp_path / "local.pt").read_bytes()
    _write_zip(place.path / "model.pt", members)
    assert place.body("model.pt") == want  # right after close
    assert (place.path / "model.pt").read_bytes() == want
    with zipfile.ZipFile(place.path / "model.pt") as zf:
        assert zf.testzip() is None
        assert zf.read("archive/data/1") == members["archive/data/1"]


def test_tensorboard_like_appender_with_a_live_reader(place: Place) -> None:
    """An event file appended and flushed record by record while a reader on the same node
    follows it (TensorBoard); fsync/close put every record in the bucket."""
    (place.path / "logs").mkdir()
    path = place.path / "logs" / "events.out.tfevents"
    records = [struct.pack("<Q", i) + payload(100 + 7 * i, i % 8) for i in range(60)]
    got = b""
    with open(path, "ab") as w, open(path, "rb") as r:
        for i, rec in enumerate(records):
            w.write(rec)
            w.flush()  # to the kernel, not to the bucket
            got += r.read()
            assert got == b"".join(records[: i + 1]), f"reader behind after record {i}"
            if i == 29:
                os.fsync(w.fileno())
                assert place.body("logs/events.out.tfevents") == got
    assert place.body("logs/events.out.tfevents") == b"".join(records)


def test_mkdir_makes_a_marker_and_rmdir_removes_it(place: Place) -> None:
    os.mkdir(place.path / "newdir")
    assert place.store.get("newdir/") is not None
    os.makedirs(place.path / "p" / "q" / "r")
    assert place.store.get("p/q/r/") is not None
    assert errno_of(os.rmdir, place.path / "p") == errno.ENOTEMPTY
    os.rmdir(place.path / "newdir")
    assert place.store.get("newdir/") is None
    assert not (place.path / "newdir").exists()


# ------------------------------------------------------------------------------ open handles


def test_open_unlinked_file_stays_readable_and_writable(place: Place) -> None:
    old = payload(100_000, 2)
    place.put("u/old", old)  # never read through the mount before the unlink
    place.put("u/keep", b"keeps u/ in the bucket")
    fd = os.open(place.path / "u" / "old", os.O_RDWR)
    try:
        os.unlink(place.path / "u" / "old")
        assert sorted(os.listdir(place.path / "u")) == ["keep"]
        assert place.body("u/old") is None  # the unlink reached the bucket
        assert os.pread(fd, len(old), 0) == old
        os.pwrite(fd, b"NEW", 5)
        os.ftruncate(fd, 200_000)
        assert os.fstat(fd).st_size == 200_000
        assert os.pread(fd, 200_000, 0) == old[:5] + b"NEW" + old[8:] + b"\0" * 100_000
    finally:
        os.close(fd)
    assert place.body("u/old") is None  # closing did not bring it back
    assert sorted(os.listdir(place.path / "u")) == ["keep"]
    # a new file, never uploaded, unlinked while open and written after
    fd = os.open(place.path / "u" / "fresh", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"before")
        os.unlink(place.path / "u" / "fresh")
        os.write(fd, b" after")
        assert os.pread(fd, 100, 0) == b"before after"
        os.fsync(fd)
    finally:
        os.close(fd)
    assert place.object_keys("u/") == ["u/keep"]


def test_rename_over_an_open_file(place: Place) -> None:
    old, new = payload(70_000, 3), payload(50_000, 4)
    place.put("r/target", old)
    place.put("r/source", new)
    ro = os.open(place.path / "r" / "target", os.O_RDONLY)  # not read before the rename
    rw = os.open(place.path / "r" / "target", os.O_RDWR)
    try:
        os.rename(place.path / "r" / "source", place.path / "r" / "target")
        assert (place.path / "r" / "target").read_bytes() == new
        assert not (place.path / "r" / "source").exists()
        assert os.pread(ro, len(old) + 10, 0) == old
        os.pwrite(rw, b"XX", 0)  # to the replaced file, which no name reaches any more
        assert os.pread(ro, 4, 0) == b"XX" + old[2:4]
        os.fsync(rw)
    finally:
        os.close(rw)
        os.close(ro)
    assert place.body("r/target") == new  # the old handle's writes did not land on it
    assert place.object_keys("r/") == ["r/target"]
    assert (place.path / "r" / "target").read_bytes() == new
    # a file being written (dirty, never uploaded) renamed away, then written and closed
    fd = os.open(place.path / "r" / "w", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"one ")
        os.rename(place.path / "r" / "w", place.path / "r" / "moved")
        os.write(fd, b"two")
    finally:
        os.close(fd)
    assert place.body("r/moved") == b"one two"
    assert place.body("r/w") is None


def test_rename_directory_moves_every_key(place: Place) -> None:
    place.put("src/a/1", b"one")  # implicit directories
    place.put("src/a/b/2", b"two")
    os.mkdir(place.path / "src" / "empty")
    (place.path / "src" / "written").write_bytes(b"three")
    os.symlink("a/1", place.path / "src" / "link")
    os.rename(place.path / "src", place.path / "dst")
    assert not (place.path / "src").exists()
    assert (place.path / "dst" / "a" / "b" / "2").read_bytes() == b"two"
    assert (place.path / "dst" / "link").read_bytes() == b"one"
    assert place.object_keys("src") == []
    assert place.object_keys("dst/") == ["dst/a/1", "dst/a/b/2", "dst/link", "dst/written"]
    assert place.store.get("dst/empty/") is not None
    # onto an existing empty directory: replaced; onto a non-empty one: ENOTEMPTY
    os.mkdir(place.path / "vacant")
    os.rename(place.path / "dst", place.path / "vacant")
    assert sorted(os.listdir(place.path / "vacant")) == ["a", "empty", "link", "written"]
    os.mkdir(place.path / "other")
    (place.path / "other" / "f").write_bytes(b"")
    assert errno_of(os.rename, place.path / "vacant", place.path / "other") == errno.ENOTEMPTY
    assert errno_of(os.rename, place.path / "vacant", place.path / "vacant" / "a") == errno.EINVAL


def test_rmdir_of_non_empty_implicit_directory_is_enotempty(place: Place) -> None:
    place.put("imp/sub/file", b"x")  # imp/ and imp/sub/ exist only as prefixes
    place.put("mk/", b"")  # a marker whose only children are implicit
    place.put("mk/deep/x", b"z")
    assert errno_of(os.rmdir, place.path / "imp") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, place.path / "imp" / "sub") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, place.path / "mk") == errno.ENOTEMPTY
    assert place.body("imp/sub/file") == b"x"
    run("rm", "-rf", place.path / "imp")
    assert not (place.path / "imp").exists()
    assert place.object_keys("imp") == []


def test_directory_emptied_by_unlink_still_exists(place: Place) -> None:
    """POSIX: unlinking the last file of an implicit directory leaves the directory (`rm -r`,
    `make clean` then writing into it again). Its prefix is gone from the bucket, so the
    mount must keep it (e.g. by writing a marker)."""
    place.put("solo/only", b"1")
    os.unlink(place.path / "solo" / "only")
    assert (place.path / "solo").is_dir()
    assert os.listdir(place.path / "solo") == []
    (place.path / "solo" / "again").write_bytes(b"2")
    assert place.body("solo/again") == b"2"
    os.unlink(place.path / "solo" / "again")
    os.rmdir(place.path / "solo")
    assert not (place.path / "solo").exists()


# ------------------------------------------------------------------------------ metadata (bucket)


def test_s3fs_metadata_objects_show_modes_owners_mtimes_and_symlinks(
    bucket: S3Bucket, mounter: Any
) -> None:
    c = bucket.server.client()
    meta = {"mode": str(0o100600), "uid": "1234", "gid": "5678", "mtime": "1700000000"}
    c.put_object(Bucket=bucket.name, Key="meta/file", Body=b"data", Metadata=meta)
    c.put_object(
        Bucket=bucket.name,
        Key="meta/link",
        Body=b"file",
        Metadata={"mode": str(0o120777), "mtime": "1700000001"},
    )
    c.put_object(
        Bucket=bucket.name,
        Key="meta/dir/",
        Body=b"",
        Metadata={"mode": str(0o40700), "uid": "1234", "gid": "5678", "mtime": "1700000002"},
    )
    c.put_object(Bucket=bucket.name, Key="meta/plain", Body=b"p")
    m = mounter()
    d = m.path / "meta"
    assert sorted(os.listdir(d)) == ["dir", "file", "link", "plain"]  # as `ls -l` does
    st = os.lstat(d / "file")
    assert (oct(st.st_mode), st.st_uid, st.st_gid) == (oct(0o100600), 1234, 5678)
    assert st.st_mtime == 1_700_000_000
    st = os.lstat(d / "link")
    assert stat.S_ISLNK(st.st_mode), oct(st.st_mode)
    assert os.readlink(d / "link") == "file"
    assert (d / "link").read_bytes() == b"data"
    assert st.st_size == len("file")
    assert st.st_mtime == 1_700_000_001
    st = os.lstat(d / "dir")
    assert (oct(st.st_mode), st.st_uid, st.st_gid) == (oct(0o40700), 1234, 5678)
    assert st.st_mtime == 1_700_000_002
    st = os.lstat(d / "plain")  # no metadata: the mount's defaults
    assert (oct(st.st_mode), st.st_uid, st.st_gid) == (oct(0o100644), os.getuid(), os.getgid())


def test_chmod_utime_and_symlinks_land_in_object_metadata(
    bucket: S3Bucket, mounter: Any, tmp_path: Path
) -> None:
    c = bucket.server.client()
    m = mounter()
    p = m.path / "attrs.bin"
    p.write_bytes(b"x" * 100)
    os.chmod(p, 0o600)
    os.utime(p, (1_600_000_000, 1_600_000_000))
    head = c.head_object(Bucket=bucket.name, Key="attrs.bin")
    assert int(head["Metadata"]["mode"]) == 0o100600, head["Metadata"]
    assert float(head["Metadata"]["mtime"]) == 1_600_000_000, head["Metadata"]
    assert c.get_object(Bucket=bucket.name, Key="attrs.bin")["Body"].read() == b"x" * 100
    os.mkdir(m.path / "adir")
    os.chmod(m.path / "adir", 0o750)
    os.utime(m.path / "adir", (1_600_000_100, 1_600_000_100))
    head = c.head_object(Bucket=bucket.name, Key="adir/")
    assert int(head["Metadata"]["mode"]) == 0o40750, head["Metadata"]
    assert float(head["Metadata"]["mtime"]) == 1_600_000_100, head["Metadata"]
    os.symlink("attrs.bin", m.path / "alink")
    obj = c.get_object(Bucket=bucket.name, Key="alink")
    assert obj["Body"].read() == b"attrs.bin"
    assert int(obj["Metadata"]["mode"]) == 0o120777, obj["Metadata"]
    # a daemon with an empty cache shows them
    m2 = mounter(cache_dir=tmp_path / "other")
    st = os.lstat(m2.path / "attrs.bin")
    assert (oct(st.st_mode), st.st_mtime) == (oct(0o100600), 1_600_000_000)
    st = os.lstat(m2.path / "adir")
    assert (oct(st.st_mode), st.st_mtime) == (oct(0o40750), 1_600_000_100)
    assert os.readlink(m2.path / "alink") == "attrs.bin"
    assert (m2.path / "alink").read_bytes() == b"x" * 100


def test_chown_lands_in_object_metadata(bucket: S3Bucket, mounter: Any) -> None:
    """tar -x, cp -a and rsync -a running as root chown what they create."""
    c = bucket.server.client()
    m = mounter()
    p = m.path / "owned"
    p.write_bytes(b"o")
    os.chown(p, 1234, 5678)
    meta = c.head_object(Bucket=bucket.name, Key="owned")["Metadata"]
    assert (meta.get("uid"), meta.get("gid")) == ("1234", "5678"), meta
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_hard_links_are_eperm(bucket: S3Bucket, mounter: Any) -> None:
    bucket.put("hl/src", b"s")
    m = mounter()
    assert errno_of(os.link, m.path / "hl" / "src", m.path / "hl" / "dst") == errno.EPERM
    assert not (m.path / "hl" / "dst").exists()


# ------------------------------------------------------------------------------ failures


UPLOAD_KINDS = ("PUT", "CREATE_MPU", "UPLOAD_PART", "COMPLETE_MPU", "COPY")


def _break_uploads(bucket: S3Bucket, key: str) -> None:
    for kind in UPLOAD_KINDS:  # 403: not retried, so the failure is immediate
        bucket.server.fail_next(
            1000, status=403, code="AccessDenied", kind=kind, key=key, message="Access Denied"
        )


def test_failed_upload_is_reported_and_nothing_written_is_lost(
    bucket: S3Bucket, mounter: Any
) -> None:
    m = mounter()
    c = bucket.server.client()
    data = payload(300_000, 5)
    fd = os.open(m.path / "new", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        _break_uploads(bucket, "new")
        try:
            with pytest.raises(OSError):
                os.fsync(fd)
        finally:
            bucket.server.clear_faults()
        assert os.pread(fd, len(data) + 1, 0) == data  # still here
        os.fsync(fd)  # and a retry succeeds
        assert c.get_object(Bucket=bucket.name, Key="new")["Body"].read() == data
    finally:
        os.close(fd)
    # close() fails: the caller hears it, and the object is not replaced by a partial one
    old = payload(200_000, 6)
    bucket.put("existing", old)
    fd = os.open(m.path / "existing", os.O_RDWR)
    os.pwrite(fd, payload(200_000, 7), 0)
    _break_uploads(bucket, "existing")
    try:
        with pytest.raises(OSError):
            os.close(fd)
    finally:
        bucket.server.clear_faults()
    assert c.get_object(Bucket=bucket.name, Key="existing")["Body"].read() == old
