"""PlainHttp, the keep-alive GET client of plain-HTTP endpoints, against scripted servers:
reuse, a connection closed while idle, the body framings, timeouts and refusals."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import urllib3.exceptions

from tests.conftest import self_signed_certificate
from tests.scripted_server import ScriptedServer, Serve
from wsfuse.backends.options import BackendOptions
from wsfuse.backends.plainhttp import PlainHttp
from wsfuse.backends.s3 import S3Backend


def ok(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@pytest.fixture
def clients() -> Iterator[list[PlainHttp]]:
    made: list[PlainHttp] = []
    yield made
    for client in made:
        client.close()


def client_of(
    server: ScriptedServer,
    clients: list[PlainHttp],
    timeout: float = 5,
    tls: ssl.SSLContext | None = None,
) -> PlainHttp:
    """A client of `server` (closed after the test); `timeout` is the read timeout."""
    client = PlainHttp(
        "127.0.0.1", server.port, connect_timeout=5, read_timeout=timeout, max_idle=4, tls=tls
    )
    clients.append(client)
    return client


def fetch(client: PlainHttp, target: str = "/b/k") -> tuple[int, bytes]:
    response = client.get(target, [("Host", "x")])
    try:
        return response.status, response.read()
    finally:
        response.release()


def test_a_connection_serves_request_after_request(serve: Serve, clients: list[PlainHttp]) -> None:
    server = serve(lambda conn, n: conn.sendall(ok(b"answer %d" % n, b'ETag: "e"')))
    client = client_of(server, clients)
    assert fetch(client) == (200, b"answer 1")
    response = client.get("/b/k?x=1", [("Host", "x")])
    assert response.headers["etag"] == '"e"' and response.length == len(b"answer 2")
    assert response.read(3) == b"ans" and response.read() == b"wer 2" and response.read() == b""
    response.release()
    assert fetch(client) == (200, b"answer 3")
    assert server.connections == 1


def test_connection_close_and_http_1_0_are_not_reused(
    serve: Serve, clients: list[PlainHttp]
) -> None:
    def script(conn: socket.socket, n: int) -> None:
        if n % 2:
            conn.sendall(ok(b"one", b"Connection: close"))
        else:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        conn.shutdown(socket.SHUT_RDWR)

    client = client_of(serve(script), clients)
    assert [fetch(client) for _ in range(4)] == [(200, b"one"), (200, b"two")] * 2


def test_a_connection_closed_while_idle_is_replaced_transparently(
    serve: Serve, clients: list[PlainHttp]
) -> None:
    """S3 closes idle connections without notice: the next GET on one is sent again on a new
    connection (nothing of the answer had arrived, and a GET is safe to repeat)."""

    def script(conn: socket.socket, n: int) -> None:
        conn.sendall(ok(b"fresh %d" % n))
        conn.shutdown(socket.SHUT_RDWR)  # no "Connection: close": the client keeps it

    server = serve(script)
    client = client_of(server, clients)
    assert fetch(client) == (200, b"fresh 1")
    time.sleep(0.1)  # the FIN arrives
    assert fetch(client) == (200, b"fresh 2")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"), (200, b"final")),  # 1xx skipped
        (b"HTTP/1.1 204 No Content\r\n\r\n", (204, b"")),  # no body, no length: none read
    ],
    ids=["interim_answer", "no_content"],
)
def test_unusual_answers_keep_the_connection_in_step(
    serve: Serve, clients: list[PlainHttp], answer: bytes, expected: tuple[int, bytes]
) -> None:
    server = serve(lambda conn, _: conn.sendall(answer))
    client = client_of(server, clients)
    assert fetch(client) == expected
    assert fetch(client) == expected
    assert server.connections == 1


def test_an_idle_connection_with_something_to_read_is_not_reused(
    serve: Serve, clients: list[PlainHttp]
) -> None:
    """A server that gave up on an idle connection may say so ("408") before closing it:
    that answer must not be taken for the next request's."""

    def script(conn: socket.socket, n: int) -> None:
        conn.sendall(ok(b"answer %d" % n))
        if n == 1:
            time.sleep(0.05)
            conn.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")

    server = serve(script)
    client = client_of(server, clients)
    assert fetch(client) == (200, b"answer 1")
    time.sleep(0.2)
    assert fetch(client) == (200, b"answer 2")
    assert server.connections == 2


def test_chunked_and_until_close_bodies(serve: Serve, clients: list[PlainHttp]) -> None:
    def script(conn: socket.socket, n: int) -> None:
        if n == 1:
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\n<Erro\r\n"
                b"a;ext=1\r\nr><Code>No\r\n"
                b"0\r\nX-Trailer: y\r\n\r\n"
            )
        else:
            conn.sendall(b"HTTP/1.1 500 Oops\r\n\r\nuntil the end")
            conn.shutdown(socket.SHUT_RDWR)

    server = serve(script)
    client = client_of(server, clients)
    assert fetch(client) == (404, b"<Error><Code>No")
    assert fetch(client) == (500, b"until the end")
    assert server.connections == 1  # the chunked answer left the connection reusable


def test_head_and_body_in_pieces(serve: Serve, clients: list[PlainHttp]) -> None:
    body = bytes(range(256)) * 1000

    def script(conn: socket.socket, _: int) -> None:
        whole = ok(body, b"X-Long: " + b"v" * 5000)
        for start in range(0, len(whole), 777):
            conn.sendall(whole[start : start + 777])
            if start < 20_000:
                time.sleep(0.001)

    client = client_of(serve(script), clients)
    response = client.get("/b/k", [("Host", "x")])
    assert response.headers["x-long"] == "v" * 5000
    assert [len(response.read(100_000)) for _ in range(3)] == [100_000, 100_000, 56_000]
    response.release()


BLOCK = bytes(range(256)) * 4096  # 1 MiB


def read_blocks(client: PlainHttp, count: int) -> list[int]:
    """Read an answer of `count` 1 MiB blocks block by block; the socket's low-water mark
    after each read."""
    response = client.get("/b/k", [("Host", "x")])
    link = response._link
    assert link is not None
    marks = []
    for _ in range(count):
        assert response.read(len(BLOCK)) == BLOCK
        marks.append(link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))
    assert response.read() == b""
    response.release()
    return marks


def test_after_a_block_read_short_answers_still_wake_the_reader(
    serve: Serve, clients: list[PlainHttp]
) -> None:
    """A block with another one behind it is read with the socket's low-water mark at its
    length (one wake-up per block); the next head and an idle check must not wait for that
    many bytes. With the mark left at 1 MiB, the short answer on the same connection would
    wait out the 3 s read timeout, and the stray 408 on the idle connection would go unseen
    (then taken for the answer to the next request)."""

    def script(conn: socket.socket, n: int) -> None:
        if n == 1:
            conn.sendall(ok(BLOCK * 2))
            assert conn.recv(65536).startswith(b"GET ")  # the next request, same connection
            conn.sendall(ok(b"short"))
            assert conn.recv(65536).startswith(b"GET ")
            conn.sendall(ok(BLOCK * 2))
            time.sleep(0.05)
            conn.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            time.sleep(1)  # no FIN yet: only the 408 itself can make the connection readable
        else:
            conn.sendall(ok(b"fresh"))

    server = serve(script)
    client = client_of(server, clients, timeout=3)
    # the mark was used for the first block (else this test would prove nothing), not the last
    assert read_blocks(client, 2) == [len(BLOCK), 1]
    started = time.monotonic()
    assert fetch(client) == (200, b"short")
    assert time.monotonic() - started < 2  # not the read timeout
    assert read_blocks(client, 2) == [len(BLOCK), 1]
    time.sleep(0.2)
    assert fetch(client) == (200, b"fresh")  # the 408 was noticed: a new connection
    assert server.connections == 2


def test_the_last_block_of_a_kept_alive_answer_does_not_wait_for_more(
    serve: Serve, clients: list[PlainHttp]
) -> None:
    """The last block's read finds half of it there, copies it and sleeps: with the mark at
    the block's length it would wait for a whole block more, which never comes on a
    connection kept open (until the 3 s read timeout)."""

    def script(conn: socket.socket, _: int) -> None:
        whole = ok(BLOCK * 2)
        conn.sendall(whole[: len(whole) - len(BLOCK) // 2])
        time.sleep(0.3)
        conn.sendall(whole[len(whole) - len(BLOCK) // 2 :])
        time.sleep(4)  # kept open

    client = client_of(serve(script), clients, timeout=3)
    started = time.monotonic()
    assert read_blocks(client, 2) == [len(BLOCK), 1]
    assert time.monotonic() - started < 2


def test_a_short_body_and_a_stall_fail_as_retryable_errors(
    serve: Serve, clients: list[PlainHttp]
) -> None:
    def script(conn: socket.socket, n: int) -> None:
        if n == 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
            conn.shutdown(socket.SHUT_RDWR)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
            conn.recv(1)  # then nothing until the client gives up

    client = client_of(serve(script), clients, timeout=0.3)
    response = client.get("/b/k", [("Host", "x")])
    with pytest.raises(urllib3.exceptions.ProtocolError, match="60 bytes before the end"):
        response.read()
    response = client.get("/b/k", [("Host", "x")])
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        response.read(100)
    assert 0.25 < time.monotonic() - t0 < 3


def test_no_answer_and_no_server(serve: Serve, clients: list[PlainHttp]) -> None:
    client = client_of(serve(lambda conn, _: conn.recv(1)), clients, timeout=0.3)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.get("/b/k", [("Host", "x")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on exit: connections are refused
    refused = PlainHttp("127.0.0.1", port, connect_timeout=1, read_timeout=1, max_idle=1)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        refused.get("/b/k", [("Host", "x")])


def test_the_s3_backend_uses_it_only_without_a_proxy(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = serve(lambda conn, _: conn.sendall(ok(b""))).url
    options = BackendOptions(endpoint_url=url, region="us-east-1")
    backend = S3Backend("bucket", options)
    try:
        assert backend._direct is not None and backend._direct.plain is not None
    finally:
        backend.close()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = S3Backend("bucket", options)
    try:
        assert backend._direct is not None and backend._direct.plain is None
    finally:
        backend.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    return server_context, ssl.create_default_context(cafile=str(cert))


def test_over_tls_bodies_framings_and_reuse(
    serve: Serve, clients: list[PlainHttp], tls_server: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_server
    big = bytes(range(256)) * 4096  # 1 MiB: many TLS records

    def script(conn: socket.socket, n: int) -> None:
        if n == 2:
            conn.sendall(
                b"HTTP/1.1 404 No\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
        else:
            conn.sendall(ok(big, b"X-N: %d" % n))

    server = serve(script, lambda conn: server_context.wrap_socket(conn, server_side=True))
    client = client_of(server, clients, tls=client_context)
    assert client.host_header == f"127.0.0.1:{server.port}"
    response = client.get("/b/k", [("Host", "x")])
    assert response.headers["x-n"] == "1"
    assert [len(response.read(300_000)) for _ in range(4)] == [300_000] * 3 + [148_576]
    response.release()
    assert fetch(client) == (404, b"abc")
    assert fetch(client) == (200, big)
    assert server.connections == 1


def test_over_tls_a_stall_times_out_and_a_stranger_is_refused(
    serve: Serve, clients: list[PlainHttp], tls_server: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_server

    def stall(conn: socket.socket, _: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        conn.recv(1)

    server = serve(stall, lambda conn: server_context.wrap_socket(conn, server_side=True))
    client = client_of(server, clients, timeout=0.3, tls=client_context)
    response = client.get("/b/k", [("Host", "x")])
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        response.read(100)
    # a client that does not trust the self-signed certificate
    stranger = client_of(server, clients, tls=ssl.create_default_context())
    with pytest.raises(botocore.exceptions.SSLError):
        stranger.get("/b/k", [("Host", "x")])


def test_over_tls_a_dropped_handshake_is_retryable(
    serve: Serve, clients: list[PlainHttp], tls_server: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A load balancer that drops a connection during the handshake: a retryable
    ConnectionClosedError (mapped to Transient), not the permanent TLS error of a bad
    certificate."""

    def drop(conn: socket.socket) -> socket.socket:
        conn.shutdown(socket.SHUT_RDWR)
        raise OSError("dropped")

    server = serve(lambda conn, _: None, drop)
    client = client_of(server, clients, tls=tls_server[1])
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.get("/b/k", [("Host", "x")])
