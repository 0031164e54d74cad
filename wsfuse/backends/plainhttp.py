"""GET requests on plain-HTTP keep-alive connections, without urllib3 and http.client.

Why: a 128 KiB ranged GET sent through botocore's HTTP session costs ~1.55 ms of client CPU on
the test machine, ~1.1 ms of it Python in urllib3, http.client and the `email` header parser
(about 1,900 function calls per request); the same signed request written to a socket by hand
and its answer parsed here costs ~0.63 ms (docs/performance.md, session 7). A directory of
small files is that request over and over. TLS, proxies and everything else stay with
botocore: `DirectS3` uses this only for `http://` endpoints that no proxy applies to.

What it does: one request at a time per connection (no pipelining), idle connections kept
for reuse (HTTP/1.1 unless the server says `Connection: close`), a reused connection that
turns out closed retried once on a new one (only when no byte of the answer arrived: a GET
is safe to resend), the read timeout as the socket's `SO_RCVTIMEO` (the socket stays
blocking, so a body block is one `recv(MSG_WAITALL)`, as in `httpbody.BlockBody`), bodies
with a length, chunked bodies (S3 errors may come that way) and bodies ended by the close.
Failures raise what urllib3 would make botocore raise, so `s3.map_error` treats both paths
alike.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterable

import botocore.exceptions
import urllib3.exceptions

from wsfuse.backends.httpbody import timeval

#: Longest status line + headers accepted.
MAX_HEAD = 64 * 1024
#: Largest body read whole in memory: chunked or ended by the close (errors, in practice;
#: the largest ranged GET wsfuse makes is 8 MiB).
MAX_BUFFERED = 64 * 1024 * 1024


class PlainHttp:
    """Keep-alive GETs to one `host:port`. Thread-safe: each request has its own connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        max_idle: int,
    ) -> None:
        self.host = host
        self.port = port
        name = f"[{host}]" if ":" in host else host.lower()
        #: The Host header, as botocore would sign it for this endpoint (no default port).
        self.host_header = name if port == 80 else f"{name}:{port}"
        self.url = f"http://{name}:{port}"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self, target: str, headers: Iterable[tuple[str, str]]) -> Response:
        """Send `GET target` with `headers` (Host included by the caller, as signed) and
        read the answer's head. Read the body from the `Response`, then `release()` it."""
        lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
        lines.append("Accept-Encoding: identity")  # the stored bytes, never recompressed
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock = self._take()
        if sock is not None:
            try:
                return self._exchange(sock, request, reused=True)
            except _Stale:
                pass  # closed while idle: once more on a new connection
        try:
            return self._exchange(self._connect(), request, reused=False)
        except _Stale as exc:
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=self.url) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _take(self) -> socket.socket | None:
        """An idle connection that has nothing to read: one that does (the server's EOF,
        or a late "408 Request Timeout" before it closed) would answer for the next
        request; it is closed instead, as urllib3 does."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                sock = self._idle.pop()
            try:
                readable = select.select([sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = [sock]
            if not readable:
                return sock
            sock.close()

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(sock)
                return
        sock.close()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        except TimeoutError as exc:
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=self.url) from exc
        except OSError as exc:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.url) from exc
        try:
            sock.settimeout(None)  # blocking: MSG_WAITALL fills a whole block
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._read_timeout:
                limit = timeval(self._read_timeout)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        except OSError:
            sock.close()
            raise
        return sock

    def _exchange(self, sock: socket.socket, request: bytes, *, reused: bool) -> Response:
        try:
            try:
                sock.sendall(request)
            except (ConnectionResetError, BrokenPipeError) as exc:
                if reused:
                    raise _Stale() from exc
                raise
            head = _read_head(sock)
            while _is_interim(head):  # "100 Continue" and the like: the answer follows
                head = _read_head(sock)
            return Response(self, sock, head)
        except BlockingIOError as exc:  # SO_RCVTIMEO / SO_SNDTIMEO expired
            sock.close()
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=self.url) from exc
        except BaseException:
            sock.close()
            raise


class Response:
    """One answer: `status`, `headers` (lower-case names), then the body by `read`."""

    def __init__(self, client: PlainHttp, sock: socket.socket, head: bytes) -> None:
        self._client = client
        self._sock: socket.socket | None = sock
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise urllib3.exceptions.ProtocolError(f"not an HTTP/1.x status line: {lines[0]!r}")
        self.status = int(code)
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        connection = self.headers.get("connection", "").lower()
        self._reusable = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        self._buffered: bytes | None = None  # a body read ahead whole (chunked, until close)
        length = self.headers.get("content-length")
        if self.status in (204, 304):
            length = "0"  # no body, whatever the headers say (RFC 9112, 6.3)
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._reusable = self._reusable and length is None  # both: do not trust the framing
            self._buffered = _read_chunked(sock)
            self.length = len(self._buffered)
        elif length is not None and length.isascii() and length.isdigit():
            self.length = int(length)
        else:
            self._reusable = False
            self._buffered = _read_to_close(sock)
            self.length = len(self._buffered)
        self.remaining = self.length

    def read(self, amt: int | None = None) -> bytes:
        """The next `min(amt, remaining)` bytes of the body (the rest without `amt`; b"" at
        its end). A body that ends early raises urllib3's `ProtocolError`, a stalled one
        botocore's `ReadTimeoutError` (both are retried as transient)."""
        want = self.remaining if amt is None else min(amt, self.remaining)
        if want <= 0:
            return b""
        if self._buffered is not None:
            start = self.length - self.remaining
            self.remaining -= want
            return self._buffered[start : start + want]
        sock = self._sock
        if sock is None:
            raise ValueError("read from a released response")
        try:
            data = sock.recv(want, socket.MSG_WAITALL)
            while 0 < len(data) < want:  # a signal ended the wait early: wait for the rest
                more = sock.recv(want - len(data), socket.MSG_WAITALL)
                if not more:
                    break
                data += more
        except BlockingIOError as exc:  # SO_RCVTIMEO expired
            self.close()
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=self._client.url) from exc
        if len(data) < want:
            missing = self.remaining - len(data)
            self.close()
            raise urllib3.exceptions.ProtocolError(
                f"the connection closed {missing} bytes before the end of the body",
                urllib3.exceptions.IncompleteRead(len(data), missing),
            )
        self.remaining -= want
        return data

    def release(self) -> None:
        """Done with this answer: its connection goes back for reuse if the body was read to
        its end and the server keeps connections open, else it is closed."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._reusable and self.remaining == 0:
            self._client._give_back(sock)
        else:
            sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class _Stale(Exception):
    """The connection closed before any byte of the answer: safe to send again."""


def _is_interim(head: bytes) -> bool:
    """A 1xx head other than 101 (which a GET never asks for): another head follows."""
    parts = head.split(b" ", 2)
    return len(parts) > 1 and parts[1][:1] == b"1" and parts[1] != b"101"


def _read_head(sock: socket.socket) -> bytes:
    """The status line and headers, consumed up to the blank line and not a byte further
    (peeked first, so the body stays in the socket for `recv(MSG_WAITALL)`)."""
    taken = b""
    while True:
        try:
            peek = sock.recv(MAX_HEAD, socket.MSG_PEEK)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not taken:
                raise _Stale() from exc
            raise
        if not peek:
            if not taken:
                raise _Stale()
            raise urllib3.exceptions.ProtocolError("the connection closed in the response headers")
        end = (taken + peek).find(b"\r\n\r\n")
        if end >= 0:
            need = end + 4 - len(taken)
            return taken + _recv_exactly(sock, need)
        if len(taken) + len(peek) > MAX_HEAD:
            raise urllib3.exceptions.ProtocolError(f"response headers longer than {MAX_HEAD}")
        taken += _recv_exactly(sock, len(peek))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = sock.recv(n, socket.MSG_WAITALL)
    while len(data) < n:
        more = sock.recv(n - len(data), socket.MSG_WAITALL)
        if not more:
            raise urllib3.exceptions.ProtocolError("the connection closed in the middle")
        data += more
    return data


def _read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        if len(line) > MAX_HEAD:
            raise urllib3.exceptions.ProtocolError("a chunk header longer than allowed")
        line += _recv_exactly(sock, 1)
    return line[:-2]


def _read_chunked(sock: socket.socket) -> bytes:
    """A whole chunked body (S3 errors; never the blocks of a ranged GET)."""
    pieces: list[bytes] = []
    total = 0
    while True:
        size_text = _read_line(sock).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            size = -1
        if size < 0 or not size_text.isalnum():
            raise urllib3.exceptions.ProtocolError(f"bad chunk size {size_text!r}")
        if size == 0:
            while _read_line(sock):  # trailers, up to the blank line
                pass
            return b"".join(pieces)
        total += size
        if total > MAX_BUFFERED:
            raise urllib3.exceptions.ProtocolError(f"a chunked body over {MAX_BUFFERED} bytes")
        pieces.append(_recv_exactly(sock, size))
        _recv_exactly(sock, 2)  # the CRLF after the chunk


def _read_to_close(sock: socket.socket) -> bytes:
    pieces: list[bytes] = []
    total = 0
    while chunk := sock.recv(65536):
        pieces.append(chunk)
        total += len(chunk)
        if total > MAX_BUFFERED:
            raise urllib3.exceptions.ProtocolError(f"a body over {MAX_BUFFERED} bytes unframed")
    return b"".join(pieces)
