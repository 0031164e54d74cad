"""Read-ahead across the files of a directory that is read in name order.

A training loop over a shard directory of small files (`for f in sorted(os.listdir(d))`,
or N data-loader workers taking interleaved slices of that order) pays one time-to-first-byte
per file when each file is fetched only when it is opened: at 20 ms that is ~50 files/s per
reader, whatever the bandwidth. The only way past it is to fetch the next files before they
are opened, which is safe exactly when the opens follow the listing's order.

Detection, per directory: an open is "in order" when its position in the listing is at most
`AHEAD_SLACK` after and `BEHIND_SLACK` before the furthest position opened so far
(interleaved readers arrive slightly out of order, never far). After `START_AFTER` in-order
opens in a row, the files after the furthest
position are fetched whole (small files only: larger ones get their own sequential read-ahead
when opened), `depth` files ahead, doubling per in-order open up to `MAX_DEPTH`. One open out
of order (a shuffled reader) resets the streak and stops the read-ahead, so random access
costs no extra request. Fetches already started are left to finish: the file is in the
directory, and a reader that stopped following the order is still likely to open it. The
fetched blocks go to the block cache, under the prefetch budget.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from wsfuse.fs.fetcher import BlockFetcher, PinnedObject
from wsfuse.fs.namespace import Entry, Listing, child_path

AHEAD_SLACK = 32  # positions: files skipped between in-order opens (filtered readers)
BEHIND_SLACK = 16  # positions: how far behind the furthest an interleaved reader may be
START_AFTER = 3  # in-order opens in a row before read-ahead starts
FIRST_DEPTH = 4  # files ahead when it starts
MAX_DEPTH = 64  # files ahead at most (the prefetch budget bounds the bytes as well)
MAX_DIRECTORIES = 64  # directories tracked at once (least recently opened forgotten)


@dataclass(slots=True)
class _DirectoryState:
    furthest: int  # furthest listing position opened
    streak: int = 0  # in-order opens in a row
    depth: int = 0  # files ahead while active
    ahead_until: int = 0  # positions below this were requested by read-ahead
    listing: Listing | None = field(default=None, repr=False)


class DirectoryReadAhead:
    """Owned by the trio thread; fed by `Filesystem.open` for read-only opens."""

    def __init__(
        self,
        fetcher: BlockFetcher,
        *,
        whole_object_max: int,
        pin: Callable[[str, Entry], PinnedObject],
    ) -> None:
        self.fetcher = fetcher
        self.whole_object_max = whole_object_max
        self.pin = pin
        self.directories: OrderedDict[str, _DirectoryState] = OrderedDict()
        # Never cancelled (the mount's nursery ends them at unmount): budget bounds them.
        self.group = fetcher.new_readahead()
        self.files_requested = 0

    def opened(self, parent: str, name: str, listing: Listing | None) -> None:
        """A file `name` of directory `parent` was opened for reading; `listing` is the
        directory's fresh listing if there is one (no listing, no read-ahead)."""
        if listing is None:
            return
        position = _position(listing, name)
        if position is None:
            return
        state = self.directories.get(parent)
        if state is None or state.listing is not listing:
            state = _DirectoryState(furthest=position, listing=listing)
            self.directories[parent] = state
            while len(self.directories) > MAX_DIRECTORIES:
                self.directories.popitem(last=False)
            return
        self.directories.move_to_end(parent)
        step = position - state.furthest
        if step == 0:
            return  # the same file again (libraries that open twice): neither way
        if step > AHEAD_SLACK or -step > BEHIND_SLACK:
            self._stop(state)  # out of order: no pattern to follow
            state.furthest = position
            return
        state.furthest = max(state.furthest, position)
        state.streak += 1
        if state.streak < START_AFTER:
            return
        state.depth = min(MAX_DEPTH, max(FIRST_DEPTH, state.depth * 2))
        self._fill(parent, state, listing)

    def _fill(self, parent: str, state: _DirectoryState, listing: Listing) -> None:
        entries = listing.entries
        end = min(len(entries), state.furthest + 1 + state.depth)
        i = max(state.furthest + 1, state.ahead_until)
        while i < end:
            entry = entries[i]
            if not entry.is_dir and 0 < entry.size <= self.whole_object_max:
                obj = self.pin(child_path(parent, entry.name), entry)
                blocks = self.fetcher.block_count(obj)
                started = self.fetcher.start_fetch(obj, 0, blocks, group=self.group, handoff=False)
                if started:
                    self.files_requested += 1
                elif not self.fetcher.is_available(obj.block(0)):
                    break  # out of budget: continue on the next open
            i += 1
        state.ahead_until = i

    @staticmethod
    def _stop(state: _DirectoryState) -> None:
        state.streak = 0
        state.depth = 0
        state.ahead_until = 0


def _position(listing: Listing, name: str) -> int | None:
    entries = listing.entries
    i = bisect.bisect_left(entries, name, key=lambda e: e.name)
    if i < len(entries) and entries[i].name == name:
        return i
    return None
