"""Google Cloud Storage backend, on the JSON API through google-cloud-storage.

Conventions
-----------
- The etag of an object is its *generation* as a decimal string: conditional requests map
  `if_match` to `ifGenerationMatch` and `if_none_match` to `ifGenerationMatch=0`.
- Every request carries `timeout=(connect_timeout, read_timeout)` and `retry=None`: the client
  library never retries; `wsfuse.backends.retry` does, for the `Transient` errors mapped here
  (in one place, `_translate`).
- A `storage.Client` per thread (each with its own HTTP session), because sharing a
  `requests.Session` across threads is not documented as safe. The client library's
  background bucket-metadata fetches (an OpenTelemetry aid that would send extra, retried
  requests) are switched off.
- Credentials: Google ADC (`google.auth.default`, which refreshes tokens by itself on a
  long-lived mount). With a plain-`http://` endpoint (a local emulator) requests are
  anonymous; with an `https://` endpoint (a private or regional one) ADC is used there.

Multipart uploads: parallel composite uploads
---------------------------------------------
The JSON API has no S3-style multipart upload. The two candidates were:

- a *resumable upload*: one session per object, bytes sent strictly in order; parts could
  not be uploaded in parallel or out of order, so the uploader would need a GCS-only path;
- a *parallel composite upload* (chosen): every part is an ordinary temporary object, uploaded
  in parallel and in any order by the same uploader as on S3, then `compose` concatenates them
  server-side (no bytes through us).

Layout, under the reserved prefix `UPLOAD_PREFIX` (`.wsfuse-uploads/`) at the bucket root:

- `.wsfuse-uploads/<upload_id>`: the manifest, written first (`ifGenerationMatch=0`): JSON with
  the target key and its user metadata; the target key is also in the manifest's custom
  metadata, so `list_multipart` is one paged LIST (crash recovery finds every open upload);
- `.wsfuse-uploads/<upload_id>/<part:05d>`: the parts; `L<level>-<index:05d>` there: the
  intermediate composites of a complete with more than 32 parts.

`complete_multipart` enforces S3's rules (ascending part numbers, every part but the last
at least 5 MiB: a violation raises `BackendError` and leaves the upload open), then composes:
GCS takes at most 32 sources per compose, so more parts are composed as a tree of fan-in 32
(`compose_plan`: 33 parts → 2 composes, 1,000 → 33, 10,000 → 323, the minimum; the groups
of one level run in parallel). Every source is pinned by `ifGenerationMatch` (its etag) and
deleted by the compose itself (`deleteSourceObjects`: a *hard* delete, so temporaries are not
kept and billed by soft delete or versioning, nor charged early deletion). The final compose
writes the target with its user metadata; then the manifest (and any leftover) is deleted.
A complete retried after a lost reply is recognised (the manifest is still there, every
source is gone, and the target has the expected size and component count) and succeeds.

Costs: a part is one upload request, plus one metadata GET of the manifest (a part uploaded
to an aborted or completed upload is deleted again and raises `NotFound`); a complete is one
manifest GET, ceil((n-1)/31) composes, one LIST and one DELETE. Compose is a class A
operation (priced like a PUT), so a multipart upload costs about twice the requests of S3's.

Temporaries live in the bucket: `abort_multipart` (and recovery, through `list_multipart`)
deletes them; keys under `.wsfuse-uploads/` are refused by `put` and hidden from `list`, and
the filesystem namespace must hide the prefix too (it is at the bucket root, outside any
`gs://bucket/prefix` mount). Credentials limited to a prefix cannot write temporaries there.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import google.auth
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exc

from wsfuse.backends.base import (
    DEFAULT_PAGE_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    Backend,
    Capabilities,
    ListPage,
    ObjectInfo,
    PartInfo,
    UploadInfo,
)
from wsfuse.backends.options import BackendOptions
from wsfuse.errors import (
    BackendError,
    BucketNotFound,
    InvalidKey,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Transient,
    UserError,
)

T = TypeVar("T")

#: Reserved prefix of multipart temporaries (see the module docstring).
UPLOAD_PREFIX = ".wsfuse-uploads/"
#: GCS composes at most 32 source objects per request.
MAX_COMPOSE_SOURCES = 32
# GCS answers at most 1,000 entries per LIST page.
_MAX_PAGE_SIZE = 1000
# Parallel composes / deletes inside one complete or abort call.
_INTERNAL_PARALLELISM = 8
_CONTENT_TYPE = "application/octet-stream"
_MANIFEST_KEY = "wsfuse-upload-key"  # custom metadata of a manifest: the target key
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_SCOPES = ["https://www.googleapis.com/auth/devstorage.full_control"]
_EMULATOR_PROJECT = "wsfuse-emulator"
_DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_MAX_KEY_BYTES = 1024
_CREDENTIALS_HINT = (
    "check GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or run "
    "`gcloud auth application-default login`, and that the account may read and write "
    "objects in the bucket (roles/storage.objectUser)"
)


def compose_plan(count: int, fan_in: int = MAX_COMPOSE_SOURCES) -> list[list[range]]:
    """How to compose `count` sources with at most `fan_in` per compose: a list of levels, each
    a list of groups (consecutive ranges of indices into the previous level's results; level 0
    indexes the sources). The last level is one group, composed into the target; a group of
    one at an intermediate level is passed through without a request.

    Each level composes only full groups (the last composed one may be short when that is
    enough), and only as many as needed to bring the next level down to `fan_in` once that is
    possible, so the plan makes the fewest compose requests, ceil((count - 1) / (fan_in - 1)),
    and the groups of a level can run in parallel.
    """
    if count < 1:
        raise ValueError("nothing to compose")
    if fan_in < 2:
        raise ValueError("fan_in must be at least 2")
    levels: list[list[range]] = []
    n = count
    while n > fan_in:
        # Above fan_in², every full group; else just enough composes (each removes fan_in - 1
        # entries) to get down to fan_in.
        composed = n // fan_in if n > fan_in * fan_in else -(-(n - fan_in) // (fan_in - 1))
        groups = [range(i * fan_in, min((i + 1) * fan_in, n)) for i in range(composed)]
        groups += [range(i, i + 1) for i in range(groups[-1].stop, n)]
        levels.append(groups)
        n = len(groups)
    levels.append([range(n)])
    return levels


def compose_requests(count: int, fan_in: int = MAX_COMPOSE_SOURCES) -> int:
    """The number of compose requests `compose_plan(count, fan_in)` makes."""
    plan = compose_plan(count, fan_in)
    return sum(1 for level in plan[:-1] for group in level if len(group) > 1) + 1


@dataclass(frozen=True, slots=True)
class _Source:
    """A compose source: an object pinned to a generation, with its expected shape."""

    name: str
    generation: int
    size: int
    components: int


def _part_name(upload_id: str, number: int) -> str:
    return f"{UPLOAD_PREFIX}{upload_id}/{number:05d}"


def _manifest_name(upload_id: str) -> str:
    return f"{UPLOAD_PREFIX}{upload_id}"


def _generation(etag: str) -> int | None:
    """The generation an etag names, or None if it cannot be a GCS etag."""
    return int(etag) if etag.isdigit() else None


def _check_key(key: str) -> None:
    """Raise `InvalidKey` unless GCS can store `key` and it is not reserved."""
    if not key or key in (".", ".."):
        raise InvalidKey(f"{key!r} is not a valid GCS object name", key=key)
    if "\r" in key or "\n" in key:
        raise InvalidKey(f"GCS object names cannot contain CR or LF: {key!r}", key=key)
    if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
        raise InvalidKey(f"GCS object names are at most 1024 bytes: {key[:60]!r}...", key=key)
    if key.startswith(UPLOAD_PREFIX):
        raise InvalidKey(f"{UPLOAD_PREFIX} is reserved for wsfuse's multipart uploads", key=key)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _info(blob: Any, *, with_metadata: bool = True) -> ObjectInfo:
    updated = blob.updated
    return ObjectInfo(
        key=blob.name,
        size=int(blob.size or 0),
        etag=str(blob.generation),
        mtime=updated.timestamp() if updated is not None else 0.0,
        metadata=dict(blob.metadata or {}) if with_metadata else None,
    )


class GCSBackend(Backend):
    """A GCS bucket (`gs://bucket`). Thread-safe: one client library `Client` per thread."""

    def __init__(self, bucket: str, options: BackendOptions) -> None:
        try:
            storage.Bucket(client=None, name=bucket)  # validates the name, no request
        except ValueError as exc:
            raise UserError(f"{bucket!r} is not a valid GCS bucket name: {exc}") from exc
        self.bucket_name = bucket
        self.name = f"gs://{bucket}"
        self.capabilities = Capabilities()
        self.endpoint = (options.endpoint_url or _DEFAULT_ENDPOINT).rstrip("/")
        self._timeout = (options.connect_timeout, options.read_timeout)
        self._client_options: dict[str, str] | None = None
        if options.endpoint_url:
            self._client_options = {"api_endpoint": self.endpoint}
        self._credentials: Any
        self._project: str | None
        if self.endpoint.startswith("http://"):
            # A local emulator: no credentials, and never a metadata-server lookup.
            self._credentials, self._project = AnonymousCredentials(), _EMULATOR_PROJECT  # type: ignore[no-untyped-call]
        else:
            try:
                self._credentials, self._project = google.auth.default(scopes=_SCOPES)
            except auth_exc.DefaultCredentialsError as exc:
                raise PermissionDenied(
                    f"no Google credentials found for {self.name}: {_CREDENTIALS_HINT}"
                ) from exc
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        #: sources per compose request (GCS's limit; tests lower it to exercise the tree)
        self.compose_fan_in = MAX_COMPOSE_SOURCES

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = storage.Client(
                project=self._project,
                credentials=self._credentials,
                client_options=self._client_options,
            )
            # The library's background bucket-metadata fetches are extra requests, retried
            # by the library itself, on threads we do not control: off.
            if hasattr(client, "_bucket_metadata_cache"):
                client._bucket_metadata_cache = None
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def _bucket(self) -> Any:
        return self._client().bucket(self.bucket_name)

    def _blob(self, key: str) -> Any:
        return self._bucket().blob(key)

    def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> builtins.list[Any]:
        """`fn` over `items`, in parallel (on an internal pool) when there is more than one."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    _INTERNAL_PARALLELISM, thread_name_prefix="wsfuse-gcs"
                )
            pool = self._pool
        return list(pool.map(fn, items))

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except BackendError:
            raise
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    def _translate(self, exc: BaseException, op: str, key: str | None) -> BackendError:
        """The one mapping from client-library and transport errors to `wsfuse.errors`."""
        where = f"{op} {self.name}/{key}" if key is not None else f"{op} {self.name}"
        if isinstance(exc, gexc.NotFound):
            return NotFound(f"{where}: not found", key=key)
        if isinstance(exc, gexc.PreconditionFailed):
            return PreconditionFailed(f"{where}: the object changed (precondition failed)", key=key)
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
            return PermissionDenied(
                f"{where}: access denied (HTTP {exc.code}); {_CREDENTIALS_HINT}", key=key
            )
        if isinstance(exc, (gexc.TooManyRequests, gexc.ServerError)):
            return Transient(f"{where}: HTTP {exc.code}: {_short(exc.message or '')}", key=key)
        if isinstance(exc, gexc.GoogleAPICallError):
            if exc.code is not None and (int(exc.code) >= 500 or int(exc.code) == 408):
                return Transient(f"{where}: HTTP {exc.code}: {_short(exc.message or '')}", key=key)
            return BackendError(f"{where}: HTTP {exc.code}: {_short(exc.message or '')}", key=key)
        if isinstance(
            exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)
        ):
            return Transient(
                f"{where}: cannot reach {self.endpoint} ({type(exc).__name__}: {_short(str(exc))})",
                key=key,
            )
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return Transient(f"{where}: connection broken: {_short(str(exc))}", key=key)
        if isinstance(exc, storage_exc.DataCorruption):
            return Transient(f"{where}: checksum mismatch in transfer: {_short(str(exc))}", key=key)
        if isinstance(exc, auth_exc.DefaultCredentialsError):
            return PermissionDenied(f"{where}: no Google credentials; {_CREDENTIALS_HINT}", key=key)
        if isinstance(exc, auth_exc.TransportError) or (
            isinstance(exc, auth_exc.RefreshError) and exc.retryable
        ):
            return Transient(f"{where}: cannot refresh credentials: {_short(str(exc))}", key=key)
        if isinstance(exc, auth_exc.RefreshError):
            return PermissionDenied(
                f"{where}: credentials were refused ({_short(str(exc))}); {_CREDENTIALS_HINT}",
                key=key,
            )
        return BackendError(f"{where}: {type(exc).__name__}: {_short(str(exc))}", key=key)

    # ------------------------------------------------------------------ objects

    def head(self, key: str) -> ObjectInfo:
        if not key:
            raise NotFound(f"head {self.name}/: empty key", key=key)
        blob = self._blob(key)
        with self._errors("head", key):
            blob.reload(timeout=self._timeout, retry=None)
        return _info(blob)

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        if length == 0:
            return b""
        generation = None
        if if_match is not None:
            generation = _generation(if_match)
            if generation is None:
                raise PreconditionFailed(f"get_range {self.name}/{key}: etag {if_match!r}", key=key)
        if not key:
            raise NotFound(f"get_range {self.name}/: empty key", key=key)
        blob = self._blob(key)
        with self._errors("get_range", key):
            try:
                data: bytes = blob.download_as_bytes(
                    start=offset,
                    end=offset + length - 1,
                    raw_download=True,
                    checksum=None,
                    if_generation_match=generation,
                    timeout=self._timeout,
                    retry=None,
                )
            except gexc.RequestRangeNotSatisfiable:
                return b""  # the range starts at or after the end
        return data[:length]

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> ListPage:
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        blobs, prefixes, next_token = self._list_page(
            prefix, delimiter=delimiter, token=token, page_size=page_size
        )
        # Multipart temporaries are not objects of the bucket, as on S3.
        return ListPage(
            objects=[_info(b) for b in blobs if not b.name.startswith(UPLOAD_PREFIX)],
            prefixes=[p for p in prefixes if not p.startswith(UPLOAD_PREFIX)],
            next_token=next_token,
        )

    def _list_page(
        self, prefix: str, *, delimiter: str | None, token: str | None, page_size: int
    ) -> tuple[builtins.list[Any], builtins.list[str], str | None]:
        with self._errors("list", prefix):
            try:
                iterator = self._client().list_blobs(
                    self.bucket_name,
                    prefix=prefix or None,
                    delimiter=delimiter or None,
                    page_token=token,
                    page_size=min(page_size, _MAX_PAGE_SIZE),
                    timeout=self._timeout,
                    retry=None,
                )
                page = next(iterator.pages)
                blobs = list(page)
            except gexc.NotFound as exc:
                raise self._bucket_not_found() from exc
        return blobs, list(page.prefixes), iterator.next_page_token or None

    def _list_all(
        self, prefix: str, *, delimiter: str | None
    ) -> Iterator[tuple[builtins.list[Any], builtins.list[str]]]:
        token: str | None = None
        while True:
            blobs, prefixes, token = self._list_page(
                prefix, delimiter=delimiter, token=token, page_size=_MAX_PAGE_SIZE
            )
            yield blobs, prefixes
            if token is None:
                return

    def _bucket_not_found(self) -> BucketNotFound:
        return BucketNotFound(
            f"bucket {self.name} does not exist (at {self.endpoint}); check the bucket name in "
            f"the URI, or create it: `gcloud storage buckets create {self.name}`"
        )

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        _check_key(key)
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match exclude each other")
        generation: int | None = None
        if if_none_match:
            generation = 0
        elif if_match is not None:
            generation = _generation(if_match)
            if generation is None:
                raise PreconditionFailed(f"put {self.name}/{key}: etag {if_match!r}", key=key)
        blob = self._blob(key)
        if metadata:
            blob.metadata = dict(metadata)
        with self._errors("put", key):
            blob.upload_from_string(
                data,
                content_type=_CONTENT_TYPE,
                if_generation_match=generation,
                timeout=self._timeout,
                retry=None,
            )
        return _info(blob)

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        _check_key(dst)
        if not src:
            raise NotFound(f"copy {self.name}/: empty key", key=src)
        bucket = self._bucket()
        source, target = bucket.blob(src), bucket.blob(dst)
        if metadata is not None:
            # The destination resource in a rewrite overrides the source's fields; without a
            # `metadata` field the source's user metadata is kept.
            target.metadata = dict(metadata)
        with self._errors("copy", src):
            token: str | None = None
            while True:  # a large object may take several rewrite calls
                token, _, _ = target.rewrite(source, token=token, timeout=self._timeout, retry=None)
                if token is None:
                    break
        if metadata is not None and dict(target.metadata or {}) != dict(metadata):
            # Should the service ever merge metadata rather than replace it, drop the extras.
            fixed = bucket.blob(dst)
            fixed.metadata = {k: None for k in target.metadata or {}} | dict(metadata)
            with self._errors("copy", dst):
                fixed.patch(
                    if_generation_match=target.generation, timeout=self._timeout, retry=None
                )
            target = fixed
        return _info(target)

    def delete(self, key: str) -> None:
        if not key:
            return
        with self._errors("delete", key), contextlib.suppress(gexc.NotFound):
            self._blob(key).delete(timeout=self._timeout, retry=None)

    def check_bucket(self) -> None:
        try:
            self._list_page("", delimiter="/", token=None, page_size=1)
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"cannot list {self.name} at {self.endpoint}: access denied; {_CREDENTIALS_HINT}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
            pool, self._pool = self._pool, None
            self._local = threading.local()
        if pool is not None:
            pool.shutdown(wait=True)
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------------ multipart

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        _check_key(key)
        upload_id = uuid.uuid4().hex
        manifest = self._blob(_manifest_name(upload_id))
        manifest.metadata = {_MANIFEST_KEY: key}
        body = json.dumps({"version": 1, "key": key, "metadata": dict(metadata or {})})
        with self._errors("create_multipart", key):
            manifest.upload_from_string(
                body.encode("utf-8"),
                content_type="application/json",
                if_generation_match=0,
                timeout=self._timeout,
                retry=None,
            )
        return upload_id

    def _no_upload(self, op: str, key: str, upload_id: str) -> NotFound:
        return NotFound(
            f"{op} {self.name}/{key}: no multipart upload {upload_id!r} (aborted or completed)",
            key=key,
        )

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        if not 1 <= number <= MAX_PARTS:
            raise BackendError(f"part number {number} is not in 1..{MAX_PARTS}", key=key)
        if len(data) > MAX_PART_SIZE:
            raise BackendError(f"part {number} is larger than {MAX_PART_SIZE} bytes", key=key)
        if not _UPLOAD_ID.match(upload_id):
            raise self._no_upload("upload_part", key, upload_id)
        part = self._blob(_part_name(upload_id, number))
        with self._errors("upload_part", key):
            part.upload_from_string(
                data, content_type=_CONTENT_TYPE, timeout=self._timeout, retry=None
            )
        # Checked *after* the upload: an abort deletes the manifest before its last sweep of
        # the parts, so a part that lands after the sweep finds the manifest gone here.
        if self._manifest_key(upload_id) != key:
            with contextlib.suppress(Exception):
                part.delete(if_generation_match=part.generation, timeout=self._timeout, retry=None)
            raise self._no_upload("upload_part", key, upload_id)
        return PartInfo(number=number, etag=str(part.generation), size=len(data))

    def _manifest_key(self, upload_id: str) -> str | None:
        """The target key of an open upload (None if there is no such upload)."""
        manifest = self._blob(_manifest_name(upload_id))
        with self._errors("upload_part", _manifest_name(upload_id)):
            try:
                manifest.reload(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                return None
        key = (manifest.metadata or {}).get(_MANIFEST_KEY)
        return str(key) if key is not None else None

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        if not parts:
            raise BackendError("a multipart upload needs at least one part", key=key)
        for prev, part in itertools.pairwise(parts):
            if part.number <= prev.number:
                raise BackendError(
                    f"part numbers must ascend: {part.number} after {prev.number}", key=key
                )
            if prev.size < MIN_PART_SIZE:
                raise BackendError(
                    f"part {prev.number} is {prev.size} bytes: every part but the last must be "
                    f"at least {MIN_PART_SIZE} bytes",
                    key=key,
                )
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match exclude each other")
        target_generation: int | None = 0 if if_none_match else None
        if if_match is not None:
            target_generation = _generation(if_match)
            if target_generation is None:
                raise PreconditionFailed(
                    f"complete_multipart {self.name}/{key}: etag {if_match!r}", key=key
                )
        if not _UPLOAD_ID.match(upload_id):
            raise self._no_upload("complete_multipart", key, upload_id)
        manifest = self._read_manifest(key, upload_id)
        sources: builtins.list[_Source] = []
        for part in parts:
            generation = _generation(part.etag)
            if generation is None:
                raise BackendError(f"part {part.number}: bad etag {part.etag!r}", key=key)
            sources.append(_Source(_part_name(upload_id, part.number), generation, part.size, 1))
        for level, groups in enumerate(compose_plan(len(sources), self.compose_fan_in)[:-1]):
            build = functools.partial(self._compose_group, key, upload_id, level + 1, sources)
            sources = self._map(build, list(enumerate(groups)))
        metadata = {str(k): str(v) for k, v in dict(manifest.get("metadata") or {}).items()}
        blob = self._compose(
            key, upload_id, key, sources, metadata=metadata, if_generation_match=target_generation
        )
        self._delete_upload(upload_id, sweeps_after_manifest=0)
        return _info(blob)

    def _compose_group(
        self,
        key: str,
        upload_id: str,
        level: int,
        previous: Sequence[_Source],
        job: tuple[int, range],
    ) -> _Source:
        """One intermediate composite of a complete (or a lone source, passed through)."""
        index, group = job
        members = [previous[i] for i in group]
        if len(members) == 1:
            return members[0]
        name = f"{UPLOAD_PREFIX}{upload_id}/L{level}-{index:05d}"
        blob = self._compose(key, upload_id, name, members, metadata=None)
        return _Source(name, int(blob.generation), int(blob.size), int(blob.component_count or 1))

    def _read_manifest(self, key: str, upload_id: str) -> dict[str, Any]:
        blob = self._blob(_manifest_name(upload_id))
        with self._errors("complete_multipart", key):
            try:
                raw = blob.download_as_bytes(
                    raw_download=True, checksum=None, timeout=self._timeout, retry=None
                )
            except gexc.NotFound:
                raise self._no_upload("complete_multipart", key, upload_id) from None
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"upload {upload_id}: unreadable manifest: {exc}", key=key) from exc
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            raise self._no_upload("complete_multipart", key, upload_id)
        return manifest

    def _compose(
        self,
        key: str,
        upload_id: str,
        target: str,
        sources: Sequence[_Source],
        *,
        metadata: Mapping[str, str] | None,
        if_generation_match: int | None = None,
    ) -> Any:
        """Compose `sources` (deleting them) into `target`, if its generation is
        `if_generation_match` (0: only create); recognise a compose that already happened (a
        retried complete) by the target's size and component count."""
        bucket = self._bucket()
        blob = bucket.blob(target)
        blob.content_type = _CONTENT_TYPE
        if metadata is not None:
            blob.metadata = dict(metadata)
        with self._errors("complete_multipart", key):
            try:
                blob.compose(
                    [bucket.blob(s.name) for s in sources],
                    if_generation_match=if_generation_match,
                    if_source_generation_match=[s.generation for s in sources],
                    delete_source_objects=True,
                    timeout=self._timeout,
                    retry=None,
                )
                return blob
            except gexc.PreconditionFailed:
                # 412 is for the target's condition or a source's: tell which
                if if_generation_match is not None and self._generation_of(target) != (
                    if_generation_match
                ):
                    raise PreconditionFailed(
                        f"complete_multipart {self.name}/{key}: the object changed "
                        "(precondition failed)",
                        key=key,
                    ) from None
                raise BackendError(
                    f"upload {upload_id}: a part changed since it was uploaded (stale etag)",
                    key=key,
                ) from None
            except gexc.NotFound:
                pass
        # Some source is missing: either this compose already happened (its reply was lost,
        # and the complete is being retried), or a part was never uploaded.
        present = self._upload_objects(upload_id)
        missing = [s.name for s in sources if s.name not in present]
        if not missing:  # every source is there: the 404 was about something else
            raise self._no_upload("complete_multipart", key, upload_id)
        if len(missing) < len(sources):
            raise BackendError(
                f"upload {upload_id}: {missing[0].rsplit('/', 1)[-1]} was never uploaded", key=key
            )
        done = bucket.blob(target)
        with self._errors("complete_multipart", key):
            try:
                done.reload(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                raise self._no_upload("complete_multipart", key, upload_id) from None
        if int(done.size or 0) != sum(s.size for s in sources) or int(
            done.component_count or 1
        ) != sum(s.components for s in sources):
            raise self._no_upload("complete_multipart", key, upload_id)
        return done

    def _generation_of(self, name: str) -> int:
        """The current generation of object `name`; 0 when there is none (GCS's convention)."""
        blob = self._blob(name)
        with self._errors("complete_multipart", name):
            try:
                blob.reload(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                return 0
        return int(blob.generation or 0)

    def _upload_objects(self, upload_id: str) -> set[str]:
        names: set[str] = set()
        for blobs, _ in self._list_all(f"{UPLOAD_PREFIX}{upload_id}/", delimiter=None):
            names.update(b.name for b in blobs)
        return names

    def _delete_upload(self, upload_id: str, *, sweeps_after_manifest: int) -> None:
        """Delete an upload's temporaries, then its manifest, then sweep again."""

        def delete(name: str) -> None:
            with self._errors("abort_multipart", name), contextlib.suppress(gexc.NotFound):
                self._blob(name).delete(timeout=self._timeout, retry=None)

        self._map(delete, sorted(self._upload_objects(upload_id)))
        delete(_manifest_name(upload_id))
        for _ in range(sweeps_after_manifest):
            self._map(delete, sorted(self._upload_objects(upload_id)))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        if not _UPLOAD_ID.match(upload_id):
            return
        # Parts first and the manifest last, so that a crash leaves the upload listed (and
        # recovery aborts it again); a sweep after the manifest is gone catches a part whose
        # upload was in flight (a later one deletes itself: see upload_part).
        self._delete_upload(upload_id, sweeps_after_manifest=1)

    def list_multipart(self, prefix: str) -> builtins.list[UploadInfo]:
        uploads: builtins.list[UploadInfo] = []
        for blobs, _ in self._list_all(UPLOAD_PREFIX, delimiter="/"):
            for blob in blobs:
                upload_id = blob.name[len(UPLOAD_PREFIX) :]
                key = (blob.metadata or {}).get(_MANIFEST_KEY)
                if not _UPLOAD_ID.match(upload_id) or key is None or not key.startswith(prefix):
                    continue
                created = blob.time_created or blob.updated
                initiated = created.timestamp() if created is not None else 0.0
                uploads.append(UploadInfo(key=str(key), upload_id=upload_id, initiated=initiated))
        uploads.sort(key=lambda u: (u.key, u.initiated, u.upload_id))
        return uploads
