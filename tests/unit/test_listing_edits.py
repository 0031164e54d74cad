"""A directory's cached listing edited in place by creates, renames and unlinks: it must stay
what a fresh listing of the same entries would be (name order, one entry per name)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wsfuse.fs.namespace import Entry, Listing

NAMES = st.text(alphabet="ab.Z_é0", min_size=1, max_size=4)
EDITS = st.lists(st.tuples(st.booleans(), NAMES, st.integers(0, 9)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(start=st.lists(NAMES, max_size=20, unique=True), edits=EDITS)
def test_edited_listing_equals_a_listing_of_the_same_entries(
    start: list[str], edits: list[tuple[bool, str, int]]
) -> None:
    reference = {name: Entry(name, False, size=1) for name in start}
    listing = Listing(
        tuple(reference[k] for k in sorted(reference)), dict(reference), 3, 12.5, marker=True
    )
    for add, name, size in edits:
        if add:
            reference[name] = Entry(name, size % 2 == 0, size=size)
            listing = listing.with_entry(reference[name])
        elif name in reference:
            del reference[name]
            listing = listing.without_entry(name)
        assert listing.entries == tuple(reference[k] for k in sorted(reference))
        assert listing.by_name == reference
    assert (listing.hidden, listing.fetched_at, listing.marker) == (3, 12.5, True)


def test_an_edit_leaves_the_listing_it_came_from_as_it_was() -> None:
    """Open directory handles keep reading the snapshot they started with."""
    a, c = Entry("a", False, size=1), Entry("c", False, size=1)
    before = Listing((a, c), {"a": a, "c": c}, 0, 1.0)
    after = before.with_entry(Entry("b", False, size=2))
    assert [e.name for e in after.entries] == ["a", "b", "c"]
    assert [e.name for e in before.entries] == ["a", "c"] and set(before.by_name) == {"a", "c"}
    assert [e.name for e in after.without_entry("a").entries] == ["b", "c"]
    assert [e.name for e in after.entries] == ["a", "b", "c"]
