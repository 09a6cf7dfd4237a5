"""Issue 16's command-line items: -h, completion, Examples, clean metavars, one progress label per
line, and the run's result laid out for 80 and 120 columns with no word broken inside a cell."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from cli_helpers import ROOT, make_report
from helpers import child_pythonpath
from rich.console import Console
from typer.testing import CliRunner

from cli.app import app
from cli.progress import PlainProgress, one_label
from cli.report_view import report_renderable
from optimize.report import Gate, Metric

COMMANDS = ["run", "validate", "passes", "schema", "inspect", "bench", "batch", "prune-scan"]


def _help(args: list[str], columns: int = 80) -> str:
    r = CliRunner().invoke(app, args, env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_h_examples_and_clean_metavars(cmd):
    text = _help([cmd, "-h"])
    assert text == _help([cmd, "--help"])
    assert "Examples:" in text and f"optimize {cmd}" in text.split("Examples:")[1]
    assert not re.search(r"<[a-z|\[\]]+>", text), text  # no <str>, <bool>, <cpu|cuda|auto>
    assert "{" not in text.splitlines()[0]  # a usage line like `CONFIG...`, not `{CONFIG...}...`
    assert not [line for line in text.splitlines() if len(line) > 80]  # wrapped, never cut


def test_examples_name_real_configs():
    text = "".join(_help([cmd, "-h"]) for cmd in COMMANDS)
    named = set(re.findall(r"configs/[\w-]+\.yaml", text))
    assert named and all((ROOT / n).is_file() for n in named), named


def test_root_h_and_completion():
    assert "Usage: optimize" in _help(["-h"])
    # Without a shell to detect (CI, pytest under nohup) typer's flag prints "Shell  not supported";
    # typer's own test switch makes the option take the shell's name instead.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT), "PYTHONPATH": child_pythonpath(), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    p = subprocess.run([sys.executable, "-m", "cli", "--show-completion", "bash"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "complete" in p.stdout and "_OPTIMIZE_COMPLETE" in p.stdout


@pytest.mark.parametrize(("key", "description", "label"), [
    ("pipeline", "pipeline", ""),
    ("latency", "latency (1 and 2 threads, batch 32)", "1 and 2 threads, batch 32"),
    ("distill", "distill (15 epochs, data.train (1437 samples))", "15 epochs, data.train (1437 samples)"),
    ("quantize.calibrate", "calibrating activation ranges", "calibrating activation ranges"),
])
def test_one_label(key, description, label):
    assert one_label(key, description) == label


def test_plain_progress_never_doubles_the_label():
    buf = io.StringIO()
    p = PlainProgress(stream=buf, interval=0)
    p.start("pipeline", "pipeline", 5)
    p.advance("pipeline", 3, info="distill 129.9s")
    for line in buf.getvalue().splitlines():
        words = line.replace("[", " ").replace("]", " ").split()
        assert words.count("pipeline") == 1, line


# ---------------------------------------------------------------- result layout

FORMULA = ("input latency / output latency: median of the interleaved per-round ratios (same runtime, device, "
           "threads, batch); 95% interval: percentile bootstrap of the median")


def demo_like_report():
    """A report shaped like `make demo`'s: every metric, four latencies, five steps, gates, files."""
    r = make_report(gates=[Gate(name="max_accuracy_drop", limit=1.5, value=0.83, passed=True, message="ok"),
                           Gate(name="min_parity_cosine", limit=0.9, value=0.93, passed=True, message="ok")])
    speed = dict(formula=FORMULA, interval=[0.87, 1.02], verdict="no measurable change", tolerance=0.03,
                 inputs={"runs": 90, "rounds_configured": 30})
    r.metrics = {
        "accuracy": Metric(value=98.61, formula="top-1 accuracy", inputs={"optimized": 98.61, "baseline": 99.44, "drop": 0.83}),
        "speedup": Metric(value=0.93, **speed),
        "parallel_speedup": Metric(value=0.6, **{**speed, "interval": [0.56, 0.67], "verdict": "slower"}),
        "gpu_speedup": Metric.missing(FORMULA, "not measured: --device is cpu"),
        **{k: Metric(value=0.5, formula=FORMULA) for k in ("sparsity", "density", "params_removed", "effective_sparsity",
                                                            "quantization_ratio", "distillation_ratio", "accuracy_retained")},
        "compression_ratio": Metric(value=7.5, formula=FORMULA),
        "parity": Metric(value=0.93453, formula=FORMULA, inputs={"max_abs_diff": 6.34}),
    }
    lat = r.latency["input"]
    r.latency = {k: lat.model_copy(update={"threads": t}) for k, t in (("input", 2), ("output", 2), ("input_1t", 1), ("output_1t", 1))}
    r.steps = [r.steps[0].model_copy(update={"index": i, "type": t, "inserted": i > 3, "notes": [FORMULA]})
               for i, t in enumerate(["prune", "quantize", "distill", "export", "quantize"], 1)]
    r.findings = ["no measurable speed change: speedup 0.93x (95% interval 0.87–1.02) at 2 threads, batch 32, "
                  "90 interleaved rounds; the interval is not clear of the ±3% tolerance band around 1"]
    r.files = {"model": "out/demo/digits.opt.onnx", "report": "out/demo/digits.opt.report.json",
               "markdown": "out/demo/digits.opt.report.md", "chart_latency": "out/demo/digits.opt.report.latency.png",
               "chart_accuracy": "out/demo/digits.opt.report.accuracy.png"}
    return r


def render(report, width: int, verbose: bool = False) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(report_renderable(report, width=width, verbose=verbose))
    return buf.getvalue()


def words_of(report) -> set[str]:
    """Every word the result shows from the report's own text (verdicts, reasons, findings, paths)."""
    texts = [m.reason or "" for m in report.metrics.values()] + [m.verdict or "" for m in report.metrics.values()]
    texts += list(report.findings) + [report.files["model"]] + [g.name for g in report.gates]
    return {w for t in texts for w in t.split() if len(w) >= 4}


@pytest.mark.parametrize("width", [80, 100, 120])
def test_result_fits_and_never_breaks_a_word(width):
    report = demo_like_report()
    text = render(report, width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    tokens = set(text.split())
    broken = sorted(w for w in words_of(report) if w not in tokens)
    assert not broken, f"words broken at {width} columns: {broken}\n{text}"
    if width <= 100:
        assert len(lines) <= 40, f"{len(lines)} lines at {width} columns\n{text}"
        assert FORMULA.split(":")[0] not in text  # formulas only with -v (or in the report)


SLOW_CAUSES = [
    "no int8 dot-product instructions on this CPU (no VNNI/AMX): int8 matmul compute gains at most ~1.33x over "
    "FP32 here, so Quantize/Dequantize overhead can outweigh it",
    "tiny layers: 4 compute kernels average 2,434 weight elements and 131.3 µs each, so the fixed cost of "
    "quantizing activations is not paid back (Quantize/Dequantize nodes take 49% of the kernel time)",
]


def test_slow_run_with_causes_fits_80x40_and_says_each_cause_once():
    # `make demo` on a CPU without VNNI: the slowdown finding ends with the diagnostics' likely causes
    from types import SimpleNamespace

    report = demo_like_report()
    report.findings = ["the output model is SLOWER than the input: speedup 0.65x (95% interval 0.60–0.80) at 2 "
                       "threads, batch 32, 30 interleaved rounds — likely cause: " + "; ".join(SLOW_CAUSES)]
    report.diagnostics = SimpleNamespace(likely_causes=SLOW_CAUSES)
    text = render(report, 80)
    assert len(text.splitlines()) <= 40, f"{len(text.splitlines())} lines\n{text}"
    flat = " ".join(text.split())
    assert all(flat.count(" ".join(c.split())) == 1 for c in SLOW_CAUSES), text
    assert "density 0.5000" in flat and "report out/demo/digits.opt.report.json, digits.opt.report.md + 2 charts" in flat


def test_verbose_adds_formulas_at_any_width():
    report = demo_like_report()
    for width in (80, 120):
        text = render(report, width, verbose=True)
        assert "median of the interleaved" in " ".join(text.split())
        assert not [w for w in words_of(report) if w not in set(text.split())]


def test_piped_width_follows_columns(monkeypatch):
    from cli.io import PIPED_WIDTH, result_width

    monkeypatch.setenv("COLUMNS", "77")
    assert result_width() == 77
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys, "__stdin__", io.StringIO())
    assert result_width() == PIPED_WIDTH


def test_validate_directory_and_binary_file_in_the_tools_words(tmp_path):
    blob = tmp_path / "model.yaml"
    blob.write_bytes(b"\x94\x00\xff binary")
    for target, words in ((tmp_path, "is a directory"), (blob, "not a text file")):
        r = CliRunner().invoke(app, ["validate", str(target)])
        assert r.exit_code == 2
        assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
        assert "Errno" not in r.stderr and "codec" not in r.stderr


def test_compact_layout_is_what_keeps_80_columns_short(monkeypatch):
    import cli.report_view

    monkeypatch.setattr(cli.report_view, "COMPACT_WIDTH", 0)  # the wide layout at 80 columns
    assert len(render(demo_like_report(), 80).splitlines()) > 40
