"""S3 listing rules on the memory backend: pagination tokens, roll-up, markers."""

from __future__ import annotations

from wsfuse.backends.memory import MemoryBackend


def collect(b: MemoryBackend, prefix: str, page_size: int) -> list[str]:
    objects: list[str] = []
    prefixes: list[str] = []
    token = None
    while True:
        page = b.list(prefix, token=token, page_size=page_size)
        objects += [o.key for o in page.objects]
        prefixes += [f"P:{p}" for p in page.prefixes]
        if page.next_token is None:
            return objects + prefixes
        token = page.next_token


def test_marker_at_page_boundary_does_not_hide_its_children() -> None:
    b = MemoryBackend()
    for key in ["d/", "d/a", "d/b", "d/c/x"]:
        b.put(key, b"")
    for size in (1, 2, 3, 10):
        assert sorted(collect(b, "d/", size)) == sorted(["d/", "d/a", "d/b", "P:d/c/"])


def test_every_page_size_gives_the_same_listing() -> None:
    b = MemoryBackend()
    keys = [f"k{i % 7}/{i}" for i in range(40)] + [f"f{i}" for i in range(9)] + ["k3"]
    for key in keys:
        b.put(key, b"")
    full = collect(b, "", 1000)
    for size in range(1, 20):
        assert collect(b, "", size) == full


def test_memory_counts_operations_and_skips_zero_length_reads() -> None:
    b = MemoryBackend()
    b.put("k", b"abc")
    assert b.get_range("k", 1, 0) == b""
    assert b.get_range("k", 1, 5) == b"bc"
    assert b.counts["get_range"] == 1
    assert b.bytes_read == 2


def test_a_listing_records_whether_its_directory_has_a_marker() -> None:
    from wsfuse.backends.base import ListPage, ObjectInfo
    from wsfuse.fs.namespace import Listing

    def page(*keys: str) -> ListPage:
        return ListPage([ObjectInfo(k, 1, "e", 0.0) for k in keys], [], None)

    with_marker = Listing.build("d", [page("d/", "d/a")], 1.0)
    without = Listing.build("d", [page("d/a")], 1.0)
    assert (with_marker.marker, without.marker) == (True, False)
    assert [e.name for e in with_marker.entries] == ["a"]  # the marker is not an entry
    for listing in (with_marker, without):
        again = Listing.decode(listing.encode())
        assert again is not None and again.marker == listing.marker
    # persisted before the marker was recorded: not known
    old = b'{"v": 1, "t": 1.0, "h": 0, "e": [["a", 0, 1, "e", 0.0]]}'
    decoded = Listing.decode(old)
    assert decoded is not None and decoded.marker is None
