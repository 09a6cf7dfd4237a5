"""PNG charts for the Markdown report: latency by thread count, per-layer sparsity, accuracy vs
size across the pipeline's steps, and `sparsity: auto`'s search curve (quality and latency by ratio).

Drawn with matplotlib (the optional extra `pip install 'optimize[charts]'`), imported lazily and
used through its object-oriented API with the Agg canvas (`matplotlib.figure.Figure` +
`FigureCanvasAgg`): no pyplot, no global backend switch, nothing shown on screen, safe in a
process that already uses matplotlib for something else. Without matplotlib the charts are
skipped and the report says why; only `output.charts: true` makes its absence an error (at plan
time, exit 2).

Every plotted number comes from the report (or, for per-layer sparsity without a prune step's
per-layer table, from the written output file via `optimize.inspect_onnx.weight_stats`), so each
chart is recomputable from the files.

`OPTIMIZE_CHARTS=off` in the environment turns `output.charts: auto` off (the test suite draws
charts only in the chart tests: each costs 0.5–2 s per run); `true` still draws.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from optimize.errors import ConfigError

log = logging.getLogger("optimize")

INSTALL_HINT = "pip install 'optimize[charts]' (or: pip install 'matplotlib>=3.7')"
# report.files keys, in the order the Markdown shows them, with their captions
CHARTS = {
    "chart_latency": "Latency by thread count (median; whisker to p90)",
    "chart_sparsity": "Per-layer sparsity",
    "chart_accuracy": "Accuracy vs size across the pipeline",
    "chart_search": "Pruning search: quality and latency by ratio",
}
MAX_LAYERS = 60  # per-layer bars beyond this are unreadable; the chart says how many were left out


def missing_reason() -> str | None:
    """None when matplotlib can be imported, else why not (one line)."""
    try:
        _figure_classes()
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); {INSTALL_HINT}"
    return None


def require(config_file: str | None) -> None:
    """`output.charts: true` without matplotlib: a config error (exit 2) before any work."""
    reason = missing_reason()
    if reason is not None:
        raise ConfigError(f"charts requested but {reason}", file=config_file, key="output.charts")


def wanted(cfg: Any) -> bool:
    """Whether this run should draw charts: `true` always, `auto` with the Markdown report."""
    mode = cfg.output.charts
    if mode == "auto" and os.environ.get("OPTIMIZE_CHARTS", "").strip().lower() == "off":
        return False
    return mode is True or (mode == "auto" and bool(cfg.output.markdown))


def _figure_classes() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


@dataclass
class ChartResult:
    files: dict[str, Path] = field(default_factory=dict)  # report.files key -> written PNG
    skipped: dict[str, str] = field(default_factory=dict)  # chart key -> why it was not drawn


def chart_paths(stem: Path) -> dict[str, Path]:
    """`REPORT.latency.png` etc. beside the report (stem: the report path without suffix)."""
    return {key: stem.with_name(f"{stem.name}.{key.removeprefix('chart_')}.png") for key in CHARTS}


def write_charts(report: Any, stem: Path, output_model: Path | None = None) -> ChartResult:
    """Draw every chart the report has data for and write it atomically beside the report.

    Raises ImportError when matplotlib is missing (callers check `missing_reason()` first). A chart
    without data is skipped with its reason; a chart that fails to draw is skipped too (logged),
    never failing the run.
    """
    from optimize.onnx_io import write_bytes_atomic

    Figure, Canvas = _figure_classes()
    result = ChartResult()
    paths = chart_paths(stem)
    drawers = {
        "chart_latency": lambda fig: _latency(fig, report),
        "chart_sparsity": lambda fig: _sparsity(fig, report, output_model),
        "chart_accuracy": lambda fig: _accuracy(fig, report),
        "chart_search": lambda fig: _search(fig, report),
    }
    for key, draw in drawers.items():
        if not applies(key, report):  # nothing this run did to show: no chart, no finding, no stale file
            paths[key].unlink(missing_ok=True)
            continue
        # fixed margins, not layout="constrained": that solver doubles the drawing time (~0.35 s a chart here)
        fig = Figure(figsize=(7.0, 4.0), dpi=100)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.13)
        try:
            why = draw(fig)
            if why is not None:
                result.skipped[key] = why
                paths[key].unlink(missing_ok=True)  # no stale chart from an earlier run beside this report
                continue
            buf = io.BytesIO()
            Canvas(fig).print_png(buf)
        except Exception as exc:  # a chart is an illustration: never fail the run over one
            log.debug("chart %s failed", key, exc_info=True)
            result.skipped[key] = f"drawing failed: {type(exc).__name__}: {exc}"
            continue
        result.files[key] = write_bytes_atomic(buf.getvalue(), paths[key])
    return result


def applies(key: str, report: Any) -> bool:
    """Whether a chart belongs to this run at all. Per-layer sparsity only with a step that
    sparsifies (`Step.sparsifies`: prune): on a run that pruned nothing, the output's zeros are
    int8 rounding and the chart would be empty."""
    if key == "chart_sparsity":
        return any(s.sparsifies for s in report.steps)
    if key == "chart_search":
        return search_curve(report) is not None
    return True


# ---------------------------------------------------------------- the charts


def latency_points(report: Any) -> dict[str, dict[int, tuple[float, float]]]:
    """{'input'|'output': {threads: (median_ms, p90_ms)}} from report.latency (input, output,
    input_1t, output_1t)."""
    out: dict[str, dict[int, tuple[float, float]]] = {"input": {}, "output": {}}
    for key, lat in report.latency.items():
        model = key.removesuffix("_1t")
        if model in out:
            out[model][int(lat.threads)] = (float(lat.median_ms), float(lat.p90_ms))
    return out


def _latency(fig: Any, report: Any) -> str | None:
    pts = latency_points(report)
    threads = sorted(set(pts["input"]) | set(pts["output"]))
    if not threads:
        return "no latency was measured"
    ax = fig.add_subplot()
    width = 0.38
    xs = range(len(threads))
    for off, model, color in ((-width / 2, "input", "#8c8c8c"), (width / 2, "output", "#1f77b4")):
        med = [pts[model].get(t, (float("nan"), float("nan")))[0] for t in threads]
        p90 = [pts[model].get(t, (float("nan"), float("nan")))[1] for t in threads]
        err = [[0.0] * len(threads), [max(0.0, p - m) for p, m in zip(p90, med, strict=True)]]
        bars = ax.bar([x + off for x in xs], med, width, label=model, color=color, yerr=err, capsize=3)
        ax.bar_label(bars, fmt="%.3g", padding=2, fontsize=8)
    lat = report.latency.get("output") or next(iter(report.latency.values()))
    ax.set_xticks(list(xs), [str(t) for t in threads])
    ax.set_xlabel("intra-op threads")
    ax.set_ylabel("latency, ms (median)")
    ax.set_title(f"Latency by thread count — batch {lat.batch}, {lat.runtime} ({lat.device})", fontsize=10)
    ax.legend()
    return None


def sparsity_points(report: Any, output_model: Path | None) -> tuple[list[tuple[str, float]], str]:
    """Per-layer sparsity and where it came from.

    From the last sparsifying (prune) step's per-layer table (`metrics.layers`): the fraction of the layer's
    original weights that are gone or zero, 1 − (weights − zeros) / Π shape_before (equal to the
    entry's `sparsity` when the shape did not change). Otherwise from the output file: per weight
    tensor, zeros / elements (`optimize.inspect_onnx.weight_stats`).
    """
    for step in reversed(report.steps):
        layers = step.metrics.get("layers") if step.sparsifies else None
        rows: list[tuple[str, float]] = []
        for e in layers or []:
            value = _layer_sparsity(e)
            if value is not None:
                rows.append((str(e.get("name")), value))
        if rows:
            return rows, f"{step.type} step {step.index} ({step.metrics.get('method')}): 1 − non-zero weights / original weights"
    if output_model is None or not Path(output_model).is_file():
        return [], "no per-layer table and no output file"
    from optimize.inspect_onnx import weight_stats

    stats = weight_stats(output_model)
    rows = [(t.name, 1 - t.nonzero / t.count) for t in stats.tensors if t.count]
    return rows, "output file: zeros / elements per weight tensor"


def _layer_sparsity(e: dict[str, Any]) -> float | None:
    shape, weights, zeros = e.get("shape_before"), e.get("weights"), e.get("zeros")
    if isinstance(shape, list) and shape and isinstance(weights, int) and isinstance(zeros, int):
        original = 1
        for d in shape:
            original *= int(d)
        if original > 0:
            return 1 - (weights - zeros) / original
    s = e.get("sparsity")
    return float(s) if isinstance(s, int | float) else None


def _sparsity(fig: Any, report: Any, output_model: Path | None) -> str | None:
    rows, source = sparsity_points(report, output_model)
    if not rows:
        return f"no per-layer weights to show ({source})"
    left_out = max(0, len(rows) - MAX_LAYERS)
    rows = rows[:MAX_LAYERS]
    names = [_short(n) for n, _ in rows]
    height = max(2.5, 0.22 * len(rows) + 1.4)
    fig.set_size_inches(7.0, height)
    # room for the layer names (7-pt labels, about 0.06 in a character) and the title/axis label
    fig.subplots_adjust(left=min(0.5, 0.03 + max(len(n) for n in names) * 0.06 / 7.0), right=0.97,
                        top=1 - 0.6 / height, bottom=0.55 / height)
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    ax.barh(ys, [v for _, v in rows], color="#2ca02c")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (fraction of the layer's weights that are zero or removed)")
    title = f"Per-layer sparsity\n{source}"
    if left_out:
        title += f" (first {MAX_LAYERS}; {left_out} more not shown)"
    fig.suptitle(title, fontsize=9)  # centred on the figure: the layer names take the left of the axes
    return None


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def accuracy_points(report: Any) -> list[dict[str, Any]]:
    """Points where accuracy was measured: the input (baseline), steps of a training pass
    (`Step.trains`: distill; student accuracy on data.eval), the output. Size is the weight storage in MB, Σ bits per weight × count / 8 / 10⁶
    (input/output: `weight_bits` counted from the files; a distill step: its `params_after` weights
    × 32 bits, the torch student's FP32 parameters)."""
    points: list[dict[str, Any]] = []
    acc = report.metrics.get("accuracy")
    inputs = acc.inputs if acc is not None and acc.value is not None else {}
    if inputs.get("baseline") is not None and report.input.weight_bits:
        points.append({"label": "input", "mb": report.input.weight_bits / 8e6, "accuracy": float(inputs["baseline"])})
    for s in report.steps:
        student = s.metrics.get("student_accuracy") if s.trains else None
        if student is not None and s.params_after:
            points.append({"label": f"step {s.index} {s.type}", "mb": s.params_after * 32 / 8e6, "accuracy": float(student)})
    if inputs.get("optimized") is not None and report.output is not None and report.output.weight_bits:
        points.append({"label": "output", "mb": report.output.weight_bits / 8e6, "accuracy": float(inputs["optimized"])})
    return points


def _accuracy(fig: Any, report: Any) -> str | None:
    points = accuracy_points(report)
    if not points:
        acc = report.metrics.get("accuracy")
        return (acc.reason if acc is not None and acc.reason else "accuracy was not measured")
    ax = fig.add_subplot()
    xs, ys = [p["mb"] for p in points], [p["accuracy"] for p in points]
    ax.plot(xs, ys, "-", color="#bbbbbb", zorder=1)
    ax.scatter(xs, ys, color="#d62728", zorder=2)
    for p in points:
        ax.annotate(f"{p['label']}\n{p['accuracy']:.2f}%", (p["mb"], p["accuracy"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xlabel("weight storage, MB (Σ bits per weight × count / 8)")
    ax.set_ylabel("top-1 accuracy, % (eval data)")
    ax.set_title("Accuracy vs size across the pipeline", fontsize=10)
    ax.margins(x=0.25, y=0.2)
    return None


def search_curve(report: Any) -> dict[str, Any] | None:
    """The first prune step's `sparsity: auto` search metrics with a curve, else None."""
    for s in report.steps:
        search = s.metrics.get("search") if s.sparsifies else None
        if isinstance(search, dict) and search.get("curve"):
            return search
    return None


def _search(fig: Any, report: Any) -> str | None:
    search = search_curve(report)
    if search is None:
        return "no sparsity: auto search in this run"
    curve = search["curve"]
    key = "head_sparsity" if search.get("searched") == ["head_sparsity"] else "sparsity"  # both: heads are half
    ax = fig.add_subplot()
    xs = [p[key] for p in curve]
    for field_name, style, label in (("min_cosine", "o-", "min cosine, distilled"),
                                     ("min_cosine_before_distill", "x--", "min cosine, pruned only")):
        pts = [(x, p[field_name]) for x, p in zip(xs, curve, strict=True) if p.get(field_name) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    ax.axhline(search["threshold"], color="#d62728", lw=1, ls=":", label=f"target {search['threshold']:g}")
    chosen = (search.get("chosen") or {}).get(key)
    if chosen:
        ax.axvline(chosen, color="#2ca02c", lw=1, label=f"chosen {chosen:g}")
    ax.set_xlabel(f"{key} (grid points probed)")
    ax.set_ylabel(f"min output cosine ({search.get('quality_on')})")
    lat = [(x, p["latency_ms"]) for x, p in zip(xs, curve, strict=True) if p.get("latency_ms") is not None]
    if lat:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lat, strict=True), "s-", color="#7f7f7f", alpha=0.6, label="latency ms (torch, batch 8)")
        ax2.set_ylabel("latency, ms")
        ax2.ticklabel_format(axis="y", useOffset=False)
        fig.subplots_adjust(right=0.88)  # room for the second axis's labels
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Pruning search: quality and latency by ratio", fontsize=10)
    return None


def markdown_lines(report: Any) -> list[str]:
    """The "Charts" section: an image link per written chart, by its file name (the charts lie
    beside the Markdown file)."""
    shown = [(key, report.files[key]) for key in CHARTS if key in report.files]
    if not shown:
        return []
    lines = ["", "## Charts", ""]
    for key, path in shown:
        lines += [f"![{CHARTS[key]}]({quote(Path(path).name)})", ""]
    return lines[:-1]


__all__ = ["CHARTS", "INSTALL_HINT", "ChartResult", "applies", "chart_paths", "markdown_lines", "missing_reason", "require",
           "search_curve", "wanted", "write_charts"]
