"""The S3 test server's keep-alive connections (wsfuse.testing.keepalive): one connection
carries request after request, a body the application leaves unread is drained exactly, an
answer that cannot be framed ends with the connection, and stopping the server ends every
idle connection and frees its port."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import fresh_bucket_name
from wsfuse.testing.keepalive import ConnectionRegistry, KeepAliveHandler
from wsfuse.testing.s3server import S3TestServer


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Answers by path: /echo (the body), /readinto (the body, read with readinto), /ignore
    (reads nothing), /half (reads 3 bytes), /unframed (no Content-Length), /short (announces
    more than it sends), /sized (5 bytes), /nocontent (204), /badlength (a Content-Length that
    is not a number), /boom (raises)."""
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/readinto":  # as werkzeug reads bodies: into its own buffer, piece by piece
        stream, got, piece = environ["wsgi.input"], bytearray(), bytearray(65536)
        while n := stream.readinto(piece):
            got += piece[:n]
        start_response("200 OK", [("Content-Length", str(len(got)))])
        return [bytes(got)]
    if path == "/half":
        environ["wsgi.input"].read(3)
    if path in ("/ignore", "/half"):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    if path == "/sized":  # asked with HEAD: the length of a body that must not be sent
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]
    if path == "/nocontent":
        start_response("204 No Content", [])
        return [b""]
    if path == "/badlength":
        start_response("200 OK", [("Content-Length", "5x")])
        return [b"hello"]
    if path == "/unframed":
        start_response("200 OK", [])
        return [b"un", b"framed"]
    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"]
    raise RuntimeError("boom")


@pytest.fixture
def served() -> Iterator[tuple[int, ConnectionRegistry]]:
    registry = ConnectionRegistry()

    class Handler(KeepAliveHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

        def log_error(self, format: str, *args: Any) -> None:
            pass

    Handler.registry = registry
    server = make_server("127.0.0.1", 0, _app, threaded=True, request_handler=Handler)
    server.log = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], registry
    finally:
        server.shutdown()
        registry.close_all()
        server.server_close()
        thread.join()


@pytest.fixture
def conn(served: tuple[int, ConnectionRegistry]) -> Iterator[http.client.HTTPConnection]:
    """A client connection to the served app, closed after the test."""
    client = http.client.HTTPConnection("127.0.0.1", served[0], timeout=10)
    try:
        yield client
    finally:
        client.close()


def _ask(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, str | None]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp.getheader("Connection")


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_one_connection_carries_many_requests(served: tuple[int, ConnectionRegistry]) -> None:
    port, registry = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, body, connection = _ask(conn, "POST", "/echo", b"first")
        assert (status, body, connection) == (200, b"first", None)
        sock = conn.sock
        for i in range(5):
            assert _ask(conn, "POST", "/echo", f"body {i}".encode())[:2] == (
                200,
                f"body {i}".encode(),
            )
            assert conn.sock is sock  # the same connection, never reopened
        assert len(registry) == 1
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/ignore", "/half"])
def test_an_unread_request_body_is_drained_exactly(
    conn: http.client.HTTPConnection, path: str
) -> None:
    payload = b"x" * (3 << 20)  # more than any socket buffer holds
    assert _ask(conn, "PUT", path, payload)[:2] == (200, b"ok")
    sock = conn.sock
    # Were the body read too little or too far, this request would be garbled or hang.
    assert _ask(conn, "POST", "/echo", b"next")[:2] == (200, b"next")
    assert conn.sock is sock


@pytest.mark.parametrize("chunked", [False, True])
def test_readinto_stops_at_the_end_of_the_body(
    conn: http.client.HTTPConnection, chunked: bool
) -> None:
    payload = bytes(range(256)) * 1000  # not a multiple of the 64 KiB pieces
    body: Any = iter([payload[:1000], payload[1000:]]) if chunked else payload
    assert _ask(conn, "PUT", "/readinto", body)[:2] == (200, payload)
    assert _ask(conn, "POST", "/echo", b"next")[:2] == (200, b"next")


def test_a_chunked_request_body_is_read_to_its_last_chunk(
    conn: http.client.HTTPConnection,
) -> None:
    chunks = [b"ab", b"cde", b"f" * 70000]
    assert _ask(conn, "POST", "/echo", iter(chunks))[:2] == (200, b"".join(chunks))
    assert _ask(conn, "POST", "/ignore", iter(chunks))[:2] == (200, b"ok")  # drained
    assert _ask(conn, "POST", "/echo", b"after")[:2] == (200, b"after")


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [("/unframed", 200, b"unframed"), ("/short", 200, None), ("/boom", 500, None)],
)
def test_an_answer_it_cannot_frame_ends_the_connection(
    served: tuple[int, ConnectionRegistry], path: str, status: int, body: bytes | None
) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = _read_to_close(sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    if path == "/short":
        # The head went out before the body fell short: only the close can tell the client.
        assert rest == b"abc"
    else:
        assert b"connection: close" in head.lower()
    if body is not None:
        assert rest == body


def test_the_client_asking_to_close_is_answered_and_closed(
    served: tuple[int, ConnectionRegistry],
) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
        answer = _read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b"\r\n\r\nhi")


def test_the_s3_server_keeps_connections_and_stopping_ends_them() -> None:
    """boto3's requests share one connection, and `stop()` ends an idle one at once
    (its handler thread does not wait for the client) and frees the port."""
    with S3TestServer() as srv:
        bucket = fresh_bucket_name("ka")
        srv.create_bucket(bucket)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        assert _ask(conn, "PUT", f"/{bucket}/k", b"v" * 1000)[0] == 200
        sock = conn.sock
        for _ in range(3):
            status, body, connection = _ask(
                conn, "GET", f"/{bucket}/k", headers={"Range": "bytes=0-9"}
            )
            assert (status, body, connection) == (206, b"v" * 10, None)
        assert conn.sock is sock
        port = srv.port
    assert sock is not None
    sock.settimeout(5)
    # Ended by the server: reset, so that its port is not left in TIME_WAIT.
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    conn.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again, although the client never closed


def test_answers_without_a_body_keep_the_connection(
    conn: http.client.HTTPConnection,
) -> None:
    conn.request("HEAD", "/sized")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Content-Length"), resp.read()) == (200, "5", b"")
    sock = conn.sock
    assert _ask(conn, "DELETE", "/nocontent")[:2] == (204, b"")
    # Had either sent a body, this answer would start with its bytes.
    assert _ask(conn, "POST", "/echo", b"after")[:2] == (200, b"after")
    assert conn.sock is sock


def test_expect_100_continue_is_answered_once(served: tuple[int, ConnectionRegistry]) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"data")
        answer = first + _read_to_close(sock)
    assert answer.count(b"100 Continue") == 1
    assert answer.endswith(b"\r\n\r\ndata")


def test_a_failed_request_with_an_unread_body_gets_its_answer_not_a_reset(
    conn: http.client.HTTPConnection,
) -> None:
    """Closing with request bytes unread makes the kernel reset the connection, and the
    client (blocked sending its body) would see the reset instead of the 500."""
    status, body, connection = _ask(conn, "PUT", "/boom", b"x" * (8 << 20))
    assert (status, body, connection) == (500, b"Internal Server Error", "close")


def test_a_content_length_that_is_not_a_number_is_one_clean_500(
    served: tuple[int, ConnectionRegistry],
) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /badlength HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_to_close(sock)
    assert answer.count(b"HTTP/1.1") == 1
    assert answer.startswith(b"HTTP/1.1 500")


def test_stopping_does_not_wait_for_idle_clients(
    served: tuple[int, ConnectionRegistry],
) -> None:
    port, registry = served
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(3)]
    try:
        for conn in conns:
            assert _ask(conn, "POST", "/echo", b"x")[:2] == (200, b"x")
        assert len(registry) == 3
        started = time.monotonic()
        registry.close_all(timeout=5)
        assert len(registry) == 0
        assert time.monotonic() - started < 2  # woken, not timed out
    finally:
        for conn in conns:
            conn.close()
