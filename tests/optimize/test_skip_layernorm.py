"""Residual Add → Sum before layer norms (optimize/skip_layernorm.py): which adds, same values,
no SkipLayerNormalization in ONNX Runtime's optimized graph, and the modes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import rewrite_ctx
from onnx import TensorProto, helper
from tiny_models import save_graph

from optimize import rewrite_step, skip_layernorm
from optimize.benchmark import Timing
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
    return skip_layernorm.choose(src, tmp_path / "out", mode=mode, inputs={"x": x}, threads=1, warmup=1, repeat=20,
                                 tolerance=0.03)


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


@pytest.mark.parametrize(("value", "low", "high", "verdict", "kept"), [
    (1.2, 1.1, 1.3, FASTER, False),
    (1.02, 1.005, 1.03, SAME, False),  # surely faster, if within the report's tolerance band: same values, so Sum
    (1.0, 0.98, 1.02, SAME, True),
])
def test_auto_keeps_the_rewrite_only_when_it_measured_faster(tmp_path, monkeypatch, value, low, high, verdict, kept):
    est = RatioEstimate(value=value, low=low, high=high, verdict=verdict, tolerance=0.03, rounds=20)
    monkeypatch.setattr(skip_layernorm, "_time_both", lambda *a, **k: (est, 2.0, 2.0 / est.value, 20))
    src = _block_graph(tmp_path / "m.onnx")
    choice = _choose(tmp_path, src, "auto")
    assert (choice.path == src) is kept
    assert choice.metrics["layout"] == ("add" if kept else "sum") and choice.metrics["verdict"] == verdict
    assert not (tmp_path / "out").exists() if kept else choice.path.exists()


def test_auto_times_the_two_layouts_for_real(tmp_path):
    choice = _choose(tmp_path, _block_graph(tmp_path / "m.onnx"), "auto")
    m = choice.metrics
    assert m["rounds"] >= rewrite_step.ROUNDS and m["add_ms"] > 0 and m["sum_ms"] > 0
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
    assert step.metrics == {"mode": "avoid", "residual_adds": 2, "rewritten": 2, "layout": "sum"} and sums == 2
    assert report.metrics["parity"].value > 0.9999


def test_auto_decides_nothing_when_the_runtime_fuses_nothing(tmp_path, monkeypatch):
    """A file without the shape facts ONNX Runtime's fusion needs (here: inputs of unknown rank) keeps
    its Add nodes and nothing is timed."""
    src = _block_graph(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.ClearField("shape")
    onnx.save(model, str(src))
    assert skip_layernorm.runtime_fused(src, tmp_path / "probe", 1) == set() and not (tmp_path / "probe").exists()
    monkeypatch.setattr(skip_layernorm, "_time_both", lambda *a, **k: pytest.fail("nothing to time"))
    assert _choose(tmp_path, src, "auto") is None and not (tmp_path / "out").exists()


def _with_broadcast_residual(path: Path) -> Path:
    """The block graph with a third residual in front: x + pos (pos of shape (1, 4, H), computed, as a
    BERT embedding sum) → LayerNormalization; ONNX Runtime fuses only adds of equal shapes."""
    model = onnx.load(str(_block_graph(path)))
    g = model.graph
    g.input.append(helper.make_tensor_value_info("pos", TensorProto.FLOAT, [1, 4, H]))
    first = [helper.make_node("Relu", ["pos"], ["pr"]), helper.make_node("Add", ["x", "pr"], ["r0"]),
             helper.make_node("LayerNormalization", ["r0", "g", "be"], ["x0"], axis=-1, epsilon=1e-5)]
    rest = list(g.node)
    for n in rest:
        n.input[:] = ["x0" if i == "x" else i for i in n.input]
    del g.node[:]
    g.node.extend(first + rest)
    onnx.save(model, str(path))
    return path


def test_auto_rewrites_only_the_adds_the_runtime_fuses(tmp_path, monkeypatch):
    src = _with_broadcast_residual(tmp_path / "m.onnx")
    est = RatioEstimate(1.2, 1.1, 1.3, FASTER, 0.03, 20)
    monkeypatch.setattr(skip_layernorm, "_time_both", lambda *a, **k: (est, 2.0, 1.7, 20))
    x = np.random.default_rng(0).standard_normal((2, 4, H)).astype(np.float32)
    feeds = {"x": x, "pos": np.ones((1, 4, H), np.float32)}
    choice = skip_layernorm.choose(src, tmp_path / "out", mode="auto", inputs=feeds, threads=1, warmup=1, repeat=20,
                                   tolerance=0.03)
    assert choice.metrics["residual_adds"] == 3 and choice.metrics["fused"] == choice.metrics["rewritten"] == 2
    sums = [n.output[0] for n in onnx.load(str(choice.path)).graph.node if n.op_type == "Sum"]
    assert sums == ["r1", "r2"]  # the broadcast add, which the runtime does not fuse, stays an Add
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = plain
    got = ort.InferenceSession(str(choice.path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    avoid = skip_layernorm.choose(src, tmp_path / "out2", mode="avoid", inputs=feeds, threads=1, warmup=1, repeat=20,
                                  tolerance=0.03)
    assert avoid.metrics["rewritten"] == 3


@pytest.mark.parametrize(("add_ms", "sum_ms", "layout"), [(2.0, 1.5, "sum"), (1.5, 2.0, "add")])
def test_auto_direction_of_the_decision(tmp_path, monkeypatch, add_ms, sum_ms, layout):
    """Fixed timings through the real ratio and verdict code: the faster file wins."""
    def fake(models, inputs, **kw):
        jitter = np.linspace(0.99, 1.01, kw["repeat"])
        return {"add": Timing("add", list(add_ms * jitter), 2, 1, 1, "ort", "cpu"),
                "sum": Timing("sum", list(sum_ms * jitter), 2, 1, 1, "ort", "cpu")}

    monkeypatch.setattr("optimize.benchmark.interleaved", fake)
    src = _block_graph(tmp_path / "m.onnx")
    choice = _choose(tmp_path, src, "auto")
    assert choice.metrics["layout"] == layout and (choice.path == src) is (layout == "add")


def test_no_rewrite_below_opset_8_with_attributes_or_for_integers(tmp_path):
    model = onnx.load(str(_block_graph(tmp_path / "m.onnx")))
    assert len(skip_layernorm.residual_adds(model)) == 2
    old = onnx.ModelProto()
    old.CopyFrom(model)
    old.opset_import[0].version = 7
    assert skip_layernorm.residual_adds(old) == []
    attr = onnx.ModelProto()
    attr.CopyFrom(model)
    next(n for n in attr.graph.node if n.output[0] == "r1").attribute.append(helper.make_attribute("broadcast", 1))
    assert [n.output[0] for n in skip_layernorm.residual_adds(attr)] == ["r2"]
    ints = onnx.ModelProto()
    ints.CopyFrom(model)
    ints.graph.value_info.append(helper.make_tensor_value_info("a2", TensorProto.INT32, None))
    assert [n.output[0] for n in skip_layernorm.residual_adds(ints)] == ["r1"]


def test_rewrite_streams_external_weights(tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    model = onnx.load(str(_block_graph(tmp_path / "m.onnx")))
    onnx.save_model(model, str(src_dir / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    dst = tmp_path / "out" / "model.onnx"
    assert skip_layernorm.rewrite(src_dir / "m.onnx", dst) == 2
    assert (dst.parent / "model.onnx.data").is_file()
    x = np.random.default_rng(3).standard_normal((2, 4, H)).astype(np.float32)
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(_run(src_dir / "m.onnx", x, plain), _run(dst, x, plain))


def test_apply_auto_leaves_cuda_runs_alone_and_decides_on_cpu(tmp_path):
    from types import SimpleNamespace

    from optimize.handle import ModelHandle

    src = _block_graph(tmp_path / "m.onnx")
    final = ModelHandle(form="onnx", onnx_path=src, inputs=[], outputs=["y"])
    lineage = SimpleNamespace(steps=[])
    x = np.random.default_rng(0).standard_normal((2, 4, H)).astype(np.float32)
    assert skip_layernorm.apply(rewrite_ctx(tmp_path, device="cuda"), final, lineage, {"x": x}) is final and not lineage.steps
    out = skip_layernorm.apply(rewrite_ctx(tmp_path), final, lineage, {"x": x})
    (step,) = lineage.steps
    assert step.type == "skip_layernorm" and step.index == 1 and step.metrics["fused"] == 2
    assert (out.onnx_path != src) is (step.metrics["layout"] == "sum")
