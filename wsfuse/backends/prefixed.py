"""A view of a backend under a key prefix (`s3://bucket/prefix`): callers see keys relative to
the prefix, the store sees full keys. Kept separate so every backend stays prefix-agnostic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from wsfuse.backends.base import Backend, ListPage, ObjectInfo, OnBlock, PartInfo, UploadInfo


class PrefixedBackend(Backend):
    def __init__(self, inner: Backend, prefix: str) -> None:
        assert prefix == "" or prefix.endswith("/"), prefix
        self.inner = inner
        self.prefix = prefix
        self.name = f"{inner.name}/{prefix}".rstrip("/")
        self.capabilities = inner.capabilities

    def _strip(self, info: ObjectInfo) -> ObjectInfo:
        return replace(info, key=info.key[len(self.prefix) :])

    def head(self, key: str) -> ObjectInfo:
        return self._strip(self.inner.head(self.prefix + key))

    def get_range(
        self, key: str, offset: int, length: int, *, if_match: str | None = None
    ) -> bytes:
        return self.inner.get_range(self.prefix + key, offset, length, if_match=if_match)

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
            self.prefix + key, offset, length, block_size, if_match=if_match, on_block=on_block
        )

    def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        page_size: int = 1000,
    ) -> ListPage:
        page = self.inner.list(
            self.prefix + prefix, delimiter=delimiter, token=token, page_size=page_size
        )
        n = len(self.prefix)
        return ListPage(
            objects=[self._strip(o) for o in page.objects],
            prefixes=[p[n:] for p in page.prefixes],
            next_token=page.next_token,
        )

    def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        info = self.inner.put(
            self.prefix + key,
            data,
            metadata=metadata,
            if_match=if_match,
            if_none_match=if_none_match,
        )
        return self._strip(info)

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None) -> str:
        return self.inner.create_multipart(self.prefix + key, metadata=metadata)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        return self.inner.upload_part(self.prefix + key, upload_id, number, data)

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        return self._strip(
            self.inner.complete_multipart(
                self.prefix + key,
                upload_id,
                parts,
                if_match=if_match,
                if_none_match=if_none_match,
            )
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.inner.abort_multipart(self.prefix + key, upload_id)

    def list_multipart(self, prefix: str) -> Sequence[UploadInfo]:
        n = len(self.prefix)
        return [replace(u, key=u.key[n:]) for u in self.inner.list_multipart(self.prefix + prefix)]

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        return self._strip(self.inner.copy(self.prefix + src, self.prefix + dst, metadata=metadata))

    def delete(self, key: str) -> None:
        self.inner.delete(self.prefix + key)

    def check_bucket(self) -> None:
        self.inner.check_bucket()

    def close(self) -> None:
        self.inner.close()
