"""Attention heads removed by the prune pass itself (passes/prune/heads.py): heads only
(`sparsity: 0`), one ranking across modules (`scope: global`), the caps and the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimize.data import Dataset
from passes.prune.heads import plan
from tests.passes.prune.test_torch_structured import Encoder, _kept_rows, ids_handle, run


def _heads(res) -> list[int]:
    return [h["heads_after"] for h in res.metrics["attention_heads"]]


def test_heads_alone_are_removed_with_no_channel_sparsity(ctx):
    torch.manual_seed(0)
    module = Encoder().eval()
    res = run(ids_handle(module), ctx, method="structured", sparsity=0.0, head_sparsity=0.25)
    assert _heads(res) == [3, 3]
    m = res.model.module
    for i in range(2):
        assert m.layers[i].linear1.out_features == 64  # no FFN neuron removed
        assert m.layers[i].self_attn.out_proj.in_features == 24
    assert res.metrics["per_step"][0]["heads"] == 6


def test_an_excluded_attention_module_keeps_its_heads(ctx):
    torch.manual_seed(0)
    res = run(ids_handle(Encoder().eval()), ctx, method="structured", sparsity=0.0, head_sparsity=0.5,
              exclude=["layers.0.*"], scope="global")
    assert _heads(res) == [4, 2]


def _silence(module: Encoder, layer: int, heads: list[int]) -> None:
    """Heads whose output reaches nothing (zero columns of the output projection)."""
    with torch.no_grad():
        for h in heads:
            module.layers[layer].self_attn.out_proj.weight[:, h * 8 : (h + 1) * 8] = 0


def test_global_scope_takes_the_heads_the_output_ignores_wherever_they_are(ctx):
    torch.manual_seed(0)
    module = Encoder().eval()
    _silence(module, 0, [1, 2])  # two silent heads in the first module, none in the second
    rng = np.random.default_rng(0)
    ctx._data["calibration"] = Dataset({"ids": rng.integers(0, 50, (64, 7)).astype(np.int64)}, None)
    common = {"method": "structured", "sparsity": 0.0, "head_sparsity": 0.25, "importance": "fisher"}
    res = run(ids_handle(module), ctx, scope="global", **common)
    assert _heads(res) == [2, 4]
    q_orig = module.layers[0].self_attn.in_proj_weight[:32]
    kept = {r // 8 for r in _kept_rows(q_orig, res.model.module.layers[0].self_attn.q_proj.weight)}
    assert kept == {0, 3}
    assert _heads(run(ids_handle(module), ctx, **common)) == [3, 3]  # scope: layer, a quarter of each


def test_the_plan_keeps_a_head_in_every_module_and_respects_max_ratio():
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0])]
    assert plan(scores, [4, 4], 0.5, "global", 1.0) == [[0, 1, 2], [0]]  # the last head of module 0 stays
    assert plan(scores, [4, 4], 0.5, "global", 0.5) == [[0, 1], [0, 1]]  # at most half of one module's
    assert plan(scores, [4, 4], 0.5, "layer", 1.0) == [[0, 1], [0, 1]]
    assert plan(scores, [4, 4], 0.0, "global", 1.0) == [[], []]


def test_the_plan_counts_heads_removed_at_earlier_steps():
    # a second step: module 0 already lost 2 of its 4 heads (2 left), the target is now 4 of 8
    scores = [torch.tensor([0.5, 0.6]), torch.tensor([0.1, 5.0, 6.0, 7.0])]
    assert plan(scores, [4, 4], 0.5, "global", 1.0) == [[0], [0]]
    assert plan(scores, [4, 4], 0.5, "layer", 1.0) == [[], [0, 1]]


def test_gradual_steps_remove_heads_step_by_step(ctx):
    torch.manual_seed(0)
    res = run(ids_handle(Encoder().eval()), ctx, method="structured", sparsity=0.0, head_sparsity=0.5, steps=2,
              schedule="linear", scope="global")
    assert [r["heads"] for r in res.metrics["per_step"]] == [6, 4]
    assert sum(_heads(res)) == 4 and min(_heads(res)) >= 1


@pytest.mark.slow  # ~15 s: a Hugging Face folder pruned, exported and quantized
def test_a_bert_folder_with_uneven_heads_exports_and_keeps_its_outputs(tmp_path, monkeypatch):
    """Heads silenced in one block only: one ranking across blocks takes exactly those, the blocks
    end with different head counts, and the exported int8 model still matches the input model."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from optimize import pipeline
    from optimize.api import RunOptions
    from tests.test_frameworks_hf import save_folder, sentences

    folder = save_folder(tmp_path / "bert")
    weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k in weights if k.endswith("layer.0.attention.output.dense.weight"))
    weights[key][:, 8:24] = 0  # heads 1 and 2 of block 0 (head size 8) reach nothing
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("\n".join(sentences(64, 0)) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(sentences(16, 1)) + "\n")
    (tmp_path / "p.yaml").write_text(
        "schema_version: 1\ndata: {train: {source: train.txt}, eval: {source: eval.txt}}\n"
        "model: {tokenizer: {max_length: 24}}\npasses:\n"
        "  - {type: prune, method: structured, importance: fisher, scope: global, head_sparsity: 0.25, sparsity: 0.0}\n"
        "  - {type: quantize, mode: dynamic}\nmeasure: {repeat: 3, warmup: 1, single_thread: false}\n"
    )
    report = pipeline.run(RunOptions(model=str(folder), config="p.yaml", output=str(tmp_path / "o" / "m.onnx"), threads=1))
    prune = next(s for s in report.steps if s.type == "prune").metrics
    assert [h["heads_after"] for h in prune["attention_heads"]] == [2, 4]
    assert prune["per_step"][0]["min_cosine_after_prune"] > 0.9999  # only silent heads went
    acc = report.metrics["accuracy"].inputs
    assert acc["metric"] == "embedding_cosine" and acc["min"] > 0.98
