"""ONE contract suite, run against every backend (memory, local directory, S3 on the local
moto server, GCS on the local emulator): what the filesystem relies on, stated as tests.

A backend that cannot do something declares it in `Capabilities`; the test is then skipped
with the backend's stated reason (shown by `pytest -ra`), never silently.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from wsfuse.backends.base import MIN_PART_SIZE, Backend, ObjectInfo, PartInfo
from wsfuse.backends.prefixed import PrefixedBackend
from wsfuse.backends.retry import RetryingBackend
from wsfuse.errors import BackendError, NotFound, PreconditionFailed
from wsfuse.testing.ramp import ramp


def require(backend: Backend, capability: str) -> None:
    if not getattr(backend.capabilities, capability):
        pytest.skip(f"{backend.name}: {backend.capabilities.reasons.get(capability, capability)}")


def put_ramp(backend: Backend, key: str, size: int, **kw: object) -> ObjectInfo:
    return backend.put(key, ramp(key, 0, size), **kw)  # type: ignore[arg-type]


def list_everything(
    backend: Backend, prefix: str, delimiter: str | None = "/", page_size: int = 1000
):
    objects: list[str] = []
    prefixes: list[str] = []
    token = None
    pages = 0
    while True:
        page = backend.list(prefix, delimiter=delimiter, token=token, page_size=page_size)
        pages += 1
        objects += [o.key for o in page.objects]
        prefixes += list(page.prefixes)
        if page.next_token is None:
            return objects, prefixes, pages
        token = page.next_token


# ---------------------------------------------------------------------- reads


def test_put_head_get_roundtrip(backend: Backend) -> None:
    info = put_ramp(backend, "obj", 100_000)
    assert info.key == "obj" and info.size == 100_000 and info.etag
    head = backend.head("obj")
    assert (head.size, head.etag) == (100_000, info.etag)
    assert head.mtime > 1_600_000_000
    assert backend.get_range("obj", 0, 100_000) == ramp("obj", 0, 100_000)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 10, (0, 10)),
        (995, 5, (995, 5)),  # ends exactly at EOF
        (990, 100, (990, 10)),  # straddles EOF: short read
        (1000, 10, None),  # at EOF
        (5000, 10, None),  # after EOF
        (10, 0, None),  # length 0
        (1000, 0, None),
    ],
)
def test_ranges(
    backend: Backend, offset: int, length: int, expected: tuple[int, int] | None
) -> None:
    put_ramp(backend, "r", 1000)
    want = b"" if expected is None else ramp("r", *expected)
    assert backend.get_range("r", offset, length) == want


@pytest.mark.parametrize(
    ("offset", "length", "pieces"),
    [
        (0, 3000, [1000, 1000, 1000]),  # whole blocks
        (500, 2200, [1000, 1000, 200]),  # short last piece
        (2000, 5000, [1000, 1000, 1000]),  # past EOF: what exists
        (0, 999, [999]),  # less than one piece
        (5000, 10, []),  # at EOF: nothing
        (10, 0, []),  # nothing asked
    ],
)
def test_get_blocks_cuts_one_range_into_pieces(
    backend: Backend, offset: int, length: int, pieces: list[int]
) -> None:
    put_ramp(backend, "b", 5000)
    seen: list[tuple[int, bytes]] = []
    blocks = backend.get_blocks(
        "b", offset, length, 1000, on_block=lambda i, b: seen.append((i, b))
    )
    assert [len(b) for b in blocks] == pieces
    assert all(isinstance(b, bytes) for b in blocks)
    assert b"".join(blocks) == ramp("b", offset, sum(pieces))
    # each block handed over once, in order, as the very bytes returned (the block cache
    # checksums them there)
    assert seen == list(enumerate(blocks))
    assert all(got is block for (_, got), block in zip(seen, blocks, strict=True))


def test_get_blocks_hands_blocks_over_through_the_wrappers(backend: Backend) -> None:
    """The retrying and prefixing wrappers the filesystem uses pass `on_block` through."""
    put_ramp(backend, "p/w", 2500)
    wrapped = PrefixedBackend(RetryingBackend(backend), "p/")
    seen: list[tuple[int, bytes]] = []
    blocks = wrapped.get_blocks("w", 0, 2500, 1000, on_block=lambda i, b: seen.append((i, b)))
    assert [len(b) for b in blocks] == [1000, 1000, 500]
    assert seen == list(enumerate(blocks))


def test_get_blocks_is_version_checked(backend: Backend) -> None:
    require(backend, "conditional_get")
    old = backend.put("vb", b"version one")
    assert backend.get_blocks("vb", 0, 11, 4, if_match=old.etag) == [b"vers", b"ion ", b"one"]
    backend.put("vb", b"version two")
    with pytest.raises(PreconditionFailed):
        backend.get_blocks("vb", 0, 11, 4, if_match=old.etag)
    with pytest.raises(NotFound):
        backend.get_blocks("nope", 0, 10, 4)


def test_zero_byte_object(backend: Backend) -> None:
    info = backend.put("empty", b"")
    assert info.size == 0
    assert backend.head("empty").size == 0
    assert backend.get_range("empty", 0, 10) == b""
    assert backend.get_range("empty", 0, 0) == b""
    assert [o.size for o in backend.list("", delimiter="/").objects] == [0]


def test_missing_key(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.head("nope")
    with pytest.raises(NotFound):
        backend.get_range("nope", 0, 10)
    with pytest.raises(NotFound):
        backend.copy("nope", "dst")


def test_overwrite_changes_etag_and_content(backend: Backend) -> None:
    first = backend.put("k", b"one")
    second = backend.put("k", b"two!")
    assert first.etag != second.etag
    assert backend.head("k").etag == second.etag
    assert backend.get_range("k", 0, 100) == b"two!"


# ---------------------------------------------------------------------- preconditions


def test_if_match_read_fails_after_change(backend: Backend) -> None:
    require(backend, "conditional_get")
    old = backend.put("v", b"version one")
    assert backend.get_range("v", 0, 7, if_match=old.etag) == b"version"
    backend.put("v", b"version two, longer")
    with pytest.raises(PreconditionFailed):
        backend.get_range("v", 0, 7, if_match=old.etag)


def test_conditional_put(backend: Backend) -> None:
    require(backend, "conditional_put")
    created = backend.put("c", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        backend.put("c", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        backend.put("c", b"3", if_match="0123456789abcdef")
    replaced = backend.put("c", b"4", if_match=created.etag)
    assert backend.get_range("c", 0, 10) == b"4"
    assert replaced.etag != created.etag


# ---------------------------------------------------------------------- metadata, copy, delete


def test_metadata_roundtrip(backend: Backend) -> None:
    meta = {"mode": "33188", "uid": "1000", "mtime": "1700000000.5"}
    backend.put("m", b"x", metadata=meta)
    assert dict(backend.head("m").metadata or {}) == meta
    backend.put("plain", b"x")
    assert dict(backend.head("plain").metadata or {}) == {}


def test_copy_keeps_or_replaces_metadata(backend: Backend) -> None:
    put_ramp(backend, "src", 70_000, metadata={"mode": "33261"})
    copied = backend.copy("src", "dst")
    assert copied.size == 70_000
    assert backend.get_range("dst", 0, 70_000) == ramp("src", 0, 70_000)
    assert dict(backend.head("dst").metadata or {}) == {"mode": "33261"}
    backend.copy("src", "dst2", metadata={"mode": "33188", "uid": "7"})
    assert dict(backend.head("dst2").metadata or {}) == {"mode": "33188", "uid": "7"}
    assert backend.get_range("dst2", 100, 10) == ramp("src", 100, 10)
    # the source is untouched
    assert dict(backend.head("src").metadata or {}) == {"mode": "33261"}


def test_delete(backend: Backend) -> None:
    backend.put("d", b"x")
    backend.delete("d")
    with pytest.raises(NotFound):
        backend.head("d")
    backend.delete("d")  # missing key: success
    backend.delete("never/existed")


# ---------------------------------------------------------------------- listing


def _seed_tree(backend: Backend) -> None:
    for key in ["a/1", "a/2", "a/b/c", "a/b/d/e", "ab", "d", "e/"]:
        backend.put(key, b"" if key.endswith("/") else key.encode())


def test_list_with_delimiter(backend: Backend) -> None:
    _seed_tree(backend)
    objects, prefixes, _ = list_everything(backend, "")
    assert objects == ["ab", "d"]
    assert prefixes == ["a/", "e/"]
    objects, prefixes, _ = list_everything(backend, "a/")
    assert objects == ["a/1", "a/2"]
    assert prefixes == ["a/b/"]
    page = backend.list("a/")
    assert [o.size for o in page.objects] == [3, 3]
    assert all(o.etag for o in page.objects)


def test_list_prefix_that_is_not_a_directory(backend: Backend) -> None:
    _seed_tree(backend)
    objects, prefixes, _ = list_everything(backend, "a")
    assert objects == ["ab"]
    assert prefixes == ["a/"]
    objects, prefixes, _ = list_everything(backend, "a/b")
    assert (objects, prefixes) == ([], ["a/b/"])


def test_directory_marker_is_listed_as_object_of_its_own_prefix(backend: Backend) -> None:
    _seed_tree(backend)
    objects, prefixes, _ = list_everything(backend, "e/")
    assert (objects, prefixes) == (["e/"], [])
    assert backend.head("e/").size == 0


def test_list_without_delimiter_is_recursive(backend: Backend) -> None:
    _seed_tree(backend)
    objects, prefixes, _ = list_everything(backend, "a/", delimiter=None)
    assert objects == ["a/1", "a/2", "a/b/c", "a/b/d/e"]
    assert prefixes == []


def test_list_missing_prefix_is_empty(backend: Backend) -> None:
    assert list_everything(backend, "nothing/here/") == ([], [], 1)


def test_small_pages_roll_up_prefixes_once(backend: Backend) -> None:
    require(backend, "pagination")
    for i in range(5):
        backend.put(f"p/f{i}", b"x")
        backend.put(f"p/g{i}/x", b"x")
        backend.put(f"p/g{i}/y", b"x")
    objects, prefixes, pages = list_everything(backend, "p/", page_size=3)
    assert objects == [f"p/f{i}" for i in range(5)]
    assert prefixes == [f"p/g{i}/" for i in range(5)]
    assert pages == 4


def test_list_more_than_1000_keys(backend: Backend) -> None:
    keys = [f"big/{i:05d}" for i in range(1050)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: backend.put(k, b""), keys))
    objects, prefixes, pages = list_everything(backend, "big/")
    assert objects == keys
    assert prefixes == []
    if backend.capabilities.pagination:
        assert pages == 2


def test_unicode_and_space_keys(backend: Backend) -> None:
    keys = [
        "dir with space/naïve ü.txt",
        "dir with space/文件 1.bin",
        "a+b=c&d.txt",
        "pct%20x",
        "emoji 🚀",
    ]
    for key in keys:
        backend.put(key, key.encode())
    for key in keys:
        assert backend.get_range(key, 0, 100) == key.encode()
        assert backend.head(key).size == len(key.encode())
    objects, prefixes, _ = list_everything(backend, "")
    assert objects == sorted(["a+b=c&d.txt", "pct%20x", "emoji 🚀"])
    assert prefixes == ["dir with space/"]
    objects, _, _ = list_everything(backend, "dir with space/")
    assert objects == sorted(keys[:2])


def test_key_and_prefix_with_same_name(backend: Backend) -> None:
    require(backend, "key_prefix_clash")
    backend.put("x", b"file")
    backend.put("x/y", b"child")
    objects, prefixes, _ = list_everything(backend, "")
    assert (objects, prefixes) == (["x"], ["x/"])


# ---------------------------------------------------------------------- multipart


def test_multipart_more_than_three_parts(backend: Backend) -> None:
    part = MIN_PART_SIZE
    sizes = [part, part, part, 12345]
    total = sum(sizes)
    upload_id = backend.create_multipart("mp", metadata={"mode": "33188"})
    assert [u.upload_id for u in backend.list_multipart("mp")] == [upload_id]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def send(i: int):
        return backend.upload_part("mp", upload_id, i + 1, ramp("mp", offsets[i], sizes[i]))

    with ThreadPoolExecutor(4) as pool:  # parts arrive in parallel, in any order
        parts = list(pool.map(send, reversed(range(len(sizes)))))
    parts.sort(key=lambda p: p.number)
    info = backend.complete_multipart("mp", upload_id, parts)
    assert info.size == total
    head = backend.head("mp")
    assert head.size == total and head.etag == info.etag
    assert dict(head.metadata or {}) == {"mode": "33188"}
    for off in (0, part - 3, 2 * part + 17, total - 100):
        assert backend.get_range("mp", off, 4096) == ramp("mp", off, min(4096, total - off))
    assert backend.list_multipart("mp") == []


def test_multipart_small_part_rejected(backend: Backend) -> None:
    upload_id = backend.create_multipart("small")
    parts = [backend.upload_part("small", upload_id, n, b"x" * 1000) for n in (1, 2)]
    with pytest.raises(BackendError):
        backend.complete_multipart("small", upload_id, parts)
    backend.abort_multipart("small", upload_id)
    with pytest.raises(NotFound):
        backend.head("small")


def test_multipart_abort(backend: Backend) -> None:
    upload_id = backend.create_multipart("ab")
    backend.upload_part("ab", upload_id, 1, b"y" * 100)
    backend.abort_multipart("ab", upload_id)
    assert backend.list_multipart("ab") == []
    with pytest.raises(NotFound):
        backend.upload_part("ab", upload_id, 2, b"z")
    with pytest.raises(NotFound):
        backend.head("ab")
    backend.abort_multipart("ab", upload_id)  # again: success
    assert list_everything(backend, "", delimiter=None)[0] == []


def test_conditional_multipart_complete(backend: Backend) -> None:
    """`if_none_match` / `if_match` hold at completion (what recovery relies on to upload a
    large file only over the version it was opened from): a refusal changes nothing."""
    require(backend, "conditional_put")

    def upload(key: str, data: bytes) -> tuple[str, list[PartInfo]]:
        upload_id = backend.create_multipart(key, metadata={"mode": "33188"})
        return upload_id, [backend.upload_part(key, upload_id, 1, data)]

    upload_id, parts = upload("cm", b"first")
    created = backend.complete_multipart("cm", upload_id, parts, if_none_match=True)
    assert backend.get_range("cm", 0, 100) == b"first"
    upload_id, parts = upload("cm", b"second")
    with pytest.raises(PreconditionFailed):
        backend.complete_multipart("cm", upload_id, parts, if_none_match=True)
    backend.abort_multipart("cm", upload_id)
    assert backend.get_range("cm", 0, 100) == b"first"

    upload_id, parts = upload("cm", b"second")
    replaced = backend.complete_multipart("cm", upload_id, parts, if_match=created.etag)
    assert backend.get_range("cm", 0, 100) == b"second"
    assert backend.head("cm").etag == replaced.etag != created.etag
    upload_id, parts = upload("cm", b"third")
    with pytest.raises(PreconditionFailed):  # a version no longer there
        backend.complete_multipart("cm", upload_id, parts, if_match=created.etag)
    backend.abort_multipart("cm", upload_id)
    assert backend.get_range("cm", 0, 100) == b"second"

    upload_id, parts = upload("gone", b"x")
    with pytest.raises((PreconditionFailed, NotFound)):
        backend.complete_multipart("gone", upload_id, parts, if_match=created.etag)
    backend.abort_multipart("gone", upload_id)
    with pytest.raises(NotFound):
        backend.head("gone")
    assert backend.list_multipart("") == []


def test_check_bucket(backend: Backend) -> None:
    backend.check_bucket()
