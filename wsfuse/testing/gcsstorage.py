"""The store behind the GCS test server: `gcp-storage-emulator`'s in-memory `Storage` with
whole-key paths, strictly increasing generations, hard deletes and no re-serialisation of the
bucket index on every write (why: `gcsserver`'s docstring).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gcp_storage_emulator.exceptions import NotFound as EmuNotFound
from gcp_storage_emulator.storage import Storage


class PatchedStorage(Storage):  # type: ignore[misc]
    """The emulator's in-memory store with whole-key paths, unique generations, hard deletes
    and no per-write re-serialisation of the index."""

    def __init__(self) -> None:
        self._generation_lock = threading.Lock()
        self._last_generation = 0
        super().__init__(use_memory_fs=True, data_dir="/")

    def _write_config_to_file(self) -> None:
        """In memory, the index lives in `self.objects`; re-serialising it per write is O(n)."""

    def _object_path(self, bucket_name: str, file_name: str) -> str:
        # One flat file per key: "o" + hex of the UTF-8 name never contains "/", "." or "..".
        return f"{bucket_name}/o{file_name.encode('utf-8').hex()}"

    def next_generation(self) -> int:
        with self._generation_lock:
            self._last_generation = max(self._last_generation + 1, time.time_ns() // 1000)
            return self._last_generation

    def create_file(
        self,
        bucket_name: str,
        file_name: str,
        content: bytes,
        file_obj: dict[str, Any],
        file_id: str | None = None,
    ) -> None:
        generation = self.next_generation()
        file_obj["generation"] = str(generation)
        file_obj["id"] = f"{bucket_name}/{file_name}/{generation}"
        file_obj["metageneration"] = "1"
        file_obj["size"] = str(len(content))
        super().create_file(bucket_name, file_name, content, file_obj, file_id)

    def delete_file(self, bucket_name: str, file_name: str) -> None:
        if bucket_name not in self.buckets:
            raise EmuNotFound(f"no bucket {bucket_name!r}")
        self._hard_delete_file(bucket_name, file_name)

    def current(self, bucket_name: str, file_name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.objects.get(bucket_name, {}).get(file_name)
        return obj
