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
    facts = quantize_int4(fp32, out, block_size=16, head=head, embedding=embedding, fuse_projections=False)
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
    out, ort_out = tmp_path / "d" / "model.onnx", tmp_path / "o" / "model.onnx"
    facts = quantize_int8_dynamic(fp32, out, head="float")
    model = onnx.load(str(out))
    names = {n.name: n.op_type for n in model.graph.node}
    assert names["/lm/lm_head/MatMul"] == "MatMul" and facts["head"] == "float" and facts["per_token"]
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["DynamicQuantizeMatMul"] == 14 and ops["ReduceMax"] == 8  # 7 projections × 2 layers; 4 inputs per layer
    weights = {t.name for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    assert not any("proj" in w for w in weights)  # the float body weights are gone, only their codes remain
    ref = _logits(fp32, [5, 6, 7, 8, 9])
    got = _logits(out, [5, 6, 7, 8, 9])
    assert np.isfinite(got).all() and np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean()
    quantize_int8_dynamic(fp32, ort_out, head="float", per_token=False)  # ONNX Runtime's quantize_dynamic as it is
    assert Counter(n.op_type for n in onnx.load(str(ort_out)).graph.node)["MatMulInteger"] == 14


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


def _folded_bound(w, bs=32):
    """The folded remainder C = s·(8 − zf) of a column is held on a grid of step max |C| / 7 plus a
    residual on a grid 16 times finer: error ≤ max |C| / 112 (a clipped residual), ≈ / 224 typically."""
    blocks = w.reshape(-1, bs, w.shape[1])
    lo, s = blocks.min(1), (blocks.max(1) - blocks.min(1)) / 15
    c = s * (8 + lo / s)
    return np.abs(c).max(0).max() / 112 + 1e-5


@pytest.mark.parametrize(("algorithm", "correction", "bound"), [
    ("minmax", "exact", 1e-5),
    ("minmax", "folded", "folded"),  # bound from the weight: _folded_bound
    ("rtn", "exact", None),
])
def test_minmax_keeps_weights_already_on_a_4bit_grid_and_rtn_does_not(tmp_path, algorithm, correction, bound):
    import onnxruntime as ort

    src, w = _grid_matmul(tmp_path)
    out = tmp_path / algorithm / "model.onnx"
    quantize_int4(src, out, algorithm=algorithm, symmetric=False, accuracy_level=None, correction=correction)
    assert _ops(out)["MatMulNBits"] == 1
    assert _ops(out)["Add"] == (1 if (algorithm, correction) == ("minmax", "exact") else 0)
    assert _ops(out)["Concat"] == (1 if (algorithm, correction) == ("minmax", "folded") else 0)
    x = np.eye(64, dtype=np.float32)  # row i of the output is row i of the weight
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(64)])
    err = np.abs(got - w).max()
    if bound == "folded":
        assert err < _folded_bound(w)
    elif bound is None:
        assert err > 0.005  # rtn's integer zero point moves the grid by up to half a step (s ≥ 0.01)
    else:
        assert err < bound
    # integer zero points or none (folded: symmetric): float ones take ONNX Runtime's slow MatMulNBits path
    node = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits")
    zp = [t for t in onnx.load(str(out)).graph.initializer if t.name in node.input[3:]]
    assert [t.data_type for t in zp] == ([] if correction == "folded" else [onnx.TensorProto.UINT8])


def test_minmax_on_a_decoder_shares_block_sums_between_projections_of_one_input(fp32, tmp_path):
    out = tmp_path / "mm" / "model.onnx"
    facts = quantize_int4(fp32, out, algorithm="minmax", block_size=16, fuse_projections=False, correction="exact")
    nodes = onnx.load(str(out)).graph.node
    bsums = [n for n in nodes if n.name.endswith("_bsum")]
    # per layer, 4 distinct inputs feed the 7 projections (q/k/v, o, gate/up, down)
    assert len(bsums) == 8 and facts["int4_matmuls"] == 14
    assert sum(n.name.endswith("_corr") for n in nodes) == 14
    ids = list(range(5, 30))
    ref, got = _logits(fp32, ids), _logits(out, ids)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.9


@pytest.mark.parametrize("algorithm", ["rtn", "minmax"])
def test_fused_projections_give_the_unfused_logits_with_fewer_nodes(fp32, tmp_path, algorithm):
    a, b = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    plain = quantize_int4(fp32, a, algorithm=algorithm, block_size=16, fuse_projections=False)
    fused = quantize_int4(fp32, b, algorithm=algorithm, block_size=16)
    # per layer q/k/v → one, gate/up → one: 7 → 4 body MatMulNBits (+ the 8-bit head)
    assert (plain["int4_matmuls"], fused["int4_matmuls"], fused["fused_projections"]) == (14, 8, 10)
    assert (_ops(a)["MatMulNBits"], _ops(b)["MatMulNBits"], _ops(b)["Split"] - _ops(a)["Split"]) == (15, 9, 4)
    ids = list(range(5, 30))
    assert np.abs(_logits(a, ids) - _logits(b, ids)).max() < 1e-4


def test_fuse_sibling_matmuls_leaves_a_lone_matmul_and_the_skipped_one(fp32):
    from passes.quantize.int4 import fuse_sibling_matmuls

    model = onnx.load(str(fp32))
    before = Counter(n.op_type for n in model.graph.node)
    assert fuse_sibling_matmuls(model, {"/lm/lm_head/MatMul"}) == 10
    after = Counter(n.op_type for n in model.graph.node)
    assert before["MatMul"] - after["MatMul"] == 6  # 2 layers × (3 → 1, 2 → 1)
    assert "/lm/lm_head/MatMul" in {n.name for n in model.graph.node}
    weights = {t.name: t.dims for t in model.graph.initializer}
    fused = [n for n in model.graph.node if n.op_type == "MatMul" and n.name.endswith("_fused")]
    assert sorted(list(weights[n.input[1]]) for n in fused) == [[64, 64 + 32 + 32]] * 2 + [[64, 256]] * 2
    onnx.checker.check_model(model)


def test_folded_correction_puts_the_remainder_inside_a_symmetric_kernel(fp32, tmp_path):
    exact, folded = tmp_path / "e" / "model.onnx", tmp_path / "f" / "model.onnx"
    quantize_int4(fp32, exact, algorithm="minmax", block_size=16, correction="exact")
    facts = quantize_int4(fp32, folded, algorithm="minmax", block_size=16)  # folded: the default
    nodes = onnx.load(str(folded)).graph.node
    assert facts["correction"] == "folded" and not any(n.name.endswith("_corr") for n in nodes)
    # one Concat(x, block sums, block sums / 16) per distinct input: 4 per layer; K grows by 2 K / block_size
    aug = [n for n in nodes if n.name.endswith("_xaug")]
    assert len(aug) == 8 and all(n.op_type == "Concat" and len(n.input) == 3 for n in aug)
    body = [n for n in nodes if n.op_type == "MatMulNBits" and "lm_head" not in n.name]
    assert {dict((a.name, a.i) for a in n.attribute)["K"] for n in body} == {64 + 8, 128 + 16}
    assert all(len(n.input) == 3 for n in body)  # no zero-point input: the symmetric path
    ids = list(range(5, 30))
    ref, e, f = _logits(fp32, ids), _logits(exact, ids), _logits(folded, ids)
    # the folded remainder is rounded: a small change next to quantization's own
    assert np.abs(f - e).max() < 0.25 * np.abs(e - ref).max()


def test_input_ranks_reach_past_onnx_runtimes_own_ops():
    """ONNX shape inference stops at a com.microsoft op (the GenAI builder's graphs); ONNX
    Runtime's symbolic inference continues, so the block sums get the Reshape form."""
    from onnx import TensorProto, helper, numpy_helper

    from passes.quantize.int4 import input_ranks

    hidden = 8
    norm = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], ["normed", "", "", "sum"],
                            domain="com.microsoft", epsilon=1e-6)
    mm = helper.make_node("MatMul", ["normed", "w"], ["y"], name="proj")
    graph = helper.make_graph(
        [norm, mm], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", hidden]) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
         numpy_helper.from_array(np.ones((hidden, 4), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert not any(v.name == "normed" for v in onnx.shape_inference.infer_shapes(model).graph.value_info
                   if v.type.tensor_type.HasField("shape"))  # the case this covers
    assert input_ranks(model, ["proj"]) == {"normed": 3}
