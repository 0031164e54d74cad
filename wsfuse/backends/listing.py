"""S3 listing semantics over a sorted sequence of keys, shared by the memory and local backends
so that both paginate and roll up prefixes exactly as S3 does.

The continuation token names the last item of the previous page: `k:<key>` for an object,
`p:<prefix>` for a common prefix. The next page starts after it, skipping every key under a
prefix already reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from wsfuse.backends.base import ListPage, ObjectInfo


def paginate(
    keys: Iterable[str],
    info: Callable[[str], ObjectInfo],
    prefix: str,
    delimiter: str | None,
    token: str | None,
    page_size: int,
) -> ListPage:
    """One page of `keys` (sorted, all starting with `prefix`) with S3's roll-up rules."""
    if page_size <= 0:
        raise ValueError("page_size must be positive")
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    last: str | None = None
    after, skip_under = _decode(token)
    for key in keys:
        if after is not None and (key <= after or (skip_under and key.startswith(after))):
            continue
        item = key
        rolled_up = False
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                item, rolled_up = key[: cut + len(delimiter)], True
                if prefixes and prefixes[-1] == item:
                    continue
        if len(objects) + len(prefixes) == page_size:
            return ListPage(objects, prefixes, next_token=last)
        if not rolled_up:
            objects.append(info(key))
            last = "k:" + key
        else:
            prefixes.append(item)
            last = "p:" + item
    return ListPage(objects, prefixes, next_token=None)


def _decode(token: str | None) -> tuple[str | None, bool]:
    """(the item the page starts after, whether keys under it are skipped too)."""
    if token is None:
        return None, False
    kind, _, item = token.partition(":")
    if kind not in ("k", "p"):
        raise ValueError(f"malformed continuation token {token!r}")
    return item, kind == "p"
