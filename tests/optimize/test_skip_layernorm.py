"""Residual Add → Sum before layer norms (optimize/skip_layernorm.py): which adds, same values,
no SkipLayerNormalization in ONNX Runtime's optimized graph, and the modes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tiny_models import save_graph

from optimize import skip_layernorm
from optimize.speed import FASTER, SAME, RatioEstimate

H = 16


def _block_graph(path: Path, decomposed_second: bool = False) -> Path:
    """x → MatMul W → Add b (bias) → Add x (residual) → LayerNormalization → MatMul V → Add c →
    Add (residual) → LayerNormalization (or its ReduceMean/Sub/... decomposition) → y; x (batch, 4, H)."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((H, H)).astype(np.float32), "b": rng.standard_normal(H).astype(np.float32),
             "V": rng.standard_normal((H, H)).astype(np.float32), "c": rng.standard_normal(H).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, H).astype(np.float32), "be": rng.standard_normal(H).astype(np.float32),
             "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m1"]), helper.make_node("Add", ["m1", "b"], ["a1"]),
             helper.make_node("Add", ["a1", "x"], ["r1"]),
             helper.make_node("LayerNormalization", ["r1", "g", "be"], ["n1"], axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n1", "V"], ["m2"]), helper.make_node("Add", ["m2", "c"], ["a2"]),
             helper.make_node("Add", ["a2", "n1"], ["r2"])]
    if decomposed_second:
        nodes += [helper.make_node("ReduceMean", ["r2"], ["mu"], axes=[-1]), helper.make_node("Sub", ["r2", "mu"], ["d"]),
                  helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
                  helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                  helper.make_node("Div", ["d", "sd"], ["z"]), helper.make_node("Mul", ["z", "g"], ["zg"]),
                  helper.make_node("Add", ["zg", "be"], ["y"])]
    else:
        nodes.append(helper.make_node("LayerNormalization", ["r2", "g", "be"], ["y"], axis=-1, epsilon=1e-5))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, H])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, H])
    return save_graph(nodes, [x], [y], inits, path, opset=17)


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _run(path: Path, x: np.ndarray, level: ort.GraphOptimizationLevel) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_finds_the_residual_adds_only(tmp_path):
    model = onnx.load(str(_block_graph(tmp_path / "m.onnx", decomposed_second=True)))
    found = [n.output[0] for n in skip_layernorm.residual_adds(model)]
    # the bias adds (a1, a2: an initializer operand) and the decomposition's epsilon / beta adds are not residuals
    assert found == ["r1", "r2"]


def test_an_add_with_another_consumer_or_a_graph_output_is_left(tmp_path):
    model = onnx.load(str(_block_graph(tmp_path / "m.onnx")))
    model.graph.output.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, None))
    model.graph.node.append(helper.make_node("Relu", ["r2"], ["extra"]))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
    assert skip_layernorm.residual_adds(model) == []


def test_rewrite_keeps_the_values_and_stops_the_fusion(tmp_path):
    src = _block_graph(tmp_path / "m.onnx")
    dst = tmp_path / "sum.onnx"
    assert skip_layernorm.rewrite(src, dst) == 2
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    x = np.random.default_rng(1).standard_normal((3, 4, H)).astype(np.float32)
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(_run(src, x, plain), _run(dst, x, plain))
    for path, fused in ((src, True), (dst, False)):  # what a default session does with each file
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"opt-{path.stem}.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = _ops(onnx.load(so.optimized_model_filepath))
        assert (ops["SkipLayerNormalization"] > 0) is fused, ops
    np.testing.assert_allclose(_run(dst, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), _run(src, x, plain), atol=1e-4)


def test_rewrite_of_a_decomposed_layer_norm_keeps_the_values(tmp_path):
    src = _block_graph(tmp_path / "m.onnx", decomposed_second=True)
    dst = tmp_path / "sum.onnx"
    assert skip_layernorm.rewrite(src, dst) == 2
    x = np.random.default_rng(2).standard_normal((2, 4, H)).astype(np.float32)
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(_run(src, x, plain), _run(dst, x, plain))


def _choose(tmp_path, src, mode):
    x = np.random.default_rng(0).standard_normal((2, 4, H)).astype(np.float32)
    return skip_layernorm.choose(src, tmp_path / "out", mode=mode, inputs={"x": x}, threads=1, warmup=1, tolerance=0.03)


def test_allow_and_a_graph_without_residual_adds_decide_nothing(tmp_path):
    src = _block_graph(tmp_path / "m.onnx")
    assert _choose(tmp_path, src, "allow") is None
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4, H]) for n in ("x", "y")]
    assert _choose(tmp_path, save_graph(nodes, io[:1], io[1:], {}, tmp_path / "relu.onnx"), "auto") is None


def test_avoid_rewrites_without_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(skip_layernorm, "_time_both", lambda *a, **k: pytest.fail("avoid must not time"))
    choice = _choose(tmp_path, _block_graph(tmp_path / "m.onnx"), "avoid")
    assert choice.path == tmp_path / "out" / "model.onnx" and choice.metrics["layout"] == "sum"
    assert _ops(onnx.load(str(choice.path)))["Sum"] == 2


@pytest.mark.parametrize(("verdict", "kept"), [(FASTER, False), (SAME, True)])
def test_auto_keeps_the_rewrite_only_when_it_measured_faster(tmp_path, monkeypatch, verdict, kept):
    est = RatioEstimate(value=1.2 if verdict == FASTER else 1.0, low=1.1 if verdict == FASTER else 0.98,
                        high=1.3 if verdict == FASTER else 1.02, verdict=verdict, tolerance=0.03, rounds=20)
    monkeypatch.setattr(skip_layernorm, "_time_both", lambda *a, **k: (est, 2.0, 2.0 / est.value, 20))
    src = _block_graph(tmp_path / "m.onnx")
    choice = _choose(tmp_path, src, "auto")
    assert (choice.path == src) is kept
    assert choice.metrics["layout"] == ("add" if kept else "sum") and choice.metrics["verdict"] == verdict
    assert not (tmp_path / "out").exists() if kept else choice.path.exists()


def test_auto_times_the_two_layouts_for_real(tmp_path):
    choice = _choose(tmp_path, _block_graph(tmp_path / "m.onnx"), "auto")
    m = choice.metrics
    assert m["rounds"] >= skip_layernorm.ROUNDS and m["add_ms"] > 0 and m["sum_ms"] > 0
    assert m["interval"][0] <= m["speedup"] <= m["interval"][1]
    assert m["layout"] == ("sum" if m["verdict"] == FASTER else "add")


@pytest.mark.parametrize("mode", ["avoid", "allow"])
def test_the_pipeline_records_the_layout_step(tmp_path, mode):
    from optimize import pipeline
    from optimize.api import RunOptions

    src = _block_graph(tmp_path / "m.onnx")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: graph\nmeasure: {repeat: 3, warmup: 1, parity_samples: 8}\n"
                   f"output: {{skip_layernorm: {mode}}}\n")
    out = tmp_path / "o" / "m.opt.onnx"
    report = pipeline.run(RunOptions(model=str(src), config=str(cfg), output=str(out), threads=1))
    sums = _ops(onnx.load(str(out)))["Sum"]
    if mode == "allow":
        assert [s.type for s in report.steps] == ["graph"] and sums == 0
        return
    step = report.steps[-1]
    assert [s.type for s in report.steps] == ["graph", "skip_layernorm"] and step.inserted and step.pass_index is None
    assert step.metrics == {"mode": "avoid", "residual_adds": 2, "layout": "sum"} and sums == 2
    assert report.metrics["parity"].value > 0.9999


def test_auto_decides_nothing_when_the_runtime_fuses_nothing(tmp_path, monkeypatch):
    """A file without the shape facts ONNX Runtime's fusion needs (here: inputs of unknown rank) keeps
    its Add nodes and nothing is timed."""
    src = _block_graph(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.ClearField("shape")
    onnx.save(model, str(src))
    assert skip_layernorm.fused_count(src, tmp_path / "probe", 1) == 0 and not (tmp_path / "probe").exists()
    monkeypatch.setattr(skip_layernorm, "_time_both", lambda *a, **k: pytest.fail("nothing to time"))
    assert _choose(tmp_path, src, "auto") is None and not (tmp_path / "out").exists()
