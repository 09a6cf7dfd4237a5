"""The prompt path of an int4 decoder (passes/quantize/prefill_branch.py): one If on the sequence
length; prompts run the 4-bit kernels at accuracy_level 1 and a tied head against the float
embedding table, single-token steps run the graph exactly as quantized, and no weight is stored twice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from tiny_llm import tiny_int4_pair  # noqa: E402

from optimize.llm.generation import OrtCausalLM  # noqa: E402
from optimize.llm.llm_metrics import decode_predictions  # noqa: E402
from passes.quantize.int4 import save  # noqa: E402
from passes.quantize.prefill_branch import add_prompt_path  # noqa: E402

IDS = np.asarray([list(range(5, 37))], np.int64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt")
    fp32, plain, level1, facts = tiny_int4_pair(root)
    branched = root / "branched" / "model.onnx"
    built = add_prompt_path(plain, branched, facts["tied_embedding"], save)
    return fp32, plain, level1, branched, facts, built


def test_the_tied_head_is_found_and_the_graph_is_one_if_over_shared_weights(built):
    _, plain, _, branched, facts, info = built
    assert facts["tied_embedding"] == "lm.model.embed_tokens.weight"
    assert info["prompt_head"] == "float (tied embedding)" and info["kernels_per_path"] == 9  # 2 layers × (q/k/v, o, gate/up, down) + head
    model = onnx.load(str(branched))
    assert [n.op_type for n in model.graph.node][-1] == "If" and len(model.graph.node) == 5
    weights = {t.name for t in model.graph.initializer if np.prod(t.dims) > 256}  # folding adds small constants
    assert weights and weights <= {t.name for t in onnx.load(str(plain)).graph.initializer}
    prompt = next(a.g for a in model.graph.node[-1].attribute if a.name == "then_branch")
    levels = {a.i for n in prompt.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {1} and not any(t for t in prompt.initializer)
    onnx.checker.check_model(model)
    def stored(m):
        return sum(len(t.raw_data) for t in m.graph.initializer)
    assert stored(model) < 1.01 * stored(onnx.load(str(plain)))  # the node list is twice, the weights once
    assert not list(branched.parent.glob("*.tmp.onnx*"))  # the folded temporary is gone


def test_prompts_run_float_activations_and_the_float_head(built):
    _, _, level1, branched, _, _ = built
    a = OrtCausalLM(level1).logits_along(IDS)
    b = OrtCausalLM(branched).logits_along(IDS)
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()


def test_decode_steps_run_the_graph_as_quantized(built):
    _, plain, level1, branched, _, _ = built
    p, w = OrtCausalLM(plain), OrtCausalLM(branched)
    cache = p.step(IDS, p.empty_cache(), 0).cache  # one cache fed to both
    tok = np.asarray([[7]], np.int64)
    a, b = p.step(tok, cache, IDS.shape[1]).logits, w.step(tok, cache, IDS.shape[1]).logits
    assert np.array_equal(a, b)
    other = OrtCausalLM(level1).step(tok, cache, IDS.shape[1]).logits
    assert not np.array_equal(a, other)  # the two paths do differ: the test above can fail


def test_teacher_forced_predictions_take_the_decode_path(built):
    fp32, _, _, branched, _, _ = built
    ref, cand = OrtCausalLM(fp32), OrtCausalLM(branched)
    teacher = [9, 10, 11, 12, 13, 14]
    got = decode_predictions(cand, [5, 6, 7], teacher)
    # by hand: one prefill, then one step per teacher token
    out = cand.step(np.asarray([[5, 6, 7]], np.int64), cand.empty_cache(), 0)
    want = [int(out.logits[0, -1].argmax())]
    for i, tok in enumerate(teacher[:-1]):
        out = cand.step(np.asarray([[tok]], np.int64), out.cache, 3 + i)
        want.append(int(out.logits[0, -1].argmax()))
    assert got.tolist() == want and len(want) == len(teacher)
    assert decode_predictions(ref, [5, 6, 7], teacher).shape == (6,)
