"""passes/quantize/activation_floor.py: a proven lower bound under an activation's output, which
lets per-token scaling skip its |x| pass."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from optimize.hardware import has_int8_dot_product  # noqa: E402
from passes.quantize.activation_floor import constant_scalars, floor_of  # noqa: E402
from passes.quantize.prompt_int8 import rewrite_matmuls  # noqa: E402

D, H = 16, 48


def const(name: str, value: float):
    return numpy_helper.from_array(np.array(value, np.float32), name)


def erf_gelu(h: str = "h", out: str = "g", divisor: float = 1.4142135, half: float = 0.5, one: float = 1.0,
             order: str = "torch") -> tuple[list, list]:
    """GELU spelled out the ways exporters write it: torch's ((h · (erf(h / √2) + 1)) · 0.5), or 0.5
    first, or the product nested the other way."""
    nodes = [helper.make_node("Div", [h, "c_div"], ["hs"]), helper.make_node("Erf", ["hs"], ["e"]),
             helper.make_node("Add", ["c_one", "e"] if order == "nested" else ["e", "c_one"], ["e1"])]
    if order == "torch":
        nodes += [helper.make_node("Mul", [h, "e1"], ["a"]), helper.make_node("Mul", ["a", "c_half"], [out])]
    elif order == "half_first":
        nodes += [helper.make_node("Mul", ["c_half", h], ["a"]), helper.make_node("Mul", ["a", "e1"], [out])]
    else:
        nodes += [helper.make_node("Mul", ["e1", "c_half"], ["a"]), helper.make_node("Mul", [h, "a"], [out])]
    return nodes, [const("c_div", divisor), const("c_one", one), const("c_half", half)]


def floor(nodes, inits, x: str = "g"):
    graph = helper.make_graph(nodes, "g", [], [], inits)
    return floor_of(x, {o: n for n in nodes for o in n.output}, constant_scalars(graph))


@pytest.mark.parametrize("order", ["torch", "half_first", "nested"])
def test_the_erf_gelu_exporters_write_is_floored_at_gelus_minimum(order):
    nodes, inits = erf_gelu(order=order)
    assert floor(nodes, inits) == pytest.approx(0.16997 * 1.01, rel=1e-4)


def test_activation_ops_and_spelled_out_silu_have_their_minima():
    assert floor([helper.make_node("Relu", ["h"], ["g"])], []) == 0.0
    assert floor([helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft")], []) == pytest.approx(0.17005 * 1.01)
    quick = helper.make_node("QuickGelu", ["h"], ["g"], domain="com.microsoft", alpha=2.0)
    assert floor([quick], []) == pytest.approx(0.27847 / 2 * 1.01)
    silu = [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["h", "s"], ["g"])]
    assert floor(silu, []) == pytest.approx(0.27847 * 1.01)
    scaled = [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Mul", ["r", "k"], ["g"])]
    assert floor(scaled, [const("k", 3.0)]) == 0.0


def test_nothing_unproven_gets_a_floor():
    nodes, inits = erf_gelu()
    assert floor(nodes, inits, "h") is None  # the MatMul's output before the activation
    assert floor(*erf_gelu(half=-0.5)) is None  # a negative scale flips the bound
    assert floor(*erf_gelu(divisor=-1.4142135)) is None
    assert floor(*erf_gelu(one=2.0)) is None  # h · (2 + erf) has no lower bound
    assert floor([helper.make_node("Tanh", ["h"], ["g"])], []) is None
    assert floor([helper.make_node("LeakyRelu", ["h"], ["g"])], []) is None
    swiglu = [helper.make_node("Sigmoid", ["gate"], ["s"]), helper.make_node("Mul", ["gate", "s"], ["silu"]),
              helper.make_node("Mul", ["silu", "up"], ["g"])]
    assert floor(swiglu, []) is None  # silu(gate) · up: unbounded
    other = [helper.make_node("Div", ["h2", "c_div"], ["hs"]), helper.make_node("Erf", ["hs"], ["e"]),
             helper.make_node("Add", ["e", "c_one"], ["e1"]), helper.make_node("Mul", ["h", "e1"], ["g"])]
    assert floor(other, [const("c_div", 1.41), const("c_one", 1.0)]) is None  # erf of another tensor


@pytest.mark.parametrize("divisor,half", [(1.4142135, 0.5), (0.3, 2.0), (7.0, 0.1)])
def test_the_floor_holds_for_every_input(divisor, half):
    nodes, inits = erf_gelu(divisor=divisor, half=half)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, [None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    h = np.linspace(-50 * divisor, 50 * divisor, 400_001, dtype=np.float32)
    g = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"h": h})[0]
    b = floor(nodes, inits)
    assert g.min() >= -b and g.min() < -b / 1.02  # covers the minimum, and not loosely


def gelu_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    gelu, consts = erf_gelu()
    nodes = [helper.make_node("MatMul", ["x", "w_up"], ["h"], name="up"), *gelu,
             helper.make_node("MatMul", ["g", "w_down"], ["y"], name="down")]
    inits = [numpy_helper.from_array((rng.standard_normal((D, H)) / 2).astype(np.float32), "w_up"),
             numpy_helper.from_array((rng.standard_normal((H, D)) / 7).astype(np.float32), "w_down"), *consts]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_gelu_mlp_scales_per_token_without_an_abs_pass_and_computes_the_same():
    model = gelu_mlp()
    x = np.random.default_rng(4).standard_normal((4, 10, D)).astype(np.float32)
    x[:, 0] *= 30  # an outlier token per sequence
    x[0, 1] *= 0.01  # a token whose activations all lie within the floor
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # 8-bit codes saturate AVX2's u8 × s8 16-bit pair sums without VNNI (the quantize pass measures
    # reduce_range for that); 7-bit ones do not, so the check holds on either CPU
    code_max = 127 if has_int8_dot_product() else 63
    rewrite_matmuls(model, {"up"}, code_max=code_max, per_channel=True, tag="tok")
    ops = [n.op_type for n in model.graph.node]
    assert "Abs" not in ops and "Div" in ops and ops.count("Reciprocal") == 1  # the Div is the GELU's own
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rel = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    assert rel.max() < 0.03, rel.max()


@pytest.mark.parametrize("d", [1.0, 1.702, 0.25])
def test_the_silu_floor_holds_for_every_input(d):
    nodes = [helper.make_node("Mul", ["h", "c_d"], ["hd"]), helper.make_node("Sigmoid", ["hd"], ["s"]),
             helper.make_node("Mul", ["h", "s"], ["g"])]
    inits = [const("c_d", d)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, [None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    h = np.linspace(-60 / d, 60 / d, 400_001, dtype=np.float32)
    g = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"h": h})[0]
    b = floor(nodes, inits)
    assert g.min() >= -b and g.min() < -b / 1.02
