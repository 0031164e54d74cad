"""Google Cloud Storage backend, on the JSON API through google-cloud-storage.

Conventions
-----------
- The etag of an object is its *generation* as a decimal string: conditional requests map
  `if_match` to `ifGenerationMatch` and `if_none_match` to `ifGenerationMatch=0`.
- Every request carries `timeout=(connect_timeout, read_timeout)` and `retry=None`: the client
  library never retries; `wsfuse.backends.retry` does, for the `Transient` errors mapped here
  (in one place, `map_error` in `gcswire`, with the rest of what GCS's answers mean).
- A `storage.Client` per thread (each with its own HTTP session), because sharing a
  `requests.Session` across threads is not documented as safe. The client library's
  background bucket-metadata fetches (an OpenTelemetry aid that would send extra, retried
  requests) are switched off.
- Credentials: Google ADC (`google.auth.default`, which refreshes tokens by itself on a
  long-lived mount). With a plain-`http://` endpoint (a local emulator) requests are
  anonymous; with an `https://` endpoint (a private or regional one) ADC is used there.

Multipart uploads are parallel composite uploads (`gcscompose`, where their design, layout and
costs are described): `GCSBackend` extends `CompositeUploads`, which holds the multipart calls.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import google.auth
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from wsfuse.backends.base import (
    DEFAULT_PAGE_SIZE,
    Capabilities,
    ListPage,
    ObjectInfo,
)
from wsfuse.backends.gcscompose import (
    MAX_COMPOSE_SOURCES,
    CompositeUploads,
    compose_plan,
    compose_requests,
)
from wsfuse.backends.gcswire import (
    CONTENT_TYPE,
    CREDENTIALS_HINT,
    UPLOAD_PREFIX,
    check_key,
    etag_generation,
    map_error,
    object_info,
)
from wsfuse.backends.options import BackendOptions
from wsfuse.errors import (
    BackendError,
    BucketNotFound,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    UserError,
)

# What callers (and tests) import from here, wherever it is defined.
__all__ = [
    "MAX_COMPOSE_SOURCES",
    "UPLOAD_PREFIX",
    "GCSBackend",
    "compose_plan",
    "compose_requests",
    "map_error",
]

T = TypeVar("T")

# GCS answers at most 1,000 entries per LIST page.
_MAX_PAGE_SIZE = 1000
# Parallel composes / deletes inside one complete or abort call.
_INTERNAL_PARALLELISM = 8
_SCOPES = ["https://www.googleapis.com/auth/devstorage.full_control"]
_EMULATOR_PROJECT = "wsfuse-emulator"
_DEFAULT_ENDPOINT = "https://storage.googleapis.com"


class GCSBackend(CompositeUploads):
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
                    f"no Google credentials found for {self.name}: {CREDENTIALS_HINT}"
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
        """The one mapping from client-library and transport errors to `wsfuse.errors`
        (`gcswire.map_error`), for this bucket."""
        return map_error(exc, op, key, name=self.name, endpoint=self.endpoint)

    # ------------------------------------------------------------------ objects

    def head(self, key: str) -> ObjectInfo:
        if not key:
            raise NotFound(f"head {self.name}/: empty key", key=key)
        blob = self._blob(key)
        with self._errors("head", key):
            blob.reload(timeout=self._timeout, retry=None)
        return object_info(blob)

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        if length == 0:
            return b""
        generation = None
        if if_match is not None:
            generation = etag_generation(if_match)
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
            objects=[object_info(b) for b in blobs if not b.name.startswith(UPLOAD_PREFIX)],
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
        check_key(key)
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match exclude each other")
        generation: int | None = None
        if if_none_match:
            generation = 0
        elif if_match is not None:
            generation = etag_generation(if_match)
            if generation is None:
                raise PreconditionFailed(f"put {self.name}/{key}: etag {if_match!r}", key=key)
        blob = self._blob(key)
        if metadata:
            blob.metadata = dict(metadata)
        with self._errors("put", key):
            blob.upload_from_string(
                data,
                content_type=CONTENT_TYPE,
                if_generation_match=generation,
                timeout=self._timeout,
                retry=None,
            )
        return object_info(blob)

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        check_key(dst)
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
        return object_info(target)

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
                f"cannot list {self.name} at {self.endpoint}: access denied; {CREDENTIALS_HINT}"
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
