"""prune pass: torch magnitude / N:M masks, Torch-Pruning structured pruning, ONNX initializer pruning."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from tiny_models import mlp_of
from torch import nn
from torch.nn.utils import parametrize

from optimize.context import PlanContext
from optimize.errors import ConfigError, PassError
from optimize.export import finalized_module
from optimize.handle import ModelHandle, TensorSpec
from passes.prune import PruneConfig, PrunePass


def run(handle, ctx, **options):
    return PrunePass(PruneConfig(**options)).run(handle, ctx)


def torch_handle(module, *shape):
    return ModelHandle(form="torch", inputs=[TensorSpec("x", ("batch", *shape))], outputs=["y"], module=module)


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + self.conv3(torch.relu(self.conv2(h)))  # residual add couples conv1 and conv3
        return self.fc(h.mean(dim=(2, 3)))


def zeros(t) -> int:
    return int(t.numel() - t.count_nonzero().item())


# ---- torch: magnitude --------------------------------------------------------------------


def test_layerwise_exact_sparsity_and_output_layer_kept(ctx):
    model = torch_handle(mlp_of(16, 32, 32, 4), 16)
    res = run(model, ctx, method="magnitude", sparsity=0.5)
    m = res.model.module
    for i in (0, 2):
        w = m[i].weight
        assert zeros(w) == round(0.5 * w.numel())
        assert parametrize.is_parametrized(m[i], "weight")
    assert zeros(m[4].weight) == 0 and not parametrize.is_parametrized(m[4])
    assert [e["name"] for e in res.metrics["layers"]] == ["0", "2"]
    assert all(e["sparsity"] == 0.5 for e in res.metrics["layers"])
    assert res.metrics["selected_weights_total"] == 16 * 32 + 32 * 32
    assert res.metrics["selected_sparsity"] == 0.5
    assert res.metrics["weights_total"] == 16 * 32 + 32 * 32 + 32 * 4
    assert res.metrics["params_before"] == res.metrics["params_after"]
    assert res.metrics["params_nonzero_after"] < res.metrics["params_before"]
    assert any("output layer kept" in n and "4" in n for n in res.notes)
    assert any("not the latency" in n for n in res.notes)
    json.dumps(res.metrics)  # metrics go into the JSON report


def test_global_threshold_across_layers(ctx):
    module = mlp_of(16, 32, 32, 4)
    with torch.no_grad():
        module[2].weight.mul_(10)  # a layer with large weights keeps more of them under one threshold
    before = {i: module[i].weight.detach().clone() for i in (0, 2, 4)}
    res = run(torch_handle(module, 16), ctx, method="magnitude", sparsity=0.6, scope="global", keep_output_layer=False)
    m = res.model.module
    total = sum(before[i].numel() for i in before)
    assert sum(zeros(m[i].weight) for i in before) == round(0.6 * total)
    pruned = torch.cat([before[i].abs()[m[i].weight == 0] for i in before])
    kept = torch.cat([before[i].abs()[m[i].weight != 0] for i in before])
    assert pruned.max() <= kept.min()
    per_layer = {e["name"]: e["sparsity"] for e in res.metrics["layers"]}
    assert per_layer["2"] < per_layer["0"]
    assert res.metrics["scope"] == "global"


def test_include_exclude_globs(ctx):
    res = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, sparsity=0.5, exclude=["2"])
    assert [e["name"] for e in res.metrics["layers"]] == ["0"]
    res = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, sparsity=0.5, include=["2.weight"])
    assert [e["name"] for e in res.metrics["layers"]] == ["2"]


def test_input_handle_is_not_mutated(ctx):
    module = mlp_of(16, 32, 32, 4)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    model = torch_handle(module, 16)
    res = run(model, ctx, sparsity=0.7)
    assert model.module is module and res.model.module is not module
    assert not any(parametrize.is_parametrized(m) for m in module.modules())
    assert set(module.state_dict()) == set(state)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())


def test_masks_survive_training(ctx):
    res = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, sparsity=0.5)
    m = res.model.module
    masks = {i: m[i].weight.detach() == 0 for i in (0, 2)}
    before = {i: m[i].weight.detach().clone() for i in (0, 2)}
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    torch.manual_seed(1)
    for _ in range(5):
        loss = m(torch.randn(8, 16)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for i, mask in masks.items():
        w = m[i].weight.detach()
        assert torch.all(w[mask] == 0)
        assert not torch.equal(w, before[i])  # the kept weights did train


def test_finalized_module_bakes_masks(ctx):
    res = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, sparsity=0.5)
    plain = finalized_module(res.model.module)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert isinstance(plain[0].weight, nn.Parameter)
    assert zeros(plain[0].weight) == round(0.5 * 16 * 32)
    assert "0.weight" in plain.state_dict()
    x = torch.randn(3, 16)
    torch.testing.assert_close(plain(x), res.model.module.eval()(x))


def test_mask_stacks_under_another_parametrization(ctx):
    """A later pass (quantize) stacks its own parametrization on the masked weight."""

    class Half(nn.Module):
        def forward(self, X):
            return X * 0.5

    res = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, sparsity=0.5)
    m = res.model.module
    parametrize.register_parametrization(m[0], "weight", Half())
    assert zeros(m[0].weight) == 256
    # a second prune tightens the existing mask instead of adding another
    res2 = run(res.model, ctx, sparsity=0.75, keep_output_layer=True)
    m2 = res2.model.module
    assert zeros(m2[0].weight) == 384
    assert len(m2[0].parametrizations.weight) == 2


# ---- torch: N:M ----------------------------------------------------------------------------


def test_nm_pattern_holds_in_every_group(ctx):
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 3*3*3 = 27 inputs per output channel: not divisible by 4
        nn.Conv2d(8, 8, 3, padding=1),  # 72
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 6),
        nn.Linear(6, 12),  # 6 inputs: not divisible by 4
        nn.Linear(12, 3),
    )
    res = run(torch_handle(module, 3, 4, 4), ctx, method="nm", n=2, m=4)
    m = res.model.module
    for i in (1, 3):
        w = m[i].weight.detach().reshape(m[i].weight.shape[0], -1)
        nonzero_per_group = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert torch.all(nonzero_per_group == 2)
    assert zeros(m[0].weight) == 0 and zeros(m[4].weight) == 0
    assert zeros(m[5].weight) == 0  # output layer
    skipped = next(n for n in res.notes if "N:M skipped" in n)
    assert "0" in skipped and "4" in skipped
    assert res.metrics["pattern"] == "2:4"
    assert sorted(e["name"] for e in res.metrics["layers"]) == ["1", "3"]


# ---- torch: structured ---------------------------------------------------------------------


def test_structured_shrinks_residual_cnn(ctx):
    torch.manual_seed(0)
    module = ResidualCNN()
    model = torch_handle(module, 3, 8, 8)
    res = run(model, ctx, method="structured", sparsity=0.5, importance="l1")
    m = res.model.module
    assert m.conv1.out_channels == 8 and m.conv3.out_channels == 8  # coupled by the residual add
    assert m.conv2.weight.shape == (8, 8, 3, 3)
    assert m.bn1.num_features == 8
    assert m.fc.weight.shape == (5, 8)  # output features kept, inputs shrink
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert res.metrics["params_after"] < res.metrics["params_before"]
    assert 0 < res.metrics["params_removed"] < 1
    json.dumps(res.metrics)
    names = {e["name"]: e for e in res.metrics["layers"]}
    assert names["conv2"]["shape_before"] == [16, 16, 3, 3] and names["conv2"]["shape_after"] == [8, 8, 3, 3]
    assert names["conv2"]["removed_fraction"] == 0.75
    assert module.conv1.out_channels == 16  # input untouched


def test_structured_respects_exclude_and_round_to(ctx):
    module = mlp_of(16, 32, 32, 4)
    res = run(torch_handle(module, 16), ctx, method="structured", sparsity=0.5, exclude=["0"], round_to=8)
    m = res.model.module
    assert m[0].out_features == 32  # excluded
    assert m[2].out_features == 16
    assert m[4].out_features == 4
    assert m(torch.randn(2, 16)).shape == (2, 4)


def test_patterns_that_match_no_layer_and_heads_on_a_model_without_attention_are_noted(ctx):
    # a typo in layer_sparsity / exclude otherwise prunes at the default ratio without a word
    res = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, method="structured", sparsity=0.5, head_sparsity=0.5,
              exclude=["0", "nope*"], layer_sparsity={"2": 0.25, "fc9": 0.1})
    assert "exclude: 'nope*' matches no layer of the model" in res.notes
    assert "layer_sparsity: 'fc9' matches no layer of the model" in res.notes
    assert not any("'0'" in n or "'2'" in n for n in res.notes), res.notes
    assert any(n.startswith("head_sparsity 0.5: the model has no attention heads") for n in res.notes), res.notes
    assert res.model.module[2].out_features == 24  # layer_sparsity 0.25 applied
    masked = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, method="magnitude", sparsity=0.5)  # parametrized weights
    again = run(masked.model, ctx, method="structured", sparsity=0.25, exclude=["0.weight"], layer_sparsity={"2": 0.5})
    assert not [n for n in again.notes if "matches no layer" in n], again.notes
    assert again.model.module[0].out_features == 32 and again.model.module[2].out_features == 16


def test_structured_keeps_earlier_masks(ctx):
    masked = run(torch_handle(mlp_of(16, 32, 32, 4), 16), ctx, sparsity=0.5)
    res = run(masked.model, ctx, method="structured", sparsity=0.25)
    # the input's masked module is untouched (deepcopy shares torch's generated parametrized class)
    assert masked.model.module[0].weight.shape == (32, 16)
    assert parametrize.is_parametrized(masked.model.module[0], "weight")
    m = res.model.module
    assert m[0].out_features == 24
    assert parametrize.is_parametrized(m[0], "weight")
    mask = m[0].weight.detach() == 0
    assert mask.any()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(torch.randn(4, 16)).sum().backward()
    opt.step()
    assert torch.all(m[0].weight.detach()[mask] == 0)


def test_structured_failure_is_a_pass_error_naming_layers(ctx):
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.enc(x).mean(1))

    torch.manual_seed(0)
    model = torch_handle(Encoder(), 3, 16)
    with pytest.raises(PassError) as err:  # the hidden size shrinks under the attention block
        run(model, ctx, method="structured", keep_hidden_size=False)
    assert "residual" in str(err.value)
    # by default the residual-stream writers are found and kept, so only FFN neurons go
    res = run(model, ctx, method="structured")
    assert res.model.module.enc.linear1.out_features == 16
    assert res.model.module.enc.linear2.out_features == 16
    assert res.model.module(torch.randn(2, 3, 16)).shape == (2, 3)
    assert any("hidden size kept" in n and "out_proj" in n and "linear2" in n for n in res.notes)


# ---- check() -------------------------------------------------------------------------------


def test_check_rejects_torch_only_options_on_onnx(cfg):
    plan = PlanContext(config=cfg, input_form="onnx", has_input_spec=True, index=2, form_at_pass="onnx")
    with pytest.raises(ConfigError) as err:
        PrunePass(PruneConfig(method="structured", steps=3)).check(plan)
    assert err.value.key == "passes[2].prune.steps"
    assert "needs a torch model" in str(err.value)
    PrunePass(PruneConfig(method="structured")).check(plan)  # channels of MatMul/Gemm/Conv chains
    PrunePass(PruneConfig(method="magnitude")).check(plan)  # fine on ONNX
    PrunePass(PruneConfig(method="nm")).check(plan)
    PrunePass(PruneConfig(method="structured", round_to=8)).check(plan)  # the ONNX path rounds up (was refused)
    with pytest.raises(ConfigError, match="qk_rank needs a torch model"):
        PrunePass(PruneConfig(method="structured", qk_rank=8)).check(plan)


def test_check_refuses_structured_pruning_after_quantization_aware_training(cfg):
    from passes.quantize import QuantizeConfig, QuantizePass

    qat = QuantizePass(QuantizeConfig(mode="static"))
    plan = PlanContext(config=cfg, input_form="torch", has_input_spec=True, index=1, form_at_pass="torch", earlier=[qat])
    with pytest.raises(ConfigError, match="before quantize") as err:
        PrunePass(PruneConfig(method="structured")).check(plan)
    assert err.value.key == "passes[1].prune.method"
    PrunePass(PruneConfig(method="magnitude")).check(plan)  # masks work on wrapped weights
    PrunePass(PruneConfig(method="structured", sparsity=0, drop_layers=[1])).check(plan)  # whole blocks only: no resizing


# ---- ONNX ----------------------------------------------------------------------------------


def _arr(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def build_onnx_with_subgraph(path):
    """X -MatMul(Constant W1)- Relu - If(then: MatMul(init Wt), else: MatMul(Constant We)) - Gemm(Wout)."""
    rng = np.random.default_rng(0)
    w1, wt, we, wout = _arr(rng, 8, 16), _arr(rng, 16, 16), _arr(rng, 16, 16), _arr(rng, 4, 16)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["h1", "Wt"], ["ht"], name="then_mm")],
        "then", [], [helper.make_tensor_value_info("ht", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(wt, "Wt")],
    )
    else_g = helper.make_graph(
        [
            helper.make_node("Constant", [], ["We"], value=numpy_helper.from_array(we, "We")),
            helper.make_node("MatMul", ["h1", "We"], ["he"], name="else_mm"),
        ],
        "else", [], [helper.make_tensor_value_info("he", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(w1, "W1")),
        helper.make_node("MatMul", ["X", "W1"], ["h0"], name="mm1"),
        helper.make_node("Relu", ["h0"], ["h1"]),
        helper.make_node("If", ["cond"], ["h2"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Gemm", ["h2", "Wout", "bout"], ["Y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(wout, "Wout"),
            numpy_helper.from_array(np.zeros(4, np.float32), "bout"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"W1": w1, "Wt": wt, "We": we, "Wout": wout}


def onnx_weights(path) -> dict[str, np.ndarray]:
    from optimize.inspect_onnx import iter_weight_uses

    return {u.name: numpy_helper.to_array(u.tensor) for u in iter_weight_uses(onnx.load(str(path)))}


def onnx_handle(path):
    return ModelHandle(form="onnx", inputs=[TensorSpec("X", ("batch", 8))], outputs=["Y"], onnx_path=path)


def test_onnx_magnitude_rewrites_subgraph_and_constant_weights(ctx, tmp_path):
    src = tmp_path / "in.onnx"
    orig = build_onnx_with_subgraph(src)
    before_bytes = src.read_bytes()
    model = onnx_handle(src)
    res = run(model, ctx, method="magnitude", sparsity=0.5)
    out = res.model.onnx_path
    assert out != src and out.exists() and src.read_bytes() == before_bytes
    assert model.onnx_path == src and res.model.form == "onnx"
    w = onnx_weights(out)
    for name in ("W1", "Wt", "We"):
        assert int((w[name] == 0).sum()) == w[name].size // 2, name
        kept = w[name] != 0
        np.testing.assert_array_equal(w[name][kept], orig[name][kept])
        assert np.abs(orig[name][~kept]).max() <= np.abs(orig[name][kept]).min()
    np.testing.assert_array_equal(w["Wout"], orig["Wout"])  # output layer kept
    assert sorted(e["name"] for e in res.metrics["layers"]) == ["W1", "We", "Wt"]
    assert res.metrics["selected_sparsity"] == 0.5
    total = sum(a.size for a in orig.values())
    assert res.metrics["weights_total"] == total and res.metrics["params_before"] == total
    assert res.metrics["weights_zero"] == (8 * 16 + 2 * 16 * 16) // 2
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"X": np.ones((3, 8), np.float32)})[0]
    assert y.shape == (3, 4) and np.isfinite(y).all()
    assert any("Wout" in n for n in res.notes)
    json.dumps(res.metrics)


def test_onnx_global_and_output_layer_optional(ctx, tmp_path):
    src = tmp_path / "in.onnx"
    orig = build_onnx_with_subgraph(src)
    res = run(onnx_handle(src), ctx, sparsity=0.3, scope="global", keep_output_layer=False, exclude=["We"])
    w = onnx_weights(res.model.onnx_path)
    names = ["W1", "Wt", "Wout"]
    total = sum(orig[n].size for n in names)
    assert sum(int((w[n] == 0).sum()) for n in names) == round(0.3 * total)
    assert not (w["We"] == 0).any()


def test_onnx_nm_follows_each_ops_input_axis(ctx, tmp_path):
    src = tmp_path / "in.onnx"
    build_onnx_with_subgraph(src)
    res = run(onnx_handle(src), ctx, method="nm", n=2, m=4, keep_output_layer=False)
    w = onnx_weights(res.model.onnx_path)
    for name in ("W1", "Wt", "We"):  # MatMul(X, W): W is (in, out): groups run down axis 0
        groups = (w[name].T.reshape(w[name].shape[1], -1, 4) != 0).sum(-1)
        assert np.all(groups == 2), name
    # Gemm transB=1: Wout is (out, in): groups run along axis 1
    assert np.all((w["Wout"].reshape(4, -1, 4) != 0).sum(-1) == 2)
    sess = ort.InferenceSession(str(res.model.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"X": np.ones((2, 8), np.float32)})[0].shape == (2, 4)


def test_onnx_nm_through_transpose(ctx, tmp_path):
    rng = np.random.default_rng(2)
    w = _arr(rng, 4, 8)  # stored (out, in), used as MatMul(X, Transpose(W))
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["X", "Wt"], ["H"]),
        helper.make_node("Relu", ["H"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    src = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    res = run(onnx_handle(src), ctx, method="nm", n=1, m=4, keep_output_layer=False)
    got = onnx_weights(res.model.onnx_path)["W"]
    assert np.all((got.reshape(4, 2, 4) != 0).sum(-1) == 1)  # groups along the stored axis 1


def test_onnx_embeddings_and_non_float_weights(ctx, tmp_path):
    rng = np.random.default_rng(1)
    emb, w = _arr(rng, 10, 8), _arr(rng, 8, 8)
    wq = rng.integers(-5, 5, size=(8, 4)).astype(np.int8)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "W"], ["h"], name="proj"),
        helper.make_node("DequantizeLinear", ["Wq", "s"], ["wdq"]),
        helper.make_node("MatMul", ["h", "wdq"], ["Y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3, 4])],
        initializer=[
            numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(np.float32(0.1), "s"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "emb.onnx"
    onnx.save(model, str(src))
    handle = ModelHandle(
        form="onnx", inputs=[TensorSpec("ids", ("batch", 3), "int64", high=10)], outputs=["Y"], onnx_path=src
    )
    res = run(handle, ctx, sparsity=0.5, keep_output_layer=False)
    got = onnx_weights(res.model.onnx_path)
    np.testing.assert_array_equal(got["E"], emb)
    np.testing.assert_array_equal(got["Wq"], wq)
    assert int((got["W"] == 0).sum()) == 32
    assert any("embedding" in n and "E" in n for n in res.notes)
    assert any("non-float" in n and "Wq" in n for n in res.notes)
    res = run(handle, ctx, sparsity=0.5, include=["E", "embed"])
    got = onnx_weights(res.model.onnx_path)
    assert int((got["E"] == 0).sum()) == 40 and not (got["W"] == 0).any()
    sess = ort.InferenceSession(str(res.model.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"ids": np.array([[1, 2, 3]], np.int64)})[0].shape == (1, 3, 4)


def test_on_run_device_moves_the_model_for_the_pass_and_back_even_on_failure(monkeypatch):
    """--device cuda: the input module (the distill pass's teacher too) goes to the GPU for the
    pass and back where it was after, also when the pass fails or the model does not fit."""
    from types import SimpleNamespace

    from optimize.errors import PassError
    from passes.prune.util import on_run_device

    module = nn.Linear(2, 2)
    moves: list[str] = []
    monkeypatch.setattr(module, "to", lambda where: moves.append(str(where)))  # no GPU here: record only
    with on_run_device(module, SimpleNamespace(device="cpu")) as where:
        assert where == "cpu"
    assert moves == []
    with pytest.raises(RuntimeError, match="mid-pass"), on_run_device(module, SimpleNamespace(device="cuda")):
        raise RuntimeError("mid-pass")
    assert moves == ["cuda", "cpu"]

    def too_big(where: object) -> None:
        moves.append(str(where))
        if str(where) == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    moves.clear()
    monkeypatch.setattr(module, "to", too_big)
    with pytest.raises(PassError, match="does not fit on cuda.*--device cpu"), on_run_device(module, SimpleNamespace(device="cuda")):
        pass
    assert moves == ["cuda", "cpu"]
