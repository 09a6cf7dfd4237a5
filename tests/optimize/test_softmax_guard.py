"""Softmax inputs floored at the row's max - 60 (optimize/softmax_guard.py): which Softmax ops, the
same values (masked rows, rows far below zero, both ReduceMax forms), and the modes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import rewrite_ctx
from onnx import TensorProto, helper
from tiny_models import save_graph

from optimize import softmax_guard
from optimize.benchmark import Timing

S = 8


def _attention_graph(path: Path, opset: int = 17, dtype: int = TensorProto.FLOAT, axis: int | None = -1) -> Path:
    """scores (batch, 2, S, S) + mask (batch, 1, 1, S) → Softmax → MatMul v (batch, 2, S, 4) → y."""
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("Add", ["scores", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], **attrs),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info("scores", dtype, ["batch", 2, S, S]),
           helper.make_tensor_value_info("mask", dtype, ["batch", 1, 1, S]),
           helper.make_tensor_value_info("v", dtype, ["batch", 2, S, 4])]
    return save_graph(nodes, ins, [helper.make_tensor_value_info("y", dtype, ["batch", 2, S, 4])], {}, path, opset=opset)


def _feeds(seed: int = 0, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Two rows of scores, the second with its last three keys masked by the float minimum (as
    PyTorch writes an attention mask); `shift` moves every score (exactness far from zero)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((2, 1, 1, S), np.float32)
    mask[1, ..., -3:] = np.finfo(np.float32).min
    return {"scores": (rng.standard_normal((2, 2, S, S)) * 8 + shift).astype(np.float32), "mask": mask,
            "v": rng.standard_normal((2, 2, S, 4)).astype(np.float32)}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("shift", [0.0, -1e4, 300.0])
def test_rewrite_keeps_the_values(tmp_path, opset, shift):
    src = _attention_graph(tmp_path / "m.onnx", opset=opset)
    dst = tmp_path / "g.onnx"
    assert softmax_guard.rewrite(src, dst) == 1
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    assert _ops(dst)["ReduceMax"] == 1 and _ops(dst)["Max"] == 1 and _ops(dst)["Softmax"] == 1
    feeds = _feeds(shift=shift)
    np.testing.assert_allclose(_run(dst, feeds), _run(src, feeds), rtol=1e-6, atol=1e-6)


def test_a_rewritten_file_is_not_guarded_twice(tmp_path):
    src = _attention_graph(tmp_path / "m.onnx")
    softmax_guard.rewrite(src, tmp_path / "g.onnx")
    assert softmax_guard.guardable(onnx.load(str(tmp_path / "g.onnx"))) == []
    assert softmax_guard.guarded_copy(tmp_path / "g.onnx", tmp_path / "again") == tmp_path / "g.onnx"


def test_a_softmax_added_to_a_guarded_file_gets_names_of_its_own(tmp_path):
    src = _attention_graph(tmp_path / "m.onnx")
    softmax_guard.rewrite(src, tmp_path / "g.onnx")
    model = onnx.load(str(tmp_path / "g.onnx"))
    old_out = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Softmax", [old_out], ["y2"], axis=-1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 2, S, 4]))
    onnx.save(model, str(tmp_path / "g2.onnx"))
    assert softmax_guard.rewrite(tmp_path / "g2.onnx", tmp_path / "g3.onnx") == 1
    onnx.checker.check_model(onnx.load(str(tmp_path / "g3.onnx")), full_check=True)
    assert _ops(tmp_path / "g3.onnx")["Max"] == 2
    feeds = _feeds()
    ref = _run(tmp_path / "g2.onnx", feeds)
    np.testing.assert_allclose(_run(tmp_path / "g3.onnx", feeds), ref, rtol=1e-6, atol=1e-6)


def test_only_float32_softmax_over_one_axis_is_guarded(tmp_path):
    assert softmax_guard.guardable(onnx.load(str(_attention_graph(tmp_path / "h.onnx", dtype=TensorProto.FLOAT16)))) == []
    # before opset 13 Softmax normalizes over every axis from `axis` on (default 1): only the last axis is one axis
    assert softmax_guard.guardable(onnx.load(str(_attention_graph(tmp_path / "o11.onnx", opset=11, axis=None)))) == []
    assert len(softmax_guard.guardable(onnx.load(str(_attention_graph(tmp_path / "o11b.onnx", opset=11))))) == 1
    assert len(softmax_guard.guardable(onnx.load(str(_attention_graph(tmp_path / "o13.onnx", opset=13, axis=None))))) == 1


def _choose(tmp_path, src, mode):
    return softmax_guard.choose(src, tmp_path / "out", mode=mode, inputs=_feeds(), threads=1, warmup=1, repeat=20,
                                tolerance=0.03)


def test_never_and_a_graph_without_softmax_decide_nothing(tmp_path):
    assert _choose(tmp_path, _attention_graph(tmp_path / "m.onnx"), "never") is None
    plain = save_graph([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], {}, tmp_path / "r.onnx")
    assert _choose(tmp_path, plain, "auto") is None and not (tmp_path / "out").exists()


def test_always_rewrites_without_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(softmax_guard, "time_pair", lambda *a, **k: pytest.fail("always must not time"))
    choice = _choose(tmp_path, _attention_graph(tmp_path / "m.onnx"), "always")
    assert choice.metrics == {"mode": "always", "softmax": 1, "guarded": 1, "margin": 60.0, "kept": True}
    assert choice.path == tmp_path / "out" / "model.onnx" and _ops(choice.path)["Max"] == 1


@pytest.mark.parametrize(("plain_ms", "guarded_ms", "kept"), [(3.0, 2.0, True), (2.0, 2.1, False)])
def test_auto_keeps_the_guard_only_when_it_measured_faster(tmp_path, monkeypatch, plain_ms, guarded_ms, kept):
    """Fixed timings through the real ratio and verdict code: the faster file wins."""
    def fake(models, inputs, **kw):
        jitter = np.linspace(0.99, 1.01, kw["repeat"])
        return {"plain": Timing("plain", list(plain_ms * jitter), 2, 1, 1, "ort", "cpu"),
                "guarded": Timing("guarded", list(guarded_ms * jitter), 2, 1, 1, "ort", "cpu")}

    monkeypatch.setattr("optimize.benchmark.interleaved", fake)
    src = _attention_graph(tmp_path / "m.onnx")
    choice = _choose(tmp_path, src, "auto")
    m = choice.metrics
    assert m["kept"] is kept and (choice.path != src) is kept and (tmp_path / "out").exists() is kept
    assert m["plain_ms"] == pytest.approx(plain_ms, rel=0.02) and m["guarded_ms"] == pytest.approx(guarded_ms, rel=0.02)
    assert m["batch"] == 2 and m["interval"][0] <= m["speedup"] <= m["interval"][1]


def test_apply_records_the_step_and_leaves_cuda_runs_alone(tmp_path):
    from optimize.handle import ModelHandle

    src = _attention_graph(tmp_path / "m.onnx")
    final = ModelHandle(form="onnx", onnx_path=src, inputs=[], outputs=["y"])
    lineage = SimpleNamespace(steps=[])
    assert softmax_guard.apply(rewrite_ctx(tmp_path, device="cuda"), final, lineage, _feeds()) is final and not lineage.steps
    out = softmax_guard.apply(rewrite_ctx(tmp_path, mode="always", device="cuda"), final, lineage, _feeds())
    (step,) = lineage.steps
    assert step.type == "softmax_guard" and step.inserted and step.metrics["kept"] and out.onnx_path != src


def test_the_pipeline_records_the_guard_step(tmp_path):
    from optimize import pipeline
    from optimize.api import RunOptions

    src = _attention_graph(tmp_path / "m.onnx")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\nmodel:\n  input_shapes: {scores: [2, 2, 8, 8], mask: [2, 1, 1, 8], v: [2, 2, 8, 4]}\n"
                   "passes:\n  - type: graph\nmeasure: {repeat: 3, warmup: 1, parity_samples: 8, batch: 2}\n"
                   "output: {softmax_guard: always}\n")
    out = tmp_path / "o" / "m.opt.onnx"
    report = pipeline.run(RunOptions(model=str(src), config=str(cfg), output=str(out), threads=1))
    step = next(s for s in report.steps if s.type == "softmax_guard")
    assert step.inserted and step.metrics["guarded"] == 1 and _ops(out)["ReduceMax"] == 1
    assert report.metrics["parity"].value > 0.9999
