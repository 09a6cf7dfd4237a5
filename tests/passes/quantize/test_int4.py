"""Weight-only int4 for decoder LLMs (passes/quantize/int4.py): which nodes each policy touches,
and that every variant still loads, runs the KV-cache loop, and stays close to float."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from tiny_llm import tiny_export  # noqa: E402

from optimize.llm.generation import OrtCausalLM  # noqa: E402
from passes.quantize.int4 import embedding_nodes, head_node, quantize_int4, quantize_int8_dynamic  # noqa: E402


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("int4"))


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _logits(path, ids):
    return OrtCausalLM(path).logits_along(np.asarray([ids], np.int64))


def test_head_and_embedding_are_found(fp32):
    model = onnx.load(str(fp32))
    assert head_node(model) == "/lm/lm_head/MatMul"
    assert len(embedding_nodes(model)) == 1


@pytest.mark.parametrize(("head", "embedding", "nbits", "matmul_left", "gbq"), [
    ("float", "float", 14, 1, 0),  # 2 layers × 7 projections; the head stays a float MatMul
    ("int8", "float", 15, 0, 0),
    ("int4", "int4", 15, 0, 1),
])
def test_policies_place_matmulnbits_and_the_model_still_matches_float(fp32, tmp_path, head, embedding, nbits,
                                                                     matmul_left, gbq):
    out = tmp_path / "q" / "model.onnx"
    facts = quantize_int4(fp32, out, block_size=16, head=head, embedding=embedding)
    ops = _ops(out)
    weighted_matmuls = ops["MatMul"] - _ops(fp32)["MatMul"] + 15  # attention MatMuls (no weights) stay
    assert ops["MatMulNBits"] == nbits and weighted_matmuls == matmul_left
    assert ops["GatherBlockQuantized"] == gbq
    assert facts["int4_matmuls"] == 14 and facts["head"] == head
    ids = list(range(5, 30))
    ref, got = _logits(fp32, ids), _logits(out, ids)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.9


def test_int4_head_differs_from_int8_head_on_the_head_only(fp32, tmp_path):
    a, b = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    quantize_int4(fp32, a, head="int8")
    quantize_int4(fp32, b, head="int4")
    bits = {n.name: {x.name: x.i for x in n.attribute}.get("bits") for n in onnx.load(str(a)).graph.node
            if n.op_type == "MatMulNBits"}
    assert bits.pop("/lm/lm_head/MatMul_Q8") == 8 and set(bits.values()) == {4}
    assert "/lm/lm_head/MatMul_Q4" in {n.name for n in onnx.load(str(b)).graph.node}


def test_int8_dynamic_with_the_head_kept_float(fp32, tmp_path):
    out = tmp_path / "d" / "model.onnx"
    facts = quantize_int8_dynamic(fp32, out, head="float")
    names = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    assert names["/lm/lm_head/MatMul"] == "MatMul" and facts["head"] == "float"
    assert Counter(names.values())["MatMulInteger"] == 14
    assert np.isfinite(_logits(out, [5, 6, 7])).all()


def _grid_matmul(tmp_path):
    """One MatMul whose weight sits on a 16-level grid per 32-block along K (what GGUF Q4_1 stores)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n = 64, 8
    scale = rng.uniform(0.01, 0.05, (k // 32, 1, n))
    low = rng.uniform(-0.4, -0.1, (k // 32, 1, n))
    codes = rng.integers(0, 16, (k // 32, 32, n))
    codes[:, 0], codes[:, 1] = 0, 15  # each block uses its lowest and highest level
    w = (low + scale * codes).reshape(k, n).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "grid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path, w


@pytest.mark.parametrize(("algorithm", "exact"), [("minmax", True), ("rtn", False)])
def test_minmax_keeps_weights_already_on_a_4bit_grid_and_rtn_does_not(tmp_path, algorithm, exact):
    import onnxruntime as ort

    src, w = _grid_matmul(tmp_path)
    out = tmp_path / algorithm / "model.onnx"
    quantize_int4(src, out, algorithm=algorithm, symmetric=False, accuracy_level=None)
    assert _ops(out)["MatMulNBits"] == 1
    x = np.eye(64, dtype=np.float32)  # row i of the output is row i of the weight
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(64)])
    err = np.abs(got - w).max()
    assert (err < 1e-3) if exact else (err > 1e-3)
    # integer zero points only: float ones take ONNX Runtime's slow MatMulNBits path
    node = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits")
    zp = next(t for t in onnx.load(str(out)).graph.initializer if t.name == node.input[3])
    assert zp.data_type == onnx.TensorProto.UINT8


def test_minmax_on_a_decoder_shares_block_sums_between_projections_of_one_input(fp32, tmp_path):
    out = tmp_path / "mm" / "model.onnx"
    facts = quantize_int4(fp32, out, algorithm="minmax", block_size=16)
    nodes = onnx.load(str(out)).graph.node
    bsums = [n for n in nodes if n.name.endswith("_bsum")]
    # per layer, 4 distinct inputs feed the 7 projections (q/k/v, o, gate/up, down)
    assert len(bsums) == 8 and facts["int4_matmuls"] == 14
    assert sum(n.name.endswith("_corr") for n in nodes) == 14
    ids = list(range(5, 30))
    ref, got = _logits(fp32, ids), _logits(out, ids)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.9
