"""prune: transformer heads / FFN neurons, Taylor importance, per-layer ratios, gradual schedules,
the per-layer report, MACs and compressed size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from optimize.context import PlanContext, RunContext
from optimize.data import Dataset
from optimize.errors import ConfigError
from optimize.handle import ModelHandle, TensorSpec
from passes.prune import PruneConfig, PrunePass
from passes.prune.transformer import SplitHeadAttention
from passes.prune.util import compressed_bytes, schedule


def run(handle, ctx, **options):
    return PrunePass(PruneConfig(**options)).run(handle, ctx)


class Encoder(nn.Module):
    """Embedding → 2 × nn.TransformerEncoderLayer (d 32, 4 heads, FFN 64) → mean → Linear(3)."""

    def __init__(self, d=32, heads=4, ffn=64, layers=2, vocab=50) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            [nn.TransformerEncoderLayer(d, heads, ffn, batch_first=True, dropout=0.0) for _ in range(layers)]
        )
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(1))


def ids_handle(module, seq=7, vocab=50):
    spec = TensorSpec("ids", ("batch", seq), "int64", low=0, high=vocab)
    return ModelHandle(form="torch", inputs=[spec], outputs=["y"], module=module)


def _kept_rows(orig: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of the original rows that the pruned tensor kept (rows are unique in random weights)."""
    d = torch.cdist(pruned.detach().double(), orig.detach().double())
    idx = d.argmin(1)
    assert torch.all(d.min(1).values < 1e-6)
    return idx.tolist()


def test_split_head_attention_equals_mha():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        split = SplitHeadAttention.from_mha(mha).eval()
        x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
        pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
        ref = mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        got = split(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_transformer_heads_and_ffn_shrink_and_match_reference(ctx):
    torch.manual_seed(0)
    module = Encoder().eval()
    res = run(ids_handle(module), ctx, method="structured", sparsity=0.5, head_sparsity=0.25)
    m = res.model.module.eval()
    for i in range(2):
        attn = m.layers[i].self_attn
        assert isinstance(attn, SplitHeadAttention)
        assert attn.num_heads == 3 and attn.q_proj.weight.shape == (24, 32)
        assert attn.k_proj.out_features == attn.v_proj.out_features == 24
        assert attn.out_proj.weight.shape == (32, 24)  # hidden size kept
        assert m.layers[i].linear1.weight.shape == (32, 32)  # half the FFN neurons
        assert m.layers[i].linear2.weight.shape == (32, 32)
    assert m.head.weight.shape == (3, 32)
    heads = {h["name"]: (h["heads_before"], h["heads_after"]) for h in res.metrics["attention_heads"]}
    assert heads == {"layers.0.self_attn": (4, 3), "layers.1.self_attn": (4, 3)}

    # reference: the unpruned model with the removed heads and FFN neurons silenced
    ref = Encoder()
    ref.load_state_dict(module.state_dict())
    ref.eval()
    with torch.no_grad():
        for i in range(2):
            old, new = ref.layers[i], m.layers[i]
            q_rows = _kept_rows(old.self_attn.in_proj_weight[:32], new.self_attn.q_proj.weight)
            dead_heads = set(range(4)) - {r // 8 for r in q_rows}
            assert len(dead_heads) == 1
            for h in dead_heads:
                old.self_attn.out_proj.weight[:, h * 8 : (h + 1) * 8] = 0
            ffn_rows = set(_kept_rows(old.linear1.weight, new.linear1.weight))
            dead = [j for j in range(64) if j not in ffn_rows]
            old.linear2.weight[:, dead] = 0
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), ref(ids), atol=1e-5, rtol=1e-4)
    assert module.layers[0].self_attn.num_heads == 4  # input untouched
    assert isinstance(module.layers[0].self_attn, nn.MultiheadAttention)
    # the per-layer report adds up to the totals
    removed = sum(e.get("params_removed", 0) for e in res.metrics["layers"])
    assert removed == res.metrics["params_before"] - res.metrics["params_after"]
    assert res.metrics["macs_after"] < res.metrics["macs_before"]
    json.dumps(res.metrics)


class BertSelfAttention(nn.Module):
    """Hand-written BERT-style attention: query/key/value/dense, num_attention_heads attribute."""

    def __init__(self, d=32, heads=4) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = d // heads
        self.all_head_size = d
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        b, s, _ = x.shape

        def split(t):
            return t.view(b, s, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.attention_head_size**0.5, -1)
        ctx = (a @ v).transpose(1, 2).reshape(b, s, self.all_head_size)
        return self.norm(x + self.dense(ctx))


class BertLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = BertSelfAttention()
        self.ffn_in, self.ffn_out = nn.Linear(32, 64), nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.attn(x)
        h = self.norm(h + self.ffn_out(torch.nn.functional.gelu(self.ffn_in(h))))
        return self.head(h[:, 0])


def test_hand_written_attention_heads_pruned_and_attributes_updated(ctx):
    torch.manual_seed(0)
    handle = ModelHandle(form="torch", inputs=[TensorSpec("x", ("batch", 6, 32))], outputs=["y"], module=BertLike())
    res = run(handle, ctx, method="structured", sparsity=0.25, head_sparsity=0.5)
    m = res.model.module
    assert m.attn.num_attention_heads == 2 and m.attn.all_head_size == 16
    assert m.attn.query.out_features == 16 and m.attn.dense.weight.shape == (32, 16)
    assert m.ffn_in.out_features == 48 and m.ffn_out.out_features == 32
    assert m(torch.randn(2, 6, 32)).shape == (2, 2)
    assert any("hidden size kept" in n and "attn.dense" in n for n in res.notes)


def _classification_data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return Dataset({"x": x}, y)


def mlp_handle(module):
    return ModelHandle(form="torch", inputs=[TensorSpec("x", ("batch", 16))], outputs=["y"], module=module)


def test_taylor_removes_a_large_but_useless_neuron(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        module[0].weight[3] *= 50  # the largest input weights ...
        module[0].bias[3] = 5.0
        module[2].weight[:, 3] = 0  # ... but nothing reads the neuron: zero gradient, zero Taylor score
    ctx._data["calibration"] = _classification_data()
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.25, importance="taylor")
    kept = _kept_rows(module[0].weight, res.model.module[0].weight)
    assert 3 not in kept and len(kept) == 6
    assert res.metrics["importance"].startswith("taylor (cross-entropy against data labels")
    res_l2 = run(mlp_handle(module), ctx, method="structured", sparsity=0.25, importance="l2")
    assert 3 in _kept_rows(module[0].weight, res_l2.model.module[0].weight)  # magnitude keeps it


def test_layer_sparsity_and_max_ratio(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.5, layer_sparsity={"0": 0.25})
    assert res.model.module[0].out_features == 24 and res.model.module[2].out_features == 16
    with torch.no_grad():
        module[2].weight.mul_(0.01)  # global ranking would empty this layer without a cap
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.5, scope="global", max_ratio=0.6)
    assert res.model.module[2].out_features >= 32 * 0.4
    assert res.model.module(torch.randn(2, 16)).shape == (2, 4)


def test_schedules():
    assert schedule(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    cubic = schedule(0.8, 4, "cubic")
    assert cubic[-1] == 0.8 and cubic[0] == pytest.approx(0.8 * (1 - 0.75**3))
    assert all(a < b for a, b in zip(cubic, cubic[1:], strict=False))
    assert cubic[0] > 0.2  # large steps first


def test_gradual_magnitude_with_finetuning_keeps_masks(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    ctx._data["train"] = _classification_data(256)
    ctx._data["eval"] = _classification_data(128, seed=1)
    res = run(mlp_handle(module), ctx, sparsity=0.75, steps=3, schedule="linear", finetune_epochs=1)
    rows = res.metrics["per_step"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["sparsity"] for r in rows] == pytest.approx([0.25, 0.5, 0.75], abs=1e-3)
    assert all(r["accuracy_after_prune"] is not None for r in rows)
    assert "accuracy_after_finetune" in rows[0] and "accuracy_after_finetune" not in rows[2]
    m = res.model.module
    for i in (0, 2):  # the final masks hold, and training went through them
        assert int((m[i].weight == 0).sum()) == round(0.75 * m[i].weight.numel())
    # zeros per layer add up to the total
    assert sum(e["zeros"] for e in res.metrics["layers"]) == res.metrics["selected_weights_zero"]


def test_gradual_structured_reports_each_step(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    ctx._data["train"] = _classification_data(256)
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.5, steps=2, schedule="linear", finetune_epochs=1)
    rows = res.metrics["per_step"]
    assert len(rows) == 2 and rows[0]["params"] > rows[1]["params"]
    assert rows[0]["finetune_epochs"] == 1 and rows[0]["min_cosine_after_prune"] is not None
    assert res.model.module[0].out_features == 16


def test_compressed_size_shows_unstructured_benefit(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))
    res = run(mlp_handle_n(module, 64), ctx, sparsity=0.8)
    c = res.metrics["compressed_bytes"]
    assert c["raw_before"] == c["raw_after"]  # dense storage does not shrink ...
    assert c["zip_after"] < 0.6 * c["zip_before"]  # ... compressed storage does
    assert c["ratio"] > 1.6
    raw, comp = compressed_bytes([np.zeros(1000, np.float32)])
    assert raw == 4000 and comp < 100
    assert res.metrics["macs_before"] == res.metrics["macs_after"]  # masks remove no work
    assert any("not the latency" in n for n in res.notes)


def mlp_handle_n(module, n):
    return ModelHandle(form="torch", inputs=[TensorSpec("x", ("batch", n))], outputs=["y"], module=module)


def test_nm_on_cpu_warns_no_speed(ctx):
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    res = run(mlp_handle(module), ctx, method="nm")
    assert any("no speedup" in n and "cpu" in n for n in res.notes)
    assert "nm_gpu" not in res.metrics


def test_check_rules(cfg):
    plan = PlanContext(config=cfg, input_form="torch", has_input_spec=True, index=0, form_at_pass="torch")
    with pytest.raises(ConfigError, match="data.calibration or data.train"):
        PrunePass(PruneConfig(method="structured", importance="taylor")).check(plan)
    with pytest.raises(ConfigError, match="attention_stand_in fits on data") as err:  # the indices need none
        PrunePass(PruneConfig(method="structured", drop_attention=[1], attention_stand_in="mean")).check(plan)
    assert err.value.key == "passes[0].prune.attention_stand_in"
    PrunePass(PruneConfig(method="structured", drop_attention=[1])).check(plan)
    with pytest.raises(ConfigError, match="data.train"):
        PrunePass(PruneConfig(steps=3, finetune_epochs=1)).check(plan)
    onnx_plan = PlanContext(config=cfg, input_form="onnx", has_input_spec=True, index=1, form_at_pass="onnx")
    with pytest.raises(ConfigError) as err:
        PrunePass(PruneConfig(method="structured", head_sparsity=0.25)).check(onnx_plan)
    assert err.value.key == "passes[1].prune.head_sparsity"
    PrunePass(PruneConfig(method="structured")).check(onnx_plan)  # ONNX structured is supported
    with pytest.raises(ValueError, match="between gradual steps"):
        PruneConfig(finetune_epochs=2)
    with pytest.raises(ValueError, match="not to nm"):
        PruneConfig(method="nm", steps=2)
    with pytest.raises(ValueError, match="layer_sparsity"):
        PruneConfig(layer_sparsity={"a": 1.5})


@pytest.mark.gpu
def test_nm_gpu_sparse_kernels_measured(cfg, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ctx = RunContext(config=cfg, work_dir=tmp_path, device="cuda")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 16))
    res = run(mlp_handle_n(module, 1024), ctx, method="nm")
    g = res.metrics["nm_gpu"]
    assert g.get("speedup") is not None, g
    assert g["dense_ms"] > 0 and g["sparse_ms"] > 0
    assert set(g["sparse_layers"]) == {"0", "2"}
    assert g["max_abs_diff"] < 0.5


def test_fisher_removes_a_large_but_unread_neuron(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        module[0].weight[3] *= 50  # the largest weights, but nothing reads the neuron: no output change
        module[0].bias[3] = 5.0
        module[2].weight[:, 3] = 0
    ctx._data["calibration"] = _classification_data()
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.25, importance="fisher")
    kept = _kept_rows(module[0].weight, res.model.module[0].weight)
    assert 3 not in kept and len(kept) == 6
    assert res.metrics["importance"].startswith("fisher (")


def test_fisher_removes_the_head_the_output_ignores(ctx):
    torch.manual_seed(0)
    module = Encoder().eval()
    split = SplitHeadAttention  # converted inside the pass; silence the head by its output columns
    with torch.no_grad():
        for layer in module.layers:
            layer.self_attn.out_proj.weight[:, 8:16] = 0  # head 1 of 4 (head_dim 8) reaches nothing ...
            for part in range(3):  # ... though its q/k/v weights are the largest
                layer.self_attn.in_proj_weight[part * 32 + 8 : part * 32 + 16] *= 10
    rng = np.random.default_rng(0)
    ctx._data["calibration"] = Dataset({"ids": rng.integers(0, 50, (64, 7)).astype(np.int64)}, None)
    res = run(ids_handle(module), ctx, method="structured", sparsity=0.25, head_sparsity=0.25, importance="fisher")
    for i, layer in enumerate(res.model.module.layers):
        attn = layer.self_attn
        assert isinstance(attn, split) and attn.num_heads == 3
        q_orig = module.layers[i].self_attn.in_proj_weight[:32]
        kept = _kept_rows(q_orig, attn.q_proj.weight)
        assert not set(kept) & set(range(8, 16)), f"layer {i} kept rows of the silent head"
    res_l2 = run(ids_handle(module), ctx, method="structured", sparsity=0.25, head_sparsity=0.25, importance="l2")
    q_l2 = res_l2.model.module.layers[0].self_attn.q_proj.weight
    assert set(range(8, 16)) <= set(_kept_rows(module.layers[0].self_attn.in_proj_weight[:32], q_l2))  # magnitude keeps it


def test_refit_restores_the_outputs_of_a_pruned_ffn(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    ctx._data["calibration"] = _classification_data(256)
    ctx._data["eval"] = _classification_data(128, seed=1)
    plain = run(mlp_handle(module), ctx, method="structured", sparsity=0.5)
    fitted = run(mlp_handle(module), ctx, method="structured", sparsity=0.5, refit=True, refit_samples=256)
    row = fitted.metrics["per_step"][0]
    assert row["refit"]["layers"] == 1 and row["refit"]["skipped"] == []
    assert row["refit"]["rel_error_after_mean"] < row["refit"]["rel_error_before_mean"]
    err_plain = 1 - plain.metrics["per_step"][0]["mean_cosine_after_prune"]
    err_fit = 1 - row["mean_cosine_after_prune"]
    assert err_fit < 0.5 * err_plain  # the kept neurons take over much of what the removed ones did
    assert torch.equal(fitted.model.module[0].weight, plain.model.module[0].weight)  # only the reader changes
    with pytest.raises(ValueError, match="refit applies to method: structured"):
        PruneConfig(method="magnitude", refit=True)


def test_refit_solves_a_layer_whose_outputs_were_pruned_too_against_the_outputs_it_kept(ctx):
    # the digits CNN's fc1 / an MLP's middle layer: its inputs and outputs both shrink
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    ctx._data["calibration"] = _classification_data(256)
    ctx._data["eval"] = _classification_data(128, seed=1)
    plain = run(mlp_handle(module), ctx, method="structured", sparsity=0.5)
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.5, refit=True, steps=2)
    for row in res.metrics["per_step"]:
        assert row["refit"]["layers"] == 2 and row["refit"]["skipped"] == [], row["refit"]
        assert row["refit"]["rel_error_after_mean"] < row["refit"]["rel_error_before_mean"]
    assert res.model.module[2].out_features == 16  # pruned twice: the kept outputs were tracked across steps
    assert res.metrics["per_step"][-1]["mean_cosine_after_prune"] > plain.metrics["per_step"][0]["mean_cosine_after_prune"]


def test_refit_uses_the_outputs_each_layer_kept(ctx, monkeypatch):
    # layer 0's last 32 neurons are dead (zero weights), so pruning takes exactly them and layer 2
    # sees every live input: its exact least-squares solution is its own pruned weights, the rows of
    # the outputs it kept. A wrong kept-output map would solve for other rows.
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        module[0].weight[32:] = 0
        module[0].bias[32:] = 0
    ctx._data["calibration"] = _classification_data(256)
    ctx._data["eval"] = _classification_data(128, seed=1)
    import passes.prune.refit as refit_module

    monkeypatch.setattr(refit_module, "DAMP", 1e-6)  # (nearly) plain least squares: the exact solution
    plain = run(mlp_handle(module), ctx, method="structured", sparsity=0.5).model.module[2]
    res = run(mlp_handle(module), ctx, method="structured", sparsity=0.5, refit=True)
    fitted = res.model.module[2]
    assert res.metrics["per_step"][0]["refit"]["layers"] == 2 and fitted.weight.shape == plain.weight.shape == (16, 32)
    assert float((fitted.weight - plain.weight).norm() / plain.weight.norm()) < 1e-3


class _AttentionBlock(nn.Module):
    """Linear → nn.MultiheadAttention → mean → Linear: the first Linear's outputs (no LayerNorm
    after it) are prunable, so the attention's q/k/v inputs shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x)).unsqueeze(1).expand(-1, 3, -1)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


def test_refit_compares_multihead_attention_in_its_split_form(ctx):
    # the pruned copy splits nn.MultiheadAttention into q/k/v projections; the unpruned reference
    # must be split the same way, or the names do not exist there (was: AttributeError, exit 1)
    torch.manual_seed(0)
    ctx._data["calibration"] = _classification_data(256)
    ctx._data["eval"] = _classification_data(128, seed=1)
    res = run(mlp_handle(_AttentionBlock().eval()), ctx, method="structured", sparsity=0.5, refit=True)
    row = res.metrics["per_step"][0]["refit"]
    assert row["layers"] >= 3 and row["skipped"] == [], row  # q, k and v: their inputs were pruned
    assert row["rel_error_after_mean"] < row["rel_error_before_mean"]
