"""PNG charts in the Markdown report (optimize/charts.py): drawn from the report's own numbers,
written beside the report, linked by relative path; skipped with a finding when matplotlib is
missing; `output.charts: true` without matplotlib is a config error (exit 2) before any work."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from optimize import charts, pipeline
from optimize.api import RunOptions
from optimize.errors import ConfigError
from optimize.report import Latency, Metric, ModelFacts, Report, Step
from optimize.report_md import to_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _charts_drawn(charts_on):
    """The suite turns `output.charts: auto` off (tests/conftest.py); these tests are about charts."""
FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 8}\nhardware: {threads: 2}\n"


def _lat(ms: float, threads: int) -> Latency:
    return Latency(median_ms=ms, p90_ms=ms * 1.1, min_ms=ms * 0.9, runs=5, warmup=1, batch=1, threads=threads,
                   runtime="onnxruntime", device="cpu")


SEARCH = {  # a sparsity: auto search as passes/prune/search.py records it
    "threshold": 0.95, "threshold_from": "gates.min_embedding_cosine", "quality_on": "data.eval",
    "grid": [0.25, 0.5, 0.75], "searched": ["sparsity"], "probe_training": "1 epoch on 512 data.train samples, lr 0.0005", "stopped_by_budget": False,
    "curve": [
        {"sparsity": 0.5, "head_sparsity": 0.0, "min_cosine": 0.961, "mean_cosine": 0.99, "min_cosine_before_distill": 0.9,
         "macs_reduction": 1.6, "latency_ms": 4.1, "meets": True},
        {"sparsity": 0.75, "head_sparsity": 0.0, "min_cosine": 0.91, "mean_cosine": 0.97, "min_cosine_before_distill": 0.7,
         "macs_reduction": 2.9, "latency_ms": 2.5, "meets": False},
    ],
    "chosen": {"sparsity": 0.5, "head_sparsity": 0.0},
}


def test_the_search_curve_is_a_table_with_the_chosen_point_and_its_target():
    from optimize.prune_report import search_markdown

    lines = search_markdown(SEARCH)
    text = "\n".join(lines)
    assert "min cosine ≥ 0.95 (gates.min_embedding_cosine) on data.eval" in text and "Chosen: sparsity 0.5" in text
    rows = [ln for ln in lines if ln.startswith("| 0.")]
    assert len(rows) == 2 and rows[0].endswith("| yes | **chosen** |") and rows[1].endswith("| no |  |"), rows
    assert search_markdown({"curve": []}) == [] and search_markdown(None) == []


def _report(tmp_path: Path) -> Report:
    layers = [
        {"name": "fc1", "shape_before": [16, 8], "shape_after": [16, 8], "weights": 128, "zeros": 64, "sparsity": 0.5},
        # structured: 16 → 8 rows, no zeros left: 1 − 64 / 128 of the original weights are gone
        {"name": "fc2", "shape_before": [16, 8], "shape_after": [8, 8], "weights": 64, "zeros": 0, "sparsity": 0.0},
    ]
    return Report(
        tool={"name": "optimize", "version": "test"}, status="ok", started_at="2025-01-01T00:00:00+00:00", seconds=1.0,
        seed=0, config={}, environment={}, hardware={"cpu": "test", "cores": 2, "isa": []},
        input=ModelFacts(path="in.onnx", form="onnx", bytes=4000, weights=1000, weight_bits=32000),
        output=ModelFacts(path="out.onnx", form="onnx", bytes=1500, weights=1000, weight_bits=8000),
        steps=[
            Step(index=1, type="prune", config={}, form_in="torch", form_out="torch", seconds=0.1,
                 sparsifies=True, metrics={"method": "magnitude", "layers": layers, "search": SEARCH}),
            Step(index=2, type="distill", config={}, form_in="torch", form_out="torch", seconds=1.0,
                 trains=True, params_after=600, metrics={"student_accuracy": 95.5, "teacher_accuracy": 97.0}),
        ],
        metrics={"accuracy": Metric(value=94.0, formula="top-1", inputs={"baseline": 97.0, "optimized": 94.0, "drop": 3.0})},
        latency={"input": _lat(2.0, 2), "output": _lat(1.0, 2), "input_1t": _lat(3.0, 1), "output_1t": _lat(1.6, 1)},
    )


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


def _hide_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a machine without the `charts` extra: every matplotlib import raises ImportError."""
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_points_are_the_reports_numbers(tmp_path):
    r = _report(tmp_path)
    pts = charts.latency_points(r)
    assert pts == {m: {t: (lat.median_ms, lat.p90_ms) for k, lat in r.latency.items() for t in [lat.threads]
                       if k.removesuffix("_1t") == m} for m in ("input", "output")}
    assert sorted(pts["output"]) == [1, 2] and pts["output"][1][0] == 1.6
    rows, source = charts.sparsity_points(r, None)
    assert rows == [("fc1", 0.5), ("fc2", 0.5)] and "prune step 1" in source
    acc = charts.accuracy_points(r)
    assert [(p["label"], p["mb"], p["accuracy"]) for p in acc] == [
        ("input", 32000 / 8e6, 97.0), ("step 2 distill", 600 * 32 / 8e6, 95.5), ("output", 8000 / 8e6, 94.0)]


def test_points_follow_what_the_step_record_says_not_its_name(tmp_path):
    """A fine-tuning prune step reports a student accuracy but trains no student of its own
    (`trains` false): no accuracy point. A step that does not sparsify feeds no sparsity rows."""
    r = _report(tmp_path)
    r.steps[0].metrics["student_accuracy"] = 90.0
    r.steps[0].params_after = 500
    r.steps[1].trains = False
    assert [p["label"] for p in charts.accuracy_points(r)] == ["input", "output"]
    r.steps[0].sparsifies = False
    assert not charts.applies("chart_sparsity", r)
    assert charts.sparsity_points(r, None) == ([], "no per-layer table and no output file")


def test_charts_are_pngs_and_the_markdown_links_them(tmp_path):
    pytest.importorskip("matplotlib")
    r = _report(tmp_path)
    res = charts.write_charts(r, tmp_path / "m.report")
    assert set(res.files) == set(charts.CHARTS) and not res.skipped
    for path in res.files.values():
        assert path.parent == tmp_path and _is_png(path)
    r.files.update({k: str(p) for k, p in res.files.items()})
    md = to_markdown(r)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["m.report.latency.png", "m.report.sparsity.png", "m.report.accuracy.png", "m.report.search.png"]
    assert all((tmp_path / link).is_file() for link in links)  # relative to the Markdown beside them


def test_chart_without_data_is_skipped_with_reason_and_no_stale_file(tmp_path):
    pytest.importorskip("matplotlib")
    r = _report(tmp_path)
    stale = charts.chart_paths(tmp_path / "m.report")["chart_accuracy"]
    stale.write_bytes(b"old")
    r.metrics["accuracy"] = Metric.missing("top-1", "accuracy not measured: no labelled eval data (data.eval)")
    r.steps = r.steps[:1]
    res = charts.write_charts(r, tmp_path / "m.report")
    assert "chart_accuracy" not in res.files and "data.eval" in res.skipped["chart_accuracy"]
    assert not stale.exists()


def test_pipeline_writes_charts_beside_the_report(tmp_path, mlp_onnx):
    pytest.importorskip("matplotlib")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses: [{type: prune, sparsity: 0.5}]\n" + FAST)
    out = tmp_path / "o" / "mlp.opt.onnx"
    report = pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(out)))
    # the step record says what the pass declares; the charts read that, never the pass name
    assert [(s.type, s.sparsifies, s.trains) for s in report.steps] == [("prune", True, False)]
    assert {"chart_latency", "chart_sparsity"} <= set(report.files)
    for key in ("chart_latency", "chart_sparsity"):
        assert _is_png(Path(report.files[key])) and Path(report.files[key]).parent == out.parent
    md = Path(report.files["markdown"]).read_text()
    assert "](mlp.opt.report.latency.png)" in md and "](mlp.opt.report.sparsity.png)" in md
    assert any("chart accuracy not drawn" in f and "data.eval" in f for f in report.findings)
    assert json.loads(Path(report.files["report"]).read_text())["files"]["chart_latency"] == report.files["chart_latency"]
    assert not list(out.parent.glob(".*.tmp"))


def test_without_matplotlib_the_run_succeeds_and_says_why(tmp_path, mlp_onnx, monkeypatch):
    _hide_matplotlib(monkeypatch)
    assert charts.missing_reason() is not None
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses: []\n" + FAST)
    out = tmp_path / "mlp.opt.onnx"
    report = pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(out)))
    assert report.status == "ok" and out.is_file()
    assert not [k for k in report.files if k.startswith("chart_")] and not list(tmp_path.glob("*.png"))
    finding = [f for f in report.findings if f.startswith("charts not drawn")]
    assert len(finding) == 1 and "matplotlib is not installed" in finding[0] and "optimize[charts]" in finding[0]
    assert finding[0] in Path(report.files["markdown"]).read_text()


def test_charts_true_without_matplotlib_is_a_config_error_before_any_work(tmp_path, mlp_onnx, monkeypatch):
    _hide_matplotlib(monkeypatch)
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses: []\noutput: {charts: true}\n" + FAST)
    out = tmp_path / "mlp.opt.onnx"
    with pytest.raises(ConfigError) as info:
        pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(out)))
    assert info.value.exit_code == 2 and "output.charts" in str(info.value) and "optimize[charts]" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "p.yaml"]


def test_charts_false_draws_nothing_and_says_nothing(tmp_path, mlp_onnx):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\npasses: []\noutput: {charts: false}\n" + FAST)
    report = pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(tmp_path / "mlp.opt.onnx")))
    assert not list(tmp_path.glob("*.png")) and not any("chart" in f for f in report.findings)
