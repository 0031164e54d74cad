"""Ranged GETs, part uploads and PUTs without botocore's client pipeline: the hot requests.

A `get_object` call through boto3 spends ~2.3 ms of client CPU on a 128 KiB object
(measured here: parameter validation, endpoint rules, a dozen event hooks, response-header
parsing into a model); the same GET signed with botocore's own SigV4 signer and sent on the
client's own connection pool costs ~1.0 ms. Reading a directory of small files, or a big file
as 8 MiB ranged GETs, is that request over and over, so it is worth doing directly.

Everything that needs care still comes from botocore: the request is signed by its
`S3SigV4Auth` with the session's (refreshing) credentials, sent by the client's own HTTP
session (proxies, TLS verification, timeouts, pool) -- except GETs to an endpoint without
a proxy or client certificate, which `plainhttp.PlainHttp` writes to its own keep-alive
connections (another ~0.9 ms of client CPU less per request; over TLS checked against the
same CA bundle) -- and failures arrive as botocore
exceptions or as a `ClientError` built from S3's XML error body, so `s3wire.map_error` maps both
paths the same way. The base URL (virtual-hosted or path style, region) is taken from a
presigned URL the client builds once, so addressing follows botocore's rules exactly.

Part uploads and PUTs go the same way. boto3 turns a `bytes` body into a file object, which
urllib3 sends in 16 KiB `sendall` calls (512 per 8 MiB part); sent directly it is one call.
And a PUT is what every file written through the mount costs when it is closed: writing many
small files (checkpoint shards, logs) pays the client pipeline once per file. They are
signed as botocore signs them (UNSIGNED-PAYLOAD with their CRC32C, as in `s3.py`) and, like
boto3's, ask for `100-continue` before a body of 1 MiB or more.

`DirectS3.create` returns None when any of that is unavailable (no credentials, a changed
botocore internal); the backend then keeps using boto3's calls.
"""

from __future__ import annotations

import html
import logging
import re
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import botocore.exceptions
import botocore.httpsession
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from wsfuse.backends.httpbody import BlockBody
from wsfuse.backends.plainhttp import PlainHttp

log = logging.getLogger(__name__)

_PROBE_KEY = "wsfuse-probe-key"
#: Bodies from this size ask for `100-continue` before they are sent (see `DirectS3._put`).
EXPECT_CONTINUE_FROM = 1 << 20


class DirectS3:
    """Signed ranged GETs, part uploads and PUTs of one bucket, sent on the boto3 client's
    own HTTP session (GETs on `plain` where it applies)."""

    def __init__(
        self,
        base_url: str,
        http_session: Any,
        credentials: Any,
        region: str,
        config: Any = None,
    ) -> None:
        self._base_url = base_url  # ends with "/": the key (quoted) follows
        self._http = http_session
        self._credentials = credentials
        self._region = region
        self._config = config  # the client's Config: its S3 payload-signing choice
        #: GETs on our own keep-alive connections (endpoints without a proxy or client
        #: certificate; TLS checked as botocore checks it), else None: botocore's session
        self.plain: PlainHttp | None = None

    def _sign(self, request: AWSRequest) -> None:
        request.context["client_config"] = self._config
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(
            request
        )

    @classmethod
    def create(cls, client: Any, session: Any, bucket: str) -> DirectS3 | None:
        """A DirectS3 for `bucket` through `client` (made by the boto3 `session`), or None
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
            # Only plain SigV4 for service s3 in the client's region is re-created here
            # (not SigV4A, S3 Express session tokens or another signing region).
            # (A presigned URL is SigV2 unless the client was configured for s3v4; when it
            # is SigV4, its scope must be ours.)
            query = parse_qs(parts.query)
            if "X-Amz-S3session-Token" in query:
                return None
            if "X-Amz-Algorithm" in query:
                scope = (query.get("X-Amz-Credential") or [""])[0].split("/")
                if (
                    query["X-Amz-Algorithm"] != ["AWS4-HMAC-SHA256"]
                    or len(scope) != 5
                    or scope[2:4] != [region, "s3"]
                ):
                    return None
        except Exception as exc:  # any surprise means: let boto3 do it
            log.debug("direct S3 requests unavailable (%s); using boto3", exc)
            return None
        base_url = f"{parts.scheme}://{parts.netloc}{path}"
        direct = cls(base_url, http_session, credentials, region, client.meta.config)
        direct.plain = _plain_http_for(parts, client.meta.config, http_session)
        return direct

    def close(self) -> None:
        if self.plain is not None:
            self.plain.close()

    def get(
        self,
        key: str,
        byte_range: str,
        if_match: str | None,
        consume: Callable[[Any, int, int], None],
    ) -> int:
        """GET `key` with the `Range` header `byte_range`; `consume(body, status, length)`
        reads the body (`length`: its Content-Length, or -1) with `body.read([amt])`: a
        `plainhttp.Response` on wsfuse's own connections, else a `BlockBody` where it
        applies, else the urllib3 response.
        Returns the HTTP status (200 or 206). Errors raise botocore exceptions, as
        `get_object` would."""
        headers = {"Range": byte_range}
        if if_match is not None:
            headers["If-Match"] = if_match
        plain = self.plain
        if plain is not None:
            # Signed as sent: botocore signs the host it derives from the URL (lower-case,
            # no default port) unless the request names one.
            headers["Host"] = plain.host_header
        request = AWSRequest(
            method="GET", url=self._base_url + quote(key, safe="/~"), headers=headers
        )
        self._sign(request)
        prepared = request.prepare()
        if plain is not None:
            return self._get_plain(plain, prepared, consume)
        prepared.stream_output = True
        response = self._http.send(prepared)
        raw = response.raw
        error_body = b""
        try:
            status = int(response.status_code)
            if status >= 300:
                error_body = raw.read()
            else:
                length = int(response.headers.get("Content-Length", -1))
                body = BlockBody.open(raw)
                if body is None:
                    consume(raw, status, length)
                else:
                    with body:
                        consume(body, status, length)
        except BaseException:
            raw.close()  # never return a connection with an unread body to the pool
            raise
        raw.release_conn()  # the body was read whole (an error's too): reusable
        if status >= 300:
            raise _client_error(status, error_body, "GetObject")
        return status

    def _get_plain(
        self, plain: PlainHttp, prepared: Any, consume: Callable[[Any, int, int], None]
    ) -> int:
        url = urlsplit(prepared.url)
        target = f"{url.path}?{url.query}" if url.query else url.path
        response = plain.get(target, [(str(k), str(v)) for k, v in prepared.headers.items()])
        try:
            if response.status >= 300:
                error_body = response.read()
                response.release()
                raise _client_error(response.status, error_body, "GetObject")
            consume(response, response.status, response.length)
        except BaseException:
            response.close()  # never reuse a connection with an unread body
            raise
        response.release()
        return response.status

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes, checksum: str) -> str:
        """UploadPart of `data` (CRC32C `checksum`, base64, or "") as one `sendall` of the bytes
        (boto3 wraps a body in a file object that urllib3 sends 16 KiB at a time); returns
        the part's ETag as S3 sent it."""
        query = f"?partNumber={number}&uploadId={quote(upload_id, safe='')}"
        headers = {"x-amz-checksum-crc32c": checksum} if checksum else {}
        etag, _date = self._put(key, query, data, headers, "UploadPart")
        return etag

    def put(self, key: str, data: bytes, headers: Mapping[str, str]) -> tuple[str, str | None]:
        """PutObject of `data` with `headers` (`put_headers`: metadata, checksum, conditions);
        returns the ETag as S3 sent it and the response's Date header (None if absent).
        Writing many small files is this request once per file: without boto3's pipeline
        it costs ~1 ms less client CPU each."""
        return self._put(key, "", data, headers, "PutObject")

    def _put(
        self, key: str, query: str, data: bytes, headers: Mapping[str, str], operation: str
    ) -> tuple[str, str | None]:
        request = AWSRequest(
            method="PUT",
            url=self._base_url + quote(key, safe="/~") + query,
            data=data,
            headers={"Content-Length": str(len(data)), **headers},
        )
        if len(data) >= EXPECT_CONTINUE_FROM:
            # As boto3 asks before every body: the connection (botocore's) waits for the
            # store's go-ahead, so a refusal that comes before a large body (expired
            # credentials, another region) arrives as that error, not as a broken pipe. A
            # small body fits in the socket's buffer whatever the store does, and waiting for
            # the go-ahead would cost each small file's PUT a round trip (creates of 64 KiB
            # files at 0 ms ran at 183-232 files/s with it, 215-246 without).
            request.headers["Expect"] = "100-continue"
        self._sign(request)
        response = self._http.send(request.prepare())
        status = int(response.status_code)
        if status >= 300:
            raise _client_error(status, response.content, operation)
        etag = response.headers.get("ETag")
        if not etag:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "NoETag", "Message": f"{operation} answered without an ETag"}},
                operation,
            )
        date = response.headers.get("Date")
        return str(etag), str(date) if date else None


def put_headers(
    metadata: Mapping[str, str], checksum: str, if_match: str | None, if_none_match: bool
) -> dict[str, str] | None:
    """The PutObject headers for these arguments that decide what is stored (`if_match`
    quoted): metadata, checksum and conditions, named and valued as boto3 sends them. None
    when a metadata name is not an HTTP token or a value not plain printable ASCII: boto3
    then sends it as it does (and S3 answers what it answers)."""
    headers: dict[str, str] = {}
    for name, value in metadata.items():
        if not (_TOKEN.fullmatch(name) and _header_safe(value)):
            return None
        headers[f"x-amz-meta-{name}"] = value
    if checksum:
        headers["x-amz-checksum-crc32c"] = checksum
    if if_match is not None:
        headers["If-Match"] = if_match
    if if_none_match:
        headers["If-None-Match"] = "*"
    return headers


#: What an HTTP header name may be made of (RFC 9110 `token`).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_safe(text: str) -> bool:
    return text.isascii() and text.isprintable() and text == text.strip()


def _plain_http_for(url: Any, config: Any, http_session: Any) -> PlainHttp | None:
    """A `PlainHttp` for the endpoint of the split URL `url`, or None where botocore's session
    must send the requests: a proxy (configured or from the environment), a client
    certificate, certificate checks turned off, an odd URL."""
    try:
        port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    except ValueError:
        return None
    host = url.hostname
    if url.scheme not in ("http", "https") or port is None or not host:
        return None
    if getattr(config, "proxies", None) or getattr(config, "client_cert", None):
        return None
    try:
        proxies = urllib.request.getproxies()
        proxy = proxies.get(url.scheme) or proxies.get("all")
        if proxy and not urllib.request.proxy_bypass(host):
            return None
    except (OSError, TypeError, ValueError):  # proxy_bypass may resolve names (macOS)
        return None
    tls = None
    if url.scheme == "https":
        tls = _tls_context(http_session)
        if tls is None:
            return None
    return PlainHttp(
        host,
        port,
        connect_timeout=getattr(config, "connect_timeout", None),
        read_timeout=getattr(config, "read_timeout", None),
        max_idle=int(getattr(config, "max_pool_connections", None) or 10),
        tls=tls,
        keepalive=bool(getattr(config, "tcp_keepalive", False)),
    )


def _tls_context(http_session: Any) -> ssl.SSLContext | None:
    """A context that checks the server as botocore's session would: against the same CA
    bundle (AWS_CA_BUNDLE / `verify`, else botocore's default), host name included; None
    when that session does not check certificates or uses a client certificate."""
    verify = getattr(http_session, "_verify", None)
    if verify is False or verify is None or getattr(http_session, "_cert_file", None):
        return None
    try:
        path = str(botocore.httpsession.get_cert_path(verify))
        # As botocore builds it (not `create_default_context`, whose flags differ between
        # Python versions): certificate and host name required, the bundle as the only trust.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError, TypeError, ValueError) as exc:
        log.debug("no TLS context for direct GETs (%s): botocore sends them", exc)
        return None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    return context


def _element(text: str, tag: str) -> str:
    """The text of the first `<tag>` of an S3 error document (a flat, known shape: a
    pattern is enough, and no XML parser sees what an endpoint sent)."""
    found = re.search(f"<{tag}>([^<]*)</{tag}>", text)
    return html.unescape(found.group(1)).strip() if found else ""


def _client_error(status: int, body: bytes, operation: str) -> botocore.exceptions.ClientError:
    """The `ClientError` boto3 raises for this S3 error response."""
    text = body[:4096].decode("utf-8", "replace")
    code = _element(text, "Code") or str(status)
    message = _element(text, "Message") if "<Error" in text else text[:200].strip()
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, operation)  # type: ignore[arg-type]
