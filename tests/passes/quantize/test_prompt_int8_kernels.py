"""passes/quantize/prompt_int8.py without a model: MatMulNBits weights dequantized as the runtime
computes, per-token scaling, the MLP-inner rule, the head kept, and the auto candidates."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from passes.quantize.prompt_int8 import dense_weight, int8_nodes, live_nodes  # noqa: E402


def _nbits_node(rng, k, n, bs, bits, zero_points):
    blocks = -(-k // bs)
    codes = rng.integers(0, 2 ** bits, (n, blocks, bs), dtype=np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4) if bits == 4 else codes
    scale = rng.uniform(0.01, 0.1, n * blocks).astype(np.float32)
    inits = [numpy_helper.from_array(packed.astype(np.uint8), "B"), numpy_helper.from_array(scale, "S")]
    inputs = ["x", "B", "S"]
    if zero_points == "uint8":
        zp = rng.integers(0, 2 ** bits, (n, blocks + blocks % 2 if bits == 4 else blocks), dtype=np.uint8)
        zp = zp[:, 0::2] | (zp[:, 1::2] << 4) if bits == 4 else zp
        inits.append(numpy_helper.from_array(zp.reshape(-1), "Z"))
        inputs.append("Z")
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(rng.uniform(0, 15, n * blocks).astype(np.float32), "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=bs, accuracy_level=1)
    return node, inits


@pytest.mark.parametrize("bits,zero_points", [(4, None), (4, "uint8"), (4, "float"), (8, None), (8, "uint8")])
def test_the_dense_weight_is_what_the_runtime_computes_with(bits, zero_points):
    rng = np.random.default_rng(3)
    k, n, bs = 48, 8, 16  # 3 blocks: an odd count of packed zero points
    node, inits = _nbits_node(rng, k, n, bs, bits, zero_points)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = rng.standard_normal((4, k)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = x @ dense_weight(node, {t.name: t for t in inits})
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_live_nodes_keeps_what_the_outputs_read():
    a = helper.make_node("Relu", ["x"], ["a"])
    dead = helper.make_node("Relu", ["a"], ["dead"])
    b = helper.make_node("Neg", ["a"], ["y"])
    assert [n.output[0] for n in live_nodes([a, dead, b], ["y"])] == ["a", "y"]


def _single(node, inits, k, n):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_each_token_is_quantized_at_its_own_scale():
    rng = np.random.default_rng(5)
    k, n = 64, 16
    node, inits = _nbits_node(rng, k, n, 16, 4, "uint8")
    model = _single(node, inits, k, n)
    nodes, added = int8_nodes(model.graph, set(), 17)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    x = rng.standard_normal((6, k)).astype(np.float32)
    x[0] *= 1000  # one token far larger than the rest (an attention sink)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x @ dense_weight(node, {t.name: t for t in inits})
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert rel.max() < 0.03  # one scale per call would leave the small tokens ~8 codes wide
    assert sum(n.op_type == "DynamicQuantizeMatMul" for n in nodes) == 1


def test_prefill_auto_and_format_auto_build_each_distinct_model_once():
    from passes.quantize.config import QuantizeConfig
    from passes.quantize.llm_auto import variants
    from passes.quantize.quantize_pass import QuantizePass

    both = QuantizeConfig(mode="weight_only", bits=4, format="auto", prefill="auto", block_size=32)
    got = variants(both)
    assert {"accuracy_level": 1, "block_size": 32, "prefill": "decode_kernels"} in got
    assert len(got) == 3  # level 4 × two prompt paths, level 1 once (it adds no prompt path)
    assert variants(QuantizeConfig(mode="weight_only", bits=4, prefill="auto", accuracy_level=4)) == [
        {"prefill": "int8_weights"}, {"prefill": "float_activations"}]
    assert "prompt path" in QuantizePass(QuantizeConfig(mode="weight_only", bits=4, prefill="auto",
                                                        accuracy_level=4)).cache_exclusion()


def test_a_quantized_head_behind_a_cast_keeps_its_own_kernel_on_the_prompt_path():
    from passes.quantize.int4 import head_node

    rng = np.random.default_rng(8)
    node, inits = _nbits_node(rng, 32, 8, 16, 8, None)
    node.name, node.output[0] = "head", "head_out"
    cast = helper.make_node("Cast", ["head_out"], ["logits"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node, cast], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert head_node(model) == "head"
    nodes, _ = int8_nodes(model.graph, {head_node(model)})
    assert [n.op_type for n in nodes] == ["MatMulNBits", "Cast"]


def test_mlp_inner_activations_are_products_or_activation_outputs_not_norms():
    from passes.quantize.prompt_int8 import mlp_inner

    nodes = [helper.make_node("Mul", ["h", "inv"], ["hn"]), helper.make_node("Mul", ["gamma", "hn"], ["normed"]),
             helper.make_node("Sigmoid", ["g"], ["sg"]), helper.make_node("Mul", ["g", "sg"], ["silu"]),
             helper.make_node("Mul", ["silu", "up"], ["product"]), helper.make_node("FastGelu", ["f"], ["gelu"],
                                                                                   domain="com.microsoft"),
             helper.make_node("Transpose", ["attn"], ["moved"])]
    producers = {o: n for n in nodes for o in n.output}
    assert mlp_inner("product", producers, {"gamma"}) and mlp_inner("gelu", producers, {"gamma"})
    assert not mlp_inner("normed", producers, {"gamma"}) and not mlp_inner("moved", producers, {"gamma"})
    assert not mlp_inner("x", producers, {"gamma"})
