"""A local GCS JSON API server for tests: `gcp-storage-emulator`, in memory, in a thread of this
process on a free 127.0.0.1 port, with the gaps that matter to wsfuse patched in-process.

    with GCSTestServer() as server:
        server.create_bucket("b")
        backend = GCSBackend("b", BackendOptions(endpoint_url=server.endpoint_url))
        ...
        assert server.count("GET", key="k") == 1

The emulator is used as a library: its `Storage` and its request/response classes and
handler functions, served by our own HTTP server and router (`gcp_storage_emulator.server` is
not modified, so nothing else in the process is affected). What the stock emulator gets wrong,
and what this module does about it:

- objects are stored under a path built from the *whole* key (`a/b/` and `a/b`, `a//b`, `../x`
  used to collide or crash its path normalisation): `_PatchedStorage._object_path`;
- every metadata write re-serialised the whole bucket index to JSON (quadratic): disabled;
- generations were `time.time_ns()` and could repeat: strictly increasing now;
- preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`, `ifMetagenerationMatch`,
  `ifMetagenerationNotMatch`, `ifSource*`) were ignored: checked on every read and write
  (412, or 304 for a read's `...NotMatch`), like GCS;
- LIST ignored `maxResults` / `pageToken` (one page of everything): paginated, counting
  objects and prefixes together as GCS does, with `startOffset` / `endOffset`;
- a range starting at or after the end answered 206 with an empty body: 416, as GCS does;
  downloads also send `x-goog-generation` and friends;
- compose did not check its 32-source limit, source generations or preconditions, did not
  count components and ignored `deleteSourceObjects`: all implemented;
- copy / rewrite ignored the destination resource in the request body (so metadata could
  not be replaced): fields given there override the source's, as GCS does;
- PATCH replaced `metadata` wholesale: merged, a `null` value deleting a key, as GCS does;
- deletes kept soft-deleted copies (memory grows): deletes are hard;
- a handler exception dropped the connection: it is a 500 with a JSON error now.

Nothing known is left unpatched, so `capabilities` declares everything supported; the flags
stay so that a future emulator regression can be declared with a reason instead of failing.

Not emulated: authentication (inject 401/403 with `fail_next`), object versioning, the XML
API (wsfuse uses the JSON API only).

Requests are counted by kind (`GET` media download, `HEAD` metadata read, `PUT` upload
start, `UPLOAD` resumable upload data, `LIST`, `COMPOSE`, `COPY`, `PATCH`, `DELETE`,
`BUCKET`, `OTHER`) and key (the object; the destination for COPY and COMPOSE; the prefix for
LIST). `fail_next` injects HTTP errors (e.g. 503) for retry tests; `latency` emulates the
time to first byte (each connection has its own thread, so parallel requests overlap) and
`with server.no_latency():` exempts a test's own setup.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator.exceptions import BadRequest as EmuBadRequest
from gcp_storage_emulator.exceptions import Conflict as EmuConflict
from gcp_storage_emulator.exceptions import NotFound as EmuNotFound
from gcp_storage_emulator.handlers import buckets as emu_buckets
from gcp_storage_emulator.handlers import objects as emu_objects
from gcp_storage_emulator.storage import Storage

from wsfuse.backends.base import Capabilities
from wsfuse.testing.latency import EmulatesLatency, LatencyEmulator

log = logging.getLogger(__name__)

Handler = Callable[[Any, Any, Any], None]  # emulator handler: (request, response, storage)

# GCS accepts at most 32 source objects per compose request.
MAX_COMPOSE_SOURCES = 32
# GCS answers at most 1,000 entries per LIST page.
MAX_LIST_PAGE = 1000

_WRITABLE_FIELDS: tuple[str, ...] = tuple(emu_objects._WRITABLE_FIELDS)
_CHECKSUM_FIELDS = ("md5Hash", "crc32c")


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(response: Any, status: HTTPStatus, message: str, reason: str = "") -> None:
    response.status = status
    response.json(
        {
            "error": {
                "code": status.value,
                "message": message,
                "errors": [
                    {"domain": "global", "reason": reason or status.phrase, "message": message}
                ],
            }
        }
    )


class _PatchedStorage(Storage):  # type: ignore[misc]
    """The emulator's in-memory store with whole-key paths, unique generations, hard deletes
    and no per-write re-serialisation of the index."""

    def __init__(self) -> None:
        self._generation_lock = threading.Lock()
        self._last_generation = 0
        super().__init__(use_memory_fs=True, data_dir="/")

    def _write_config_to_file(self) -> None:
        """In memory, the index lives in `self.objects`; re-serialising it per write is O(n)."""

    def _object_path(self, bucket_name: str, file_name: str) -> str:
        # One flat file per key: "o" + hex of the UTF-8 name never contains "/", "." or "..".
        return f"{bucket_name}/o{file_name.encode('utf-8').hex()}"

    def next_generation(self) -> int:
        with self._generation_lock:
            self._last_generation = max(self._last_generation + 1, time.time_ns() // 1000)
            return self._last_generation

    def create_file(
        self,
        bucket_name: str,
        file_name: str,
        content: bytes,
        file_obj: dict[str, Any],
        file_id: str | None = None,
    ) -> None:
        generation = self.next_generation()
        file_obj["generation"] = str(generation)
        file_obj["id"] = f"{bucket_name}/{file_name}/{generation}"
        file_obj["metageneration"] = "1"
        file_obj["size"] = str(len(content))
        super().create_file(bucket_name, file_name, content, file_obj, file_id)

    def delete_file(self, bucket_name: str, file_name: str) -> None:
        if bucket_name not in self.buckets:
            raise EmuNotFound(f"no bucket {bucket_name!r}")
        self._hard_delete_file(bucket_name, file_name)

    def current(self, bucket_name: str, file_name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.objects.get(bucket_name, {}).get(file_name)
        return obj


# ----------------------------------------------------------------------------- preconditions


def _int_param(query: Mapping[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError as exc:
        raise EmuBadRequest(f"{name} must be an integer, not {values[0]!r}") from exc


def _precondition_status(
    obj: Mapping[str, Any] | None,
    query: Mapping[str, list[str]],
    *,
    source: bool = False,
    read: bool = False,
) -> HTTPStatus | None:
    """The status a GCS request with these `if*` query parameters gets for `obj` (its current
    version, or None when missing), or None when every precondition holds."""
    p = "ifSource" if source else "if"
    generation = int(obj["generation"]) if obj is not None else 0
    metageneration = int(obj["metageneration"]) if obj is not None else None
    match = _int_param(query, f"{p}GenerationMatch")
    if match is not None and match != generation:
        return HTTPStatus.PRECONDITION_FAILED
    not_match = _int_param(query, f"{p}GenerationNotMatch")
    if not_match is not None and not_match == generation:
        return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    meta_match = _int_param(query, f"{p}MetagenerationMatch")
    if meta_match is not None and meta_match != metageneration:
        return HTTPStatus.PRECONDITION_FAILED
    meta_not_match = _int_param(query, f"{p}MetagenerationNotMatch")
    if meta_not_match is not None and meta_not_match == metageneration:
        return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    return None


def _refuse(response: Any, status: HTTPStatus) -> None:
    if status == HTTPStatus.NOT_MODIFIED:
        response.status = status
        return
    _error(
        response,
        status,
        "At least one of the pre-conditions you specified did not hold.",
        "conditionNotMet",
    )


# ----------------------------------------------------------------------------- handlers


def _read_object(request: Any, response: Any, storage: _PatchedStorage) -> dict[str, Any] | None:
    """The object a read names, after its preconditions; None when an answer was written."""
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    obj = storage.current(bucket, name)
    if obj is None:
        _error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}", "notFound")
        return None
    wanted = _int_param(request.query, "generation")
    if wanted is not None and wanted != int(obj["generation"]):
        _error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}#{wanted}")
        return None
    status = _precondition_status(obj, request.query, read=True)
    if status is not None:
        _refuse(response, status)
        return None
    return obj


_RANGE = re.compile(r"^\s*bytes=(?P<start>\d*)-(?P<end>\d*)\s*$")


def _download(request: Any, response: Any, storage: _PatchedStorage) -> None:
    obj = _read_object(request, response, storage)
    if obj is None:
        return
    content: bytes = storage.get_file(request.params["bucket_name"], request.params["object_id"])
    size = len(content)
    header = request.get_header("range", None)
    match = _RANGE.fullmatch(header) if header else None
    if match is not None and (match["start"] or match["end"]):
        if match["start"]:
            start = int(match["start"])
            end = min(size - 1, int(match["end"])) if match["end"] else size - 1
        else:  # suffix range: the last N bytes
            start = max(0, size - int(match["end"]))
            end = size - 1
        if start >= size:
            response["Content-Range"] = f"bytes */{size}"
            _error(
                response,
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                "The requested range cannot be satisfied.",
                "requestedRangeNotSatisfiable",
            )
            return
        content = content[start : end + 1]
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response.status = HTTPStatus.PARTIAL_CONTENT
    else:
        response["X-Goog-Hash"] = f"crc32c={obj['crc32c']},md5={obj['md5Hash']}"
    response["X-Goog-Generation"] = str(obj["generation"])
    response["X-Goog-Metageneration"] = str(obj["metageneration"])
    response["X-Goog-Stored-Content-Length"] = str(size)
    for key, value in (obj.get("metadata") or {}).items():
        if value is not None:
            response[f"x-goog-meta-{key}"] = str(value)
    response.write_file(content, content_type=obj.get("contentType") or "application/octet-stream")


def _get(request: Any, response: Any, storage: _PatchedStorage) -> None:
    if request.query.get("alt", [""])[0] == "media":
        _download(request, response, storage)
        return
    obj = _read_object(request, response, storage)
    if obj is not None:
        response.json(obj)


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise EmuBadRequest(f"invalid pageToken {token!r}") from exc


def _list(request: Any, response: Any, storage: _PatchedStorage) -> None:
    query = request.query

    def param(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    prefix, delimiter = param("prefix"), param("delimiter")
    max_results = _int_param(query, "maxResults") or MAX_LIST_PAGE
    max_results = max(1, min(max_results, MAX_LIST_PAGE))
    token = param("pageToken")
    after = _decode_token(token) if token else None
    start, end = param("startOffset"), param("endOffset")
    files, prefixes = storage.get_file_list(
        request.params["bucket_name"], prefix, delimiter, param("matchGlob")
    )
    entries: list[tuple[str, dict[str, Any] | None]] = [(f["name"], f) for f in files]
    entries += [(p, None) for p in prefixes]
    entries.sort(key=lambda e: e[0].encode("utf-8"))
    selected = [
        e
        for e in entries
        if (after is None or e[0] > after)
        and (start is None or e[0] >= start)
        and (end is None or e[0] < end)
    ]
    page, rest = selected[:max_results], selected[max_results:]
    body: dict[str, Any] = {
        "kind": "storage#objects",
        "items": [obj for _, obj in page if obj is not None],
        "prefixes": [name for name, obj in page if obj is None],
    }
    if rest:
        body["nextPageToken"] = _encode_token(page[-1][0])
    response.json(body)


def _upload_target(request: Any, storage: _PatchedStorage) -> str | None:
    """The object name an upload request writes."""
    if "upload_id" in request.query:
        try:
            obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
        except EmuNotFound:
            return None
        return str(obj["name"])
    if "name" in request.query:
        return str(request.query["name"][0])
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta", data)
        if isinstance(meta, dict) and meta.get("name"):
            return str(meta["name"])
    return None


def _make_upload_handler(original: Handler) -> Handler:
    def handler(request: Any, response: Any, storage: _PatchedStorage) -> None:
        name = _upload_target(request, storage)
        if name is not None:
            status = _precondition_status(
                storage.current(request.params["bucket_name"], name), request.query
            )
            if status is not None:
                _refuse(response, status)
                return
        original(request, response, storage)

    return handler


def _delete(request: Any, response: Any, storage: _PatchedStorage) -> None:
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    obj = storage.current(bucket, name)
    if obj is None:
        _error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}", "notFound")
        return
    status = _precondition_status(obj, request.query)
    if status is not None:
        _refuse(response, status)
        return
    storage.delete_file(bucket, name)
    response.status = HTTPStatus.NO_CONTENT


def _patch(request: Any, response: Any, storage: _PatchedStorage) -> None:
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    obj = storage.current(bucket, name)
    if obj is None:
        _error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}", "notFound")
        return
    status = _precondition_status(obj, request.query)
    if status is not None:
        _refuse(response, status)
        return
    body = request.data if isinstance(request.data, dict) else {}
    for field in _WRITABLE_FIELDS:
        if field not in body or field in _CHECKSUM_FIELDS:
            continue
        value = body[field]
        if field == "metadata":
            merged = dict(obj.get("metadata") or {})
            for k, v in (value or {}).items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = str(v)
            obj["metadata"] = merged if value is not None else {}
        elif value is None:
            obj.pop(field, None)
        else:
            obj[field] = value
    obj["metageneration"] = str(int(obj["metageneration"]) + 1)
    obj["updated"] = _now_rfc3339()
    response.json(obj)


def _destination_properties(source: Mapping[str, Any], body: Any) -> dict[str, Any]:
    """The writable fields of a copy's destination: the source's, overridden field by field by
    the destination resource in the request body (as GCS copy / rewrite do)."""
    props = {f: source[f] for f in _WRITABLE_FIELDS if f in source and f not in _CHECKSUM_FIELDS}
    if isinstance(body, dict):
        for f in _WRITABLE_FIELDS:
            if f in body and body[f] is not None and f not in _CHECKSUM_FIELDS:
                props[f] = body[f]
    return props


def _make_copy_handler(rewrite: bool) -> Handler:
    def handler(request: Any, response: Any, storage: _PatchedStorage) -> None:
        params, query = request.params, request.query
        src_bucket, src_name = params["bucket_name"], params["object_id"]
        dst_bucket, dst_name = params["dest_bucket_name"], params["dest_object_id"]
        source = storage.current(src_bucket, src_name)
        wanted = _int_param(query, "sourceGeneration")
        if source is None or (wanted is not None and wanted != int(source["generation"])):
            _error(response, HTTPStatus.NOT_FOUND, f"No such object: {src_bucket}/{src_name}")
            return
        if dst_bucket not in storage.buckets:
            _error(response, HTTPStatus.NOT_FOUND, f"No such bucket: {dst_bucket}")
            return
        status = _precondition_status(source, query, source=True) or _precondition_status(
            storage.current(dst_bucket, dst_name), query
        )
        if status is not None:
            _refuse(response, status)
            return
        content: bytes = storage.get_file(src_bucket, src_name)
        props = _destination_properties(source, request.data)
        dest = emu_objects._make_object_resource(
            request.base_url,
            dst_bucket,
            dst_name,
            props.get("contentType") or source.get("contentType"),
            str(len(content)),
            props,
        )
        if "metadata" in props:
            dest["metadata"] = dict(props["metadata"])
        dest = emu_objects._checksums(content, dest)
        storage.create_file(dst_bucket, dst_name, content, dest)
        if not rewrite:
            response.json(dest)
            return
        size = str(len(content))
        response.json(
            {
                "kind": "storage#rewriteResponse",
                "totalBytesRewritten": size,
                "objectSize": size,
                "done": True,
                "resource": dest,
            }
        )

    return handler


def _compose(request: Any, response: Any, storage: _PatchedStorage) -> None:
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    body = request.data if isinstance(request.data, dict) else {}
    sources = body.get("sourceObjects") or []
    if not 1 <= len(sources) <= MAX_COMPOSE_SOURCES:
        _error(
            response,
            HTTPStatus.BAD_REQUEST,
            f"The number of source objects ({len(sources)}) must be between 1 and "
            f"{MAX_COMPOSE_SOURCES}.",
            "invalid",
        )
        return
    status = _precondition_status(storage.current(bucket, name), request.query)
    if status is not None:
        _refuse(response, status)
        return
    chunks: list[bytes] = []
    components = 0
    first: dict[str, Any] | None = None
    for src in sources:
        obj = storage.current(bucket, src.get("name", ""))
        generation = src.get("generation")
        if obj is None or (generation is not None and int(generation) != int(obj["generation"])):
            _error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{src.get('name')}")
            return
        precondition = (src.get("objectPreconditions") or {}).get("ifGenerationMatch")
        if precondition is not None and int(precondition) != int(obj["generation"]):
            _refuse(response, HTTPStatus.PRECONDITION_FAILED)
            return
        first = first or obj
        components += int(obj.get("componentCount") or 1)
        chunks.append(storage.get_file(bucket, obj["name"]))
    content = b"".join(chunks)
    destination = body.get("destination") or {}
    props = {
        f: destination[f]
        for f in _WRITABLE_FIELDS
        if f in destination and destination[f] is not None and f not in _CHECKSUM_FIELDS
    }
    assert first is not None
    dest = emu_objects._make_object_resource(
        request.base_url,
        bucket,
        name,
        props.get("contentType") or first.get("contentType"),
        str(len(content)),
        props,
    )
    if "metadata" in props:
        dest["metadata"] = dict(props["metadata"])
    dest["componentCount"] = components
    dest = emu_objects._checksums(content, dest)
    dest.pop("md5Hash", None)  # composite objects have no MD5, as on GCS
    storage.create_file(bucket, name, content, dest)
    if body.get("deleteSourceObjects"):
        for src_name in {s["name"] for s in sources} - {name}:
            if storage.current(bucket, src_name) is not None:
                storage.delete_file(bucket, src_name)
    response.json(dest)


# ----------------------------------------------------------------------------- requests


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


class _Request(emu_server.Request):  # type: ignore[misc]
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


# ----------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True)
class _Route:
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


_REPLACEMENTS: dict[Handler, Handler] = {
    emu_objects.get: _get,
    emu_objects.download: _download,
    emu_objects.ls: _list,
    emu_objects.insert: _make_upload_handler(emu_objects.insert),
    emu_objects.upload_partial: _make_upload_handler(emu_objects.upload_partial),
    emu_objects.compose: _compose,
    emu_objects.copy: _make_copy_handler(rewrite=False),
    emu_objects.rewrite: _make_copy_handler(rewrite=True),
    emu_objects.delete: _delete,
    emu_objects.patch: _patch,
}


def _routes() -> list[_Route]:
    routes = []
    for regex, methods in emu_server.HANDLERS:
        table = {m: (_kind_of(fn), _REPLACEMENTS.get(fn, fn)) for m, fn in methods.items()}
        routes.append(_Route(re.compile(regex), table))
    return routes


@dataclass(slots=True)
class _Fault:
    kind: str
    status: HTTPStatus
    remaining: int
    key: str | None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like GCS
    timeout = 30  # an idle keep-alive connection is closed after this long
    owner: GCSTestServer  # set on the per-server subclass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._track(self.connection, add=False)

    def _handle(self) -> None:
        self.owner._dispatch(self, self.command)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gcs emulator: " + format, *args)


class GCSTestServer(EmulatesLatency):
    """The patched emulator on `endpoint_url`; a context manager (start / stop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0) -> None:
        self._host = host
        self._port = port
        #: the emulated time-to-first-byte (`latency`, `no_latency()`, `peak_overlap`)
        self.delays = LatencyEmulator(latency)
        self.storage = _PatchedStorage()
        self._lock = threading.RLock()  # the emulator's storage is not thread-safe
        self._routes = _routes()
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._faults: list[_Fault] = []
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: what this emulator can do (the contract suite skips what it cannot, with the reason)
        self.capabilities = Capabilities()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GCSTestServer:
        handler = type("_BoundHandler", (_RequestHandler,), {"owner": self})
        httpd = ThreadingHTTPServer((self._host, self._port), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"gcs-emulator-{self.port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake keep-alive handler threads so they close their sockets
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GCSTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the GCS test server is not running")
        return int(self._httpd.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------------------ test helpers

    def create_bucket(self, name: str) -> None:
        with self._lock:
            bucket = emu_buckets.create_bucket(name, self.storage)
            if bucket:
                bucket["softDeletePolicy"] = {"retentionDurationSeconds": "0"}

    def object_names(self, bucket: str) -> list[str]:
        """Every object in `bucket`, temporaries included, sorted."""
        with self._lock:
            return sorted(self.storage.objects.get(bucket, {}))

    def count(self, kind: str, key: str | None = None) -> int:
        """Requests of `kind` (GET, HEAD, PUT, UPLOAD, LIST, COMPOSE, COPY, PATCH, DELETE,
        BUCKET, OTHER) since the last `reset_stats`, on `key` if given."""
        with self._lock:
            if key is not None:
                return self._counts[(kind, key)]
            return sum(n for (k, _), n in self._counts.items() if k == kind)

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()

    def fail_next(
        self, kind: str, *, status: int = 503, times: int = 1, key: str | None = None
    ) -> None:
        """Answer the next `times` requests of `kind` (on `key`, if given) with `status`."""
        with self._lock:
            self._faults.append(_Fault(kind, HTTPStatus(status), times, key))

    # ------------------------------------------------------------------ serving

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        method = handler.headers.get("x-http-method-override") or method
        request = _Request(handler, method)
        response = emu_server.Response(handler)
        try:
            # Read the body first, whatever the route: an unread body would be taken for the
            # next request on this keep-alive connection.
            request.data  # noqa: B018 - reads and caches the body
            self._route(request, response, method)
        except EmuBadRequest as exc:
            _error(response, HTTPStatus.BAD_REQUEST, str(exc), "invalid")
        except Exception as exc:
            log.exception("gcs emulator: %s %s failed", method, request.path)
            _error(response, HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
        response.close()

    def _route(self, request: Any, response: Any, method: str) -> None:
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            request.set_match(match)
            if method not in route.methods:
                break
            kind, fn = route.methods[method]
            if kind == "HEAD" and request.query.get("alt", [""])[0] == "media":
                kind = "GET"
            params = request.params or {}
            key = params.get("dest_object_id") or params.get("object_id")
            if kind == "LIST":
                key = request.query.get("prefix", [""])[0]
            if kind in ("PUT", "UPLOAD") and key is None:
                with self._lock:
                    key = _upload_target(request, self.storage)
            self.delays.delay()  # outside the lock: parallel requests overlap
            with self._lock:
                self._counts[(kind, key)] += 1
                fault = self._take_fault(kind, key)
                if fault is not None:
                    _error(response, fault, f"injected {fault.value} {fault.phrase}")
                    return
                try:
                    fn(request, response, self.storage)
                except EmuNotFound:
                    _error(response, HTTPStatus.NOT_FOUND, "Not found", "notFound")
                except EmuConflict as exc:
                    _error(response, HTTPStatus.BAD_REQUEST, str(exc), "invalid")
            return
        _error(
            response,
            HTTPStatus.NOT_IMPLEMENTED,
            f"{method} {request.path} is not implemented by the emulator",
        )

    def _take_fault(self, kind: str, key: str | None) -> HTTPStatus | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.kind == kind and fault.key in (None, key):
                fault.remaining -= 1
                return fault.status
        return None


__all__ = ["GCSTestServer"]
