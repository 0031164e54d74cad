"""The answers the GCS test server gives itself instead of the emulator's handlers
(`REPLACEMENTS`, keyed by the handler each stands in for): reads and downloads, listings,
uploads, deletes, PATCH, copy / rewrite and compose as GCS answers them, preconditions
included, and GCS's JSON error body (`error`). What each fixes in the stock emulator is listed
in `gcsserver`'s docstring.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from gcp_storage_emulator.exceptions import BadRequest as EmuBadRequest
from gcp_storage_emulator.exceptions import NotFound as EmuNotFound
from gcp_storage_emulator.handlers import objects as emu_objects

from wsfuse.testing.gcsstorage import PatchedStorage

Handler = Callable[[Any, Any, Any], None]  # emulator handler: (request, response, storage)

# GCS accepts at most 32 source objects per compose request.
MAX_COMPOSE_SOURCES = 32
# GCS answers at most 1,000 entries per LIST page.
MAX_LIST_PAGE = 1000

_WRITABLE_FIELDS: tuple[str, ...] = tuple(emu_objects._WRITABLE_FIELDS)
_CHECKSUM_FIELDS = ("md5Hash", "crc32c")


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(response: Any, status: HTTPStatus, message: str, reason: str = "") -> None:
    """Answer `status` with GCS's JSON error body."""
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
    error(
        response,
        status,
        "At least one of the pre-conditions you specified did not hold.",
        "conditionNotMet",
    )


# ----------------------------------------------------------------------------- handlers


def _read_object(request: Any, response: Any, storage: PatchedStorage) -> dict[str, Any] | None:
    """The object a read names, after its preconditions; None when an answer was written."""
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    obj = storage.current(bucket, name)
    if obj is None:
        error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}", "notFound")
        return None
    wanted = _int_param(request.query, "generation")
    if wanted is not None and wanted != int(obj["generation"]):
        error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}#{wanted}")
        return None
    status = _precondition_status(obj, request.query, read=True)
    if status is not None:
        _refuse(response, status)
        return None
    return obj


_RANGE = re.compile(r"^\s*bytes=(?P<start>\d*)-(?P<end>\d*)\s*$")


def _download(request: Any, response: Any, storage: PatchedStorage) -> None:
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
            error(
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


def _get(request: Any, response: Any, storage: PatchedStorage) -> None:
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


def _list(request: Any, response: Any, storage: PatchedStorage) -> None:
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


def upload_target(request: Any, storage: PatchedStorage) -> str | None:
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
    def handler(request: Any, response: Any, storage: PatchedStorage) -> None:
        name = upload_target(request, storage)
        if name is not None:
            status = _precondition_status(
                storage.current(request.params["bucket_name"], name), request.query
            )
            if status is not None:
                _refuse(response, status)
                return
        original(request, response, storage)

    return handler


def _existing(request: Any, response: Any, storage: PatchedStorage) -> dict[str, Any] | None:
    """The object a request names, if it exists and the request's preconditions hold; else
    None, with the 404 or the refusal already answered."""
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    obj = storage.current(bucket, name)
    if obj is None:
        error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{name}", "notFound")
        return None
    status = _precondition_status(obj, request.query)
    if status is not None:
        _refuse(response, status)
        return None
    return obj


def _delete(request: Any, response: Any, storage: PatchedStorage) -> None:
    if _existing(request, response, storage) is None:
        return
    storage.delete_file(request.params["bucket_name"], request.params["object_id"])
    response.status = HTTPStatus.NO_CONTENT


def _patch(request: Any, response: Any, storage: PatchedStorage) -> None:
    obj = _existing(request, response, storage)
    if obj is None:
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


def _new_resource(
    request: Any,
    bucket: str,
    name: str,
    content: bytes,
    props: dict[str, Any],
    like: Mapping[str, Any],
) -> dict[str, Any]:
    """The resource of an object written from `content` with the writable fields `props`
    (the content type falls back to `like`'s), checksums included: a copy's or a compose's
    destination."""
    dest = emu_objects._make_object_resource(
        request.base_url,
        bucket,
        name,
        props.get("contentType") or like.get("contentType"),
        str(len(content)),
        props,
    )
    if "metadata" in props:
        dest["metadata"] = dict(props["metadata"])
    resource: dict[str, Any] = emu_objects._checksums(content, dest)
    return resource


def _make_copy_handler(rewrite: bool) -> Handler:
    def handler(request: Any, response: Any, storage: PatchedStorage) -> None:
        params, query = request.params, request.query
        src_bucket, src_name = params["bucket_name"], params["object_id"]
        dst_bucket, dst_name = params["dest_bucket_name"], params["dest_object_id"]
        source = storage.current(src_bucket, src_name)
        wanted = _int_param(query, "sourceGeneration")
        if source is None or (wanted is not None and wanted != int(source["generation"])):
            error(response, HTTPStatus.NOT_FOUND, f"No such object: {src_bucket}/{src_name}")
            return
        if dst_bucket not in storage.buckets:
            error(response, HTTPStatus.NOT_FOUND, f"No such bucket: {dst_bucket}")
            return
        status = _precondition_status(source, query, source=True) or _precondition_status(
            storage.current(dst_bucket, dst_name), query
        )
        if status is not None:
            _refuse(response, status)
            return
        content: bytes = storage.get_file(src_bucket, src_name)
        props = _destination_properties(source, request.data)
        dest = _new_resource(request, dst_bucket, dst_name, content, props, source)
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


def _compose(request: Any, response: Any, storage: PatchedStorage) -> None:
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    body = request.data if isinstance(request.data, dict) else {}
    sources = body.get("sourceObjects") or []
    if not 1 <= len(sources) <= MAX_COMPOSE_SOURCES:
        error(
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
            error(response, HTTPStatus.NOT_FOUND, f"No such object: {bucket}/{src.get('name')}")
            return
        precondition = (src.get("objectPreconditions") or {}).get("ifGenerationMatch")
        if precondition is not None and int(precondition) != int(obj["generation"]):
            _refuse(response, HTTPStatus.PRECONDITION_FAILED)
            return
        first = first or obj
        components += int(obj.get("componentCount") or 1)
        chunks.append(storage.get_file(bucket, obj["name"]))
    content = b"".join(chunks)
    props = _destination_properties({}, body.get("destination") or {})
    assert first is not None
    dest = _new_resource(request, bucket, name, content, props, first)
    dest["componentCount"] = components
    dest.pop("md5Hash", None)  # composite objects have no MD5, as on GCS
    storage.create_file(bucket, name, content, dest)
    if body.get("deleteSourceObjects"):
        for src_name in {s["name"] for s in sources} - {name}:
            if storage.current(bucket, src_name) is not None:
                storage.delete_file(bucket, src_name)
    response.json(dest)


#: The emulator's handlers this module answers for, and the answer given instead.
REPLACEMENTS: dict[Handler, Handler] = {
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
