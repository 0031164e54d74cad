"""The S3 backend's fast timestamp parser must agree with botocore's on every form S3 sends."""

from __future__ import annotations

import pytest
from botocore.utils import parse_timestamp

from wsfuse.backends.s3 import _parse_timestamp


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-25T21:53:36.000Z",  # ListObjectsV2, CopyObjectResult
        "2026-11-25T21:53:36Z",
        "2026-11-25T21:53:36.123456+00:00",
        "2026-11-25T23:53:36+02:00",
        "Wed, 25 Nov 2026 21:53:36 GMT",  # Last-Modified header (HEAD, GET)
        "1795643616",  # epoch seconds
    ],
)
def test_same_instant_as_botocore(value: str) -> None:
    ours = _parse_timestamp(value)
    assert ours.tzinfo is not None
    assert ours.timestamp() == parse_timestamp(value).timestamp()
