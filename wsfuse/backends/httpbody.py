"""Reading a response body one `recv(MSG_WAITALL)` per block, straight from the socket.

A 1 MiB read through urllib3 and http.client is a loop of `poll` + `recv` pairs on a socket
with a timeout (the socket is non-blocking underneath), each returning what has arrived so far
(~20 `recv` per 8 MiB GET on this machine), and every one of them releases and re-takes the
GIL. In a daemon whose trio thread answers the kernel, each re-take can keep that thread
waiting. With the socket blocking and `MSG_WAITALL`, the kernel fills the whole block before
returning: one system call and one GIL round trip per block. The read timeout still holds: it
becomes the socket's `SO_RCVTIMEO` while the body is read.

This reaches into http.client's response (its buffered reader and socket) because nothing
public gives the socket of a response being read. `BlockBody.open` returns None whenever the
response is not the plain case it understands (chunked, no length, a decoder, another
implementation); the caller then reads through urllib3 as before.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import urllib3.exceptions


class BlockBody:
    """The rest of one response body, read in caller-sized pieces. Use as a context manager:
    leaving it restores the socket's timeout."""

    def __init__(self, response: Any, sock: socket.socket, timeout: float | None) -> None:
        self._response = response  # http.client.HTTPResponse
        self._sock = sock
        self._timeout = timeout
        self._buffer_drained = False
        self._blocking = False

    @classmethod
    def open(cls, raw: Any) -> BlockBody | None:
        """A block reader for the urllib3 response `raw`, or None when it does not apply."""
        response = getattr(raw, "_fp", None)
        fp = getattr(response, "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
        if (
            # A plain TCP socket only: under TLS (an `ssl.SSLSocket`, a subclass) the socket
            # carries ciphertext, and `recv` refuses flags.
            type(sock) is not socket.socket
            or getattr(response, "chunked", True)
            or not isinstance(getattr(response, "length", None), int)
            or (getattr(raw, "decode_content", False) and _content_encoding(raw))
            or not callable(getattr(fp, "read1", None))
        ):
            return None
        return cls(response, sock, sock.gettimeout())

    def __enter__(self) -> BlockBody:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._blocking:
            self._blocking = False
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0))
                self._sock.settimeout(self._timeout)
            except OSError:
                pass  # the socket is gone (closed after an error): nothing to restore

    @property
    def remaining(self) -> int:
        length: int = self._response.length or 0
        return length

    def read(self, amt: int | None = None) -> bytes:
        """The next `min(amt, remaining)` bytes of the body (all of it without `amt`; b"" at
        its end). A body that ends early raises urllib3's `ProtocolError`, a stalled one
        `TimeoutError` after the read timeout (both are retried as transient)."""
        want = self.remaining if amt is None else min(amt, self.remaining)
        if want <= 0:
            if self.remaining == 0:
                self._finish()
            return b""
        head = b""
        if not self._buffer_drained:
            # http.client's buffered reader may hold the start of the body (it read past the
            # headers): take that first, so that nothing is read twice or skipped.
            head = self._response.fp.read1(want)
            if len(head) == want or not head:
                return self._took(head, want)
            self._buffer_drained = True
        if not self._blocking:
            self._blocking = True  # first: a failure half-way is still undone on exit
            self._sock.settimeout(None)
            if self._timeout:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(self._timeout))
        try:
            data = self._sock.recv(want - len(head), socket.MSG_WAITALL)
            if head:
                data = head + data
            while 0 < len(data) < want:  # a signal ended the wait early: wait for the rest
                more = self._sock.recv(want - len(data), socket.MSG_WAITALL)
                if not more:
                    break
                data += more
        except BlockingIOError as exc:  # SO_RCVTIMEO expired
            raise TimeoutError(
                f"read timed out: no data for {self._timeout} s in the middle of a body"
            ) from exc
        return self._took(data, want)

    def _took(self, data: bytes, want: int) -> bytes:
        if len(data) < want:
            missing = self.remaining - len(data)
            raise urllib3.exceptions.ProtocolError(
                f"the connection closed {missing} bytes before the end of the body",
                urllib3.exceptions.IncompleteRead(len(data), missing),
            )
        self._response.length -= len(data)
        if self._response.length == 0:
            self._finish()
        return data

    def _finish(self) -> None:
        """Mark http.client's response as read to its end, as its own `read` does, so that
        the connection can serve the next request."""
        if self._response.fp is not None:
            self._response._close_conn()


def _content_encoding(raw: Any) -> str:
    headers = getattr(raw, "headers", None)
    return str(headers.get("Content-Encoding", "")) if headers is not None else ""


def timeval(seconds: float) -> bytes:
    """`seconds` as the `struct timeval` of SO_RCVTIMEO / SO_SNDTIMEO."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
