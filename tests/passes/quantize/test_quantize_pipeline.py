"""quantize format auto and the fallback through the whole pipeline: report fields, gates, exit 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import eval_data_yaml
from torch import nn

from optimize import pipeline
from optimize.api import RunOptions
from optimize.errors import GateFailed
from optimize.inspect_onnx import weight_stats

FAST = "measure: {repeat: 8, warmup: 2, parity_samples: 32, single_thread: false}\nhardware: {threads: 2}\n"


def _export(m: nn.Module, path: Path, n_in: int) -> Path:
    with torch.no_grad():
        torch.onnx.export(m, (torch.randn(1, n_in),), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17)
    return path


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return str(p)


def test_auto_run_reports_every_candidate_and_counts_bits_from_the_file(tmp_path):
    torch.manual_seed(0)
    src = _export(nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval(), tmp_path / "m.onnx", 256)
    cfg = _write(tmp_path, "schema_version: 1\npasses:\n  - type: quantize\n    format: auto\n    random_calibration: true\n" + FAST)
    out = tmp_path / "m.opt.onnx"
    report = pipeline.run(RunOptions(model=str(src), config=cfg, output=str(out)))
    step = report.steps[0]
    rows = step.metrics["candidates"]
    assert len(rows) >= 3 and sum(r["chosen"] for r in rows) == 1
    assert all({"latency_ms", "speedup", "bytes", "size_ratio", "min_cosine", "passed"} <= set(r) for r in rows)
    assert any(n.startswith("format auto (latency): chose") for n in step.notes)
    chosen = next(r for r in rows if r["chosen"])
    q = report.metrics["quantization_ratio"].value
    bits = {t.bits for t in weight_stats(out).tensors}
    if chosen["name"] == "float (input)":
        assert bits == {32} and q == pytest.approx(1.0)
    else:
        assert bits == {8} and q == pytest.approx(0.25)
    data = json.loads(Path(report.files["report"]).read_text())
    assert data["steps"][0]["metrics"]["chosen"] == chosen["name"]


def test_goal_missed_after_fallback_writes_rejected_model_and_gate_fails(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    with torch.no_grad():
        m[0].weight[0, 0] = 40.0
        m[2].weight[0, 0] = 40.0
        m[4].weight[0, 0] = 40.0
    src = _export(m, tmp_path / "m.onnx", 16)
    cfg = _write(tmp_path, "schema_version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n    per_channel: false\n"
                 "    fallback_max_layers: 1\ngates: {min_parity_cosine: 0.9999}\n" + FAST
                 + eval_data_yaml(tmp_path, "x", (16,), normal=True))
    out = tmp_path / "m.opt.onnx"
    with pytest.raises(GateFailed) as info:
        pipeline.run(RunOptions(model=str(src), config=cfg, output=str(out)))
    assert info.value.exit_code == 3
    report = info.value.report
    assert not out.exists() and (tmp_path / "m.opt.rejected.onnx").is_file()
    step = report.steps[0]
    assert "fallback_goal_met" in step.metrics, (step.notes, sorted(step.metrics))
    assert step.metrics["fallback_goal_met"] is False and len(step.metrics["float_nodes"]) == 1
    assert any("did NOT meet the goal" in n for n in step.notes)
    assert any(g.name == "min_parity_cosine" and not g.passed for g in report.gates)
