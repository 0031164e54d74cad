"""Storage backends: one interface (`base.Backend`), four implementations.

`open_backend(uri, options)` builds the backend for a URI, wrapped in the retry layer and,
for `s3://bucket/prefix`, in a prefix view. Imports of boto3 / google-cloud-storage are
deferred so that `wsfuse --help` and the local backends stay fast.
"""

from __future__ import annotations

from wsfuse.backends.base import Backend
from wsfuse.backends.options import BackendOptions
from wsfuse.backends.prefixed import PrefixedBackend
from wsfuse.backends.retry import RetryingBackend
from wsfuse.storage_uri import StorageURI

__all__ = ["Backend", "BackendOptions", "open_backend", "open_raw_backend"]


def open_raw_backend(uri: StorageURI, options: BackendOptions) -> Backend:
    """The bare backend for the URI's bucket: no retries, no prefix."""
    if uri.scheme == "s3":
        from wsfuse.backends.s3 import S3Backend  # noqa: PLC0415 - boto3 import is slow

        region = options.region or uri.region
        return S3Backend(
            uri.bucket, options if region == options.region else _with_region(options, region)
        )
    if uri.scheme == "gs":
        from wsfuse.backends.gcs import GCSBackend  # noqa: PLC0415 - google-cloud import is slow

        return GCSBackend(uri.bucket, options)
    if uri.scheme == "file":
        from wsfuse.backends.localdir import LocalDirBackend  # noqa: PLC0415

        return LocalDirBackend(uri.bucket)
    from wsfuse.backends.memory import MemoryBackend  # noqa: PLC0415

    return MemoryBackend.named(uri.bucket)


def open_backend(uri: StorageURI, options: BackendOptions | None = None) -> Backend:
    """The backend the filesystem uses: transient errors retried, keys relative to the prefix."""
    opts = options or BackendOptions()
    backend: Backend = RetryingBackend(open_raw_backend(uri, opts), opts.retry)
    if uri.prefix:
        backend = PrefixedBackend(backend, uri.prefix)
    return backend


def _with_region(options: BackendOptions, region: str | None) -> BackendOptions:
    from dataclasses import replace  # noqa: PLC0415

    return replace(options, region=region)
