"""A local directory used as a bucket: the embedded default, and a fast backend for benchmarks.

Layout (documented in docs/backends.md):
- object `a/b/c` is the file `ROOT/a/b/c`; an explicit directory marker `a/b/` is the
  directory `ROOT/a/b` carrying the xattr `user.wsfuse.marker`;
- user metadata is JSON in the xattr `user.wsfuse.meta`, set on the temporary file before it
  is renamed into place, so data and metadata are published together (atomically);
- `ROOT/.wsfuse/` is reserved: `tmp/` for files being written, `uploads/ID/` for multipart
  uploads (a `manifest.json` plus one file per part);
- the ETag is `inode.mtime_ns.size` (hex): stable across restarts, new for every publish,
  and free to compute (no hashing of large files).

Deviations from S3, by construction of a directory tree: a key and a prefix cannot share a
name (`a` and `a/b`), keys with empty, `.` or `..` segments, NUL, or segments over 255 bytes
are refused (`InvalidKey`), and no key can resolve outside ROOT. Conditional requests are
atomic within one process (a lock), not across processes sharing the directory.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import google_crc32c

from wsfuse.backends.base import (
    MIN_PART_SIZE,
    Backend,
    Capabilities,
    ListPage,
    ObjectInfo,
    PartInfo,
    UploadInfo,
)
from wsfuse.backends.listing import paginate
from wsfuse.errors import (
    BackendError,
    BucketNotFound,
    InvalidKey,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
)

RESERVED = ".wsfuse"
META_XATTR = "user.wsfuse.meta"
MARKER_XATTR = "user.wsfuse.marker"
_COPY_CHUNK = 8 * 1024 * 1024


class LocalDirBackend(Backend):
    """A bucket in the directory `root` (created when `create` is true)."""

    def __init__(self, root: str, *, create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.name = f"file://{self.root}"
        self.capabilities = Capabilities(
            key_prefix_clash=False,
            reasons={"key_prefix_clash": "a directory cannot be both a file and a folder"},
        )
        # Serialises check-then-publish of conditional writes within this process.
        self._publish_lock = threading.Lock()
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _map_os_error(exc, str(self.root)) from exc

    # ------------------------------------------------------------------ paths and keys

    def _path(self, key: str) -> Path:
        """The file (or marker directory) for `key`, refusing keys that cannot be paths here."""
        body = key[:-1] if key.endswith("/") else key
        if not body:
            raise InvalidKey(f"empty key {key!r}", key=key)
        segments = body.split("/")
        for seg in segments:
            if seg in ("", ".", "..") or "\0" in seg or len(seg.encode()) > 255:
                raise InvalidKey(
                    f"key {key!r} cannot be stored in a directory bucket "
                    "(empty, '.' or '..' segment, NUL, or a segment over 255 bytes)",
                    key=key,
                )
        if segments[0] == RESERVED:
            raise InvalidKey(f"keys under {RESERVED}/ are reserved by wsfuse", key=key)
        return self.root.joinpath(*segments)

    def _tmp_path(self) -> Path:
        tmp = self.root / RESERVED / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / uuid.uuid4().hex

    def _uploads_dir(self) -> Path:
        return self.root / RESERVED / "uploads"

    # ------------------------------------------------------------------ object info

    def _file_info(
        self, key: str, path: Path, st: os.stat_result, *, with_metadata: bool
    ) -> ObjectInfo:
        meta: dict[str, str] | None = None
        if with_metadata:
            meta = _read_json_xattr(path, MARKER_XATTR if key.endswith("/") else META_XATTR) or {}
        size = 0 if key.endswith("/") else st.st_size
        return ObjectInfo(key, size, _etag(st), st.st_mtime, meta)

    def _stat_object(self, key: str) -> tuple[Path, os.stat_result]:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such key: {key!r}", key=key) from None
        except OSError as exc:
            raise _map_os_error(exc, key) from exc
        if key.endswith("/"):
            if not stat.S_ISDIR(st.st_mode) or _read_json_xattr(path, MARKER_XATTR) is None:
                raise NotFound(f"no such key: {key!r}", key=key)
        elif not stat.S_ISREG(st.st_mode):
            raise NotFound(f"no such key: {key!r}", key=key)
        return path, st

    # ------------------------------------------------------------------ Backend

    def head(self, key: str) -> ObjectInfo:
        path, st = self._stat_object(key)
        return self._file_info(key, path, st, with_metadata=True)

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        if length == 0:
            return b""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        if key.endswith("/"):
            _, st = self._stat_object(key)
            if if_match is not None and _etag(st) != if_match:
                raise PreconditionFailed(f"{key!r} is no longer version {if_match}", key=key)
            return b""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"no such key: {key!r}", key=key) from None
        except OSError as exc:
            raise _map_os_error(exc, key) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"no such key: {key!r}", key=key)
            # The open fd pins this version: a concurrent publish renames a new inode in place.
            if if_match is not None and _etag(st) != if_match:
                raise PreconditionFailed(f"{key!r} is no longer version {if_match}", key=key)
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = 1000,
    ) -> ListPage:
        if not self.root.is_dir():
            raise BucketNotFound(_missing_root_message(self.root))
        keys = (
            self._keys_one_level(prefix)
            if delimiter == "/"
            else sorted(self._keys_recursive(prefix))
        )

        def info(key: str) -> ObjectInfo:
            path = self._path(key)
            return self._file_info(key, path, path.stat(), with_metadata=False)

        return paginate(keys, info, prefix, delimiter, token, page_size)

    def _keys_one_level(self, prefix: str) -> builtins.list[str]:
        """Keys (files, the marker of `prefix` itself) and `dir/` stand-ins for subdirectories
        in the one directory a `/`-delimited listing of `prefix` looks at."""
        cut = prefix.rfind("/") + 1
        dir_part, name_start = prefix[:cut], prefix[cut:]
        try:
            directory = self._path(dir_part) if dir_part else self.root
        except InvalidKey:
            return []
        keys: builtins.list[str] = []
        if dir_part and not name_start and _read_json_xattr(directory, MARKER_XATTR) is not None:
            keys.append(dir_part)
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return keys
        except OSError as exc:
            raise _map_os_error(exc, prefix) from exc
        for entry in entries:
            name = entry.name
            if not name.startswith(name_start) or (not dir_part and name == RESERVED):
                continue
            if entry.is_dir(follow_symlinks=False):
                keys.append(f"{dir_part}{name}/")
            elif entry.is_file(follow_symlinks=False):
                keys.append(dir_part + name)
        keys.sort()
        return keys

    def _keys_recursive(self, prefix: str) -> Iterator[str]:
        cut = prefix.rfind("/") + 1
        try:
            start = self._path(prefix[:cut]) if cut else self.root
        except InvalidKey:
            return
        base = len(str(self.root)) + 1
        for dirpath, dirnames, filenames in os.walk(start):
            rel = dirpath[base:]
            if not rel:
                dirnames[:] = [d for d in dirnames if d != RESERVED]
            elif _read_json_xattr(Path(dirpath), MARKER_XATTR) is not None:
                marker = rel + "/"
                if marker.startswith(prefix):
                    yield marker
            for name in filenames:
                key = f"{rel}/{name}" if rel else name
                if key.startswith(prefix):
                    yield key

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        path = self._path(key)
        if key.endswith("/"):
            if data:
                raise InvalidKey(f"a directory marker {key!r} cannot have content", key=key)
            return self._put_marker(key, path, metadata, if_match, if_none_match)
        tmp = self._tmp_path()
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._publish(key, path, tmp, metadata, if_match, if_none_match)
        except OSError as exc:
            raise _map_os_error(exc, key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _check_precondition(self, key: str, if_match: str | None, if_none_match: bool) -> None:
        if if_match is None and not if_none_match:
            return
        try:
            _, st = self._stat_object(key)
        except NotFound:
            if if_match is not None:
                raise
            return
        if if_none_match:
            raise PreconditionFailed(f"{key!r} already exists", key=key)
        if _etag(st) != if_match:
            raise PreconditionFailed(f"{key!r} is no longer version {if_match}", key=key)

    def _make_parents(self, key: str, path: Path) -> None:
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidKey(
                f"cannot store {key!r}: a parent of it is an object in this directory bucket",
                key=key,
            ) from None

    def _publish(
        self,
        key: str,
        path: Path,
        tmp: Path,
        metadata: Mapping[str, str] | None,
        if_match: str | None,
        if_none_match: bool,
    ) -> ObjectInfo:
        """Rename a complete temporary file into place (readers see old or new, never a mix)."""
        if metadata:
            _write_json_xattr(tmp, META_XATTR, metadata)
        self._make_parents(key, path)
        with self._publish_lock:
            self._check_precondition(key, if_match, if_none_match)
            if path.is_dir():
                raise InvalidKey(
                    f"cannot store {key!r}: it is a folder (prefix) in this directory bucket",
                    key=key,
                )
            os.rename(tmp, path)
        st = path.stat()
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, dict(metadata or {}))

    def _put_marker(
        self,
        key: str,
        path: Path,
        metadata: Mapping[str, str] | None,
        if_match: str | None,
        if_none_match: bool,
    ) -> ObjectInfo:
        with self._publish_lock:
            self._check_precondition(key, if_match, if_none_match)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise InvalidKey(
                    f"cannot create folder {key!r}: an object of that name exists", key=key
                ) from None
            _write_json_xattr(path, MARKER_XATTR, metadata or {})
        st = path.stat()
        return ObjectInfo(key, 0, _etag(st), st.st_mtime, dict(metadata or {}))

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        self._path(key)  # validate now, not at completion
        upload_id = uuid.uuid4().hex
        udir = self._uploads_dir() / upload_id
        udir.mkdir(parents=True)
        manifest = {"key": key, "metadata": dict(metadata or {}), "initiated": time.time()}
        (udir / "manifest.json").write_text(json.dumps(manifest))
        return upload_id

    def _upload_dir(self, key: str, upload_id: str) -> tuple[Path, dict[str, object]]:
        udir = self._uploads_dir() / upload_id
        try:
            if "/" in upload_id or upload_id.startswith("."):
                raise FileNotFoundError
            manifest = json.loads((udir / "manifest.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            raise NotFound(f"no such multipart upload {upload_id} for {key!r}", key=key) from None
        if manifest.get("key") != key:
            raise NotFound(f"no such multipart upload {upload_id} for {key!r}", key=key)
        return udir, manifest

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        if not 1 <= number <= 10_000:
            raise BackendError(f"part number {number} out of range 1..10000", key=key)
        udir, _ = self._upload_dir(key, upload_id)
        etag = f"{google_crc32c.value(data):08x}{len(data):x}"
        tmp = udir / f"{number:05d}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            for old in udir.glob(f"{number:05d}-*"):
                old.unlink(missing_ok=True)
            os.rename(tmp, udir / f"{number:05d}-{etag}")
        except FileNotFoundError:
            raise NotFound(f"multipart upload {upload_id} was aborted", key=key) from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _map_os_error(exc, key) from exc
        return PartInfo(number, etag, len(data))

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        udir, manifest = self._upload_dir(key, upload_id)
        if not parts:
            raise BackendError("a multipart upload needs at least one part", key=key)
        numbers = [p.number for p in parts]
        if numbers != sorted(set(numbers)):
            raise BackendError("parts must be listed in ascending order, once each", key=key)
        files: builtins.list[Path] = []
        for i, part in enumerate(parts):
            f = udir / f"{part.number:05d}-{part.etag}"
            if not f.exists():
                raise BackendError(f"part {part.number} was not uploaded", key=key)
            if i < len(parts) - 1 and f.stat().st_size < MIN_PART_SIZE:
                raise BackendError(
                    f"part {part.number} is {f.stat().st_size} bytes; every part but the last "
                    f"must be at least {MIN_PART_SIZE}",
                    key=key,
                )
            files.append(f)
        tmp = self._tmp_path()
        try:
            with open(tmp, "xb") as out:
                for f in files:
                    with open(f, "rb") as src:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            meta = manifest.get("metadata")
            info = self._publish(
                key,
                self._path(key),
                tmp,
                meta if isinstance(meta, dict) else None,
                if_match,
                if_none_match,
            )
        except OSError as exc:
            raise _map_os_error(exc, key) from exc
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(udir, ignore_errors=True)
        return info

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            udir, _ = self._upload_dir(key, upload_id)
        except NotFound:
            return
        shutil.rmtree(udir, ignore_errors=True)

    def list_multipart(self, prefix: str) -> Sequence[UploadInfo]:
        uploads: builtins.list[UploadInfo] = []
        try:
            entries = list(os.scandir(self._uploads_dir()))
        except FileNotFoundError:
            return uploads
        for entry in entries:
            try:
                manifest = json.loads(Path(entry.path, "manifest.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being created or aborted right now
            key = str(manifest.get("key", ""))
            if key.startswith(prefix):
                uploads.append(UploadInfo(key, entry.name, float(manifest.get("initiated", 0))))
        uploads.sort(key=lambda u: (u.key, u.initiated))
        return uploads

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        src_path, _ = self._stat_object(src)
        meta = _read_json_xattr(src_path, MARKER_XATTR if src.endswith("/") else META_XATTR) or {}
        if metadata is not None:
            meta = dict(metadata)
        dst_path = self._path(dst)
        if src.endswith("/") or dst.endswith("/"):
            if not (src.endswith("/") and dst.endswith("/")):
                raise InvalidKey("a folder marker can only be copied to a folder marker", key=dst)
            return self._put_marker(dst, dst_path, meta, None, False)
        tmp = self._tmp_path()
        try:
            shutil.copyfile(src_path, tmp)
            return self._publish(dst, dst_path, tmp, meta, None, False)
        except FileNotFoundError:
            raise NotFound(f"no such key: {src!r}", key=src) from None
        except OSError as exc:
            raise _map_os_error(exc, dst) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if key.endswith("/"):
                if not path.is_dir():
                    return
                with contextlib.suppress(OSError):
                    os.removexattr(path, MARKER_XATTR)
                self._prune(path)
            else:
                if path.is_dir():
                    return  # a prefix, not an object
                path.unlink()
                self._prune(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _map_os_error(exc, key) from exc

    def _prune(self, directory: Path) -> None:
        """Remove now-empty implicit directories upwards, as S3 prefixes vanish with their keys."""
        while directory != self.root and self.root in directory.parents:
            if _read_json_xattr(directory, MARKER_XATTR) is not None:
                return
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone, or raced with a writer): stop
            directory = directory.parent

    def check_bucket(self) -> None:
        if not self.root.is_dir():
            raise BucketNotFound(_missing_root_message(self.root))
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise PermissionDenied(f"cannot read the local bucket directory {self.root}")


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}.{st.st_mtime_ns:x}.{st.st_size:x}"


def _read_json_xattr(path: Path, name: str) -> dict[str, str] | None:
    try:
        raw = os.getxattr(path, name)
    except OSError:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def _write_json_xattr(path: Path, name: str, value: Mapping[str, str]) -> None:
    try:
        os.setxattr(path, name, json.dumps(dict(value), separators=(",", ":")).encode())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise BackendError(
                f"the filesystem of {path.parent} does not support extended attributes, which a "
                "local bucket needs for metadata; put the bucket on ext4, xfs, btrfs or tmpfs"
            ) from exc
        raise


def _missing_root_message(root: Path) -> str:
    return (
        f"local bucket directory {root} does not exist; create it (mkdir -p {root}) or fix the URI"
    )


def _map_os_error(exc: OSError, what: str) -> BackendError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(
            f"permission denied on local bucket path for {what!r}: {exc.strerror}"
        )
    if exc.errno == errno.ENOSPC:
        return BackendError(
            f"no space left on the local bucket's disk while writing {what!r}", key=what
        )
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidKey(f"key {what!r} is too long for a directory bucket", key=what)
    return BackendError(f"local bucket I/O error for {what!r}: {exc}", key=what)
