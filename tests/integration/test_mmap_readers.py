"""The memory-mapped readers training code uses, through a real mount: numpy's `mmap_mode`,
safetensors (which maps the file and reads tensors out of the mapping) and Arrow's memory-mapped
IPC files. Each file spans several blocks and is read in an order that faults pages in cold.

The readers run in a child process, as a training job would: the test S3 server runs in the
pytest process, and a page fault taken while a library holds the GIL (safetensors opens and
maps the file in Rust without releasing it) would otherwise stall the very server that has to
answer the daemon.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors

from tests.integration.conftest import BLOCK, S3Bucket

ROOT = Path(__file__).resolve().parents[2]
ARROW_ROWS = 400_000
ARROW_BATCH = 50_000


def _array(seed: int, shape: tuple[int, ...], dtype: str) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _numpy_array() -> np.ndarray[Any, Any]:
    return _array(1, (1000, 1100), "float32")  # ~4.2 MiB


def _tensors() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "embed.weight": _array(3, (2048, 512), "float32"),  # 4 MiB
        "layer.0.bias": _array(4, (512,), "float16"),
        "layer.1.weight": _array(5, (300, 700), "float64"),
    }


def _table() -> pa.Table:
    n = ARROW_ROWS
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(_array(6, (n,), "float64")),
            "label": pa.array([f"row-{i % 1000}" for i in range(n)]),
        }
    )


def check_numpy(path: str) -> None:
    array = _numpy_array()
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    assert mapped.shape == array.shape and mapped.dtype == array.dtype
    assert np.array_equal(mapped[-1], array[-1])  # the end of the file first
    rows = np.random.default_rng(2).integers(0, 1000, 50)
    assert np.array_equal(mapped[rows], array[rows])  # scattered rows
    assert np.array_equal(np.asarray(mapped), array)


def check_safetensors(path: str) -> None:
    tensors = _tensors()
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"step": "7"}
        assert sorted(f.keys()) == sorted(tensors)
        for name in ("layer.1.weight", "layer.0.bias", "embed.weight"):  # the last one first
            assert np.array_equal(f.get_tensor(name), tensors[name])
        rows = f.get_slice("embed.weight")[1000:1010]
        assert np.array_equal(rows, tensors["embed.weight"][1000:1010])


def check_arrow(path: str) -> None:
    with pa.memory_map(path, "r") as source:
        reader = pa.ipc.open_file(source)
        assert reader.num_record_batches == ARROW_ROWS // ARROW_BATCH
        last = reader.get_batch(reader.num_record_batches - 1)  # the end of the file first
        assert last.column("id")[0].as_py() == ARROW_ROWS - ARROW_BATCH
        assert reader.read_all().equals(_table())


def _check_in_child(check: str, path: Path) -> None:
    code = f"from tests.integration.test_mmap_readers import {check}; {check}({str(path)!r})"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}  # asserts check
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_numpy_mmap_mode(bucket: S3Bucket, mounter: Any) -> None:
    buf = io.BytesIO()
    np.save(buf, _numpy_array())
    assert buf.tell() > 4 * BLOCK
    bucket.put("data/array.npy", buf.getvalue())
    m = mounter()
    _check_in_child("check_numpy", m.path / "data" / "array.npy")


def test_safetensors(bucket: S3Bucket, mounter: Any) -> None:
    data = save_safetensors(_tensors(), metadata={"step": "7"})
    assert len(data) > 4 * BLOCK
    bucket.put("ckpt/model.safetensors", data)
    m = mounter()
    _check_in_child("check_safetensors", m.path / "ckpt" / "model.safetensors")


def test_arrow_memory_mapped_ipc_file(bucket: S3Bucket, mounter: Any) -> None:
    sink = pa.BufferOutputStream()
    table = _table()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=ARROW_BATCH)
    data = sink.getvalue().to_pybytes()
    assert len(data) > 4 * BLOCK
    bucket.put("tables/t.arrow", data)
    m = mounter()
    _check_in_child("check_arrow", m.path / "tables" / "t.arrow")
