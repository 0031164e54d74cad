"""The one error vocabulary of wsfuse.

Backends raise the `BackendError` family; the core raises domain errors; the FUSE adapter
maps both to errno in one table (added with the adapter). `UserError` is anything a person
must fix (a bad URI, a missing bucket): the CLI prints its message as one line, no traceback.
Messages say what went wrong *and* what to do, and never contain credentials.
"""

from __future__ import annotations


class WsfuseError(Exception):
    """Root of every error wsfuse raises on purpose."""


class UserError(WsfuseError):
    """Bad input or environment that a person must fix; printed as one line by the CLI."""


class BackendError(WsfuseError):
    """An object-store operation failed and retrying will not help (by itself)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFound(BackendError):
    """The key (or, for `BucketNotFound`, the bucket) does not exist."""


class BucketNotFound(NotFound, UserError):
    """The bucket named in the storage URI does not exist."""


class PreconditionFailed(BackendError):
    """A conditional request failed: the object is not the version we pinned."""


class PermissionDenied(BackendError, UserError):
    """Credentials are missing, invalid or lack permission for this operation."""


class InvalidKey(BackendError):
    """The key cannot be stored by this backend (e.g. `..` segments in a directory bucket)."""


class Transient(BackendError):
    """A failure worth retrying: 5xx, throttling (SlowDown/429), resets, timeouts.

    The retry layer retries these with backoff; once retries are exhausted it raises
    `Unavailable`, which is a `UserError` when the endpoint was never reached.
    """


class Unavailable(BackendError, UserError):
    """Retries were exhausted (attempts or deadline): the store is unreachable or overloaded."""
