"""quantize `rewrites` (passes/quantize/rewrites.py): the graph pass's conv-affine and hard-swish
rewrites before quantizing, on by default with format auto, where the rewritten float graph is a
candidate of its own."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import cosine, make_ctx, onnx_handle
from tiny_models import conv_block, export_module, mlp_of

from optimize.handle import TensorSpec
from passes import graph_rewrites
from passes.quantize import QuantizeConfig, QuantizePass
from passes.quantize import search as search_mod

CFG = "schema_version: 1\nmeasure: {repeat: 4, warmup: 1}\npasses: []\n"

if graph_rewrites.available() is not None:  # an older onnxscript (the dependency allows >= 0.3)
    pytest.skip(graph_rewrites.available(), allow_module_level=True)
CONV_IN = [TensorSpec("x", ("batch", 3, 8, 8))]


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def quantize(cfg: QuantizeConfig, src, tmp_path, inputs=CONV_IN):
    return QuantizePass(cfg).run(onnx_handle(src, inputs), make_ctx(tmp_path / "work", CFG, inputs=inputs))


def test_format_auto_rewrites_first_and_times_the_rewritten_float_graph(tmp_path):
    src = conv_block(tmp_path / "in.onnx", 14)
    before = src.read_bytes()
    res = quantize(QuantizeConfig(format="auto", random_calibration=True), src, tmp_path)
    assert res.metrics["rewrites"] == {"applied": True, "conv_affine": 1, "hardswish": 1}
    names = [r["name"] for r in res.metrics["candidates"]]
    assert names[:2] == ["float (input)", "float rewritten"] and any(n.startswith("int8 static") for n in names)
    assert any(n.startswith("pattern rewrites before quantizing: conv_affine 1, hardswish 1") for n in res.notes)
    assert src.read_bytes() == before
    if res.metrics["chosen"] != "float (input)":  # every other candidate was built from the rewritten graph
        ops = [n.op_type for n in onnx.load(str(res.model.onnx_path)).graph.node]
        assert "Div" not in ops and "Add" not in ops


def test_a_chosen_rewritten_float_graph_is_kept_not_handed_back_as_nothing_quantized(tmp_path, monkeypatch):
    real = search_mod.choose

    def prefer_rewritten(candidates, objective, skipped=()):
        pick = next(c for c in candidates if c.name == "float rewritten")
        return pick, real(candidates, objective, skipped)[1]

    monkeypatch.setattr(search_mod, "choose", prefer_rewritten)
    src = conv_block(tmp_path / "in.onnx", 14)
    res = quantize(QuantizeConfig(format="auto", random_calibration=True), src, tmp_path)
    out = res.model.onnx_path
    assert out != src and res.metrics["mode"] == "float"
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv", "HardSwish"]
    assert not any("handed back unchanged" in n for n in res.notes)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    np.testing.assert_allclose(run(out, x), run(src, x), rtol=1e-4, atol=1e-4)


def test_a_fixed_format_rewrites_only_when_asked(tmp_path):
    src = conv_block(tmp_path / "in.onnx", 14)
    plain = quantize(QuantizeConfig(mode="static", random_calibration=True), src, tmp_path / "a")
    assert "rewrites" not in plain.metrics
    plain_ops = [n.op_type for n in onnx.load(str(plain.model.onnx_path)).graph.node]
    assert "Div" in plain_ops and "HardSwish" not in plain_ops  # the quantizer folds the Clip, not the rest
    asked = quantize(QuantizeConfig(mode="static", random_calibration=True, rewrites=["conv_affine", "hardswish"]),
                     src, tmp_path / "b")
    ops = [n.op_type for n in onnx.load(str(asked.model.onnx_path)).graph.node]
    assert asked.metrics["rewrites"]["applied"] and "QuantizeLinear" in ops
    # the affine folded into the conv (no Add), hard swish one or two ops (the quantizer splits it) without the Div
    assert "Add" not in ops and "Div" not in ops and {"HardSwish", "HardSigmoid"} & set(ops)
    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    want = run(src, x)
    cos = {name: cosine(run(res.model.onnx_path, x), want) for name, res in (("plain", plain), ("asked", asked))}
    assert cos["asked"] > cos["plain"] - 0.01, cos  # fewer quantized tensors: no worse


@pytest.mark.parametrize("rewrites", [None, []])
def test_a_model_nothing_matches_reaches_the_quantizer_as_it_came(tmp_path, rewrites):
    inputs = [TensorSpec("x", ("batch", 16))]
    src = export_module(mlp_of(16, 32, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    res = quantize(QuantizeConfig(format="auto", mode="dynamic", rewrites=rewrites), src, tmp_path, inputs)
    names = [r["name"] for r in res.metrics["candidates"]]
    assert names == ["float (input)", "int8 dynamic per-channel"]
    if rewrites is None:
        assert res.metrics["rewrites"] == {"applied": False, "conv_affine": 0, "hardswish": 0}
    else:
        assert "rewrites" not in res.metrics


def test_a_chosen_candidate_with_external_weights_is_written_with_its_own_data_file(tmp_path):
    """A large model's candidate (cand-0.onnx + cand-0.onnx.data, or fusion's fused.onnx.data) copied
    to model.onnx still named the candidate's data file, which the step's cleanup then deleted."""
    from passes.quantize.auto import Candidate

    work = tmp_path / "candidates"
    work.mkdir()
    model = onnx.load(str(conv_block(tmp_path / "in.onnx", 14)))
    cand = work / "cand-0.onnx"
    onnx.save(model, str(cand), save_as_external_data=True, location="cand-0.onnx.data", size_threshold=0)
    out = tmp_path / "step" / "model.onnx"
    out.parent.mkdir()
    chosen = Candidate("int8 static QDQ per-channel", cand, {"mode": "static"})
    assert search_mod._adopt(chosen, tmp_path / "in.onnx", out, {}, {}, []) == out
    for f in work.iterdir():
        f.unlink()  # the step's cleanup
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(tmp_path / "in.onnx", x), rtol=1e-5, atol=1e-5)


def test_exclude_nodes_that_match_nothing_are_said(tmp_path):
    src = conv_block(tmp_path / "in.onnx", 14)
    res = quantize(QuantizeConfig(mode="static", random_calibration=True, rewrites=["conv_affine", "hardswish"],
                                  exclude_nodes=["conv_before_folding"]), src, tmp_path / "a")
    note = next(n for n in res.notes if n.startswith("exclude_nodes: conv_before_folding match no node"))
    assert "rewrites: [] keeps them" in note
    inputs = [TensorSpec("x", ("batch", 16))]
    mlp = export_module(mlp_of(16, 32, 4), tmp_path / "mlp.onnx", (torch.randn(2, 16),))
    name = next(n.name for n in onnx.load(str(mlp)).graph.node if n.op_type in ("Gemm", "MatMul"))
    res = quantize(QuantizeConfig(mode="dynamic", exclude_nodes=[name]), mlp, tmp_path / "b", inputs)
    assert not any(n.startswith("exclude_nodes:") for n in res.notes)
