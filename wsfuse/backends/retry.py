"""Retries for transient backend failures: jittered exponential backoff, bounded by a number of
attempts *and* a total deadline, and only for `Transient` errors (5xx, throttling, resets,
timeouts). This is the only place wsfuse retries; client libraries are configured not to.

The log level rises with the attempt number (s3ql's habit): the first retry is DEBUG, then
INFO, then WARNING, so a flaky network is visible without flooding the log.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from wsfuse.backends.base import Backend, ListPage, ObjectInfo, OnBlock, PartInfo, UploadInfo
from wsfuse.errors import Transient, Unavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep trying. Defaults: S3's own guidance is to retry 5xx/SlowDown with
    exponential backoff; 8 attempts from 0.1 s doubling to a 10 s cap spans ~30 s of backoff,
    and 60 s bounds the whole call so a dead endpoint fails in a minute, not an hour."""

    max_attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 10.0
    deadline: float = 60.0

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Sleep before each retry ("full jitter": uniform in [0, min(cap, base·2^n)])."""
        rand = rng or random
        for attempt in range(self.max_attempts - 1):
            yield rand.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


def call_with_retries(
    policy: RetryPolicy,
    what: str,
    fn: Callable[[], T],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run `fn`, retrying `Transient` failures under `policy`; raise `Unavailable` at the end."""
    start = clock()
    delays = policy.delays()
    attempt = 1
    while True:
        try:
            return fn()
        except Transient as exc:
            elapsed = clock() - start
            delay = next(delays, None)
            if delay is None or elapsed + delay >= policy.deadline:
                raise Unavailable(
                    f"{what} failed after {attempt} attempt(s) in {elapsed:.1f}s: {exc}; "
                    "check that the endpoint is reachable and not overloaded",
                    key=exc.key,
                ) from exc
            level = (
                logging.DEBUG if attempt == 1 else logging.INFO if attempt < 4 else logging.WARNING
            )
            log.log(level, "%s: %s; retry %d in %.2fs", what, exc, attempt, delay)
            sleep(delay)
            attempt += 1


def _retrying(method: Callable[P, T]) -> Callable[P, T]:
    name = method.__name__

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        self = args[0]
        assert isinstance(self, RetryingBackend)
        label = f"{name} {args[1]!r}" if len(args) > 1 else name
        return call_with_retries(self.policy, label, lambda: method(*args, **kwargs))

    return wrapper


class RetryingBackend(Backend):
    """Wraps a backend so that every call retries transient failures under one policy.

    Non-idempotent calls are safe to retry here: a PUT, part upload or copy that is repeated
    writes the same bytes; `complete_multipart` repeated after a lost reply may answer
    `NotFound` (the upload is already complete), which the uploader checks by HEAD.
    """

    def __init__(self, inner: Backend, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.name = inner.name
        self.capabilities = inner.capabilities

    @_retrying
    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    @_retrying
    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        return self.inner.get_range(key, offset, length, if_match=if_match)

    @_retrying
    def get_blocks(
        self,
        key: str,
        offset: int,
        length: int,
        block_size: int,
        *,
        if_match: str | None = None,
        on_block: OnBlock | None = None,
    ) -> list[bytes]:
        return self.inner.get_blocks(
            key, offset, length, block_size, if_match=if_match, on_block=on_block
        )

    @_retrying
    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = 1000,
    ) -> ListPage:
        return self.inner.list(prefix, delimiter=delimiter, token=token, page_size=page_size)

    @_retrying
    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return self.inner.put(
            key, data, metadata=metadata, if_match=if_match, if_none_match=if_none_match
        )

    @_retrying
    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        return self.inner.create_multipart(key, metadata=metadata)

    @_retrying
    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        return self.inner.upload_part(key, upload_id, number, data)

    @_retrying
    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return self.inner.complete_multipart(
            key, upload_id, parts, if_match=if_match, if_none_match=if_none_match
        )

    @_retrying
    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.inner.abort_multipart(key, upload_id)

    @_retrying
    def list_multipart(self, prefix: str) -> Sequence[UploadInfo]:
        return self.inner.list_multipart(prefix)

    @_retrying
    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        return self.inner.copy(src, dst, metadata=metadata)

    @_retrying
    def delete(self, key: str) -> None:
        self.inner.delete(key)

    @_retrying
    def check_bucket(self) -> None:
        self.inner.check_bucket()

    def close(self) -> None:
        self.inner.close()
