"""What the GCS test server knows of a request: its body (the emulator's request, with a fast
path for `multipart/related` uploads), its route (the emulator's URL patterns) and its kind
(`GET` media download, `HEAD` metadata read, `PUT` upload start, `UPLOAD` resumable upload data,
`LIST`, `COMPOSE`, `COPY`, `PATCH`, `DELETE`, `BUCKET`, `OTHER`), and which handler answers it:
the emulator's, or the one `gcsanswers` gives instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator.exceptions import BadRequest as EmuBadRequest
from gcp_storage_emulator.handlers import buckets as emu_buckets
from gcp_storage_emulator.handlers import objects as emu_objects

from wsfuse.testing.gcsanswers import REPLACEMENTS, Handler


def _parse_related(raw: bytes, content_type: str) -> dict[str, Any]:
    """A `multipart/related` upload body (JSON resource, then the media), split by hand: the
    emulator's `email` parser takes ~30 ms per MiB of binary media."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise EmuBadRequest("multipart upload without a boundary")
    delimiter = b"--" + match[1].encode("ascii")
    pieces = raw.split(delimiter)
    if len(pieces) < 4 or not pieces[-1].startswith(b"--"):
        raise EmuBadRequest("malformed multipart upload body")
    parsed: list[tuple[str, bytes]] = []
    for piece in pieces[1:3]:
        head, sep, body = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep or not body.endswith(b"\r\n"):
            raise EmuBadRequest("malformed multipart upload part")
        ctype = "application/octet-stream"
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = value.strip().split(";")[0]
        parsed.append((ctype, body[:-2]))
    return {"meta": json.loads(parsed[0][1]), "content": parsed[1][1], "content-type": parsed[1][0]}


class Request(emu_server.Request):  # type: ignore[misc]
    """The emulator's request, with a fast path for `multipart/related` upload bodies."""

    _data: Any

    @property
    def data(self) -> Any:
        if self._data is emu_server._UNSET:
            content_type = self.get_header("Content-Type") or ""
            if content_type.startswith("multipart/related"):
                handler = self._request_handler
                raw = emu_server._decode_raw_data(emu_server._read_raw_data(handler), handler)
                self._data = _parse_related(raw, content_type) if raw else None
            else:
                self._data = emu_server._read_data(self._request_handler, self._query)
        return self._data


@dataclass(frozen=True, slots=True)
class Route:
    """One of the emulator's URL patterns: per method, the request kind and its handler."""

    pattern: re.Pattern[str]
    methods: Mapping[str, tuple[str, Handler]]


def _kind_of(fn: Handler) -> str:
    return {
        emu_objects.get: "HEAD",  # a media GET through objects.get is recounted as GET
        emu_objects.download: "GET",
        emu_objects.ls: "LIST",
        emu_objects.insert: "PUT",
        emu_objects.upload_partial: "UPLOAD",
        emu_objects.xml_upload: "PUT",
        emu_objects.compose: "COMPOSE",
        emu_objects.copy: "COPY",
        emu_objects.rewrite: "COPY",
        emu_objects.delete: "DELETE",
        emu_objects.patch: "PATCH",
    }.get(fn, "BUCKET" if fn.__module__ == emu_buckets.__name__ else "OTHER")


def routes() -> list[Route]:
    """The emulator's routes, each handler counted by its kind and replaced by ours where
    `gcsanswers` gives the answer."""
    found = []
    for regex, methods in emu_server.HANDLERS:
        table = {m: (_kind_of(fn), REPLACEMENTS.get(fn, fn)) for m, fn in methods.items()}
        found.append(Route(re.compile(regex), table))
    return found
