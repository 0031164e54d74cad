"""A raw HTTP server on 127.0.0.1 whose answers a test scripts byte by byte: for the failures
a real server does not produce on demand (a short body, a stall, a black hole, TLS)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

#: Called with the connection and the request's number once a request's headers arrived.
Script = Callable[[socket.socket, int], None]
#: Applied to each accepted connection before it is served (e.g. a TLS wrap).
Wrap = Callable[[socket.socket], socket.socket]


class ScriptedServer:
    """Answers every request on every connection with `script(conn, request_number)`."""

    def __init__(self, script: Script, wrap: Wrap | None = None) -> None:
        self.script = script
        self.wrap = wrap
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests = 0
        self._open: set[socket.socket] = set()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self.connections += 1
                self._open.add(conn)  # before any wrap: close() can end a stalled handshake
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, raw: socket.socket) -> None:
        conn = raw
        try:
            if self.wrap is not None:
                conn = self.wrap(raw)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]
                with self._lock:
                    self.requests += 1
                    number = self.requests
                self.script(conn, number)
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(raw)
            conn.close()

    def close(self) -> None:
        """Stop accepting and end every open connection (a script blocked in `recv` wakes)."""
        with self._lock:
            self._closed = True
            conns = list(self._open)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


Serve = Callable[..., ScriptedServer]
