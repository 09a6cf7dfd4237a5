"""Inputs that hold their samples on another axis than 0 (an RNN state `[2, batch, 128]`, as in
silero-vad): the axis is found from the model's dims (optimize.handle.batch_axes), data and random
probes are sample-major, and ONNX Runtime gets every input in the model's own layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cli.app import app  # noqa: E402
from optimize.export import onnx_input_specs  # noqa: E402
from optimize.handle import batch_axes  # noqa: E402
from optimize.runtime import predict  # noqa: E402


@pytest.mark.parametrize(("shapes", "expected"), [
    ({"input": ("batch", 576), "state": (2, "batch", 128), "sr": ()}, {"input": 0, "state": 1}),
    ({"input": ("?", "?"), "state": (2, "?", 128), "sr": ()}, {"input": 0, "state": 1}),  # unnamed dims
    ({"x": ("N", 3, 8, 8), "anchors": (2, 4)}, {"x": 0, "anchors": 0}),  # nothing symbolic beside axis 0
    ({"x": (1, 3), "h": (1, "?", 4)}, {"x": 0, "h": 0}),  # no symbolic batch: all axis 0
    ({"x": ("b", 4), "h": (1, "b", 4)}, {"x": 0, "h": 0}),  # axis 0 of 1: a batch-1 input, not a state
])
def test_the_sample_axis_is_read_from_the_dims(shapes, expected):
    assert batch_axes(shapes) == expected


def _stateful(path, unnamed=False):
    """y = x @ W (batch, 4); state_out = state * 2 + sum(x): state (2, batch, 3) batched on axis 1."""
    b = "?" if unnamed else "batch"
    dim = lambda d: "" if d == "?" else d  # noqa: E731
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["sx"], keepdims=1),  # (batch, 1)
        helper.make_node("Reshape", ["sx", "shape"], ["sx3"]),  # (1, batch, 1)
        helper.make_node("Mul", ["state", "two"], ["s2"]),
        helper.make_node("Add", ["s2", "sx3"], ["state_out"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array([1, -1, 1], np.int64), "shape"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim(b), 6]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, dim(b), 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim(b), 4]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, dim(b), 3])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("unnamed", [False, True])
def test_predict_feeds_the_model_layout_and_returns_samples_first(tmp_path, unnamed):
    path = _stateful(tmp_path / "m.onnx", unnamed)
    spec = {s.name: s for s in onnx_input_specs(path)}["state"]
    assert spec.batch_axis == 1 and not spec.batch_fixed
    assert spec.concrete_shape(5) == (5, 2, 3)  # sample-major
    rng = np.random.default_rng(1)
    x, state = rng.standard_normal((7, 6)).astype(np.float32), rng.standard_normal((2, 7, 3)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want_y, want_state = sess.run(None, {"x": x, "state": state})
    y, state_out = predict(sess, {"x": x, "state": np.moveaxis(state, 1, 0)}, batch_size=3)  # 3 + 3 + 1
    assert np.allclose(y, want_y) and np.allclose(state_out, np.moveaxis(want_state, 1, 0))


def test_a_run_with_data_in_the_model_layout_quantizes_and_passes_its_gates(tmp_path):
    path = _stateful(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((12, 6)).astype(np.float32),
             state=rng.standard_normal((2, 12, 3)).astype(np.float32))  # 12 samples on the state's axis 1
    cfg = tmp_path / "q.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\nmeasure:\n  repeat: 3\n"
                   "gates:\n  min_parity_cosine: 0.9\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["run", str(path), "-c", str(cfg), "-o", str(tmp_path / "out.onnx"), "--json",
                                 "--set", f"data.eval.source={tmp_path / 'd.npz'}", "--no-cache"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["metrics"]["parity"]["value"] > 0.9 and report["gates"][0]["passed"]
    assert report["metrics"]["parity"]["inputs"]["source"] == "data.eval"
    assert report["output"]["ops"].get("MatMulInteger", 0) + report["output"]["ops"].get("DynamicQuantizeMatMul", 0) >= 1


def test_random_probes_run_a_stateful_model(tmp_path):
    path = _stateful(tmp_path / "m.onnx")
    cfg = tmp_path / "q.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\nmeasure:\n  repeat: 3\n",
                   encoding="utf-8")
    r = CliRunner().invoke(app, ["run", str(path), "-c", str(cfg), "-o", str(tmp_path / "out.onnx"), "--json",
                                 "--no-cache"])
    assert r.exit_code == 0, r.stderr
