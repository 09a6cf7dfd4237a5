"""ONNX Runtime's own logger follows the tool's verbosity (issue 16): with -q, a model that makes
ONNX Runtime warn ("Removing initializer … not used by any node", printed by sessions the quantizers
create) leaves stderr with the tool's own lines only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from helpers import child_pythonpath
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]


def model_with_unused_initializers(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    unused = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), f"unused_{i}") for i in range(3)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        initializer=[numpy_helper.from_array(w, "W"), *unused],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_quiet_run_prints_no_onnx_runtime_warnings(tmp_path: Path) -> None:
    src = model_with_unused_initializers(tmp_path / "m.onnx")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: quantize\n    mode: static\n    random_calibration: true\n"
                   "measure: {repeat: 3, warmup: 1, single_thread: false, parity_samples: 8}\noutput: {markdown: false}\n")
    r = subprocess.run([sys.executable, "-m", "cli", "run", str(src), "-c", str(cfg), "-o", str(tmp_path / "o.onnx"), "-q"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": child_pythonpath(), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Removing initializer" not in r.stderr and "onnxruntime" not in r.stderr, r.stderr[-2000:]
    assert "\x1b[" not in r.stderr  # no raw colour escapes outside a terminal
