"""Staging files move large writes and upload reads with O_DIRECT: whatever the alignment of a
write, and whichever way the bytes are read back, the file holds exactly what was written."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from wsfuse import directio
from wsfuse.fs import staging as staging_mod
from wsfuse.fs.staging import Staging


def test_unaligned_large_writes_round_trip_through_every_read(tmp_path: Path) -> None:
    st = Staging(tmp_path)
    assert st.direct_fd >= 0  # the test's filesystem takes O_DIRECT
    rng = random.Random(7)
    model = bytearray()
    # Like FUSE direct_io writes from an unaligned buffer: 1 MiB - 48 bytes, then 48 bytes.
    pieces = [(1 << 20) - 48, 48] * 3 + [staging_mod.DIRECT_MIN + 5, 3 << 20, 4096 * 20]
    offset = 0
    for n in pieces:
        data = rng.randbytes(n)
        assert st.pwrite(data, offset) == n
        model[offset : offset + n] = data
        offset += n
    # An overwrite straddling pages, in the middle.
    data = rng.randbytes(200_000)
    st.pwrite(data, 123_457)
    model[123_457 : 123_457 + len(data)] = data
    assert st.size == len(model)
    assert st.pread(len(model), 0) == bytes(model)
    for off, length in ((0, len(model)), (1 << 20, 8 << 20), (4096, 5), (8 << 20, 50 << 20)):
        assert st.read_uncached(length, off) == bytes(model[off : off + length])
    assert st.read_uncached(100, 4097) == bytes(model[4097:4197])  # unaligned: buffered read
    st.close(remove=True)
    assert not st.path.exists()


def test_a_filesystem_that_refuses_o_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Staging(tmp_path)
    real = os.pwrite

    def refuse_direct(fd: int, data: object, offset: int) -> int:
        if fd == st.direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(staging_mod.os, "pwrite", refuse_direct)
    data = os.urandom(3 << 20)
    assert st.pwrite(data, 100) == len(data)
    assert not st._direct_writes  # later large writes go through the page cache
    assert st.pread(len(data), 100) == data
    st.pwrite(data, 0)
    assert st.read_uncached(len(data), 0) == data
    st.close(remove=True)


def test_open_direct_reports_a_filesystem_without_o_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")

    def einval(*_args: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(directio.os, "open", einval)
    assert directio.open_direct(path, os.O_RDONLY) == -1


def test_pread_direct_refuses_an_unaligned_offset(tmp_path: Path) -> None:
    pool = directio.AlignedPool(8192, 1)
    with pytest.raises(ValueError, match="unaligned"):
        directio.pread_direct(0, 10, 5, pool)
