from __future__ import annotations

import errno

import pytest

from wsfuse.errors import (
    BackendError,
    BucketNotFound,
    InvalidKey,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from wsfuse.fuse_ops import errno_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFound("x"), errno.ENOENT),
        (BucketNotFound("x"), errno.ENOENT),
        (PermissionDenied("x"), errno.EACCES),
        (InvalidKey("x"), errno.EINVAL),
        (PreconditionFailed("x"), errno.EIO),
        (Unavailable("x"), errno.EIO),
        (BackendError("x"), errno.EIO),
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        (ValueError("bug"), None),
    ],
)
def test_one_errno_table(exc: BaseException, code: int | None) -> None:
    assert errno_for(exc) == code
