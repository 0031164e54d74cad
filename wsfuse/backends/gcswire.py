"""GCS's answers in wsfuse's terms: client-library and transport errors mapped onto
`wsfuse.errors` (in one place, `map_error`), the object names GCS accepts and wsfuse reserves,
and the objects and generations (etags) of its answers.
"""

from __future__ import annotations

from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud.storage import exceptions as storage_exc

from wsfuse.backends.base import ObjectInfo
from wsfuse.errors import (
    BackendError,
    InvalidKey,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Transient,
)

#: Reserved prefix of multipart temporaries (their layout: `gcscompose`).
UPLOAD_PREFIX = ".wsfuse-uploads/"
CONTENT_TYPE = "application/octet-stream"
_MAX_KEY_BYTES = 1024
CREDENTIALS_HINT = (
    "check GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or run "
    "`gcloud auth application-default login`, and that the account may read and write "
    "objects in the bucket (roles/storage.objectUser)"
)


def etag_generation(etag: str) -> int | None:
    """The generation an etag names, or None if it cannot be a GCS etag."""
    return int(etag) if etag.isdigit() else None


def check_key(key: str) -> None:
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


def object_info(blob: Any) -> ObjectInfo:
    """The `ObjectInfo` of a blob the client library has loaded: its etag is its generation,
    and its metadata comes along (GCS listings carry it, unlike S3's)."""
    updated = blob.updated
    return ObjectInfo(
        key=blob.name,
        size=int(blob.size or 0),
        etag=str(blob.generation),
        mtime=updated.timestamp() if updated is not None else 0.0,
        metadata=dict(blob.metadata or {}),
    )


def map_error(
    exc: BaseException, op: str, key: str | None, *, name: str, endpoint: str
) -> BackendError:
    """The one mapping from client-library and transport errors to `wsfuse.errors`, for
    operation `op` on `key` of the bucket `name` (`gs://bucket`) at `endpoint`."""
    where = f"{op} {name}/{key}" if key is not None else f"{op} {name}"
    if isinstance(exc, gexc.NotFound):
        return NotFound(f"{where}: not found", key=key)
    if isinstance(exc, gexc.PreconditionFailed):
        return PreconditionFailed(f"{where}: the object changed (precondition failed)", key=key)
    if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
        return PermissionDenied(
            f"{where}: access denied (HTTP {exc.code}); {CREDENTIALS_HINT}", key=key
        )
    if isinstance(exc, (gexc.TooManyRequests, gexc.ServerError)):
        return Transient(f"{where}: HTTP {exc.code}: {_short(exc.message or '')}", key=key)
    if isinstance(exc, gexc.GoogleAPICallError):
        if exc.code is not None and (int(exc.code) >= 500 or int(exc.code) == 408):
            return Transient(f"{where}: HTTP {exc.code}: {_short(exc.message or '')}", key=key)
        return BackendError(f"{where}: HTTP {exc.code}: {_short(exc.message or '')}", key=key)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return Transient(
            f"{where}: cannot reach {endpoint} ({type(exc).__name__}: {_short(str(exc))})",
            key=key,
        )
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return Transient(f"{where}: connection broken: {_short(str(exc))}", key=key)
    if isinstance(exc, storage_exc.DataCorruption):
        return Transient(f"{where}: checksum mismatch in transfer: {_short(str(exc))}", key=key)
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return PermissionDenied(f"{where}: no Google credentials; {CREDENTIALS_HINT}", key=key)
    if isinstance(exc, auth_exc.TransportError) or (
        isinstance(exc, auth_exc.RefreshError) and exc.retryable
    ):
        return Transient(f"{where}: cannot refresh credentials: {_short(str(exc))}", key=key)
    if isinstance(exc, auth_exc.RefreshError):
        return PermissionDenied(
            f"{where}: credentials were refused ({_short(str(exc))}); {CREDENTIALS_HINT}",
            key=key,
        )
    return BackendError(f"{where}: {type(exc).__name__}: {_short(str(exc))}", key=key)
