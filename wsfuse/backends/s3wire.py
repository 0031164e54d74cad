"""S3's answers in wsfuse's terms: its errors mapped onto `wsfuse.errors`, and the objects,
etags, times and metadata names of its successful answers.

Errors are mapped in one function, `map_error`, for the boto3 client and the direct path
(`s3direct`) alike: missing keys and uploads are `NotFound`, 403s are `PermissionDenied` with a
hint about credentials, 5xx / throttling / timeouts / resets are `Transient`.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import botocore.exceptions
import urllib3.exceptions

from wsfuse import errors
from wsfuse.backends.base import ObjectInfo

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload", "NoSuchVersion"})
_PRECONDITION = frozenset({"PreconditionFailed", "412"})
_DENIED = frozenset(
    {
        "403",
        "AccessDenied",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "503",
        "500",
        "502",
        "504",
        "429",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
        # a concurrent conditional write on the same key: S3 says to retry
        "ConditionalRequestConflict",
        "OperationAborted",
        # the body's checksum did not match: corrupted on the way, send it again
        "BadDigest",
    }
)
WRONG_REGION = frozenset(
    {
        "PermanentRedirect",
        "301",
        "TemporaryRedirect",  # a new bucket addressed through the global endpoint
        "307",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    }
)
#: A redirect boto3 would follow and the direct path cannot (also in WRONG_REGION, so that
#: requests go to boto3 from then on).
_REDIRECTED = frozenset({"TemporaryRedirect", "307"})
_INVALID_KEY = frozenset({"KeyTooLongError"})
_CREDENTIALS_HINT = (
    "check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "~/.aws/credentials or the instance role) and that they may access this bucket"
)
_NO_CREDENTIALS = (
    "no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an "
    "instance role"
)
# Failures of the connection itself: worth retrying (the retry layer gives up at its deadline).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,  # ResponseStreamingError, ...
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.HTTPError,
    OSError,
)


def map_error(
    exc: BaseException,
    *,
    op: str,
    bucket: str,
    key: str | None = None,
    endpoint: str = "S3",
) -> errors.BackendError:
    """The `wsfuse.errors` equivalent of a boto3/botocore/urllib3 failure."""
    where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
    if isinstance(exc, errors.BackendError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(err.get("Code") or "")
        status = int(meta.get("HTTPStatusCode") or 0)
        text = str(err.get("Message") or "").strip()
        detail = f"{code}{' ' + repr(text) if text else ''} (HTTP {status or '?'})"
        if code == "NoSuchBucket":
            return errors.BucketNotFound(
                f"bucket {bucket!r} does not exist at {endpoint}; check the bucket name in the "
                "storage URI (and --endpoint-url / --region), or create the bucket first",
                key=key,
            )
        if code in _NOT_FOUND:
            return errors.NotFound(f"{op} {where}: not found ({detail})", key=key)
        if code in _PRECONDITION:
            return errors.PreconditionFailed(
                f"{op} {where}: the object is not the expected version ({detail})", key=key
            )
        if code in _DENIED:
            return errors.PermissionDenied(
                f"{op} {where}: access denied ({detail}); {_CREDENTIALS_HINT}", key=key
            )
        if code in _TRANSIENT or status >= 500 or status == 429:
            return errors.Transient(f"{op} {where}: {detail} from {endpoint}", key=key)
        if code in _REDIRECTED:
            return errors.BackendError(
                f"{op} {where}: {detail}; the endpoint redirects requests for now (a bucket "
                "created minutes ago, whose name has not reached every S3 endpoint yet): "
                "retry later, or pass --region (or set AWS_REGION) to the bucket's region",
                key=key,
            )
        if code in WRONG_REGION:
            return errors.BackendError(
                f"{op} {where}: {detail}; the bucket is probably in another region: pass "
                "--region (or set AWS_REGION) to the bucket's region",
                key=key,
            )
        if code in _INVALID_KEY:
            return errors.InvalidKey(f"{op} {where}: {detail}", key=key)
        return errors.BackendError(f"{op} {where}: {detail}", key=key)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return errors.PermissionDenied(_NO_CREDENTIALS, key=key)
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        return errors.PermissionDenied(
            f"cannot load AWS credentials ({exc}); {_CREDENTIALS_HINT}", key=key
        )
    if isinstance(exc, botocore.exceptions.SSLError):
        return errors.BackendError(
            f"{op} {where}: TLS error talking to {endpoint}: {exc}; check the endpoint URL and "
            "AWS_CA_BUNDLE",
            key=key,
        )
    if isinstance(
        exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.EndpointConnectionError
    ):
        return errors.Transient(
            f"{op} {where}: cannot connect to {endpoint} ({type(exc).__name__}); check "
            "--endpoint-url and the network",
            key=key,
        )
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return errors.Transient(
            f"{op} {where}: no answer from {endpoint} in time ({type(exc).__name__})", key=key
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return errors.Transient(
            f"{op} {where}: connection to {endpoint} failed ({type(exc).__name__}: {exc})",
            key=key,
        )
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return errors.InvalidKey(f"{op} {where}: {exc}", key=key)
    return errors.BackendError(f"{op} {where}: {type(exc).__name__}: {exc}", key=key)


def is_range_error(exc: botocore.exceptions.ClientError) -> bool:
    """S3's 416: the range starts at or past the end of the object."""
    code = str(exc.response.get("Error", {}).get("Code") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code == "InvalidRange" or (status == 416 and code in ("", "416"))


def object_info(key: str, resp: Mapping[str, Any]) -> ObjectInfo:
    """The `ObjectInfo` of a HeadObject answer."""
    return ObjectInfo(
        key=key,
        size=int(resp["ContentLength"]),
        etag=bare_etag(resp["ETag"]),
        mtime=timestamp(resp["LastModified"]),
        metadata=dict(resp.get("Metadata", {})),
    )


def bare_etag(etag: str) -> str:
    """An etag as wsfuse keeps it: without S3's quotes."""
    return etag.strip().strip('"')


def quoted_etag(etag: str) -> str:
    """An etag as S3's conditional headers take it: quoted (`*` as it is)."""
    return etag if etag.startswith('"') or etag == "*" else f'"{etag}"'


def timestamp(value: datetime) -> float:
    """Epoch seconds of a time botocore parsed."""
    return value.timestamp()


def response_time(response: Mapping[str, Any]) -> float:
    """The server's Date header of a response (S3 sets Last-Modified to the request time)."""
    return http_time(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date"))


def http_time(date: str | None) -> float:
    """Epoch seconds of an HTTP Date header; now if it is missing or unreadable."""
    if date:
        with contextlib.suppress(TypeError, ValueError):
            return email.utils.parsedate_to_datetime(date).timestamp()
    return time.time()


def user_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """User metadata as S3 stores it: names lower-cased (HTTP headers are case-insensitive)."""
    return {str(k).lower(): str(v) for k, v in (metadata or {}).items()}
