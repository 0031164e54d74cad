"""A local GCS JSON API server for tests: `gcp-storage-emulator`, in memory, in a thread of this
process on a free 127.0.0.1 port, with the gaps that matter to wsfuse patched in-process.

    with GCSTestServer() as server:
        server.create_bucket("b")
        backend = GCSBackend("b", BackendOptions(endpoint_url=server.endpoint_url))
        ...
        assert server.count("GET", key="k") == 1

The emulator is used as a library: its `Storage` and its request/response classes and
handler functions, served by our own HTTP server and router (`gcp_storage_emulator.server` is
not modified, so nothing else in the process is affected). What the stock emulator gets wrong,
and what is done about it (mostly in the store, `gcsstorage`, or the answers, `gcsanswers`):

- objects are stored under a path built from the *whole* key (`a/b/` and `a/b`, `a//b`, `../x`
  used to collide or crash its path normalisation): `gcsstorage.PatchedStorage._object_path`;
- every metadata write re-serialised the whole bucket index to JSON (quadratic): disabled;
- generations were `time.time_ns()` and could repeat: strictly increasing now;
- preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`, `ifMetagenerationMatch`,
  `ifMetagenerationNotMatch`, `ifSource*`) were ignored: checked on every read and write
  (412, or 304 for a read's `...NotMatch`), like GCS;
- LIST ignored `maxResults` / `pageToken` (one page of everything): paginated, counting
  objects and prefixes together as GCS does, with `startOffset` / `endOffset`;
- a range starting at or after the end answered 206 with an empty body: 416, as GCS does;
  downloads also send `x-goog-generation` and friends;
- compose did not check its 32-source limit, source generations or preconditions, did not
  count components and ignored `deleteSourceObjects`: all implemented;
- copy / rewrite ignored the destination resource in the request body (so metadata could
  not be replaced): fields given there override the source's, as GCS does;
- PATCH replaced `metadata` wholesale: merged, a `null` value deleting a key, as GCS does;
- deletes kept soft-deleted copies (memory grows): deletes are hard;
- a handler exception dropped the connection: it is a 500 with a JSON error now.

Nothing known is left unpatched, so `capabilities` declares everything supported; the flags
stay so that a future emulator regression can be declared with a reason instead of failing.

Not emulated: authentication (inject 401/403 with `fail_next`), object versioning, the XML
API (wsfuse uses the JSON API only).

Requests are counted by kind (`GET` media download, `HEAD` metadata read, `PUT` upload
start, `UPLOAD` resumable upload data, `LIST`, `COMPOSE`, `COPY`, `PATCH`, `DELETE`,
`BUCKET`, `OTHER`) and key (the object; the destination for COPY and COMPOSE; the prefix for
LIST). `fail_next` injects HTTP errors (e.g. 503) for retry tests; `latency` emulates the
time to first byte (each connection has its own thread, so parallel requests overlap) and
`with server.no_latency():` exempts a test's own setup.

This module is the server (lifecycle, dispatch, counting, faults); the emulator's store, patched,
is `gcsstorage`; what a request is (its body, route and kind) `gcsrequests`; and the answers
given instead of the emulator's `gcsanswers`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator.exceptions import BadRequest as EmuBadRequest
from gcp_storage_emulator.exceptions import Conflict as EmuConflict
from gcp_storage_emulator.exceptions import NotFound as EmuNotFound
from gcp_storage_emulator.handlers import buckets as emu_buckets

from wsfuse.backends.base import Capabilities
from wsfuse.testing.gcsanswers import error, upload_target
from wsfuse.testing.gcsrequests import Request, routes
from wsfuse.testing.gcsstorage import PatchedStorage
from wsfuse.testing.latency import EmulatesLatency, LatencyEmulator

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Fault:
    kind: str
    status: HTTPStatus
    remaining: int
    key: str | None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like GCS
    timeout = 30  # an idle keep-alive connection is closed after this long
    owner: GCSTestServer  # set on the per-server subclass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._track(self.connection, add=False)

    def _handle(self) -> None:
        self.owner._dispatch(self, self.command)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gcs emulator: " + format, *args)


class GCSTestServer(EmulatesLatency):
    """The patched emulator on `endpoint_url`; a context manager (start / stop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0) -> None:
        self._host = host
        self._port = port
        #: the emulated time-to-first-byte (`latency`, `no_latency()`, `peak_overlap`)
        self.delays = LatencyEmulator(latency)
        self.storage = PatchedStorage()
        self._lock = threading.RLock()  # the emulator's storage is not thread-safe
        self._routes = routes()
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._faults: list[_Fault] = []
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: what this emulator can do (the contract suite skips what it cannot, with the reason)
        self.capabilities = Capabilities()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GCSTestServer:
        handler = type("_BoundHandler", (_RequestHandler,), {"owner": self})
        httpd = ThreadingHTTPServer((self._host, self._port), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"gcs-emulator-{self.port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake keep-alive handler threads so they close their sockets
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GCSTestServer:
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
        if self._httpd is None:
            raise RuntimeError("the GCS test server is not running")
        return int(self._httpd.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------------------ test helpers

    def create_bucket(self, name: str) -> None:
        with self._lock:
            bucket = emu_buckets.create_bucket(name, self.storage)
            if bucket:
                bucket["softDeletePolicy"] = {"retentionDurationSeconds": "0"}

    def object_names(self, bucket: str) -> list[str]:
        """Every object in `bucket`, temporaries included, sorted."""
        with self._lock:
            return sorted(self.storage.objects.get(bucket, {}))

    def count(self, kind: str, key: str | None = None) -> int:
        """Requests of `kind` (GET, HEAD, PUT, UPLOAD, LIST, COMPOSE, COPY, PATCH, DELETE,
        BUCKET, OTHER) since the last `reset_stats`, on `key` if given."""
        with self._lock:
            if key is not None:
                return self._counts[(kind, key)]
            return sum(n for (k, _), n in self._counts.items() if k == kind)

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()

    def fail_next(
        self, kind: str, *, status: int = 503, times: int = 1, key: str | None = None
    ) -> None:
        """Answer the next `times` requests of `kind` (on `key`, if given) with `status`."""
        with self._lock:
            self._faults.append(_Fault(kind, HTTPStatus(status), times, key))

    # ------------------------------------------------------------------ serving

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        method = handler.headers.get("x-http-method-override") or method
        request = Request(handler, method)
        response = emu_server.Response(handler)
        try:
            # Read the body first, whatever the route: an unread body would be taken for the
            # next request on this keep-alive connection.
            request.data  # noqa: B018 - reads and caches the body
            self._route(request, response, method)
        except EmuBadRequest as exc:
            error(response, HTTPStatus.BAD_REQUEST, str(exc), "invalid")
        except Exception as exc:
            log.exception("gcs emulator: %s %s failed", method, request.path)
            error(response, HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
        response.close()

    def _route(self, request: Any, response: Any, method: str) -> None:
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            request.set_match(match)
            if method not in route.methods:
                break
            kind, fn = route.methods[method]
            if kind == "HEAD" and request.query.get("alt", [""])[0] == "media":
                kind = "GET"
            params = request.params or {}
            key = params.get("dest_object_id") or params.get("object_id")
            if kind == "LIST":
                key = request.query.get("prefix", [""])[0]
            if kind in ("PUT", "UPLOAD") and key is None:
                with self._lock:
                    key = upload_target(request, self.storage)
            self.delays.delay()  # outside the lock: parallel requests overlap
            with self._lock:
                self._counts[(kind, key)] += 1
                fault = self._take_fault(kind, key)
                if fault is not None:
                    error(response, fault, f"injected {fault.value} {fault.phrase}")
                    return
                try:
                    fn(request, response, self.storage)
                except EmuNotFound:
                    error(response, HTTPStatus.NOT_FOUND, "Not found", "notFound")
                except EmuConflict as exc:
                    error(response, HTTPStatus.BAD_REQUEST, str(exc), "invalid")
            return
        error(
            response,
            HTTPStatus.NOT_IMPLEMENTED,
            f"{method} {request.path} is not implemented by the emulator",
        )

    def _take_fault(self, kind: str, key: str | None) -> HTTPStatus | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.kind == kind and fault.key in (None, key):
                fault.remaining -= 1
                return fault.status
        return None


__all__ = ["GCSTestServer"]
