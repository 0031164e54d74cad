"""Multipart uploads for the GCS backend: parallel composite uploads.

The JSON API has no S3-style multipart upload. The two candidates were:

- a *resumable upload*: one session per object, bytes sent strictly in order; parts could
  not be uploaded in parallel or out of order, so the uploader would need a GCS-only path;
- a *parallel composite upload* (chosen): every part is an ordinary temporary object, uploaded
  in parallel and in any order by the same uploader as on S3, then `compose` concatenates them
  server-side (no bytes through us).

Layout, under the reserved prefix `UPLOAD_PREFIX` (`.wsfuse-uploads/`) at the bucket root:

- `.wsfuse-uploads/<upload_id>`: the manifest, written first (`ifGenerationMatch=0`): JSON with
  the target key and its user metadata; the target key is also in the manifest's custom
  metadata, so `list_multipart` is one paged LIST (crash recovery finds every open upload);
- `.wsfuse-uploads/<upload_id>/<part:05d>`: the parts; `L<level>-<index:05d>` there: the
  intermediate composites of a complete with more than 32 parts.

`complete_multipart` enforces S3's rules (ascending part numbers, every part but the last
at least 5 MiB: a violation raises `BackendError` and leaves the upload open), then composes:
GCS takes at most 32 sources per compose, so more parts are composed as a tree of fan-in 32
(`compose_plan`: 33 parts → 2 composes, 1,000 → 33, 10,000 → 323, the minimum; the groups
of one level run in parallel). Every source is pinned by `ifGenerationMatch` (its etag) and
deleted by the compose itself (`deleteSourceObjects`: a *hard* delete, so temporaries are not
kept and billed by soft delete or versioning, nor charged early deletion). The final compose
writes the target with its user metadata; then the manifest (and any leftover) is deleted.
A complete retried after a lost reply is recognised (the manifest is still there, every
source is gone, and the target has the expected size and component count) and succeeds.

Costs: a part is one upload request, plus one metadata GET of the manifest (a part uploaded
to an aborted or completed upload is deleted again and raises `NotFound`); a complete is one
manifest GET, ceil((n-1)/31) composes, one LIST and one DELETE. Compose is a class A
operation (priced like a PUT), so a multipart upload costs about twice the requests of S3's.

Temporaries live in the bucket: `abort_multipart` (and recovery, through `list_multipart`)
deletes them; keys under `.wsfuse-uploads/` are refused by `put` and hidden from `list`, and
the filesystem namespace must hide the prefix too (it is at the bucket root, outside any
`gs://bucket/prefix` mount). Credentials limited to a prefix cannot write temporaries there.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from google.api_core import exceptions as gexc

from wsfuse.backends.base import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    Backend,
    ObjectInfo,
    PartInfo,
    UploadInfo,
)
from wsfuse.backends.gcswire import (
    CONTENT_TYPE,
    UPLOAD_PREFIX,
    check_key,
    etag_generation,
    object_info,
)
from wsfuse.errors import BackendError, NotFound, PreconditionFailed

T = TypeVar("T")

#: GCS composes at most 32 source objects per request.
MAX_COMPOSE_SOURCES = 32
_MANIFEST_KEY = "wsfuse-upload-key"  # custom metadata of a manifest: the target key
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def compose_plan(count: int, fan_in: int = MAX_COMPOSE_SOURCES) -> list[list[range]]:
    """How to compose `count` sources with at most `fan_in` per compose: a list of levels, each
    a list of groups (consecutive ranges of indices into the previous level's results; level 0
    indexes the sources). The last level is one group, composed into the target; a group of
    one at an intermediate level is passed through without a request.

    Each level composes only full groups (the last composed one may be short when that is
    enough), and only as many as needed to bring the next level down to `fan_in` once that is
    possible, so the plan makes the fewest compose requests, ceil((count - 1) / (fan_in - 1)),
    and the groups of a level can run in parallel.
    """
    if count < 1:
        raise ValueError("nothing to compose")
    if fan_in < 2:
        raise ValueError("fan_in must be at least 2")
    levels: list[list[range]] = []
    n = count
    while n > fan_in:
        # Above fan_in², every full group; else just enough composes (each removes fan_in - 1
        # entries) to get down to fan_in.
        composed = n // fan_in if n > fan_in * fan_in else -(-(n - fan_in) // (fan_in - 1))
        groups = [range(i * fan_in, min((i + 1) * fan_in, n)) for i in range(composed)]
        groups += [range(i, i + 1) for i in range(groups[-1].stop, n)]
        levels.append(groups)
        n = len(groups)
    levels.append([range(n)])
    return levels


def compose_requests(count: int, fan_in: int = MAX_COMPOSE_SOURCES) -> int:
    """The number of compose requests `compose_plan(count, fan_in)` makes."""
    plan = compose_plan(count, fan_in)
    return sum(1 for level in plan[:-1] for group in level if len(group) > 1) + 1


@dataclass(frozen=True, slots=True)
class _Source:
    """A compose source: an object pinned to a generation, with its expected shape."""

    name: str
    generation: int
    size: int
    components: int


def _part_name(upload_id: str, number: int) -> str:
    return f"{UPLOAD_PREFIX}{upload_id}/{number:05d}"


def _manifest_name(upload_id: str) -> str:
    return f"{UPLOAD_PREFIX}{upload_id}"


class CompositeUploads(Backend):
    """The multipart calls of `GCSBackend`, its subclass, which provides the rest (clients,
    blobs, the internal pool, listing, error mapping); like any backend method, called from
    worker threads."""

    if TYPE_CHECKING:  # what uploading uses of GCSBackend beyond the Backend interface
        name: str
        compose_fan_in: int
        _timeout: tuple[float, float]

        def _bucket(self) -> Any: ...
        def _blob(self, key: str) -> Any: ...
        def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> builtins.list[Any]: ...
        def _errors(self, op: str, key: str | None) -> contextlib.AbstractContextManager[None]: ...
        def _list_all(
            self, prefix: str, *, delimiter: str | None
        ) -> Iterator[tuple[builtins.list[Any], builtins.list[str]]]: ...

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        check_key(key)
        upload_id = uuid.uuid4().hex
        manifest = self._blob(_manifest_name(upload_id))
        manifest.metadata = {_MANIFEST_KEY: key}
        body = json.dumps({"version": 1, "key": key, "metadata": dict(metadata or {})})
        with self._errors("create_multipart", key):
            manifest.upload_from_string(
                body.encode("utf-8"),
                content_type="application/json",
                if_generation_match=0,
                timeout=self._timeout,
                retry=None,
            )
        return upload_id

    def _no_upload(self, op: str, key: str, upload_id: str) -> NotFound:
        return NotFound(
            f"{op} {self.name}/{key}: no multipart upload {upload_id!r} (aborted or completed)",
            key=key,
        )

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        if not 1 <= number <= MAX_PARTS:
            raise BackendError(f"part number {number} is not in 1..{MAX_PARTS}", key=key)
        if len(data) > MAX_PART_SIZE:
            raise BackendError(f"part {number} is larger than {MAX_PART_SIZE} bytes", key=key)
        if not _UPLOAD_ID.match(upload_id):
            raise self._no_upload("upload_part", key, upload_id)
        part = self._blob(_part_name(upload_id, number))
        with self._errors("upload_part", key):
            part.upload_from_string(
                data, content_type=CONTENT_TYPE, timeout=self._timeout, retry=None
            )
        # Checked *after* the upload: an abort deletes the manifest before its last sweep of
        # the parts, so a part that lands after the sweep finds the manifest gone here.
        if self._manifest_key(upload_id) != key:
            with contextlib.suppress(Exception):
                part.delete(if_generation_match=part.generation, timeout=self._timeout, retry=None)
            raise self._no_upload("upload_part", key, upload_id)
        return PartInfo(number=number, etag=str(part.generation), size=len(data))

    def _manifest_key(self, upload_id: str) -> str | None:
        """The target key of an open upload (None if there is no such upload)."""
        manifest = self._blob(_manifest_name(upload_id))
        with self._errors("upload_part", _manifest_name(upload_id)):
            try:
                manifest.reload(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                return None
        key = (manifest.metadata or {}).get(_MANIFEST_KEY)
        return str(key) if key is not None else None

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        if not parts:
            raise BackendError("a multipart upload needs at least one part", key=key)
        for prev, part in itertools.pairwise(parts):
            if part.number <= prev.number:
                raise BackendError(
                    f"part numbers must ascend: {part.number} after {prev.number}", key=key
                )
            if prev.size < MIN_PART_SIZE:
                raise BackendError(
                    f"part {prev.number} is {prev.size} bytes: every part but the last must be "
                    f"at least {MIN_PART_SIZE} bytes",
                    key=key,
                )
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match exclude each other")
        target_generation: int | None = 0 if if_none_match else None
        if if_match is not None:
            target_generation = etag_generation(if_match)
            if target_generation is None:
                raise PreconditionFailed(
                    f"complete_multipart {self.name}/{key}: etag {if_match!r}", key=key
                )
        if not _UPLOAD_ID.match(upload_id):
            raise self._no_upload("complete_multipart", key, upload_id)
        manifest = self._read_manifest(key, upload_id)
        sources: builtins.list[_Source] = []
        for part in parts:
            generation = etag_generation(part.etag)
            if generation is None:
                raise BackendError(f"part {part.number}: bad etag {part.etag!r}", key=key)
            sources.append(_Source(_part_name(upload_id, part.number), generation, part.size, 1))
        for level, groups in enumerate(compose_plan(len(sources), self.compose_fan_in)[:-1]):
            build = functools.partial(self._compose_group, key, upload_id, level + 1, sources)
            sources = self._map(build, list(enumerate(groups)))
        metadata = {str(k): str(v) for k, v in dict(manifest.get("metadata") or {}).items()}
        blob = self._compose(
            key, upload_id, key, sources, metadata=metadata, if_generation_match=target_generation
        )
        self._delete_upload(upload_id, sweeps_after_manifest=0)
        return object_info(blob)

    def _compose_group(
        self,
        key: str,
        upload_id: str,
        level: int,
        previous: Sequence[_Source],
        job: tuple[int, range],
    ) -> _Source:
        """One intermediate composite of a complete (or a lone source, passed through)."""
        index, group = job
        members = [previous[i] for i in group]
        if len(members) == 1:
            return members[0]
        name = f"{UPLOAD_PREFIX}{upload_id}/L{level}-{index:05d}"
        blob = self._compose(key, upload_id, name, members, metadata=None)
        return _Source(name, int(blob.generation), int(blob.size), int(blob.component_count or 1))

    def _read_manifest(self, key: str, upload_id: str) -> dict[str, Any]:
        blob = self._blob(_manifest_name(upload_id))
        with self._errors("complete_multipart", key):
            try:
                raw = blob.download_as_bytes(
                    raw_download=True, checksum=None, timeout=self._timeout, retry=None
                )
            except gexc.NotFound:
                raise self._no_upload("complete_multipart", key, upload_id) from None
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"upload {upload_id}: unreadable manifest: {exc}", key=key) from exc
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            raise self._no_upload("complete_multipart", key, upload_id)
        return manifest

    def _compose(
        self,
        key: str,
        upload_id: str,
        target: str,
        sources: Sequence[_Source],
        *,
        metadata: Mapping[str, str] | None,
        if_generation_match: int | None = None,
    ) -> Any:
        """Compose `sources` (deleting them) into `target`, if its generation is
        `if_generation_match` (0: only create); recognise a compose that already happened (a
        retried complete) by the target's size and component count."""
        bucket = self._bucket()
        blob = bucket.blob(target)
        blob.content_type = CONTENT_TYPE
        if metadata is not None:
            blob.metadata = dict(metadata)
        with self._errors("complete_multipart", key):
            try:
                blob.compose(
                    [bucket.blob(s.name) for s in sources],
                    if_generation_match=if_generation_match,
                    if_source_generation_match=[s.generation for s in sources],
                    delete_source_objects=True,
                    timeout=self._timeout,
                    retry=None,
                )
                return blob
            except gexc.PreconditionFailed:
                # 412 is for the target's condition or a source's: tell which
                if if_generation_match is not None and self._generation_of(target) != (
                    if_generation_match
                ):
                    raise PreconditionFailed(
                        f"complete_multipart {self.name}/{key}: the object changed "
                        "(precondition failed)",
                        key=key,
                    ) from None
                raise BackendError(
                    f"upload {upload_id}: a part changed since it was uploaded (stale etag)",
                    key=key,
                ) from None
            except gexc.NotFound:
                pass
        # Some source is missing: either this compose already happened (its reply was lost,
        # and the complete is being retried), or a part was never uploaded.
        present = self._upload_objects(upload_id)
        missing = [s.name for s in sources if s.name not in present]
        if not missing:  # every source is there: the 404 was about something else
            raise self._no_upload("complete_multipart", key, upload_id)
        if len(missing) < len(sources):
            raise BackendError(
                f"upload {upload_id}: {missing[0].rsplit('/', 1)[-1]} was never uploaded", key=key
            )
        done = bucket.blob(target)
        with self._errors("complete_multipart", key):
            try:
                done.reload(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                raise self._no_upload("complete_multipart", key, upload_id) from None
        if int(done.size or 0) != sum(s.size for s in sources) or int(
            done.component_count or 1
        ) != sum(s.components for s in sources):
            raise self._no_upload("complete_multipart", key, upload_id)
        return done

    def _generation_of(self, name: str) -> int:
        """The current generation of object `name`; 0 when there is none (GCS's convention)."""
        blob = self._blob(name)
        with self._errors("complete_multipart", name):
            try:
                blob.reload(timeout=self._timeout, retry=None)
            except gexc.NotFound:
                return 0
        return int(blob.generation or 0)

    def _upload_objects(self, upload_id: str) -> set[str]:
        names: set[str] = set()
        for blobs, _ in self._list_all(f"{UPLOAD_PREFIX}{upload_id}/", delimiter=None):
            names.update(b.name for b in blobs)
        return names

    def _delete_upload(self, upload_id: str, *, sweeps_after_manifest: int) -> None:
        """Delete an upload's temporaries, then its manifest, then sweep again."""

        def delete(name: str) -> None:
            with self._errors("abort_multipart", name), contextlib.suppress(gexc.NotFound):
                self._blob(name).delete(timeout=self._timeout, retry=None)

        self._map(delete, sorted(self._upload_objects(upload_id)))
        delete(_manifest_name(upload_id))
        for _ in range(sweeps_after_manifest):
            self._map(delete, sorted(self._upload_objects(upload_id)))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        if not _UPLOAD_ID.match(upload_id):
            return
        # Parts first and the manifest last, so that a crash leaves the upload listed (and
        # recovery aborts it again); a sweep after the manifest is gone catches a part whose
        # upload was in flight (a later one deletes itself: see upload_part).
        self._delete_upload(upload_id, sweeps_after_manifest=1)

    def list_multipart(self, prefix: str) -> builtins.list[UploadInfo]:
        uploads: builtins.list[UploadInfo] = []
        for blobs, _ in self._list_all(UPLOAD_PREFIX, delimiter="/"):
            for blob in blobs:
                upload_id = blob.name[len(UPLOAD_PREFIX) :]
                key = (blob.metadata or {}).get(_MANIFEST_KEY)
                if not _UPLOAD_ID.match(upload_id) or key is None or not key.startswith(prefix):
                    continue
                created = blob.time_created or blob.updated
                initiated = created.timestamp() if created is not None else 0.0
                uploads.append(UploadInfo(key=str(key), upload_id=upload_id, initiated=initiated))
        uploads.sort(key=lambda u: (u.key, u.initiated, u.upload_id))
        return uploads
