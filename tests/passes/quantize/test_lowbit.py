"""quantize bits 1/2: binary and ternary weights (projection, straight-through training, int8 codes
with a per-channel scale in the file, logical vs stored bits in weight counts and the report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import cosine, eval_data_yaml, make_ctx, onnx_handle
from onnx import numpy_helper
from tiny_models import export_module
from torch import nn
from typer.testing import CliRunner

from optimize.config import load_config_text
from optimize.errors import ConfigError
from optimize.export import finalized_module
from optimize.handle import ModelHandle, TensorSpec
from optimize.inspect_onnx import LOGICAL_BITS_KEY, weight_stats
from passes.quantize import QuantizeConfig, QuantizePass
from passes.quantize.lowbit import (
    TERNARY_THRESHOLD,
    fake_quant_module,
    project_numpy,
    project_torch,
    set_logical_bits,
)

CFG = "schema_version: 1\npasses: []\n"
FAST = "measure: {repeat: 4, warmup: 1, parity_samples: 32, single_thread: false}\nhardware: {threads: 2}\n"
INPUTS = [TensorSpec("x", ("batch", 3, 8, 8))]


class Net(nn.Module):
    """Conv (+BatchNorm) → Gemm (Linear) → MatMul with a 2-D [in, out] weight: every layout's channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 16)
        self.proj = nn.Parameter(torch.randn(16, 12) * 0.3)  # MatMul B: [in, out], channel axis 1

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return torch.relu(self.fc(h)) @ self.proj


def net() -> Net:
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def qdq_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """weighted node → (int8 codes, scale, DequantizeLinear axis) of its QDQ weight."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_by_out = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dq_by_out:
            dq = dq_by_out[n.input[1]]
            if dq.input[0] in inits and inits[dq.input[0]].dtype == np.int8:
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                out[n.op_type] = (inits[dq.input[0]], inits[dq.input[1]], axis)
    return out


def per_channel_values(codes: np.ndarray, scale: np.ndarray, axis: int) -> list[set[float]]:
    moved = np.moveaxis(codes.astype(np.float32), axis, 0).reshape(codes.shape[axis], -1)
    return [set((row * scale.reshape(-1)[c]).tolist()) for c, row in enumerate(moved)]


def run_ort(path: Path, x: np.ndarray, level: ort.GraphOptimizationLevel) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


# ---------------------------------------------------------------------------- the projection


def test_binary_and_ternary_projection_follow_xnor_and_twn():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 20)).astype(np.float32) * np.linspace(0.1, 2, 6, dtype=np.float32)[:, None]
    w[5] = 0.0  # an all-zero channel stays zero
    b_vals, b_codes, b_alpha = project_numpy(w, 1, axis=0)
    t_vals, t_codes, t_alpha = project_numpy(w, 2, axis=0)
    for c in range(5):
        a = np.abs(w[c]).astype(np.float64)
        assert b_alpha[c] == np.float32(a.mean())  # XNOR-Net: α = mean |w|
        assert set(b_codes[c].tolist()) == {-1, 1} and set(b_vals[c].tolist()) == {-b_alpha[c], b_alpha[c]}
        above = a > TERNARY_THRESHOLD * a.mean()  # TWN: Δ = 0.7 mean |w|, α = mean |w| above Δ
        assert np.array_equal(t_codes[c] != 0, above) and t_alpha[c] == np.float32(a[above].mean())
        assert set(t_vals[c].tolist()) == {-t_alpha[c], 0.0, t_alpha[c]}
    assert not b_vals[5].any() and not t_vals[5].any()
    # idempotent (what keeps QAT-trained weights unchanged when materialized), and torch agrees
    for bits, vals in ((1, b_vals), (2, t_vals)):
        again, _, _ = project_numpy(vals, bits, axis=0)
        assert np.array_equal(again, vals)
        np.testing.assert_allclose(project_torch(torch.from_numpy(w), bits, per_channel=True).numpy(), vals,
                                   rtol=1e-6, atol=0)
    # other axes and per tensor
    vals, codes, alpha = project_numpy(w.T.copy(), 2, axis=1)
    assert np.array_equal(vals, t_vals.T) and alpha.shape == (6,)
    vals, _, alpha = project_numpy(w, 1, axis=None)
    assert alpha.shape == () and len(np.unique(vals)) == 3  # ±α and the zero channel


def test_straight_through_estimator_passes_the_gradient_unchanged():
    torch.manual_seed(0)
    w = torch.randn(64, 9, requires_grad=True)
    fq = fake_quant_module(2, per_channel=True)
    out = fq(w)
    # exactly the projection in value (not off by an ulp), so finalized weights lie on the grid
    assert torch.equal(out.detach(), project_torch(w, 2, per_channel=True))
    assert all(len(set(row.tolist())) <= 3 for row in out.detach())
    g = torch.randn(64, 9)
    out.backward(g)
    assert torch.equal(w.grad, g)


# ---------------------------------------------------------------------------- ONNX: post-training


@pytest.mark.parametrize("bits", [1, 2])
def test_ptq_stores_int8_codes_with_per_channel_scale_and_logical_bits(tmp_path, bits):
    src = export_module(net(), tmp_path / "m.onnx", (torch.randn(2, 3, 8, 8),))
    res = QuantizePass(QuantizeConfig(bits=bits, calibration_samples=32)).run(onnx_handle(src, INPUTS), make_ctx(tmp_path / "work", CFG, inputs=INPUTS))
    out = res.model.onnx_path
    float_w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}

    weights = qdq_weights(out)
    assert set(weights) == {"Conv", "Gemm", "MatMul"}
    for op, (codes, scale, axis) in weights.items():
        assert set(np.unique(codes).tolist()) == ({-1, 1} if bits == 1 else {-1, 0, 1}), op
        assert scale.shape == (codes.shape[axis],) and axis == (1 if op == "MatMul" else 0)
        # per output channel: at most 2 (binary: ±α) or 3 (ternary: -α, 0, +α) distinct values, each a code
        # × the channel's α (a small channel may miss one: all of its 8 weights above the threshold and > 0)
        channels = per_channel_values(codes, scale, axis)
        for c, values in enumerate(channels):
            a = float(scale[c])
            assert values <= ({-a, a} if bits == 1 else {-a, 0.0, a}), (op, c, values)
        assert sum(len(v) == bits + 1 for v in channels) >= 0.8 * len(channels), op
        if bits == 2:
            assert 0.2 < float((codes == 0).mean()) < 0.7, op  # TWN zeroes roughly the smallest 40-50%
    # the stored values are the projection of the float weights (per output channel)
    conv_codes, conv_scale, _ = weights["Conv"]
    mm_codes, mm_scale, _ = weights["MatMul"]
    mm_float = next(v for v in float_w.values() if v.shape == (16, 12))
    _, want_codes, want_alpha = project_numpy(mm_float, bits, axis=1)
    assert np.array_equal(mm_codes, want_codes) and np.array_equal(mm_scale, want_alpha)
    assert conv_codes.shape == (8, 3, 3, 3) and conv_scale.dtype == np.float32

    stats = weight_stats(out)
    assert {(t.bits, t.logical_bits, t.dtype) for t in stats.tensors} == {(8, bits, "int8")}
    assert stats.logical_bit_sum == bits * stats.total and stats.bit_sum == 8 * stats.total
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert set(json.loads(meta[LOGICAL_BITS_KEY]).values()) == {bits}
    m = res.metrics
    assert m["logical_bits"] == bits and m["lowbit_weights"] == 3
    assert m["logical_weight_bits"] == {str(bits): stats.total} and m["stored_weight_bits"] == {"8": stats.total}
    assert any("accuracy usually collapses without quantization-aware training" in n for n in res.notes)

    # ONNX Runtime runs it; its fused integer kernels agree with the reference Q/DQ arithmetic
    # (they add the int32 bias as stored, so its scale must follow the new weight scale)
    x = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    fused = run_ort(out, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    reference = run_ort(out, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert np.isfinite(fused).all() and cosine(fused, reference) > 0.999


def test_excluded_layer_stays_float_and_counts_32_bits(tmp_path):
    src = export_module(net(), tmp_path / "m.onnx", (torch.randn(2, 3, 8, 8),))
    gemm = next(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Gemm")
    res = QuantizePass(QuantizeConfig(bits=2, calibration_samples=16, exclude_nodes=[gemm])).run(
        onnx_handle(src, INPUTS), make_ctx(tmp_path / "work", CFG, inputs=INPUTS))
    stats = weight_stats(res.model.onnx_path)
    by_op = {t.op_type: (t.bits, t.logical_bits) for t in stats.tensors}
    assert by_op == {"Conv": (8, 2), "Gemm": (32, None), "MatMul": (8, 2)}


def test_fallback_keeps_the_reported_layers_float_and_the_rest_ternary(tmp_path):
    src = export_module(net(), tmp_path / "m.onnx", (torch.randn(2, 3, 8, 8),))
    cfg = QuantizeConfig(bits=2, calibration_samples=16, parity_floor=0.99, fallback_max_layers=2)
    ctx = make_ctx(tmp_path / "work", CFG + eval_data_yaml(tmp_path, "x", (3, 8, 8)), inputs=INPUTS)
    res = QuantizePass(cfg).run(onnx_handle(src, INPUTS), ctx)
    kept = set(res.metrics["float_nodes"])
    assert kept and res.metrics["fallback_goal_met"]
    model = onnx.load(str(res.model.onnx_path))
    from optimize.inspect_onnx import iter_weight_uses

    logical = {u.node.name: t.logical_bits for u, t in zip(iter_weight_uses(model), weight_stats(model).tensors,
                                                          strict=True)}
    assert {n for n, b in logical.items() if b is None} == kept
    assert {b for n, b in logical.items() if n not in kept} == {2}


def test_a_logical_bits_claim_the_values_do_not_support_is_ignored(tmp_path):
    src = export_module(net(), tmp_path / "m.onnx", (torch.randn(2, 3, 8, 8),))
    res = QuantizePass(QuantizeConfig(calibration_samples=16)).run(onnx_handle(src, INPUTS), make_ctx(tmp_path / "work", CFG, inputs=INPUTS))  # int8
    model = onnx.load(str(res.model.onnx_path))
    names = [t.name for t in weight_stats(model).tensors]
    set_logical_bits(model, {name: 1 for name in names})  # int8 weights with many values: not 1-bit
    assert all(t.logical_bits is None for t in weight_stats(model).tensors)
    assert weight_stats(model).logical_bit_sum == weight_stats(model).bit_sum
    set_logical_bits(model, {})
    assert not [p for p in model.metadata_props if p.key == LOGICAL_BITS_KEY]


# ---------------------------------------------------------------------------- QAT


def test_qat_trained_ternary_weights_survive_materialization_exactly(tmp_path):
    ctx = make_ctx(tmp_path / "work", CFG, inputs=INPUTS)
    qpass = QuantizePass(QuantizeConfig(bits=2, calibration_samples=16))
    res = qpass.run(ModelHandle(form="torch", module=net(), inputs=list(INPUTS), outputs=["y"]), ctx)
    assert res.metrics["weight_type"] == "ternary" and res.metrics["weight_grid_exact"]
    assert res.metrics["layers_wrapped"] == 2 and res.metrics["batchnorm_folded"] == 1  # conv, fc (proj is raw)
    qat = res.model.module.train()
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(3):
        loss = qat(torch.randn(8, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert qat.fc.parametrizations.weight.original.grad.abs().sum() > 0

    fin = finalized_module(qat)
    for layer in (fin.conv, fin.fc):
        rows = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert all(len(set(r.tolist())) <= 3 for r in rows)
    path = export_module(fin, tmp_path / "trained.onnx", (torch.randn(2, 3, 8, 8),))
    out = qpass.finalize(res.model.replace(form="onnx", module=None, onnx_path=path), ctx)
    assert out.metrics["stage"] == "materialize_qat" and out.metrics["logical_weight_bits"]["2"] > 0
    assert not any("collapses" in n for n in out.notes)
    weights = qdq_weights(out.model.onnx_path)
    for op, layer in (("Conv", fin.conv), ("Gemm", fin.fc)):
        codes, scale, axis = weights[op]
        shape = [1] * codes.ndim
        shape[axis] = -1
        got = codes.astype(np.float32) * scale.reshape(shape)
        np.testing.assert_array_equal(got, layer.weight.detach().numpy())  # the trained values, bit for bit


# ---------------------------------------------------------------------------- pipeline, report, inspect


@pytest.mark.parametrize("bits", [1, 2])
def test_report_quantization_ratio_uses_logical_bits_with_stored_ratio_beside(tmp_path, bits):
    from optimize import pipeline
    from optimize.api import RunOptions, inspect_model

    src = export_module(net(), tmp_path / "m.onnx", (torch.randn(2, 3, 8, 8),))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"schema_version: 1\npasses:\n  - type: quantize\n    bits: {bits}\n    calibration_samples: 16\n"
                   "    random_calibration: true\n" + FAST)
    out = tmp_path / "m.opt.onnx"
    report = pipeline.run(RunOptions(model=str(src), config=str(cfg), output=str(out)))
    q = report.metrics["quantization_ratio"]
    assert q.value == pytest.approx(bits / 32)
    assert q.inputs["stored_ratio"] == pytest.approx(0.25) and q.inputs["bits_are"] == "logical"
    assert q.inputs["stored_bits"] == 8 * q.inputs["weights"] and q.inputs["logical_bits"] == bits * q.inputs["weights"]
    assert report.metrics["parity"].inputs["all_finite"] and np.isfinite(report.metrics["parity"].value)
    step = report.steps[0]
    assert step.metrics["logical_weight_bits"] == {str(bits): q.inputs["weights"]}
    data = json.loads(Path(report.files["report"]).read_text())
    assert data["metrics"]["quantization_ratio"]["inputs"]["stored_ratio"] == pytest.approx(0.25)

    facts = inspect_model(str(out))
    assert facts["quantization_ratio"] == pytest.approx(bits / 32)
    assert facts["stored_quantization_ratio"] == pytest.approx(0.25)
    assert facts["weight_bits"] == {"logical": {str(bits): facts["weights"]}, "stored": {"8": facts["weights"]}}


# ---------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(("extra", "message"), [
    ("    bits: 3\n", "passes[0].quantize.bits: must be one of 1, 2, 4, 8"),
    ("    bits: 2\n    mode: dynamic\n", "bits 2 (ternary weights) needs mode: static with format: qdq"),
    ("    bits: 1\n    format: auto\n", "bits 1 (binary weights) needs mode: static with format: qdq"),
    ("    bits: 1\n    weight_type: uint8\n", "bits 1 stores signed codes (-1, 0, 1): use weight_type: int8"),
])
def test_bad_low_bit_options_are_config_errors(extra, message):
    with pytest.raises(ConfigError) as info:
        load_config_text("schema_version: 1\npasses:\n  - type: quantize\n" + extra)
    assert message in str(info.value)


def test_cli_bits_3_exits_2_with_one_line_and_writes_nothing(tmp_path):
    from cli.app import app

    src = export_module(net(), tmp_path / "m.onnx", (torch.randn(2, 3, 8, 8),))
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses:\n  - type: quantize\n    bits: 3\n")
    out = tmp_path / "m.opt.onnx"
    r = CliRunner().invoke(app, ["run", str(src), "-c", str(cfg), "-o", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"error: {cfg}:4: passes[0].quantize.bits: must be one of 1, 2, 4, 8"]
    assert not out.exists() and r.stdout == ""


# ---------------------------------------------------------------------------- digits (slow)


@pytest.mark.slow
def test_ternary_qat_with_distillation_on_digits_reaches_float_accuracy(tmp_path):
    """The built-in digits CNN with ternary weights: post-training vs QAT + distillation, both stored
    as int8 codes. Measured here: float 99.2%, PTQ 79.2%, QAT+KD (5 epochs) 99.7%."""
    from optimize import pipeline
    from optimize.api import RunOptions

    head = (
        "schema_version: 1\nseed: 0\ndata:\n  train: {source: 'builtin:digits', split: train}\n"
        "  eval: {source: 'builtin:digits', split: test}\n"
        "measure: {batch: 32, repeat: 3, warmup: 1, single_thread: false, parity_samples: 16}\npasses:\n"
        "  - type: quantize\n    bits: 2\n"
    )
    acc = {}
    for name, extra in (("ptq", ""), ("qat", "  - type: distill\n    epochs: 5\n    lr: 0.002\n    temperature: 4.0\n"
                                             "    alpha: 0.7\n")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(head + extra)
        out = tmp_path / f"{name}.onnx"
        report = pipeline.run(RunOptions(model=None, config=str(cfg), output=str(out), fail_on_gate=False))
        assert {(t.bits, t.logical_bits) for t in weight_stats(out).tensors} == {(8, 2)}
        assert report.metrics["quantization_ratio"].value == pytest.approx(2 / 32)
        acc[name] = report.metrics["accuracy"].value
        baseline = report.metrics["accuracy"].inputs["baseline"]
    assert acc["qat"] >= baseline - 2.0 and acc["qat"] > acc["ptq"] + 5.0, acc
