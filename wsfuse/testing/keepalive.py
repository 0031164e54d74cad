"""Keep-alive HTTP/1.1 for the S3 test server, as S3's front ends do.

werkzeug's development server answers every request with `Connection: close`: its handler
cannot find the end of an unread request body, so it reads the socket dry (up to 10 ms of
`select` after each answer) and closes. Every S3 request then paid a TCP connect, a new
server thread and a fresh congestion window, costs real S3 does not charge a client that
reuses its connections (boto3, s3fs's libcurl, rclone and wsfuse all do), and which fell
hardest on the clients making the most requests.

`KeepAliveHandler` runs the same WSGI application on connections that stay open: the request
body is read through a reader that knows where the body ends (`Content-Length`, or the last
chunk of a chunked body), so what the application leaves unread is drained exactly, and the
answer is framed by its `Content-Length`. An answer without one is ended by closing the
connection, as before. `ConnectionRegistry` lets the server close idle connections when it
stops, so no handler thread outlives it waiting for a request.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import traceback
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import DechunkedInput

log = logging.getLogger(__name__)

#: An idle connection is closed after this long (S3 closes idle connections after ~20 s;
#: longer here so that a slow test never races a close). Also bounds one stalled send.
IDLE_TIMEOUT = 120.0

#: A request body the application left unread is read and dropped up to this size, so the
#: connection can carry the next request; past it the connection is closed instead.
DRAIN_LIMIT = 256 << 20

_NO_BODY_STATUSES = frozenset({204, 304})
_DROPPED = (ConnectionError, TimeoutError)  # the client went away, or went quiet


class RequestBody:
    """The request body as the WSGI application sees it (`wsgi.input`): ends where the
    request's body ends, so reading "everything" never reads into the next request, and
    `drain()` can read what the application left."""

    def __init__(self, stream: Any, length: int | None) -> None:
        self._stream = stream
        #: bytes of the body not read yet; None: chunked, ended by the stream's own end
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        return self._bounded(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._bounded(self._stream.readline, size)

    def _bounded(self, method: Any, size: int) -> bytes:
        """`method(size)` of the stream, never past the body's end."""
        if self._remaining is None:
            return bytes(method(size))
        if size < 0 or size > self._remaining:
            size = self._remaining
        if size == 0:
            return b""
        data = bytes(method(size))
        self._remaining -= len(data)
        if not data:
            self._remaining = 0
            raise ConnectionError("the client closed the connection inside a request body")
        return data

    def readinto(self, buffer: Any) -> int:
        """Straight into `buffer` (werkzeug reads request bodies this way, 64 KiB at a time):
        no intermediate `bytes`."""
        view = memoryview(buffer).cast("B")
        if self._remaining is not None:
            view = view[: self._remaining]
            if not view:
                return 0
        got = self._stream.readinto(view) or 0
        if self._remaining is not None:
            self._remaining -= got
            if got == 0:
                self._remaining = 0
                raise ConnectionError("the client closed the connection inside a request body")
        return got

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def drain(self) -> bool:
        """Read and drop the rest of the body; False when the connection cannot carry
        another request (too much left, or the client went away)."""
        if self._remaining is not None and self._remaining > DRAIN_LIMIT:
            return False
        drained = 0
        try:
            while chunk := self.read(1 << 20):
                drained += len(chunk)
                if drained > DRAIN_LIMIT:
                    return False
        except (OSError, ValueError):  # _DROPPED included
            return False
        return True


class ConnectionRegistry:
    """The server's open connections, so `close_all()` can end them when it stops."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sockets: set[socket.socket] = set()
        self._closing = False

    def add(self, sock: socket.socket) -> None:
        with self._changed:
            self._sockets.add(sock)
            closing = self._closing
        if closing:  # accepted just before the server stopped: ended like the others
            _end(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._changed:
            self._sockets.discard(sock)
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._sockets)

    def close_all(self, timeout: float = 5.0) -> None:
        """Wake every handler waiting on its connection and wait until each has closed it.
        The connection is reset, not shut down: a FIN sent first would leave the server's
        port in TIME_WAIT, and a port free again when `stop()` returns is part of the
        server's contract."""
        with self._changed:
            self._closing = True
            sockets = list(self._sockets)
        for sock in sockets:
            _end(sock)
        with self._changed:
            if not self._changed.wait_for(lambda: not self._sockets, timeout):
                log.warning(
                    "%d connection(s) still open %.0f s after the server stopped",
                    len(self._sockets),
                    timeout,
                )


def _end(sock: socket.socket) -> None:
    """Make the handler's blocked read return (no more requests) and its close a reset.
    The plain socket's shutdown, also for a TLS connection: `SSLSocket.shutdown` would drop
    the TLS state under a handler that may still be answering."""
    with contextlib.suppress(OSError):  # already closed by its peer or its handler
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        socket.socket.shutdown(sock, socket.SHUT_RD)


class _Answer:
    """One response: the status line and headers go out with the first body bytes (or at
    the end), framed by Content-Length when the application gave one."""

    def __init__(self, handler: KeepAliveHandler, method: str) -> None:
        self._handler = handler
        self._method = method
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self.sent = False
        #: body bytes still owed by the Content-Length sent; None: ended by closing
        self._owed: int | None = None
        self._bodyless = False  # HEAD, 1xx, 204, 304: whatever the application yields is dropped

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self._status = status
        self._headers = list(headers)
        return self.write

    def _send_head(self) -> None:
        assert self._status is not None, "write() before start_response()"
        handler = self._handler
        code_text, _, reason = self._status.partition(" ")
        code = int(code_text)
        # Checked before the status line is buffered: a bad header becomes a clean 500.
        lengths = [v for n, v in self._headers if n.lower() == "content-length"]
        if any(not v.strip().isdigit() for v in lengths):
            raise ValueError(f"the application's Content-Length is not a number: {lengths}")
        length = int(lengths[-1]) if lengths else None
        handler.send_response(code, reason)
        for name, value in self._headers:
            if name.lower() != "connection":  # the framing below decides
                handler.send_header(name, value)
        if self._method == "HEAD" or code in _NO_BODY_STATUSES or code < 200:
            self._owed = 0
            self._bodyless = True
        elif length is not None:
            self._owed = length
        else:
            handler.close_connection = True  # the close ends the body
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        self.sent = True

    def write(self, data: bytes) -> None:
        if not self.sent:
            self._send_head()
        if not data or self._bodyless:
            return
        if self._owed is not None:
            if len(data) > self._owed:
                raise ValueError("the application wrote more than its Content-Length")
            self._owed -= len(data)
        self._handler.wfile.write(data)

    def finish(self) -> None:
        if not self.sent:
            self._send_head()
        if self._owed:
            # Fewer bytes than announced: only closing tells the client the body is short.
            self._handler.close_connection = True
        self._handler.wfile.flush()


class KeepAliveHandler(MotoRequestHandler):
    """moto's request handler (werkzeug's, with header spelling kept), serving one request
    after another on a connection; see the module docstring."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    #: set by the server: where this handler registers its connection
    registry: ConnectionRegistry | None = None

    def setup(self) -> None:
        super().setup()
        if self.registry is not None:
            self.registry.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the peer is gone; nothing left to flush to it
            super().finish()
        # Closed here, before leaving the registry, so that `close_all()` returns only once
        # the port is free (the server's own close after this finds it closed already).
        self.connection.close()
        if self.registry is not None:
            self.registry.discard(self.connection)

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):
            return  # an idle keep-alive connection expiring: nothing went wrong
        super().log_error(format, *args)

    def run_wsgi(self) -> None:
        # (`Expect: 100-continue` was answered by `parse_request` already.)
        environ = self.environ = self.make_environ()
        length = _body_length(environ)
        if length == -1:  # a Content-Length that is not a number: the body's end is unknown
            self.close_connection = True
            length = 0
        body = RequestBody(environ["wsgi.input"], length)
        environ["wsgi.input"] = body
        answer = _Answer(self, self.command)
        try:
            result = self.server.app(environ, answer.start_response)
            try:
                for data in result:
                    answer.write(data)
                answer.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except _DROPPED:
            self.close_connection = True
            return
        except Exception:  # answer 500 as werkzeug does, and log it
            self.close_connection = True
            self.server.log(
                "error", f"Error on request {self.command} {self.path}:\n{traceback.format_exc()}"
            )
            if not answer.sent:
                with contextlib.suppress(OSError):
                    self._internal_error()
        # Read what the application left even when closing: closing with request bytes
        # unread makes the kernel reset the connection, and the client would see that reset
        # instead of the answer.
        if not body.drain():
            self.close_connection = True

    def _internal_error(self) -> None:
        message = b"Internal Server Error"
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(message)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(message)
        self.wfile.flush()


def _body_length(environ: dict[str, Any]) -> int | None:
    """Bytes in the request body; None for a chunked one (DechunkedInput ends it); -1 when
    the request's Content-Length is not a plain number."""
    if isinstance(environ.get("wsgi.input"), DechunkedInput):
        return None
    value = str(environ.get("CONTENT_LENGTH") or "0").strip()
    return int(value) if value.isdigit() else -1
