"""The Markdown report (optimize/report_md.py) is made to paste into a pull request: a title with
the model and a verdict built only from measured fields, a summary table first, every cell escaped
so GitHub's table parser keeps each row whole (checked with markdown-it-py's GFM table rule), paths
relative to the working directory, human sizes, no empty sections, and one for a failed run."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from gfm_tables import assert_tables_whole, source_tables
from markdown_it import MarkdownIt
from tiny_models import export_onnx, make_mlp

from optimize import pipeline, registry
from optimize.api import RunOptions
from optimize.errors import ConfigError, GateFailed, OptimizeError
from optimize.md_format import cell, display_path, human_bytes, table, tidy_paths
from optimize.report import Gate, Latency, Metric, ModelFacts, Report, Step
from optimize.report_md import to_markdown, verdict

FAST = "measure: {repeat: 3, warmup: 1, parity_samples: 8}\nhardware: {threads: 2}\n"


# ---------------------------------------------------------------- building blocks


def test_cells_escape_pipes_newlines_and_tags():
    assert cell("max |Δ| 0.1") == "max \\|Δ\\| 0.1"
    assert cell("already \\| escaped") == "already \\| escaped"
    assert cell("two\nlines\r\nhere") == "two<br>lines<br>here"
    assert cell("<bool>") == "&lt;bool>" and cell(None) == "—"
    md = "\n".join(table(["a", "b"], [["x | y", "1\n2"], ["short"]]))
    assert_tables_whole(md)
    assert "x | y" in MarkdownIt("commonmark").enable("table").render(md)


def test_human_sizes_and_relative_paths(tmp_path, monkeypatch):
    assert (human_bytes(512), human_bytes(1275), human_bytes(5 * 1024**2), human_bytes(None)) == (
        "512 B", "1.2 KiB", "5.0 MiB", None)
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "o" / "m.onnx") == os.path.join("o", "m.onnx")
    assert display_path("/elsewhere/m.onnx") == "/elsewhere/m.onnx"
    work = Path(tempfile.gettempdir()) / "optimize-abc123"
    assert tidy_paths(f"failed in {work}/step1/model.onnx and {tmp_path}/x.onnx") == "failed in WORK_DIR/step1/model.onnx and x.onnx"


# ---------------------------------------------------------------- the title's verdict


def _ratio(value: float | None, lo: float, hi: float, verdict_: str | None) -> Metric:
    return Metric(value=value, formula="f", interval=[lo, hi] if value is not None else None, verdict=verdict_, tolerance=0.03)


def _report(metrics: dict[str, Metric], gates: list[Gate] | None = None, status: str = "ok") -> Report:
    lat = Latency(median_ms=1.0, p90_ms=1.2, min_ms=0.9, runs=5, warmup=1, batch=1, threads=2, runtime="onnxruntime", device="cpu")
    return Report(
        tool={"name": "optimize", "version": "t"}, status=status, started_at="2025-01-01T00:00:00+00:00", seconds=1.0, seed=0,
        config={}, environment={}, hardware={"cpu": "c", "cores": 2, "isa": []},
        input=ModelFacts(path="/models/net.onnx", form="onnx", bytes=4_000_000, weights=1000),
        output=ModelFacts(path="net.opt.onnx", form="onnx", bytes=1_024_000, weights=1000),
        metrics=metrics, gates=gates or [], latency={"input": lat, "output": lat},
        steps=[Step(index=1, type="quantize", config={}, form_in="onnx", form_out="onnx", seconds=0.5, notes=["a | b"])],
    )


def test_title_is_built_from_measured_fields_only():
    metrics = {
        "speedup": _ratio(2.1, 1.9, 2.3, "faster"),
        "compression_ratio": Metric(value=3.9, formula="f"),
        "parity": Metric(value=0.991, formula="f", inputs={"max_abs_diff": 0.01}),
    }
    passed = [Gate(name="min_speedup", limit=1.5, value=2.1, passed=True, message="ok")]
    md = to_markdown(_report(metrics, passed))
    assert md.splitlines()[0] == "# net.onnx: 2.10x faster (1.90–2.30), 3.90x smaller, parity 0.99100 — all gates passed"
    metrics["speedup"] = _ratio(0.8, 0.7, 0.9, "slower")
    failed = [Gate(name="min_speedup", limit=1.5, value=0.8, passed=False, message="min_speedup: 0.8 < 1.5")]
    assert verdict(_report(metrics, failed, "gate_failed")).startswith("slower (speedup 0.80x, 0.70–0.90)")
    assert verdict(_report(metrics, failed, "gate_failed")).endswith("— gate failed: min_speedup")
    # nothing measured: no number in the verdict at all, unmeasured said, unknown phrases left out
    nulls = {"speedup": Metric.missing("f", "not measured"), "parity": Metric.missing("f", "parity not meaningful: constant")}
    text = verdict(_report(nulls))
    assert text == "speed unmeasured, parity not meaningful — no gates set" and not re.search(r"\d", text)


def test_summary_comes_first_and_null_metrics_are_one_line():
    metrics = {"speedup": _ratio(1.0, 0.9, 1.1, "no measurable change"),
               "gpu_speedup": Metric.missing("f", "not measured: --device is cpu"),
               "parity": Metric(value=0.99, formula="max |difference|", inputs={"max_abs_diff": 0.2})}
    md = to_markdown(_report(metrics))
    assert md.index("## Summary") < md.index("## Metrics") < md.index("## Steps")
    assert "| gpu_speedup |" not in md and "Not measured:\n\n- gpu_speedup: --device is cpu\n" in md
    assert "| size | 3.8 MiB | 1000.0 KiB |" in md and "4000000" not in md
    assert "`/models/net.onnx`" in md  # outside the working directory: as given
    assert "a \\| b" in md and "max \\|Δ\\|" in md and "max \\|difference\\|" in md
    assert_tables_whole(md)


# ---------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def quantize_run(tmp_path_factory: pytest.TempPathFactory):
    """One real quantize-only run of the tiny MLP, with the working directory above its files."""
    root = tmp_path_factory.mktemp("md")
    model = export_onnx(make_mlp(0), root / "mlp.onnx")
    (root / "q.yaml").write_text("schema_version: 1\npasses: [{type: quantize, mode: dynamic}]\n" + FAST)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as mp:  # charts drawn: a test below checks none is empty
            mp.delenv("OPTIMIZE_CHARTS", raising=False)
            report = pipeline.run(RunOptions(model=str(model), config="q.yaml", output="o/mlp.opt.onnx"))
    finally:
        os.chdir(cwd)
    return root, report, (root / report.files["markdown"]).read_text(encoding="utf-8")


def test_real_run_renders_as_github_tables(quantize_run):
    _, report, md = quantize_run
    assert_tables_whole(md)
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert re.search(r"<td>[^<]*max \|Δ\|[^<]*</td>", html), "the parity cell lost its |Δ|"
    assert md.startswith("# mlp.onnx: ") and "parity 0." in md.splitlines()[0]


def test_quantize_only_run_has_no_empty_chart_or_null_rows(quantize_run):
    root, report, md = quantize_run
    pytest.importorskip("matplotlib")
    assert "chart_latency" in report.files, "charts were not drawn: the check below would prove nothing"
    assert "chart_sparsity" not in report.files and not (root / "o" / "mlp.opt.report.sparsity.png").exists()
    assert "sparsity.png" not in md and not any("chart sparsity" in f for f in report.findings)
    for rows in source_tables(md):
        for r in rows[1:]:
            assert any(c not in ("", "—", "null") for c in r[1:]), f"an all-empty row: {r}"
    assert "| distillation_ratio |" not in md and "- distillation_ratio: no distill pass" in md
    assert "`mlp.onnx`" in md and "`o/mlp.opt.onnx`" in md
    assert str(root) not in md and tempfile.gettempdir() + os.sep not in md
    assert re.search(r"\| size \| \d+\.\d KiB \| \d+\.\d KiB \|", md)


def _config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("schema_version: 1\n" + text + FAST)
    return cfg


def test_failed_run_writes_a_markdown_report(tmp_path, mlp_onnx, monkeypatch):
    def boom(self, model, ctx):
        raise RuntimeError("injected fault | with a pipe\nand a second line")

    monkeypatch.setattr(registry.get("quantize"), "run", boom)
    cfg = _config(tmp_path, "passes: [{type: quantize, mode: dynamic}]\n")
    out = tmp_path / "o" / "mlp.opt.onnx"
    with pytest.raises(OptimizeError) as info:
        pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(out)))
    assert info.value.exit_code == 1
    md_path = out.with_suffix(".report.md")
    md = md_path.read_text(encoding="utf-8")
    assert json.loads(out.with_suffix(".report.json").read_text())["status"] == "failed"
    assert info.value.report.files["markdown"] == str(md_path)  # type: ignore[attr-defined]
    assert md.splitlines()[0] == "# mlp.onnx: run failed"
    assert "**Status: failed.**" in md and "injected fault" in md.splitlines()[2]
    assert "## Metrics" not in md and "## Latency" not in md and "## Charts" not in md
    assert_tables_whole(md)
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))


def test_gate_failure_report_names_the_gate(tmp_path, mlp_onnx):
    cfg = _config(tmp_path, "passes: [{type: quantize, mode: dynamic}]\ngates: {min_sparsity: 0.9}\n")
    out = tmp_path / "mlp.opt.onnx"
    with pytest.raises(GateFailed):
        pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(out)))
    md = out.with_suffix(".report.md").read_text(encoding="utf-8")
    assert md.splitlines()[0].endswith("— gate failed: min_sparsity") and "| min_sparsity | 0.9 |" in md
    assert_tables_whole(md)


def test_usage_error_writes_nothing(tmp_path, mlp_onnx):
    cfg = _config(tmp_path, "passes: [{type: quantize, mode: static}]\n")  # no calibration data: exit 2 at planning
    out = tmp_path / "o" / "mlp.opt.onnx"
    with pytest.raises(ConfigError):
        pipeline.run(RunOptions(model=str(mlp_onnx), config=str(cfg), output=str(out)))
    assert not out.parent.exists() or not list(out.parent.iterdir())
