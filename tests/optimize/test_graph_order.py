"""optimize.graph_order: node order that counts what If/Loop bodies read from the outer graph
(ONNX Runtime's quantizers sort by explicit inputs only; the ONNX checker then refuses the model)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from optimize.graph_order import outer_reads, sort_graph  # noqa: E402


def _model(if_first: bool):
    # the If's branches read `h`, produced by a Relu in the outer graph
    then_g = helper.make_graph([helper.make_node("Identity", ["h"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    relu = helper.make_node("Relu", ["x"], ["h"], name="relu")
    cond = helper.make_node("ReduceMax", ["x"], ["c"], name="cond", keepdims=0)
    cast = helper.make_node("Cast", ["c"], ["b"], name="cast", to=TensorProto.BOOL)
    branch = helper.make_node("If", ["b"], ["y"], name="if", then_branch=then_g, else_branch=else_g)
    nodes = [cond, cast, branch, relu] if if_first else [cond, cast, relu, branch]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_if_is_moved_after_the_producer_its_branch_reads():
    model = _model(if_first=True)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    assert outer_reads(model.graph.node[2].attribute[0].g) == {"h"}
    assert sort_graph(model.graph)
    assert [n.name for n in model.graph.node] == ["cond", "cast", "relu", "if"]
    onnx.checker.check_model(model)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {"x": np.array([1.0, -2.0], np.float32)})[0], [1.0, 0.0])


def test_an_ordered_graph_is_left_as_it_is():
    model = _model(if_first=False)
    before = [n.name for n in model.graph.node]
    assert not sort_graph(model.graph)
    assert [n.name for n in model.graph.node] == before
