"""optimize.onnx_io: atomic writes (nothing under the final name, no temp files, on success or
failure), normal permissions, sizes that include external data."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimize import onnx_io
from optimize.errors import ModelLoadError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _run(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    return sess.run(None, {"x": x})[0]  # every model here takes x[N, 8]


def test_write_atomic_writes_the_model_and_nothing_else(tmp_path: Path, mlp_onnx: Path) -> None:
    out_dir = tmp_path / "out" / "nested"
    target = onnx_io.write_atomic(mlp_onnx, out_dir / "model.onnx")
    assert target == out_dir / "model.onnx"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx"]
    assert onnx.load(str(target)) == onnx.load(str(mlp_onnx))
    assert np.array_equal(_run(target), _run(mlp_onnx))


def test_write_atomic_replaces_an_existing_file(tmp_path: Path, mlp_onnx: Path) -> None:
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old contents")
    onnx_io.write_atomic(mlp_onnx, target)
    assert target.read_bytes() == onnx.load(str(mlp_onnx)).SerializeToString()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]


def test_write_atomic_inlines_external_data(tmp_path: Path, mlp_onnx: Path) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    onnx.save_model(onnx.load(str(mlp_onnx)), str(src_dir / "m.onnx"), save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    target = onnx_io.write_atomic(src_dir / "m.onnx", tmp_path / "out" / "m.onnx")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.onnx"]
    assert onnx_io.total_bytes(target) == target.stat().st_size
    assert np.array_equal(_run(target), _run(mlp_onnx))


class _FailingFile:
    """Writes half of what it is given, then fails like a full disk."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def test_write_failure_midway_leaves_nothing(tmp_path: Path, mlp_onnx: Path, monkeypatch) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: _FailingFile(real_fdopen(fd, mode, *a, **k)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(OSError, match="No space left"):
        onnx_io.write_atomic(mlp_onnx, out_dir / "model.onnx")
    assert list(out_dir.iterdir()) == []


def test_failure_keeps_the_previous_file_intact(tmp_path: Path, mlp_onnx: Path, monkeypatch) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.onnx"
    target.write_bytes(b"previous good model")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C just before the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        onnx_io.write_atomic(mlp_onnx, target)
    assert target.read_bytes() == b"previous good model"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx"]


def test_serialization_failure_leaves_nothing(tmp_path: Path, mlp_onnx: Path, monkeypatch) -> None:
    real_load = onnx_io.load

    class Broken:
        def __init__(self, model) -> None:
            self._model = model

        def ByteSize(self) -> int:
            return self._model.ByteSize()

        def SerializeToString(self) -> bytes:
            raise ValueError("serialization failed")

    monkeypatch.setattr(onnx_io, "load", lambda p, **k: Broken(real_load(p, **k)))
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="serialization failed"):
        onnx_io.write_atomic(mlp_onnx, out_dir / "model.onnx")
    assert not (out_dir / "model.onnx").exists()
    assert list(out_dir.iterdir()) == []


def test_write_bytes_atomic_permissions_follow_umask(tmp_path: Path, umask_022) -> None:
    target = onnx_io.write_bytes_atomic(b"report", tmp_path / "r.json")
    assert target.read_bytes() == b"report"
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode != 0o600
    assert mode == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_write_atomic_permissions_follow_umask(tmp_path: Path, mlp_onnx: Path, umask_022) -> None:
    target = onnx_io.write_atomic(mlp_onnx, tmp_path / "out" / "m.onnx")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_total_bytes_without_external_data(mlp_onnx: Path) -> None:
    assert onnx_io.total_bytes(mlp_onnx) == mlp_onnx.stat().st_size


def test_total_bytes_includes_external_data(tmp_path: Path, mlp_onnx: Path) -> None:
    model = onnx.load(str(mlp_onnx))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size >= 4 * (8 * 16 + 16 + 16 * 4 + 4)  # every float32 parameter
    assert onnx_io.total_bytes(path) == path.stat().st_size + data.stat().st_size


def test_total_bytes_counts_each_data_file_once(tmp_path: Path, mlp_onnx: Path) -> None:
    model = onnx.load(str(mlp_onnx))
    path = tmp_path / "multi.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    files = [p for p in tmp_path.iterdir() if p.name not in ("multi.onnx", "mlp.onnx")]
    assert len(files) == 4  # one per initializer
    assert onnx_io.total_bytes(path) == path.stat().st_size + sum(f.stat().st_size for f in files)


def test_save_and_load_round_trip(tmp_path: Path, mlp_onnx: Path) -> None:
    model = onnx_io.load(mlp_onnx)
    out = onnx_io.save(model, tmp_path / "a" / "b.onnx")
    assert out.is_file()
    assert onnx_io.load(out) == model


def test_load_errors(tmp_path: Path, mlp_onnx: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        onnx_io.load(bad)
    onnx.save_model(onnx.load(str(mlp_onnx)), str(tmp_path / "e.onnx"), save_as_external_data=True,
                    location="e.onnx.data", size_threshold=0)
    (tmp_path / "e.onnx.data").unlink()
    with pytest.raises(ModelLoadError):
        onnx_io.load(tmp_path / "e.onnx")


@pytest.fixture
def wide_onnx(tmp_path: Path) -> Path:
    """x[N,8] @ W[8,64] @ V[64,4]: tensors over onnx's 1 KB external-data size threshold."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "V"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((8, 64)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "V")],
    )
    path = tmp_path / "wide.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_large_model_path_writes_model_and_data_atomically(tmp_path: Path, wide_onnx: Path, monkeypatch,
                                                           umask_022) -> None:
    # Exercise the >2 GB branch with a small model by lowering the threshold.
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 0)
    out_dir = tmp_path / "out"
    target = onnx_io.write_atomic(wide_onnx, out_dir / "big.onnx")
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.onnx", "big.onnx.data"]  # no temp folder left
    assert onnx_io.total_bytes(target) == target.stat().st_size + (out_dir / "big.onnx.data").stat().st_size
    assert target.stat().st_size < (out_dir / "big.onnx.data").stat().st_size
    assert stat.S_IMODE((out_dir / "big.onnx.data").stat().st_mode) == 0o644
    assert np.array_equal(_run(target), _run(wide_onnx))


def test_large_model_path_failure_leaves_no_model(tmp_path: Path, wide_onnx: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 0)
    real_save = onnx.save_model

    def save_then_fail(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", save_then_fail)
    out_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        onnx_io.write_atomic(wide_onnx, out_dir / "big.onnx")
    assert list(out_dir.iterdir()) == []


def test_save_uses_external_data_above_the_threshold(tmp_path: Path, wide_onnx: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 0)
    out = onnx_io.save(onnx.load(str(wide_onnx)), tmp_path / "s" / "m.onnx")
    assert (out.parent / "m.onnx.data").stat().st_size >= 4 * (8 * 64 + 64 * 4)
    assert np.array_equal(_run(out), _run(wide_onnx))
