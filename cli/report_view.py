"""The run's report at the terminal, laid out for its width.

Metrics are one line each (metric, value, verdict); their formulas come with `-v` (a column when
wide, a list below when narrow) and are always in the report files. At most `COMPACT_WIDTH`
columns: latency as one small table, steps and gates on one line each, diagnostics as their likely
causes, so a typical run fits 80×40. Wider: steps, gates and diagnostics as tables. Every cell wraps between words, never inside one.
Text from users or models is inserted as `Text`, never markup.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.humanize import human_bytes, human_count
from cli.render import fmt_number, new_table, spaced

COMPACT_WIDTH = 100
STATUS_STYLE = {"ok": "bold green", "gate_failed": "bold red", "failed": "bold red"}


def print_report(report: Any, console: Console, verbose: bool = False) -> None:
    console.print(report_renderable(report, width=console.width, verbose=verbose))


def report_renderable(report: Any, width: int = 120, verbose: bool = False) -> RenderableType:
    compact = width <= COMPACT_WIDTH
    parts: list[RenderableType] = [head_grid(report, compact)]
    if report.metrics:
        parts.append(full_metrics(report) if verbose and not compact else compact_metrics(report))
        if compact and verbose:
            parts.append(formulas_text(report))
    if report.latency:
        parts.append(latency_table(report, compact))
    if not compact and report.steps:
        parts.append(steps_table(report))
    if not compact and report.gates:
        parts.append(gates_table(report))
    if report.findings:
        parts.append(labelled_lines("warning: ", "yellow", report.findings))
    diag = getattr(report, "diagnostics", None)
    if diag is not None:
        if compact and not verbose:
            # the slowdown finding already ends with its likely causes: don't print them twice
            causes = [c for c in diag.likely_causes if not any(c in f for f in report.findings)]
            if causes:
                parts.append(labelled_lines("likely cause: ", "yellow", causes))
        else:
            parts.append(diagnostics_renderable(diag))
    if report.files:
        parts.append(files_grid(report.files, compact))
    return Group(*spaced(parts))


# ---------------------------------------------------------------- header


def head_grid(report: Any, compact: bool) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("status", Text(report.status, style=STATUS_STYLE.get(report.status, "bold")))
    if report.error:
        grid.add_row("error", Text(report.error, style="red"))
    out = report.output
    grid.add_row("model", Text(f"{model_label(report.input)} → {model_label(out) if out else '—'}"))
    size = f"{human_bytes(report.input.bytes)} → {human_bytes(out.bytes) if out else '—'}"
    if report.input.weights is not None or (out and out.weights is not None):
        size += f"; weights {human_count(report.input.weights)} → {human_count(out.weights) if out else '—'}"
    grid.add_row("size", Text(size))
    where = hardware_line(report)
    grid.add_row("run", Text((where + ", " if where else "") + f"{report.seconds:.1f}s, seed {report.seed}"))
    if compact and report.steps:
        inserted = " (* inserted)" if any(s.inserted for s in report.steps) else ""
        grid.add_row("steps", Text(" → ".join(s.type + "*" * s.inserted for s in report.steps) + inserted))
    if compact and report.gates:
        grid.add_row("gates", gates_line(report.gates))
    return grid


def hardware_line(report: Any) -> str:
    hw = report.hardware or {}
    config = report.config if isinstance(report.config, dict) else {}
    device = (config.get("hardware") or {}).get("device")
    return ", ".join(x for x in (str(device or ""), str(hw.get("cpu") or ""), str(hw.get("gpu") or "")) if x)


def gates_line(gates: list[Any]) -> Text:
    text = Text()
    for i, g in enumerate(gates):
        if i:
            text.append(", ")
        text.append(g.name)
        text.append(" pass" if g.passed else " FAIL", style="green" if g.passed else "bold red")
    return text


def model_label(facts: Any) -> str:
    if facts is None:
        return "—"
    return f"{relative(facts.path) if facts.path else '(in memory)'} [{facts.form}]"


def relative(path: str) -> str:
    """A path under the working directory as a relative one (shorter, and what the user typed)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return rel if not rel.startswith("..") and os.path.isabs(path) else path


# ---------------------------------------------------------------- metrics


def ordered_metrics(report: Any) -> list[tuple[str, Any]]:
    from optimize.report import METRIC_ORDER

    keys = [k for k in METRIC_ORDER if k in report.metrics] + [k for k in report.metrics if k not in METRIC_ORDER]
    return [(k, report.metrics[k]) for k in keys]


def value_and_verdict(key: str, m: Any) -> tuple[str, str]:
    """A metric as a short value and what it means: `0.93x (0.87–1.02)` / `no measurable change`."""
    from optimize.report import format_value

    if m.value is None:
        reason = m.reason or ""
        return "—", reason if reason.startswith("not measured") else f"not measured: {reason}".rstrip(": ")
    i = m.inputs or {}
    if key == "accuracy" and i.get("metric") != "embedding_cosine" and "optimized" in i:
        return f"{i['optimized']:.2f}%", f"baseline {i.get('baseline', 0):.2f}%, drop {i.get('drop', 0):+.2f} pts"
    if key.endswith("speedup") and m.interval is not None:
        low, high = m.interval
        return f"{m.value:.2f}x ({low:.2f}–{high:.2f})", m.verdict or ""
    if key == "parity" and i.get("compared_by") != "agreement":
        diff = i.get("max_abs_diff")
        return f"cos {m.value:.4f}", f"min cosine; max |Δ| {fmt_number(diff)}" + (
            "; weak evidence" if str(i.get("evidence", "")).startswith("weak") else "")
    return format_value(key, m), m.reason or ""


def compact_metrics(report: Any) -> Table:
    t = new_table(None, ["metric", "value", "verdict"], nowrap=("metric", "value"))
    density = report.metrics.get("density")
    for key, m in ordered_metrics(report):
        value, verdict = value_and_verdict(key, m)
        if key == "density" and "sparsity" in report.metrics:
            continue  # 1 − sparsity: shown in the sparsity row, one line saved
        if key == "sparsity" and density is not None and density.value is not None and not verdict:
            verdict = f"density {value_and_verdict('density', density)[0]}"
        t.add_row(Text(key), Text(value, style="dim" if m.value is None else "bold"), Text(verdict))
    return t


def full_metrics(report: Any) -> Table:
    from optimize.report import format_value, metric_note

    t = new_table("Metrics", ["metric", "value", "formula", "note"], nowrap=("metric", "value"))
    t.expand = True  # formulas are long: use the width, shared by ratio
    t.columns[2].ratio, t.columns[3].ratio = 3, 2
    for key, m in ordered_metrics(report):
        value = Text(format_value(key, m), style="dim" if m.value is None else "bold")
        t.add_row(Text(key), value, Text(m.formula, style="dim"), Text(metric_note(m)))
    return t


def formulas_text(report: Any) -> Text:
    text = Text()
    for i, (key, m) in enumerate(ordered_metrics(report)):
        text.append(("\n" if i else "") + key, style="bold")
        text.append(f": {m.formula}", style="dim")
    return text


# ---------------------------------------------------------------- latency, steps, gates


def latency_table(report: Any, compact: bool) -> Table:
    if not compact:
        t = new_table("Latency", ["model", "median ms", "p90 ms", "min ms", "runs", "batch", "threads", "runtime"])
        for key, lat in report.latency.items():
            t.add_row(Text(key), f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.min_ms:.3f}", str(lat.runs),
                      str(lat.batch), str(lat.threads), Text(f"{lat.runtime} ({lat.device})"))
        return t
    lats = list(report.latency.values())
    batches = {lat.batch for lat in lats}
    runtimes = {f"{lat.runtime} ({lat.device})" for lat in lats}
    batch = f", batch {lats[0].batch}" if len(batches) == 1 else ""
    title = f"latency{batch}, {', '.join(sorted(runtimes))}"
    columns = ["model", "median ms", "p90 ms", "threads"] + ([] if batch else ["batch"])
    t = new_table(None, [title] + columns[1:], nowrap=tuple(columns[1:]))
    for key, lat in report.latency.items():
        cells = [Text(key), f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", str(lat.threads)]
        t.add_row(*cells, *([] if batch else [str(lat.batch)]))
    return t


def steps_table(report: Any) -> Table:
    t = new_table("Steps", ["#", "pass", "form", "seconds", "params", "notes"], nowrap=("pass", "form", "params"))
    for s in report.steps:
        params = f"{human_count(s.params_before)} → {human_count(s.params_after)}" if s.params_before is not None else ""
        name = Text(s.type) + (Text(" (inserted)", style="dim") if s.inserted else Text(""))
        t.add_row(str(s.index), name, f"{s.form_in} → {s.form_out}", f"{s.seconds:.2f}", params, Text("; ".join(s.notes)))
    return t


def gates_table(report: Any) -> Table:
    t = new_table("Gates", ["gate", "limit", "value", "result", "message"])
    for g in report.gates:
        result = Text("pass", style="green") if g.passed else Text("FAIL", style="bold red")
        t.add_row(Text(g.name), fmt_number(g.limit), fmt_number(g.value), result, Text(g.message))
    return t


def labelled_lines(label: str, style: str, lines: list[str]) -> Text:
    text = Text()
    for i, line in enumerate(lines):
        text.append(("\n" if i else "") + label, style=style)
        text.append(line)
    return text


def files_grid(files: dict[str, str], compact: bool) -> Table:
    """Every file written; compact: the model, then the report's files on one line."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    if not compact or "model" not in files:
        for kind, path in files.items():
            grid.add_row(f"wrote {kind}", Text(relative(path)))
        return grid
    grid.add_row("wrote", Text(relative(files["model"])))
    others = [relative(p) for k, p in files.items() if k != "model" and not k.startswith("chart_")]
    charts = [k.removeprefix("chart_") for k in files if k.startswith("chart_")]
    line = ", ".join(os.path.basename(p) if i else p for i, p in enumerate(others))
    if charts:
        line += f" + {len(charts)} chart{'s' * (len(charts) > 1)}"  # their names are in the report
    if line:
        grid.add_row("report", Text(line))
    return grid


# ---------------------------------------------------------------- diagnostics


def diagnostics_renderable(diag: Any) -> RenderableType:
    """"Why is it (not) faster?": kernels as ONNX Runtime runs them, kernel-time shares, causes."""
    from optimize.diagnose import KINDS

    t = new_table("Why is it (not) faster? (ONNX Runtime's optimized graph)", ["", "input", "output"], nowrap=("",))
    graphs = [diag.input.runtime or diag.input.file, diag.output.runtime or diag.output.file]

    def cells(fn: Any) -> list[str]:
        return ["—" if g is None else fn(g) for g in graphs]

    for kind in KINDS:
        if any(g is not None and g.kernels.get(kind) for g in graphs):
            t.add_row(f"{kind} kernels", *cells(lambda g, k=kind: str(g.kernels.get(k, 0))))
    t.add_row("weights in integer kernels",
              *cells(lambda g: "—" if g.integer_weight_share is None else f"{g.integer_weight_share:.0%}"))
    t.add_row("unfused Q→DQ pairs", *cells(lambda g: str(g.qdq_pairs_unfused)))
    t.add_row("weights dequantized to float", *cells(lambda g: str(g.dequantized_weights_to_float)))
    profs = [diag.input.profile, diag.output.profile]
    if any(profs):
        t.add_row("kernel ms per run", *["—" if p is None else f"{p.total_kernel_ms:.3f}" for p in profs])
        kinds = list(dict.fromkeys(k for p in profs if p for k in p.ms_by_kind))
        for k in kinds:
            t.add_row(f"  {k} time", *["—" if p is None else f"{p.share_by_kind.get(k, 0.0):.0%}" for p in profs])
    parts: list[RenderableType] = [t]
    if diag.likely_causes:
        parts.append(labelled_lines("likely cause: ", "yellow", diag.likely_causes))
    return Group(*parts)
