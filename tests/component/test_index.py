"""MetadataIndex: the generic record API, schema versioning, and the clean-shutdown check that
decides whether an index may have been torn by an OS crash."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import pytest

from wsfuse.cache import schema
from wsfuse.cache.index import MetadataIndex, current_boot_id
from wsfuse.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_generic_records_round_trip(tmp_path: Path) -> None:
    with MetadataIndex(tmp_path / "index") as index:
        assert index.get("objects", b"a") is None
        index.put_many("objects", [(b"a/1", b"one"), (b"a/2", b"two"), (b"b/1", b"three")])
        assert index.get("objects", b"a/1") == b"one"
        assert index.items("objects", b"a/") == [(b"a/1", b"one"), (b"a/2", b"two")]
        assert index.items("objects", b"a/", limit=1) == [(b"a/1", b"one")]
        assert index.items("objects", b"c") == []
        assert len(index.items("objects")) == 3
        assert index.count("objects") == 3
        assert index.delete_many("objects", [b"a/1", b"missing"]) == 1
        assert index.get("objects", b"a/1") is None
        # DBs are separate namespaces.
        assert index.get("dirs", b"a/2") is None


def test_write_is_atomic_across_databases(tmp_path: Path) -> None:
    with MetadataIndex(tmp_path / "index") as index:
        index.put_many("dirs", [(b"d", b"old")])
        with pytest.raises(ValueError, match="unknown index database"):
            index.write(
                deletes=[("dirs", b"d")],
                puts=[("objects", b"o", b"x"), ("nope", b"k", b"v")],
            )
        # The failed transaction was aborted as a whole.
        assert index.get("dirs", b"d") == b"old"
        assert index.get("objects", b"o") is None
        index.write(deletes=[("dirs", b"d")], puts=[("objects", b"o", b"x")])
        assert index.get("dirs", b"d") is None
        assert index.get("objects", b"o") == b"x"


def test_records_survive_reopen(tmp_path: Path) -> None:
    with MetadataIndex(tmp_path / "index") as index:
        index.put_many("pending", [(b"p", b"staged")])
        index.put_many("objects", [(b"o", b"meta")])
    with MetadataIndex(tmp_path / "index") as index:
        assert index.get("pending", b"p") == b"staged"
        assert index.get("objects", b"o") == b"meta"
        assert index.get("meta", schema.META_SCHEMA_VERSION) == str(schema.SCHEMA_VERSION).encode()


def _set_meta(path: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True, db=env.open_db(schema.DB_META.encode())) as txn:
        txn.put(key, value)
    env.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    MetadataIndex(path).close()
    _set_meta(path, schema.META_SCHEMA_VERSION, str(schema.SCHEMA_VERSION + 1).encode())
    with pytest.raises(UserError, match="written by a newer wsfuse"):
        MetadataIndex(path)


def test_older_schema_drops_derived_records_and_keeps_pending(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with MetadataIndex(path) as index:
        index.put_many("objects", [(b"o", b"x")])
        index.put_many("blocks", [(b"b" * 32, b"r" * 20)])
        index.put_many("pending", [(b"p", b"staged")])
    _set_meta(path, schema.META_SCHEMA_VERSION, str(schema.SCHEMA_VERSION - 1).encode())
    with MetadataIndex(path) as index:
        assert index.count("objects") == 0
        assert index.count("blocks") == 0
        assert index.get("pending", b"p") == b"staged"
        assert index.get("meta", schema.META_SCHEMA_VERSION) == str(schema.SCHEMA_VERSION).encode()


def _open_and_crash(path: Path) -> None:
    """A process that writes records and dies without closing the index (like kill -9)."""
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from wsfuse.cache.index import MetadataIndex\n"
        "index = MetadataIndex(Path(sys.argv[1]))\n"
        "index.put_many('objects', [(b'o', b'x')])\n"
        "index.put_many('pending', [(b'p', b'staged')])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO, timeout=60)


def test_process_crash_keeps_the_index(tmp_path: Path) -> None:
    path = tmp_path / "index"
    _open_and_crash(path)
    with MetadataIndex(path, boot_id=current_boot_id()) as index:
        assert index.get("objects", b"o") == b"x"
        assert index.get("pending", b"p") == b"staged"
    assert not (tmp_path / "index.damaged").exists()


def test_os_crash_moves_the_index_aside_and_keeps_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index"
    _open_and_crash(path)
    with caplog.at_level(logging.WARNING), MetadataIndex(path, boot_id="another-boot") as index:
        assert index.get("objects", b"o") is None
        assert index.get("pending", b"p") == b"staged"
    assert (tmp_path / "index.damaged").is_dir()
    assert "restarted while it was open" in caplog.text
    # A clean close in between: the next boot trusts it.
    with MetadataIndex(path, boot_id="third-boot") as index:
        assert index.get("pending", b"p") == b"staged"


def test_unreadable_index_is_started_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not an LMDB file" * 1000)
    with caplog.at_level(logging.WARNING), MetadataIndex(path) as index:
        index.put_many("objects", [(b"o", b"x")])
        assert index.get("objects", b"o") == b"x"
    assert "may be damaged" in caplog.text


def test_touch_blocks_never_resurrects_a_record(tmp_path: Path) -> None:
    with MetadataIndex(tmp_path / "index") as index:
        bid = b"\x01" * 32
        index.put_many("blocks", [(bid, schema.BlockRecord(10, 1234, 1.0).pack())])
        index.touch_blocks([(bid, 5.0), (b"\x02" * 32, 6.0)])
        record = index.get("blocks", bid)
        assert record is not None
        assert schema.BlockRecord.unpack(record) == schema.BlockRecord(10, 1234, 5.0)
        assert index.get("blocks", b"\x02" * 32) is None


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with MetadataIndex(tmp_path / "index") as index:

        def worker(n: int) -> None:
            try:
                for i in range(200):
                    key = f"{n}/{i}".encode()
                    index.put_many("objects", [(key, key * 2)])
                    assert index.get("objects", key) == key * 2
                    if i % 10 == 0:
                        assert len(index.items("objects", f"{n}/".encode())) == i + 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert index.count("objects") == 8 * 200


def test_index_is_sparse_and_small(tmp_path: Path) -> None:
    """The 1 TiB map is address space, not disk."""
    with MetadataIndex(tmp_path / "index") as index:
        index.put_many("objects", [(str(i).encode(), b"x" * 100) for i in range(1000)])
    size = os.stat(tmp_path / "index" / "data.mdb").st_blocks * 512
    assert size < 16 << 20


def test_an_environment_is_opened_once_per_process(tmp_path: Path) -> None:
    with (
        MetadataIndex(tmp_path / "index"),
        pytest.raises(RuntimeError, match="already open in this process"),
    ):
        MetadataIndex(tmp_path / "index")
    MetadataIndex(tmp_path / "index").close()  # closing forgot it
