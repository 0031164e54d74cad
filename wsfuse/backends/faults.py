"""A fault-injecting wrapper around any backend, for tests of retries, deadlines and recovery.

`FaultInjectingBackend(inner).fail("get_range", Transient("boom"), times=2)` makes the next
two `get_range` calls raise; `latency` adds a sleep to every call; `calls` counts attempts
by operation (including failed ones), so a test can assert how many requests a retry made.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wsfuse.backends.base import Backend, ListPage, ObjectInfo, PartInfo, UploadInfo


@dataclass(slots=True)
class _Fault:
    op: str
    make: Callable[[], BaseException]
    remaining: int
    key: str | None


class FaultInjectingBackend(Backend):
    def __init__(self, inner: Backend, *, latency: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.latency = latency
        self.calls: Counter[str] = Counter()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def fail(
        self,
        op: str,
        error: BaseException | Callable[[], BaseException],
        *,
        times: int = 1,
        key: str | None = None,
    ) -> None:
        """The next `times` calls of `op` (on `key`, if given) raise `error`."""
        if isinstance(error, BaseException):
            exc = error

            def make() -> BaseException:
                return exc
        else:
            make = error
        with self._lock:
            self._faults.append(_Fault(op, make, times, key))

    def _before(self, op: str, key: str) -> None:
        with self._lock:
            self.calls[op] += 1
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.op == op and f.remaining > 0 and f.key in (None, key)
                ),
                None,
            )
            if fault is not None:
                fault.remaining -= 1
        if self.latency:
            time.sleep(self.latency)
        if fault is not None:
            raise fault.make()

    def _call(self, op: str, key: str, *args: Any, **kwargs: Any) -> Any:
        self._before(op, key)
        return getattr(self.inner, op)(key, *args, **kwargs)

    def head(self, key: str) -> ObjectInfo:
        return self._call("head", key)  # type: ignore[no-any-return]

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        return self._call("get_range", key, offset, length, if_match=if_match)  # type: ignore[no-any-return]

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = 1000,
    ) -> ListPage:
        return self._call("list", prefix, delimiter=delimiter, token=token, page_size=page_size)  # type: ignore[no-any-return]

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return self._call(  # type: ignore[no-any-return]
            "put", key, data, metadata=metadata, if_match=if_match, if_none_match=if_none_match
        )

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        return self._call("create_multipart", key, metadata=metadata)  # type: ignore[no-any-return]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        return self._call("upload_part", key, upload_id, number, data)  # type: ignore[no-any-return]

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return self._call(  # type: ignore[no-any-return]
            "complete_multipart",
            key,
            upload_id,
            parts,
            if_match=if_match,
            if_none_match=if_none_match,
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._call("abort_multipart", key, upload_id)

    def list_multipart(self, prefix: str) -> Sequence[UploadInfo]:
        return self._call("list_multipart", prefix)  # type: ignore[no-any-return]

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        return self._call("copy", src, dst, metadata=metadata)  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self._call("delete", key)

    def check_bucket(self) -> None:
        self._before("check_bucket", "")
        self.inner.check_bucket()

    def close(self) -> None:
        self.inner.close()
