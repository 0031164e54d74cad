"""BlockBody against a scripted HTTP server on 127.0.0.1: the bytes, the connection's reuse,
and the failures a body read can meet (early close, stall, a response it must not handle)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import urllib3

from wsfuse.backends.httpbody import BlockBody

MiB = 1 << 20

Script = Callable[[socket.socket, int], None]


class ScriptedServer:
    """Answers every request on every connection with `script(conn, request_number)`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]
                self.requests += 1
                try:
                    self.script(conn, self.requests)
                except OSError:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _get(pool: urllib3.HTTPConnectionPool) -> urllib3.BaseHTTPResponse:
    return pool.urlopen("GET", "/o", preload_content=False, decode_content=False, retries=False)


def test_reads_exact_pieces_and_keeps_the_connection(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    body = os.urandom(3 * MiB + 123)

    def script(conn: socket.socket, _: int) -> None:
        head = f"HTTP/1.1 206 Partial\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        conn.sendall(head + body[:100])  # the start of the body arrives with the headers
        for i in range(100, len(body), 200_000):  # the rest in uneven, delayed pieces
            conn.sendall(body[i : i + 200_000])
            time.sleep(0.001)

    server = serve(script)
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, maxsize=1, timeout=5)
    for _ in range(2):
        raw = _get(pool)
        reader = BlockBody.open(raw)
        assert reader is not None
        with reader:
            pieces = []
            while piece := reader.read(MiB):
                pieces.append(piece)
        assert [len(p) for p in pieces] == [MiB, MiB, MiB, 123]
        assert b"".join(pieces) == body
        assert reader.remaining == 0
        raw.release_conn()
    assert server.requests == 2
    assert server.connections == 1  # the body was consumed exactly: the connection was reused
    pool.close()


def test_whole_body_without_a_size(serve: Callable[[Script], ScriptedServer]) -> None:
    body = os.urandom(MiB + 7)
    server = serve(
        lambda conn, _: conn.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
    )
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, timeout=5)
    raw = _get(pool)
    reader = BlockBody.open(raw)
    assert reader is not None
    with reader:
        assert reader.read() == body
        assert reader.read(10) == b""
    raw.release_conn()
    pool.close()


def test_a_body_cut_short_is_an_error(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(conn: socket.socket, _: int) -> None:
        conn.sendall(b"HTTP/1.1 206 Partial\r\nContent-Length: 3000000\r\n\r\n" + b"x" * 1_500_000)
        conn.shutdown(socket.SHUT_WR)

    server = serve(script)
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, timeout=5)
    raw = _get(pool)
    reader = BlockBody.open(raw)
    assert reader is not None
    with reader, pytest.raises(urllib3.exceptions.ProtocolError, match="before the end"):
        assert len(reader.read(MiB)) == MiB
        reader.read(MiB)
    raw.close()
    pool.close()


def test_a_stalled_body_times_out_and_the_timeout_is_restored(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    release = threading.Event()

    def script(conn: socket.socket, _: int) -> None:
        conn.sendall(b"HTTP/1.1 206 Partial\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 1000)
        release.wait(10)

    server = serve(script)
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, timeout=0.5)
    raw = _get(pool)
    reader = BlockBody.open(raw)
    assert reader is not None
    sock = reader._sock
    started = time.monotonic()
    try:
        with reader, pytest.raises(OSError):
            reader.read(MiB)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert sock.gettimeout() == 0.5  # the socket is back in urllib3's timeout mode
    raw.close()
    pool.close()


def test_chunked_responses_are_left_to_urllib3(serve: Callable[[Script], ScriptedServer]) -> None:
    server = serve(
        lambda conn, _: conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    )
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, timeout=5)
    raw = _get(pool)
    assert BlockBody.open(raw) is None
    assert raw.read() == b"hello"
    raw.release_conn()
    pool.close()
