"""BlockBody against a scripted HTTP server on 127.0.0.1: the bytes, the connection's reuse,
and the failures a body read can meet (early close, stall, a response it must not handle)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
import urllib3

from tests.conftest import self_signed_certificate
from tests.scripted_server import Serve
from wsfuse.backends.httpbody import BlockBody

MiB = 1 << 20
_NO_TIMEVAL = struct.pack("ll", 0, 0)


def _get(pool: urllib3.HTTPConnectionPool) -> urllib3.BaseHTTPResponse:
    return pool.urlopen("GET", "/o", preload_content=False, decode_content=False, retries=False)


def test_reads_exact_pieces_and_keeps_the_connection(
    serve: Serve,
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
        sock = reader._sock  # back as urllib3 left it, for the next request on it
        assert sock.gettimeout() == 5
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == _NO_TIMEVAL
        raw.release_conn()
    assert server.requests == 2
    assert server.connections == 1  # the body was consumed exactly: the connection was reused
    pool.close()


def test_whole_body_without_a_size(serve: Serve) -> None:
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


def test_a_body_cut_short_is_an_error(serve: Serve) -> None:
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
    serve: Serve,
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
        with reader, pytest.raises(TimeoutError, match="read timed out"):
            reader.read(MiB)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert sock.gettimeout() == 0.5  # the socket is back in urllib3's timeout mode
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == _NO_TIMEVAL
    raw.close()
    pool.close()


def test_chunked_responses_are_left_to_urllib3(serve: Serve) -> None:
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


def _fake_response(sock: socket.socket, **raw_fields: object) -> object:
    """The attributes of a urllib3 response over http.client that BlockBody.open looks at."""

    class Obj:
        def __init__(self, **fields: object) -> None:
            self.__dict__.update(fields)

    fp = Obj(raw=Obj(_sock=sock), read1=lambda n: b"")
    return Obj(_fp=Obj(fp=fp, chunked=False, length=10), headers={}, **raw_fields)


def test_tls_and_decoded_responses_are_left_to_urllib3() -> None:
    """Under TLS the socket carries ciphertext (and `SSLSocket.recv` refuses flags); a body
    that urllib3 would decode must be decoded: both are read through urllib3."""
    with socket.socket() as plain:
        assert BlockBody.open(_fake_response(plain)) is not None  # the control
        context = ssl.create_default_context()
        with context.wrap_socket(
            socket.socket(), server_hostname="s3.example", do_handshake_on_connect=False
        ) as tls:
            assert isinstance(tls, socket.socket)  # why a plain isinstance check is not enough
            assert BlockBody.open(_fake_response(tls)) is None
        encoded = _fake_response(plain, decode_content=True)
        encoded.headers = {"Content-Encoding": "gzip"}  # type: ignore[attr-defined]
        assert BlockBody.open(encoded) is None
        assert BlockBody.open(_fake_response(plain, decode_content=False)) is not None


def test_a_body_over_tls_is_read_through_urllib3(serve: Serve, tmp_path: Path) -> None:
    """The regression behind the plain-socket check: over HTTPS, `open` declines and the body
    arrives intact through urllib3."""
    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    body = os.urandom(2 * MiB + 5)

    def script(conn: socket.socket, _: int) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

    server = serve(script, lambda conn: server_context.wrap_socket(conn, server_side=True))
    pool = urllib3.HTTPSConnectionPool("127.0.0.1", server.port, ca_certs=str(cert), timeout=5)
    raw = _get(pool)
    assert BlockBody.open(raw) is None
    assert raw.read() == body
    raw.release_conn()
    pool.close()
