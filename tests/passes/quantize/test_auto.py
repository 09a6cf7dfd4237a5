"""quantize: format auto (candidates measured on this machine), accuracy-aware fallback, int4
weight-only (MatMulNBits), transformer fusion before quantization, and their config errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import eval_data_yaml, make_ctx, onnx_handle
from onnx import TensorProto
from tiny_models import export_module, mlp_of
from torch import nn

from optimize.benchmark import interleaved, pairwise_ratio
from optimize.config import load_config_text
from optimize.context import PlanContext
from optimize.errors import ConfigError
from optimize.handle import TensorSpec
from optimize.inspect_onnx import iter_weight_uses, op_counts, weight_stats
from optimize.onnx_io import total_bytes
from optimize.runtime import parity, predict, session
from passes.quantize import QuantizeConfig, QuantizePass
from passes.quantize.auto import Candidate, Check, choose

CFG = "schema_version: 1\nmeasure: {repeat: 12, warmup: 2}\npasses: []\n"


def weight_dtypes_by_node(path: Path) -> dict[str, int]:
    """Weighted node name → stored weight element type (TensorProto enum)."""
    return {u.node.name: u.tensor.data_type for u in iter_weight_uses(onnx.load(str(path)))}


# ---------------------------------------------------------------------------- format: auto


def test_auto_lists_candidates_and_its_speed_claim_holds_on_remeasurement(tmp_path):
    inputs = [TensorSpec("x", ("batch", 256))]
    src = export_module(mlp_of(256, 1024, 256), tmp_path / "mlp.onnx", (torch.randn(1, 256),))
    ctx = make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2)
    res = QuantizePass(QuantizeConfig(format="auto", random_calibration=True)).run(onnx_handle(src, inputs), ctx)

    rows = res.metrics["candidates"]
    names = [r["name"] for r in rows]
    assert names[0] == "float (input)" and "int8 dynamic per-channel" in names
    assert any(n.startswith("int8 static QDQ per-channel") for n in names)
    for r in rows:
        assert r["latency_ms"] > 0 and r["speedup"] > 0 and r["bytes"] > 0 and r["min_cosine"] is not None
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["name"] == res.metrics["chosen"]
    passing = [r for r in rows if r["passed"]]
    assert chosen[0]["speedup"] == max(r["speedup"] for r in passing)
    assert chosen[0]["speedup"] >= 1.0  # never slower than the float input
    assert any("format auto (latency): chose" in n for n in res.notes)
    assert res.metrics["candidate_timing"]["threads"] == 2 and res.metrics["candidate_timing"]["batch"] == 1

    out = res.model.onnx_path
    if chosen[0]["name"] != "float (input)":
        assert out == ctx.step_dir("quantize") / "model.onnx"
        assert {t.bits for t in weight_stats(out).tensors} == {8}  # counted from the file
        assert total_bytes(src) / total_bytes(out) >= 3.8
    # the claim is re-measured independently: same threads and batch, interleaved, within noise
    x = {"x": np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)}
    t = interleaved({"a": src, "b": out}, x, threads=2, warmup=3, repeat=30)
    again = pairwise_ratio(t["a"], t["b"])
    rounds = np.array([a / b for a, b in zip(t["a"].times_ms, t["b"].times_ms, strict=True)])
    lo, hi = np.percentile(rounds, [10, 90])  # this machine's noise, as seen in the re-measurement
    claim = chosen[0]["speedup"]
    assert lo / 1.25 <= claim <= hi * 1.25, (claim, again, lo, hi)


def _cand(name, speedup, size, quantized=True, passed=True):
    c = Candidate(name, Path(name), {}, quantized=quantized, passed=passed)
    c.speedup, c.bytes, c.check = speedup, size, Check(0.999, 0.999, 0.0, True)
    return c


def test_choose_keeps_float_when_quantized_candidates_are_slower_and_says_why():
    cands = [_cand("float (input)", 1.0, 400, quantized=False), _cand("int8 static", 0.69, 100),
             _cand("int8 dynamic", 0.8, 110)]
    chosen, notes = choose(cands, "latency")
    assert chosen.name == "float (input)"
    assert any("SLOWER" in n and "int8 static 0.69x" in n and "objective: size" in n and "4.0x smaller" in n
               for n in notes)


def test_choose_keeps_float_when_the_fastest_quantized_candidate_is_not_measurably_faster():
    # magika on an Intel Xeon with AMX: int8 static QDQ + 1 float layer at 1.00x, cosine 0.995
    tie, faster = _cand("int8 static", 1.004, 100), _cand("int8 dynamic", 1.3, 110)
    tie.speed_low, faster.speed_low = 0.97, 1.21
    cands = [_cand("float (input)", 1.0, 400, quantized=False), tie]
    chosen, notes = choose(cands, "latency")
    assert chosen.name == "float (input)"
    assert any("not measurably faster" in n and "from 0.97x" in n and "int8 static (4.0x smaller)" in n for n in notes)
    assert choose(cands, "size")[0].name == "int8 static"  # size asks for the smaller file regardless
    assert choose([*cands, faster], "latency")[0].name == "int8 dynamic"  # an interval clear of 1.0 wins
    assert choose(cands[:1] + [_cand("int8 static", 1.004, 100)], "latency")[0].name == "int8 static"  # no interval known
    fused = _cand("float fused", 1.5, 400, quantized=False)
    quick = _cand("int8 static", 1.52, 100)
    quick.speed_low = 1.45  # clear of the float input, not of the fused float graph
    chosen, notes = choose([cands[0], fused, quick], "latency")
    assert chosen.name == "float fused" and any(n.startswith("kept float fused") and "(1.50x)" in n for n in notes)


def test_choose_says_when_no_quantized_candidate_was_built_and_why():
    # openwakeword's embedding model (tf2onnx convolutions), no calibration data: nothing to build
    why = "int8 static: static quantization needs representative calibration data"
    chosen, notes = choose([_cand("float (input)", 1.0, 400, quantized=False)], "latency", (why,))
    assert chosen.name == "float (input)"
    assert notes == ["kept float: no quantized candidate was built: " + why]
    failing = [_cand("float (input)", 1.0, 400, quantized=False), _cand("int8 static", 1.5, 100, passed=False)]
    assert choose(failing, "latency")[1] == ["kept float: no quantized candidate met the parity/accuracy goal"]


def test_choose_size_objective_takes_the_smallest_and_flags_that_it_is_slower():
    cands = [_cand("float (input)", 1.0, 400, quantized=False), _cand("int8 static", 0.69, 100),
             _cand("int8 dynamic", 1.3, 110), _cand("int8 broken", 2.0, 50, passed=False)]
    chosen, notes = choose(cands, "size")
    assert chosen.name == "int8 static"  # the failing, smaller one is never chosen
    assert any("SLOWER" in n and "0.69x" in n for n in notes)
    chosen, _ = choose(cands, "latency")
    assert chosen.name == "int8 dynamic"


def test_choose_size_objective_prefers_the_faster_of_near_equal_sizes():
    # measured on ResNet: dynamic 3.98x smaller at 0.11x, static 3.97x smaller at 3.1x
    cands = [_cand("float (input)", 1.0, 4000, quantized=False), _cand("int8 dynamic", 0.11, 1003),
             _cand("int8 static", 3.1, 1006)]
    chosen, notes = choose(cands, "size")
    assert chosen.name == "int8 static"
    assert not any("SLOWER" in n for n in notes)


def test_auto_without_matmul_or_calibration_keeps_float(tmp_path):
    """A conv-only model with format auto and mode dynamic: no candidate fits; the float input is kept."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    inputs = [TensorSpec("x", ("batch", 3, 8, 8))]
    src = export_module(conv, tmp_path / "c.onnx", (torch.randn(1, 3, 8, 8),))
    res = QuantizePass(QuantizeConfig(format="auto", mode="dynamic")).run(onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    assert res.model.onnx_path == src
    assert res.metrics["chosen"] == "float (input)" and res.metrics["mode"] == "float"
    assert any("no MatMul/Gemm" in s for s in res.metrics["not_candidates"])


# ---------------------------------------------------------------------------- accuracy-aware fallback


def outlier_mlp() -> nn.Module:
    """Per-tensor int8 wrecks the middle layer (one weight 40x the rest); the others quantize well."""
    m = mlp_of(16, 64, 64, 32)
    with torch.no_grad():
        m[2].weight[0, 0] = 40.0
    return m


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_fallback_keeps_exactly_the_reported_layers_in_float(tmp_path, mode):
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(outlier_mlp(), tmp_path / "m.onnx", (torch.randn(1, 16),))
    ctx = make_ctx(tmp_path / "work", CFG + eval_data_yaml(tmp_path, "x", (16,)), inputs=inputs, threads=2)
    # reduce_range on: 7-bit weights behave alike on CPUs with and without VNNI (without it, 8-bit u8s8
    # kernels saturate and no floor near 1 is reachable on this toy model)
    cfg = QuantizeConfig(mode=mode, per_channel=False, parity_floor=0.95, reduce_range=True)
    res = QuantizePass(cfg).run(onnx_handle(src, inputs), ctx)

    assert res.metrics["parity_all_quantized"]["min_cosine"] < 0.95
    kept = res.metrics["float_nodes"]
    assert kept and kept[0] == "/2/Gemm"  # the outlier layer is the most sensitive
    assert max(res.metrics["sensitivity"], key=res.metrics["sensitivity"].get) == "/2/Gemm"
    assert res.metrics["fallback_goal_met"] is True
    assert any("kept the" in n and "/2/Gemm" in n for n in res.notes)

    out = res.model.onnx_path
    dtypes = weight_dtypes_by_node(out)
    # dynamic quantization renames a Gemm it rewrites to NAME_MatMul
    float_in_output = {n.removesuffix("_MatMul") for n, t in dtypes.items() if t == TensorProto.FLOAT}
    int_in_output = {n for n, t in dtypes.items() if t in (TensorProto.INT8, TensorProto.UINT8)}
    assert float_in_output == set(kept)
    assert int_in_output  # every other layer is integer
    x, _ = ctx.sample_inputs("eval", ctx.parity_count())  # the samples the pass checked
    p = parity(predict(session(src), x), predict(session(out), x))
    assert p["min_cosine"] >= 0.95
    assert p["min_cosine"] == pytest.approx(res.metrics["parity_after_fallback"]["min_cosine"], abs=1e-6)


def test_the_fallback_choice_is_checked_on_eval_samples_it_did_not_choose_on(tmp_path, monkeypatch):
    import optimize.probes

    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(outlier_mlp(), tmp_path / "m.onnx", (torch.randn(1, 16),))
    cfg = QuantizeConfig(mode="dynamic", per_channel=False, parity_floor=0.95, reduce_range=True)
    small = CFG.replace("measure: {", "measure: {parity_samples: 32, ")
    # parity reads all of data.eval up to an input-element budget: 512 elements = 32 samples of 16,
    # so 80 samples leave some beyond what the pass chooses on
    monkeypatch.setattr(optimize.probes, "PROBE_ELEMENTS", 32 * 16)
    ctx = make_ctx(tmp_path / "work", small + eval_data_yaml(tmp_path, "x", (16,), n=80), inputs=inputs, threads=2)
    res = QuantizePass(cfg).run(onnx_handle(src, inputs), ctx)
    held = res.metrics["parity_held_out"]
    assert res.metrics["float_nodes"] and held["samples"] == 32  # samples 32..63: as many as it chose on
    for rows, want in ((slice(0, 32), res.metrics["parity_after_fallback"]), (slice(32, 64), held)):
        x = {"x": ctx.data("eval").inputs["x"][rows]}
        p = parity(predict(session(src), x), predict(session(res.model.onnx_path), x))
        assert want["min_cosine"] == pytest.approx(p["min_cosine"], abs=1e-6)  # chosen on the first 32, checked on the next
    all_used = make_ctx(tmp_path / "w2", CFG + eval_data_yaml(tmp_path / "e2", "x", (16,), n=64), inputs=inputs, threads=2)
    res = QuantizePass(cfg).run(onnx_handle(src, inputs), all_used)
    assert "parity_held_out" not in res.metrics and any("none left to check" in n for n in res.notes), res.notes


def test_the_fallback_chooses_on_every_eval_sample_the_gate_reads(tmp_path):
    """80 eval samples with parity_samples 32: the report's parity reads all 80, so the fallback
    meets its floor on all 80, not on the first 32 only."""
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(outlier_mlp(), tmp_path / "m.onnx", (torch.randn(1, 16),))
    cfg = QuantizeConfig(mode="dynamic", per_channel=False, parity_floor=0.95, reduce_range=True)
    small = CFG.replace("measure: {", "measure: {parity_samples: 32, ")
    ctx = make_ctx(tmp_path / "work", small + eval_data_yaml(tmp_path, "x", (16,), n=80), inputs=inputs, threads=2)
    res = QuantizePass(cfg).run(onnx_handle(src, inputs), ctx)
    assert ctx.parity_count() == 80 and res.metrics["float_nodes"] and "parity_held_out" not in res.metrics
    x = ctx.data("eval").inputs
    p = parity(predict(session(src), x), predict(session(res.model.onnx_path), x))
    assert p["min_cosine"] >= 0.95
    assert p["min_cosine"] == pytest.approx(res.metrics["parity_after_fallback"]["min_cosine"], abs=1e-6)


def test_no_fallback_steered_by_random_probes(tmp_path):
    """Without data the pass's parity runs on random probes: the fallback would pick the layers that
    matter for noise (on a real text recognizer it met 0.98 on noise and gave 0.912 on text lines)."""
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(outlier_mlp(), tmp_path / "m.onnx", (torch.randn(1, 16),))
    cfg = QuantizeConfig(mode="dynamic", per_channel=False, parity_floor=0.95, reduce_range=True)
    res = QuantizePass(cfg).run(onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    assert res.metrics["parity_all_quantized"]["min_cosine"] < 0.95
    assert "float_nodes" not in res.metrics and any("no fallback: parity on random inputs" in n for n in res.notes)
    assert all(t != TensorProto.FLOAT for t in weight_dtypes_by_node(res.model.onnx_path).values())


def test_fallback_off_or_no_goal_leaves_the_model_fully_quantized(tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(outlier_mlp(), tmp_path / "m.onnx", (torch.randn(1, 16),))
    res = QuantizePass(QuantizeConfig(mode="dynamic", per_channel=False)).run(onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    assert "float_nodes" not in res.metrics  # no floor configured: nothing checked
    res = QuantizePass(QuantizeConfig(mode="dynamic", per_channel=False, parity_floor=0.995, fallback_max_layers=0)).run(
        onnx_handle(src, inputs), make_ctx(tmp_path / "w2", CFG, inputs=inputs, threads=2))
    assert any("fallback is off" in n for n in res.notes)
    assert all(t != TensorProto.FLOAT for t in weight_dtypes_by_node(res.model.onnx_path).values())


def test_auto_rejects_a_candidate_below_the_floor_and_adds_its_fallback(tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(outlier_mlp(), tmp_path / "m.onnx", (torch.randn(1, 16),))
    text = CFG.replace("passes: []", "gates: {min_parity_cosine: 0.95}\npasses: []") + eval_data_yaml(tmp_path, "x", (16,))
    res = QuantizePass(QuantizeConfig(format="auto", mode="dynamic", per_channel=False, reduce_range=True)).run(
        onnx_handle(src, inputs), make_ctx(tmp_path / "work", text, inputs=inputs, threads=2))
    rows = {r["name"]: r for r in res.metrics["candidates"]}
    full = rows["int8 dynamic per-tensor"]
    assert not full["passed"] and "floor 0.95 (gates.min_parity_cosine)" in full["reason"]
    fb = [r for n, r in rows.items() if n.startswith("int8 dynamic per-tensor + ")]
    assert len(fb) == 1 and fb[0]["passed"] and fb[0]["float_nodes"][0] == "/2/Gemm"
    assert res.metrics["goal"]["min_parity_cosine"] == 0.95


# ---------------------------------------------------------------------------- int4 weight-only


def test_weight_only_int4_stores_4_bit_matmul_weights(tmp_path):
    inputs = [TensorSpec("x", ("batch", 256))]
    src = export_module(mlp_of(256, 512, 256), tmp_path / "m.onnx", (torch.randn(1, 256),))
    res = QuantizePass(QuantizeConfig(mode="weight_only", bits=4, block_size=32)).run(
        onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    out = res.model.onnx_path
    counts = op_counts(out)
    assert counts.get("com.microsoft.MatMulNBits") == 2 and "Gemm" not in counts
    stats = weight_stats(out)
    assert {t.bits for t in stats.tensors} == {4}  # counted from the file
    assert stats.total == 2 * 256 * 512
    assert res.metrics["weight_bits"] == {"4": 2 * 256 * 512} and res.metrics["gemm_rewritten_as_matmul"] == 2
    assert total_bytes(src) / total_bytes(out) >= 6.0
    x = {"x": np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)}
    assert parity(predict(session(src), x), predict(session(out), x))["min_cosine"] > 0.98


def test_weight_only_int8_and_block_size(tmp_path):
    inputs = [TensorSpec("x", ("batch", 256))]
    src = export_module(mlp_of(256, 128), tmp_path / "m.onnx", (torch.randn(1, 256),))
    res = QuantizePass(QuantizeConfig(mode="weight_only", bits=8, block_size=128)).run(
        onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    node = next(n for n in onnx.load(str(res.model.onnx_path)).graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 128
    assert {t.bits for t in weight_stats(res.model.onnx_path).tensors} == {8}


# ---------------------------------------------------------------------------- transformer fusion


class TinyBert(nn.Module):
    """A BERT-style encoder written as the Hugging Face BERT layer is (the pattern ONNX Runtime fuses)."""

    def __init__(self, hidden: int = 32, heads: int = 4, layers: int = 2, vocab: int = 50, seq: int = 16) -> None:
        super().__init__()
        self.heads, self.hidden = heads, hidden
        self.emb = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(seq, hidden)
        self.ln0 = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "q": nn.Linear(hidden, hidden), "k": nn.Linear(hidden, hidden), "v": nn.Linear(hidden, hidden),
                "o": nn.Linear(hidden, hidden), "ln1": nn.LayerNorm(hidden),
                "f1": nn.Linear(hidden, 4 * hidden), "f2": nn.Linear(4 * hidden, hidden), "ln2": nn.LayerNorm(hidden),
            }))

    def split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.hidden // self.heads).permute(0, 2, 1, 3)

    def forward(self, ids, mask):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        h = self.ln0(self.emb(ids) + self.pos(pos))
        ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for blk in self.blocks:
            q, k, v = self.split(blk["q"](h)), self.split(blk["k"](h)), self.split(blk["v"](h))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hidden // self.heads) + ext
            ctx = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
            ctx = ctx.view(ctx.shape[0], ctx.shape[1], self.hidden)
            h = blk["ln1"](blk["o"](ctx) + h)
            ff = blk["f2"](torch.nn.functional.gelu(blk["f1"](h)))
            h = blk["ln2"](ff + h)
        return h


def test_fusion_then_dynamic_quantization_runs_fused_integer_kernels(tmp_path):
    torch.manual_seed(0)
    model = TinyBert().eval()
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    inputs = [TensorSpec("ids", ("batch", 16), "int64", low=0, high=50), TensorSpec("mask", ("batch", 16), "int64", low=1, high=2)]
    src = tmp_path / "bert.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(src), dynamo=False, input_names=["ids", "mask"], output_names=["y"],
                          dynamic_axes={"ids": {0: "b"}, "mask": {0: "b"}, "y": {0: "b"}}, opset_version=17)
    res = QuantizePass(QuantizeConfig(mode="dynamic", fusion="bert", num_heads=4, hidden_size=32)).run(
        onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    fused = res.metrics["fusion"]["fused_ops"]
    assert fused.get("SkipLayerNormalization", 0) >= 2
    assert res.metrics["fusion"]["nodes_after"] < res.metrics["fusion"]["nodes_before"]
    counts = op_counts(res.model.onnx_path)
    assert any(op.endswith(("MatMulInteger", "QAttention", "DynamicQuantizeMatMul")) for op in counts)
    assert {t.bits for t in weight_stats(res.model.onnx_path).tensors if t.op_type != "Gather"} <= {8}
    feed = {"ids": ids.numpy(), "mask": mask.numpy()}
    p = parity(predict(session(src), feed), predict(session(res.model.onnx_path), feed))
    assert p["all_finite"] and p["min_cosine"] > 0.95


# ---------------------------------------------------------------------------- config errors


def _plan(text: str, form: str = "onnx", spec: bool = True) -> PlanContext:
    cfg = load_config_text(text)
    return PlanContext(config=cfg, input_form=form, has_input_spec=spec, index=0, form_at_pass=form)


@pytest.mark.parametrize(("extra", "message"), [
    ("    bits: 3\n", "passes[0].quantize.bits: must be one of 1, 2, 4, 8"),
    ("    bits: 4\n    mode: dynamic\n", "passes[0].quantize: bits 4 needs mode: weight_only"),
    ("    mode: weight_only\n    block_size: 48\n", "block_size must be a power of two (got 48)"),
    ("    objective: speed\n", "passes[0].quantize.objective: must be one of 'latency', 'size'"),
])
def test_bad_options_are_config_errors(extra, message):
    with pytest.raises(ConfigError) as info:
        load_config_text("schema_version: 1\npasses:\n  - type: quantize\n" + extra)
    assert message in str(info.value)


def test_check_refuses_weight_only_auto_off_decoders():
    """format auto with weight_only chooses int4 variants on decoder LLMs only (passes/quantize/llm_auto.py)."""
    pc = _plan("schema_version: 1\npasses:\n  - type: quantize\n    mode: weight_only\n    format: auto\n")
    with pytest.raises(ConfigError, match="format auto chooses among int8 forms") as info:
        QuantizePass(pc.config.passes[0]).check(pc)
    assert info.value.key == "passes[0].quantize.format"


def test_check_auto_needs_no_calibration_unless_static_is_asked():
    base = "schema_version: 1\npasses:\n  - type: quantize\n    format: auto\n"
    pc = _plan(base, spec=False)
    QuantizePass(pc.config.passes[0]).check(pc)  # static is simply not a candidate
    pc = _plan(base + "    mode: static\n", spec=False)
    with pytest.raises(ConfigError, match="static quantization needs calibration data"):
        QuantizePass(pc.config.passes[0]).check(pc)


def test_check_rejects_auto_and_weight_only_for_qat():
    for extra, key in (("    format: auto\n", "format"), ("    mode: weight_only\n    bits: 4\n", "mode")):
        pc = _plan("schema_version: 1\npasses:\n  - type: quantize\n" + extra, form="torch")
        with pytest.raises(ConfigError) as info:
            QuantizePass(pc.config.passes[0]).check(pc)
        assert info.value.key == f"passes[0].quantize.{key}"


# ---------------------------------------------------------------------------- 4-bit QAT


@pytest.mark.parametrize("reduce_range", [False, True])
def test_int4_fake_quant_matches_ort_quantizer(reduce_range):
    from onnx import TensorProto as TP
    from onnxruntime.quantization.quant_utils import quantize_data

    from passes.quantize.grid import ort_fake_quantize

    w = torch.randn(6, 10)
    scheme = {"qtype": "int4", "per_channel": False, "symmetric": True, "reduce_range": reduce_range}
    ours = ort_fake_quantize(w, scheme).numpy()
    zp, scale, q = quantize_data(w.numpy().ravel(), TP.INT4, symmetric=True, reduce_range=reduce_range)
    theirs = ((q.astype(np.float64) - float(zp)) * float(scale)).reshape(6, 10)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert len(np.unique(ours)) <= (8 if reduce_range else 16)


def test_static_int4_qdq_stores_4_bit_weights(tmp_path):
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(mlp_of(16, 32, 8), tmp_path / "m.onnx", (torch.randn(1, 16),))
    res = QuantizePass(QuantizeConfig(bits=4)).run(onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs, threads=2))
    stats = weight_stats(res.model.onnx_path)
    assert {t.bits for t in stats.tensors} == {4} and {t.dtype for t in stats.tensors} == {"int4"}
    assert res.metrics["weight_bits"] == {"4": 16 * 32 + 32 * 8}


@pytest.mark.slow
def test_qat_beats_post_training_quantization_at_2_bits_on_digits(tmp_path):
    """The built-in digits example at ternary weights (2 bits: α·{−1, 0, +1} per output channel):
    post-training quantization vs quantization-aware training (quantize → distill), both
    materialized by ONNX Runtime's static QDQ quantizer. Measured here (2026-12-01): PTQ 80.0%, QAT
    98.9% (float 99.2%). At 4 bits PTQ now reads 98.9% against QAT's 99.2% (it read 95.3% when this
    test was written at 4 bits), too close for a test to tell the two apart."""
    from optimize import pipeline
    from optimize.api import RunOptions

    head = (
        "schema_version: 1\nseed: 0\ndata:\n  train: {source: 'builtin:digits', split: train}\n"
        "  eval: {source: 'builtin:digits', split: test}\n"
        "measure: {batch: 32, repeat: 3, warmup: 1, single_thread: false, parity_samples: 16}\npasses:\n"
        "  - type: quantize\n    bits: 2\n    mode: static\n    format: qdq\n"
    )
    acc = {}
    for name, extra in (("ptq", ""), ("qat", "  - type: distill\n    epochs: 5\n    lr: 0.002\n    temperature: 4.0\n    alpha: 0.7\n")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(head + extra)
        out = tmp_path / f"{name}.onnx"
        report = pipeline.run(RunOptions(model=None, config=str(cfg), output=str(out), fail_on_gate=False))
        quantize = [s for s in report.steps if s.type == "quantize"][-1]  # after QAT: the step that materializes it
        assert set(quantize.metrics["logical_weight_bits"]) == {"2"}  # ternary codes, stored as int8
        assert report.metrics["quantization_ratio"].value == pytest.approx(2 / 32)
        acc[name] = report.metrics["accuracy"].value
    assert acc["qat"] > acc["ptq"] + 5.0, acc
