"""Ranged GETs without botocore's client pipeline: the read path's one hot request.

A `get_object` call through boto3 spends ~2.3 ms of client CPU on a 128 KiB object
(measured here: parameter validation, endpoint rules, a dozen event hooks, response-header
parsing into a model); the same GET signed with botocore's own SigV4 signer and sent on the
client's own connection pool costs ~1.0 ms. Reading a directory of small files, or a big file
as 8 MiB ranged GETs, is that request over and over, so it is worth doing directly.

Everything that needs care still comes from botocore: the request is signed by its
`S3SigV4Auth` with the session's (refreshing) credentials, sent by the client's own HTTP
session (proxies, TLS verification, timeouts, pool), and failures arrive as botocore
exceptions or as a `ClientError` built from S3's XML error body, so `s3.map_error` maps both
paths the same way. The base URL (virtual-hosted or path style, region) is taken from a
presigned URL the client builds once, so addressing follows botocore's rules exactly.

`DirectGet.create` returns None when any of that is unavailable (no credentials, a changed
botocore internal); the backend then keeps using `get_object`.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.exceptions
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

log = logging.getLogger(__name__)

_PROBE_KEY = "wsfuse-probe-key"


class DirectGet:
    """Signed ranged GETs of one bucket, sent on the boto3 client's own HTTP session."""

    def __init__(
        self,
        base_url: str,
        http_session: Any,
        credentials: Any,
        region: str,
    ) -> None:
        self._base_url = base_url  # ends with "/": the key (quoted) follows
        self._http = http_session
        self._credentials = credentials
        self._region = region

    @classmethod
    def create(cls, client: Any, session: Any, bucket: str) -> DirectGet | None:
        """A DirectGet for `bucket` through `client` (made by the boto3 `session`), or None
        (then use boto3)."""
        try:
            credentials = session.get_credentials()
            if credentials is None:
                return None  # no credentials: botocore's path reports that clearly
            http_session = client._endpoint.http_session
            if not callable(getattr(http_session, "send", None)):
                return None
            signer = client.meta.config.signature_version
            if signer not in (None, "s3v4", "v4"):
                return None
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
            parts = urlsplit(url)
            if not parts.path.endswith("/" + _PROBE_KEY):
                return None
            path = parts.path[: -len(_PROBE_KEY)]
            region = str(client.meta.region_name or "us-east-1")
        except (AttributeError, botocore.exceptions.BotoCoreError) as exc:
            log.debug("direct GETs unavailable (%s); using boto3's get_object", exc)
            return None
        return cls(f"{parts.scheme}://{parts.netloc}{path}", http_session, credentials, region)

    def get(
        self,
        key: str,
        byte_range: str,
        if_match: str | None,
        consume: Callable[[Any, int, int], None],
    ) -> int:
        """GET `key` with the `Range` header `byte_range`; `consume(raw, status, length)`
        reads the body from the urllib3 response `raw` (`length`: its Content-Length, or -1).
        Returns the HTTP status (200 or 206). Errors raise botocore exceptions, as
        `get_object` would."""
        headers = {"Range": byte_range}
        if if_match is not None:
            headers["If-Match"] = if_match
        request = AWSRequest(
            method="GET", url=self._base_url + quote(key, safe="/~"), headers=headers
        )
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(
            request
        )
        prepared = request.prepare()
        prepared.stream_output = True
        response = self._http.send(prepared)
        raw = response.raw
        try:
            status = int(response.status_code)
            if status >= 300:
                raise _client_error(status, raw.read())
            length = int(response.headers.get("Content-Length", -1))
            consume(raw, status, length)
        except BaseException:
            raw.close()  # never return a connection with an unread body to the pool
            raise
        raw.release_conn()
        return status


def _element(text: str, tag: str) -> str:
    """The text of the first `<tag>` of an S3 error document (a flat, known shape: a
    pattern is enough, and no XML parser sees what an endpoint sent)."""
    found = re.search(f"<{tag}>([^<]*)</{tag}>", text)
    return html.unescape(found.group(1)).strip() if found else ""


def _client_error(status: int, body: bytes) -> botocore.exceptions.ClientError:
    """The `ClientError` boto3 raises for this S3 error response."""
    text = body[:4096].decode("utf-8", "replace")
    code = _element(text, "Code") or str(status)
    message = _element(text, "Message") if "<Error" in text else text[:200].strip()
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "GetObject")  # type: ignore[arg-type]
