"""GET requests on wsfuse's own keep-alive connections, without urllib3 and http.client.

Why: a 128 KiB ranged GET sent through botocore's HTTP session costs ~1.55 ms of client CPU on
the test machine, ~1.1 ms of it Python in urllib3, http.client and the `email` header parser
(about 1,900 function calls per request); the same signed request written to a socket by hand
and its answer parsed here costs ~0.63 ms (docs/performance.md, session 7). A directory of
small files is that request over and over. Proxies and client certificates stay with
botocore: `DirectS3` uses this only for endpoints without them, and over TLS only with a
context that checks the server as botocore's session would (same CA bundle, host name).

What it does: one request at a time per connection (no pipelining), idle connections kept
for reuse (HTTP/1.1 unless the server says `Connection: close`; one that has something to
read when taken is closed instead), a reused connection that turns out closed retried once on
a new one (only when no byte of the answer arrived: a GET is safe to resend), interim 1xx
answers skipped, bodies with a length, chunked bodies (S3 errors may come that way) and
bodies ended by the close. Plain TCP reads a block with one `recv(MSG_WAITALL)` (the read
timeout as `SO_RCVTIMEO`, as in `httpbody.BlockBody`); TLS reads it record by record into one
buffer. Failures raise what urllib3 would make botocore raise, so `s3wire.map_error` treats both
paths alike.
"""

from __future__ import annotations

import select
import socket
import ssl
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
#: Plain-TCP body reads at least this long wait with the socket's low-water mark at their
#: length (`_Link.recv_exactly`).
LOWAT_MIN = 64 * 1024


class PlainHttp:
    """Keep-alive GETs to one `host:port`, over TCP or TLS (`tls`: the context that checks the
    server's certificate). Thread-safe: each request has its own connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        max_idle: int,
        tls: ssl.SSLContext | None = None,
        keepalive: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self._keepalive = keepalive
        name = f"[{host}]" if ":" in host else host.lower()
        default_port = 443 if tls is not None else 80
        #: The Host header, as botocore would sign it for this endpoint (no default port).
        self.host_header = name if port == default_port else f"{name}:{port}"
        self.url = f"{'https' if tls is not None else 'http'}://{name}:{port}"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self, target: str, headers: Iterable[tuple[str, str]]) -> Response:
        """Send `GET target` with `headers` (Host included by the caller, as signed) and
        read the answer's head. Read the body from the `Response`, then `release()` it."""
        lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
        lines.append("Accept-Encoding: identity")  # the stored bytes, never recompressed
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        link = self._take()
        if link is not None:
            try:
                return self._exchange(link, request, reused=True)
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
        for link in idle:
            link.close()

    def _take(self) -> _Link | None:
        """An idle connection that has nothing to read: one that does (the server's EOF,
        or a late "408 Request Timeout" before it closed) would answer for the next
        request; it is closed instead, as urllib3 does."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                link = self._idle.pop()
            if not link.readable():
                return link
            link.close()

    def _give_back(self, link: _Link) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(link)
                return
        link.close()

    def _connect(self) -> _Link:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        except TimeoutError as exc:
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=self.url) from exc
        except OSError as exc:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.url) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is None:
                sock.settimeout(None)  # blocking: MSG_WAITALL fills a whole block
                if self._read_timeout:
                    limit = timeval(self._read_timeout)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
                return _Link(sock)
            try:  # the handshake within the connect timeout, then the read timeout
                wrapped = self.tls.wrap_socket(sock, server_hostname=self.host.split("%")[0])
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:  # dropped: retryable
                raise botocore.exceptions.ConnectionClosedError(endpoint_url=self.url) from exc
            except ssl.SSLError as exc:  # the certificate, the protocol: not retryable
                raise botocore.exceptions.SSLError(endpoint_url=self.url, error=exc) from exc
            except TimeoutError as exc:
                raise botocore.exceptions.ConnectTimeoutError(endpoint_url=self.url) from exc
            sock = wrapped
            sock.settimeout(self._read_timeout or None)  # 0 means none, as for plain TCP
            return _Link(sock)
        except BaseException:
            sock.close()
            raise

    def _exchange(self, link: _Link, request: bytes, *, reused: bool) -> Response:
        try:
            try:
                link.sock.sendall(request)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
                if reused:
                    raise _Stale() from exc
                raise
            head = link.read_head()
            while _is_interim(head):  # "100 Continue" and the like: the answer follows
                head = link.read_head()
            return Response(self, link, head)
        except _TIMEOUTS as exc:
            link.close()
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=self.url) from exc
        except BaseException:
            link.close()
            raise


class Response:
    """One answer: `status`, `headers` (lower-case names), then the body by `read`."""

    def __init__(self, client: PlainHttp, link: _Link, head: bytes) -> None:
        self._client = client
        self._link: _Link | None = link
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
            self._buffered = _read_chunked(link)
            self.length = len(self._buffered)
        elif length is not None and length.isascii() and length.isdigit():
            self.length = int(length)
        else:
            self._reusable = False
            self._buffered = _read_to_close(link)
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
        link = self._link
        if link is None:
            raise ValueError("read from a released response")
        try:
            data = link.recv_exactly(want, followed_by=self.remaining - want)
        except _TIMEOUTS as exc:
            self.close()
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=self._client.url) from exc
        except BaseException:
            self.close()
            raise
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
        link, self._link = self._link, None
        if link is None:
            return
        if self._reusable and self.remaining == 0:
            self._client._give_back(link)
        else:
            link.close()

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()


class _Link:
    """One connection. Plain TCP: the head is peeked, so the body stays in the socket and a
    block is one blocking `recv(MSG_WAITALL)` (the read timeout is `SO_RCVTIMEO`). TLS: an
    `SSLSocket` takes no flags and returns at most one record (16 KiB) per `recv`, so the
    head is read through a buffer whose rest starts the body, and a block is read record by
    record into one buffer (the read timeout is the socket's own)."""

    __slots__ = ("_lowat", "_rest", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rest = b""  # TLS: bytes read past the head
        self._lowat = 1  # the socket's SO_RCVLOWAT (plain TCP)

    def _set_lowat(self, n: int) -> None:
        """SO_RCVLOWAT. With `MSG_WAITALL` alone the kernel wakes the reading thread for each
        segment that arrives (16 times per 1 MiB block over loopback, each one a context switch
        and a wait for the GIL); with the low-water mark at the read's length, once, when the
        whole block is there. Shorter reads put it back to 1, and so does the idle check that
        every reused connection passes (`readable`) before its next head is read: a short
        answer must still wake its reader."""
        if n != self._lowat:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
            self._lowat = n

    def close(self) -> None:
        self.sock.close()

    def readable(self) -> bool:
        """Something (data or EOF) arrived while idle."""
        if self._rest or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return True
        poller = select.poll()  # not select(): descriptors above 1024 are common here
        poller.register(self.sock, select.POLLIN)
        try:
            self._set_lowat(1)  # else data short of the last block's mark would not show
            return bool(poller.poll(0))
        except OSError:
            return True

    def read_head(self) -> bytes:
        """The status line and headers, up to the blank line."""
        if isinstance(self.sock, ssl.SSLSocket):
            return self._read_head_buffered()
        taken = b""
        while True:
            peek = self._first_recv(bool(taken), MAX_HEAD, socket.MSG_PEEK)
            end = (taken + peek).find(b"\r\n\r\n")
            if end >= 0:
                return taken + self._exactly(end + 4 - len(taken))
            if len(taken) + len(peek) > MAX_HEAD:
                raise urllib3.exceptions.ProtocolError(f"response headers longer than {MAX_HEAD}")
            taken += self._exactly(len(peek))

    def _read_head_buffered(self) -> bytes:
        data, self._rest = self._rest, b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            if len(data) > MAX_HEAD:
                raise urllib3.exceptions.ProtocolError(f"response headers longer than {MAX_HEAD}")
            data += self._first_recv(bool(data), 65536)
        self._rest = data[end + 4 :]
        return data[: end + 4]

    def _first_recv(self, started: bool, n: int, flags: int = 0) -> bytes:
        """A read of the answer's head: before its first byte, a reset or EOF means the
        server had closed the connection (`_Stale`: safe to send again)."""
        try:
            got = self.sock.recv(n, flags)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
            if not started:
                raise _Stale() from exc
            raise
        if not got:
            if not started:
                raise _Stale()
            raise urllib3.exceptions.ProtocolError("the connection closed in the response headers")
        return got

    def recv_upto(self, n: int) -> bytes:
        if self._rest:
            data, self._rest = self._rest[:n], self._rest[n:]
            return data
        return self.sock.recv(n)

    def recv_exactly(self, n: int, *, followed_by: int = 0) -> bytes:
        """`n` bytes, fewer only if the connection closed first. `followed_by`: how many
        bytes of the same answer are known to come after them.

        The low-water mark counts bytes not yet copied, so a read that found part of its
        bytes already there, copied them and then slept would wait for `n` more: only safe
        when at least `n` more are on their way. The last block of an answer on a kept-alive
        connection is read with the mark at 1, or it could sleep until the read timeout."""
        if not self._rest and not isinstance(self.sock, ssl.SSLSocket):
            self._set_lowat(n if n >= LOWAT_MIN and followed_by >= n else 1)
            data = self.sock.recv(n, socket.MSG_WAITALL)
            while 0 < len(data) < n:  # a signal ended the wait early: wait for the rest
                more = self.sock.recv(n - len(data), socket.MSG_WAITALL)
                if not more:
                    break
                data += more
            return data
        head, self._rest = self._rest[:n], self._rest[n:]
        pieces = [head]
        got = len(head)
        while got < n:
            piece = self.sock.recv(n - got)  # one TLS record (16 KiB) at most
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _exactly(self, n: int) -> bytes:
        data = self.recv_exactly(n)
        if len(data) < n:
            raise urllib3.exceptions.ProtocolError("the connection closed in the middle")
        return data


class _Stale(Exception):
    """The connection closed before any byte of the answer: safe to send again."""


#: What an expired read timeout raises: `SO_RCVTIMEO` on a blocking socket (EAGAIN), or the
#: timeout of a TLS socket.
_TIMEOUTS = (BlockingIOError, TimeoutError)


def _is_interim(head: bytes) -> bool:
    """A 1xx head other than 101 (which a GET never asks for): another head follows."""
    parts = head.split(b" ", 2)
    return len(parts) > 1 and parts[1][:1] == b"1" and parts[1] != b"101"


def _read_line(link: _Link) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        if len(line) > MAX_HEAD:
            raise urllib3.exceptions.ProtocolError("a chunk header longer than allowed")
        line += link._exactly(1)
    return line[:-2]


def _read_chunked(link: _Link) -> bytes:
    """A whole chunked body (S3 errors; never the blocks of a ranged GET)."""
    pieces: list[bytes] = []
    total = 0
    while True:
        size_text = _read_line(link).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            size = -1
        if size < 0 or not size_text.isalnum():
            raise urllib3.exceptions.ProtocolError(f"bad chunk size {size_text!r}")
        if size == 0:
            while _read_line(link):  # trailers, up to the blank line
                pass
            return b"".join(pieces)
        total += size
        if total > MAX_BUFFERED:
            raise urllib3.exceptions.ProtocolError(f"a chunked body over {MAX_BUFFERED} bytes")
        pieces.append(link._exactly(size))
        link._exactly(2)  # the CRLF after the chunk


def _read_to_close(link: _Link) -> bytes:
    pieces: list[bytes] = []
    total = 0
    while chunk := link.recv_upto(65536):
        pieces.append(chunk)
        total += len(chunk)
        if total > MAX_BUFFERED:
            raise urllib3.exceptions.ProtocolError(f"a body over {MAX_BUFFERED} bytes unframed")
    return b"".join(pieces)
