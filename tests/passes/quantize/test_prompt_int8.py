"""`prefill: int8_weights` on the tiny decoder (passes/quantize/prompt_int8.py): the prompt path's
MatMuls (all but the MLPs' inner projections) as 7-bit per-column codes of the 4-bit weights,
DynamicQuantizeMatMul; decode steps unchanged."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
pytest.importorskip("torch")

from onnx import numpy_helper  # noqa: E402
from tiny_llm import tiny_int4_pair  # noqa: E402

from optimize.llm.generation import OrtCausalLM  # noqa: E402
from passes.quantize.int4 import quantize_int4, save  # noqa: E402
from passes.quantize.prefill_branch import add_prompt_path  # noqa: E402

IDS = np.asarray([list(range(5, 37))], np.int64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt8")
    fp32, plain, level1, facts = tiny_int4_pair(root)
    branched = root / "int8" / "model.onnx"
    info = add_prompt_path(plain, branched, facts["tied_embedding"], save, body="int8_weights")
    return fp32, plain, level1, branched, info


def _prompt_branch(path):
    model = onnx.load(str(path))
    return model, next(a.g for a in model.graph.node[-1].attribute if a.name == "then_branch")


def test_the_body_is_8_bit_without_the_folded_correction(built):
    _, plain, _, branched, info = built
    model, prompt = _prompt_branch(branched)
    int8 = [n for n in prompt.node if n.op_type == "DynamicQuantizeMatMul"]
    assert len(int8) == info["prompt_int8_kernels"] == 6  # 2 layers × (q/k/v, o, gate/up); the head is float
    kept = [n for n in prompt.node if n.op_type == "MatMulNBits"]
    assert [n.name.split("/")[-2] for n in kept] == ["down_proj", "down_proj"]  # silu(gate) · up: 4-bit, float activations
    assert sum(n.op_type == "ReduceMax" for n in prompt.node) == 6  # one row scale per distinct input
    xaug = {n.output[0] for n in prompt.node if n.op_type == "Concat" and n.output[0].endswith("_xaug")}
    assert len(xaug) == 2 and not any(n.input[0] in xaug for n in int8)  # block sums for the down projections only
    codes = [t for t in model.graph.initializer if t.name.endswith("_prompt_q8")]
    assert len(codes) == 6 and all(numpy_helper.to_array(t).dtype == np.int8 for t in codes)
    assert max(np.abs(numpy_helper.to_array(t)).max() for t in codes) <= 63
    assert info["prompt_weight_bytes"] == sum(len(t.raw_data) for t in model.graph.initializer
                                              if t.name.endswith(("_prompt_q8", "_prompt_s8")) or t.name.startswith("prompt_rows"))
    onnx.checker.check_model(model)


def test_prompts_compute_the_int4_weights_within_8_bit_rounding(built):
    fp32, _, level1, branched, _ = built
    want = OrtCausalLM(level1).logits_along(IDS)  # the int4 weights, float activations
    got = OrtCausalLM(branched).logits_along(IDS)
    ref = OrtCausalLM(fp32).logits_along(IDS)
    err, int4_err = np.abs(got - want).mean(), np.abs(want - ref).mean()
    assert err < 0.5 * int4_err  # 8-bit rounding of the int4 weights: well under int4's own error
    assert (got[0].argmax(-1) == want[0].argmax(-1)).mean() >= 0.9


def test_decode_steps_still_run_the_4_bit_graph(built):
    _, plain, _, branched, _ = built
    p, w = OrtCausalLM(plain), OrtCausalLM(branched)
    cache = p.step(IDS, p.empty_cache(), 0).cache
    tok = np.asarray([[7]], np.int64)
    assert np.array_equal(p.step(tok, cache, IDS.shape[1]).logits, w.step(tok, cache, IDS.shape[1]).logits)


def test_the_fold_is_undone_where_block_sums_came_from_one_matmul(built, tmp_path, monkeypatch):
    fp32, _, level1, _, _ = built
    # input ranks unknown (shape inference fails on ONNX Runtime's own ops, e.g. the GenAI builder's
    # graphs): block sums as x · [E | E/16], one Concat input
    monkeypatch.setattr("passes.quantize.int4.input_ranks", lambda model, nodes: {})
    plain, branched = tmp_path / "plain" / "model.onnx", tmp_path / "int8" / "model.onnx"
    facts = quantize_int4(fp32, plain, block_size=16, algorithm="minmax", correction="folded")
    concats = [n for n in onnx.load(str(plain)).graph.node if n.op_type == "Concat" and n.output[0].endswith("_xaug")]
    assert concats and all(len(n.input) == 2 for n in concats)
    info = add_prompt_path(plain, branched, facts["tied_embedding"], save, body="int8_weights")
    _, prompt = _prompt_branch(branched)
    int8 = [n for n in prompt.node if n.op_type == "DynamicQuantizeMatMul"]
    fed = {n.input[0] for n in int8}
    assert info["prompt_int8_kernels"] == 6 and not any(n.output[0] in fed for n in prompt.node if n.op_type == "Concat")
    want = OrtCausalLM(level1).logits_along(IDS)
    got = OrtCausalLM(branched).logits_along(IDS)
    assert (got[0].argmax(-1) == want[0].argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("body", ["float_activations", "int8_weights"])
def test_a_folded_int4_head_tied_to_the_embedding_reads_x_not_its_block_sums(built, tmp_path, body):
    fp32, _, level1, _, _ = built
    plain = tmp_path / "plain" / "model.onnx"
    facts = quantize_int4(fp32, plain, block_size=16, algorithm="minmax", correction="folded", head="int4")
    assert facts["tied_embedding"]
    branched = tmp_path / body / "model.onnx"
    info = add_prompt_path(plain, branched, facts["tied_embedding"], save, body=body)
    assert info["prompt_head"] == "float (tied embedding)"
    want = OrtCausalLM(level1).logits_along(IDS)  # float head
    got = OrtCausalLM(branched).logits_along(IDS)
    assert (got[0].argmax(-1) == want[0].argmax(-1)).mean() >= 0.9
