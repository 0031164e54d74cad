"""A local S3 API server for tests and benchmarks: moto's server, made fast and observable.

Stock `moto_server` answers a ranged GET by reading the whole object and slicing it, spools
objects above ~5 MiB to temporary files and copies an object several times when a multipart
upload completes. `S3TestServer` keeps moto's S3 implementation (every API call behaves as
moto's) but, in-process:

- serves a single-range GET (`Range: bytes=a-b` or `bytes=a-`) itself, straight from the slice
  of moto's in-memory object (206 with Content-Range, ETag, Last-Modified, user metadata;
  412 on an If-Match mismatch, 416 at or past the end); anything unusual (versions, SSE-C,
  other conditionals, suffix ranges, auth enabled) falls through to moto;
- keeps every object in memory without copying it: moto's spool-to-disk threshold is raised,
  a stored value is adopted rather than copied, and a completed multipart upload keeps its
  parts as they are (no join: completing 1 GiB takes milliseconds), without moto's
  full-object checksum pass when the client asked for none;
- sends S3 requests straight to moto's S3 app (moto's dispatcher stat()s ~180 directories
  per request to find the service);
- emulates time-to-first-byte: `server.latency = 0.02` makes every request sleep that long in
  its own thread (werkzeug's threaded server: one thread per connection, so parallel requests
  overlap); `with server.no_latency():` exempts the harness's own setup, and a request that
  carries `x-wsfuse-harness: 1` (a benchmark's own checks, from another process) is neither
  delayed nor counted;
- keeps connections open between requests (HTTP/1.1 keep-alive, as S3 does; werkzeug's own
  handler closes after every answer), see `keepalive`;
- counts requests by kind, bucket and key, with the body bytes sent and received
  (`server.count("GET", key="k")`, `server.requests`, `server.stats`, `server.reset_stats()`),
  so tests can assert what reached the store;
- injects faults: `server.fail_next(2, status=503, code="SlowDown", kind="GET")`;
- serves HTTPS when given a certificate and key (`tls=(cert, key)`, `--tls CERT KEY`), as
  real S3 endpoints do;
- can be driven from another process (benchmarks run it in its own, off the clients' GIL):
  `GET /_wsfuse/stats` answers requests and bytes by kind as JSON (query `reset=1`: reset
  after reading; `prefixes=a/,b/`, comma-separated: other keys' requests apart, as
  `"elsewhere"`),
  `POST /_wsfuse/reset` resets them, `POST /_wsfuse/latency?ms=20` sets the latency
  (bucket names cannot contain `_`: no S3 request is ever taken for these, nor counted);
- fixes three moto deviations from S3 that the backend contract meets: a part upload to an
  aborted/completed upload answers 404 NoSuchUpload (moto: 500), ListMultipartUploads
  reports each upload's real initiation time (moto: always 2010-11-10), and
  CompleteMultipartUpload honours `If-Match` (412, or 404 NoSuchKey for a missing object;
  moto checks only `If-None-Match`).

Moto's state is process-global: every `S3TestServer` in one process sees the same buckets.
Credentials are not checked (moto's default), unless started with `require_auth=True` (which
is process-global too, hence meant for `python -m wsfuse.testing.s3server --require-auth` in
a subprocess).

Run standalone: `python -m wsfuse.testing.s3server --port 9000 --latency 20` prints the
endpoint URL on its first line and serves until interrupted.

This module is the server (lifecycle, routing, statistics, faults, the admin path, the command
line); moto's patches are in `s3moto`, what a request is (its kind, bucket and key) in
`s3requests`, and the answers given instead of moto's in `s3answers`.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import boto3
from botocore.config import Config
from moto import settings as moto_settings
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from wsfuse.testing.keepalive import ConnectionRegistry, KeepAliveHandler
from wsfuse.testing.latency import EmulatesLatency, LatencyEmulator
from wsfuse.testing.s3answers import (
    NEEDS_UPLOAD,
    complete_checksums_refused,
    complete_refused,
    drain,
    error_xml,
    list_uploads,
    range_get,
    respond,
    upload_exists,
    verify_crc32c,
)
from wsfuse.testing.s3moto import MotoDispatch, create_iam_user, patch_moto, s3_backend
from wsfuse.testing.s3requests import (
    COMPLETE_MPU,
    GET,
    HARNESS_HEADER,
    IGNORED_PARAMS,
    LIST_MPU,
    OTHER,
    PUT,
    UPLOAD_PART,
    CountingBody,
    RequestEntry,
    RequestRecord,
    StartResponse,
    WSGIApp,
    WSGIEnviron,
    body_length,
    classify,
    matches,
    split_target,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The harness's control path (`S3TestServer._admin`): never a valid bucket name.
ADMIN_PREFIX = "_wsfuse"


@dataclass(slots=True)
class _Fault:
    remaining: int
    status: int
    code: str
    message: str
    kind: str | None
    key: str | None


# ---------------------------------------------------------------------------- the server


class S3TestServer(EmulatesLatency):
    """moto's S3 server on 127.0.0.1 (a free port unless given), in background threads.

    Use as a context manager (or `start()` / `stop()`); `endpoint_url` is the URL to give
    boto3 or wsfuse. Attributes and methods for tests: `latency`, `no_latency()`,
    `create_bucket()`, `client()`, `requests`, `stats`, `count()`, `bytes_sent()`,
    `reset_stats()`, `fail_next()`, `clear_faults()`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        require_auth: bool = False,
        fast_ranges: bool = True,
        verify_checksums: bool = True,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        #: (certificate, key) files: serve HTTPS, as real S3 endpoints do
        self.tls = tls
        self._requested_port = port
        #: the emulated time-to-first-byte (`latency`, `no_latency()`, `peak_overlap`)
        self.delays = LatencyEmulator(latency)
        #: serve single-range GETs from the object's slice (False: stock moto, for comparison)
        self.fast_ranges = fast_ranges
        #: refuse uploads whose x-amz-checksum-crc32c does not match, as S3 does (moto does
        #: not); benchmarks turn it off, since S3 pays for that check on its own machines
        self.verify_checksums = verify_checksums
        self._require_auth = require_auth
        self._saved_auth_count: float | None = None
        self._lock = threading.Lock()
        self._entries: list[RequestEntry] = []
        self._faults: list[_Fault] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._connections = ConnectionRegistry()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> S3TestServer:
        if self._server is not None:
            return self
        patch_moto()
        if self._require_auth:
            self._saved_auth_count = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

        class QuietHandler(KeepAliveHandler):
            registry = self._connections

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

        # moto's dispatcher finds the service of every request by stat()ing its ~180 package
        # directories (40% of a HEAD's server time): S3 requests go straight to the S3 app.
        moto_app = MotoDispatch(
            create_backend_app("s3"), DomainDispatcherApplication(create_backend_app)
        )
        self._server = make_server(
            self.host,
            self._requested_port,
            self._app(moto_app),
            threaded=True,
            request_handler=QuietHandler,
            ssl_context=self.tls,
        )
        server = self._server
        # Answers go out as several small writes (TLS handshake flights, headers, then the
        # body): with Nagle each later one waits for the client's delayed ACK, ~12 ms per
        # request over HTTPS; S3's front ends do not make clients wait so. Set on the
        # listening socket, it holds for every accepted connection (Linux copies it), the
        # handshake that runs in accept() included.
        _no_delay(server.socket)
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05),
            name=f"s3-test-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        self._connections.close_all()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._saved_auth_count is not None:
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = self._saved_auth_count
            self._saved_auth_count = None

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("S3TestServer is not running")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # ------------------------------------------------------------------ harness helpers

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        """Create `name` directly in moto's backend (no request; existing is fine)."""
        patch_moto()
        backend = s3_backend()
        if name not in backend.buckets:
            backend.create_bucket(name, region)

    def put_objects(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Store `objects` directly in moto's backend: no requests, so nothing is counted or
        delayed. For seeding thousands of keys (moto answers a few hundred PUTs a second)."""
        patch_moto()
        backend = s3_backend()
        for key, data in objects.items():
            backend.put_object(bucket, key, data)

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this server (test credentials, no retries, path style)."""
        cfg = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
            **config,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="wsfuse-test",
            aws_secret_access_key="wsfuse-test-secret",  # noqa: S106 - the server ignores it
            config=cfg,
            verify=self.tls[0] if self.tls else None,
        )

    # ------------------------------------------------------------------ statistics

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request since the last `reset_stats()`, in arrival order."""
        with self._lock:
            return [e.snapshot() for e in self._entries]

    @property
    def stats(self) -> Counter[str]:
        """Number of requests by kind."""
        with self._lock:
            return Counter(e.kind for e in self._entries)

    def count(
        self, kind: str | None = None, *, key: str | None = None, bucket: str | None = None
    ) -> int:
        """Requests of `kind` (any if None), optionally only those for `key` / `bucket`."""
        with self._lock:
            return sum(1 for e in self._entries if matches(e, kind, key, bucket))

    def bytes_sent(
        self, kind: str | None = None, *, key: str | None = None, bucket: str | None = None
    ) -> int:
        """Response body bytes of the matching requests."""
        with self._lock:
            return sum(e.bytes_sent for e in self._entries if matches(e, kind, key, bucket))

    def reset_stats(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats_summary(
        self, *, reset: bool = False, prefixes: Sequence[str] = ()
    ) -> dict[str, dict[str, int]]:
        """Requests and response body bytes by kind (and `"total"`), as JSON-ready numbers;
        with `reset`, the counters restart at once (atomically with the reading).

        With `prefixes`, requests for an object whose key starts with none of them are
        summed apart, in `"elsewhere"` (only if there are any), and left out of the kinds and
        the total: a benchmark's workload then counts its own keys' traffic, not a client's
        late uploads of an earlier workload's files. Requests without a key (LIST, bucket
        calls) count as the workload's."""
        if isinstance(prefixes, str):  # one prefix, not its characters
            raise TypeError("prefixes is a sequence of key prefixes, not a string")
        own = tuple(prefixes)
        summary: dict[str, dict[str, int]] = {"total": {"requests": 0, "bytes": 0, "received": 0}}
        with self._lock:
            for e in self._entries:
                mine = not own or e.key is None or e.key.startswith(own)
                for name in (e.kind, "total") if mine else ("elsewhere",):
                    row = summary.setdefault(name, {"requests": 0, "bytes": 0, "received": 0})
                    row["requests"] += 1
                    row["bytes"] += e.bytes_sent
                    row["received"] += e.bytes_received
            if reset:
                self._entries.clear()
        return summary

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        code: str = "SlowDown",
        *,
        kind: str | None = None,
        key: str | None = None,
        message: str = "Please reduce your request rate.",
    ) -> None:
        """Answer the next `n` requests of `kind` (any if None) for `key` (any if None) with an
        S3 error: `status` and an XML body with `code` (no body for HEAD, as S3)."""
        with self._lock:
            self._faults.append(_Fault(n, status, code, message, kind, key))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, kind: str, key: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.kind in (None, kind) and fault.key in (None, key):
                    fault.remaining -= 1
                    return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
            return None

    # ------------------------------------------------------------------ the WSGI layer

    def _app(self, moto_app: WSGIApp) -> WSGIApp:
        def app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
            method = str(environ.get("REQUEST_METHOD", "GET"))
            bucket, key, query_string = split_target(environ)
            query = dict(parse_qsl(query_string, keep_blank_values=True))
            if bucket == ADMIN_PREFIX:
                return self._admin(method, key or "", query, start_response)
            moto_api = bucket == "moto-api"
            kind = OTHER if moto_api else classify(method, bucket, key, query, environ)
            entry = RequestEntry(kind, bucket, key, bytes_received=body_length(environ))
            harness = environ.get(HARNESS_HEADER) == "1"
            if not harness:
                with self._lock:
                    self._entries.append(entry)
                self.delays.delay()

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                entry.status = int(status.split(None, 1)[0])
                return start_response(status, headers, exc_info)

            fault = None if harness else self._take_fault(kind, key)
            if fault is not None:
                drain(environ)
                body = error_xml(fault.code, fault.message, f"/{bucket or ''}/{key or ''}")
                return respond(entry, start, method, fault.status, body, [])

            if kind in NEEDS_UPLOAD and not upload_exists(bucket, query.get("uploadId", "")):
                # moto answers 500 (a KeyError) where S3 answers 404 NoSuchUpload
                drain(environ)
                body = error_xml(
                    "NoSuchUpload",
                    "The specified upload does not exist. The upload ID may be invalid, or the "
                    "upload may have been aborted or completed.",
                    f"/{bucket or ''}/{key or ''}",
                    UploadId=query.get("uploadId", ""),
                )
                return respond(entry, start, method, 404, body, [])

            if (
                self.verify_checksums
                and kind in (PUT, UPLOAD_PART)
                and environ.get("HTTP_X_AMZ_CHECKSUM_CRC32C")
            ):
                bad_digest = verify_crc32c(environ, str(environ["HTTP_X_AMZ_CHECKSUM_CRC32C"]))
                if bad_digest is not None:
                    return respond(entry, start, method, 400, bad_digest, [])

            if kind == COMPLETE_MPU and self.verify_checksums:
                refused = complete_checksums_refused(environ, bucket, query.get("uploadId", ""))
                if refused is not None:
                    return respond(entry, start, method, *refused, [])

            if kind == COMPLETE_MPU and environ.get("HTTP_IF_MATCH") is not None:
                refused = complete_refused(bucket, key, str(environ["HTTP_IF_MATCH"]))
                if refused is not None:
                    drain(environ)
                    return respond(entry, start, method, *refused, [])

            if kind == GET and self.fast_ranges:
                answer = range_get(environ, bucket, key, set(query) - IGNORED_PARAMS)
                if answer is not None:
                    status, headers, ranged = answer
                    return respond(entry, start, method, status, ranged, headers)

            if kind == LIST_MPU:
                return list_uploads(moto_app, environ, start, entry, bucket)
            return CountingBody(moto_app(environ, start), entry)

        return app

    def _admin(
        self, method: str, action: str, query: dict[str, str], start_response: StartResponse
    ) -> list[bytes]:
        """The harness's control path, for a server in another process (not counted, no
        latency): `GET /_wsfuse/stats` (`?reset=1` resets after reading, `prefixes=a/,b/`
        counts other keys apart: `stats_summary`), `POST
        /_wsfuse/reset`, `POST /_wsfuse/latency?ms=20`. S3 bucket names cannot contain `_`,
        so no S3 request is ever taken for one of these."""
        status = "200 OK"
        payload: object = None
        if action == "stats" and method == "GET":
            prefixes = [p for p in query.get("prefixes", "").split(",") if p]
            payload = self.stats_summary(
                reset=query.get("reset") in ("1", "true"), prefixes=prefixes
            )
        elif action == "reset" and method == "POST":
            self.reset_stats()
            payload = {}
        elif action == "latency" and method in ("POST", "PUT"):
            try:
                self.latency = float(query.get("ms", "")) / 1000
            except ValueError:
                status, payload = "400 Bad Request", {"error": "latency needs ?ms=NUMBER"}
            else:
                payload = {"latency_ms": self.latency * 1000}
        elif action == "latency" and method == "GET":
            payload = {"latency_ms": self.latency * 1000}
        else:
            status, payload = "404 Not Found", {"error": f"no admin action {method} {action!r}"}
        body = json.dumps(payload).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]


# ---------------------------------------------------------------------------- standalone


def _no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY where the socket is TCP (not on a unix socket, where it does not exist)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wsfuse.testing.s3server",
        description="A local S3 API server (moto, with fast ranged GETs) for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument("--latency", type=float, default=0.0, help="time to first byte, in ms")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket")
    parser.add_argument(
        "--require-auth",
        action="store_true",
        help="check credentials like S3 does (moto's IAM; unknown access keys are refused)",
    )
    parser.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="accept uploads without checking their x-amz-checksum-crc32c (benchmarks)",
    )
    parser.add_argument(
        "--tls",
        nargs=2,
        metavar=("CERT", "KEY"),
        help="serve HTTPS with this certificate and key (PEM files)",
    )
    parser.add_argument(
        "--user",
        help="create this IAM user, allowed everything, and print its access key id and "
        "secret on the line after the endpoint (for signed-request tests with --require-auth)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = S3TestServer(
        args.host,
        args.port,
        latency=args.latency / 1000,
        require_auth=args.require_auth,
        verify_checksums=not args.no_verify_checksums,
        tls=tuple(args.tls) if args.tls else None,
    )
    with server:
        for name in args.bucket:
            server.create_bucket(name)
        sys.stdout.write(server.endpoint_url + "\n")
        if args.user:
            sys.stdout.write(" ".join(create_iam_user(args.user)) + "\n")
        sys.stdout.flush()
        stop.wait()


if __name__ == "__main__":
    main()
