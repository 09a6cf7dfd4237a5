"""The Markdown rendering of the report, made to paste into a pull request.

A title with the model and a one-line verdict, a short summary table (and the gates) first, the
details below. Every phrase comes from a measured field of the report: a null value is said to be
unmeasured or left out, never filled in. Every table cell is escaped (optimize.md_format), paths
are shown relative to the working directory, sizes in KiB/MiB, and sections without content are
left out.
"""

from __future__ import annotations

import re
from typing import Any

from optimize.md_format import code, display_path, human_bytes, one_line, table, tidy_paths
from optimize.report import METRIC_ORDER, Metric, Report, format_value, metric_note


def model_name(report: Report) -> str:
    """The input model as a reader knows it: a file or folder name, or a factory's callable name
    (`pkg.models:resnet_small` → resnet_small; the summary shows the full reference)."""
    src = (report.input.path or "model").split(" (", 1)[0].strip()
    if "/" in src or "\\" in src:
        return [part for part in re.split(r"[/\\]", src) if part][-1] if src.strip("/\\") else src
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", src):
        return src.rsplit(":", 1)[1]
    return src


# ---------------------------------------------------------------- the title's verdict


def _interval(m: Metric) -> str:
    return f" ({m.interval[0]:.2f}–{m.interval[1]:.2f})" if m.interval else ""


def speed_phrase(m: Metric | None) -> str | None:
    if m is None:
        return None
    if m.value is None:
        return "speed unmeasured"
    if m.verdict == "faster":
        return f"{m.value:.2f}x faster{_interval(m)}"
    within = f", {m.interval[0]:.2f}–{m.interval[1]:.2f}" if m.interval else ""
    if m.verdict == "slower":
        return f"slower (speedup {m.value:.2f}x{within})"
    if m.verdict == "no measurable change":
        return f"no measurable speed change ({m.value:.2f}x{within})"
    return f"speedup {m.value:.2f}x{_interval(m)}"


def size_phrase(m: Metric | None) -> str | None:
    """From compression_ratio = input bytes / output bytes."""
    if m is None or m.value is None or m.value <= 0:
        return None
    if m.value >= 1.005:
        return f"{m.value:.2f}x smaller"
    if m.value <= 0.995:
        return f"{1 / m.value:.2f}x larger"
    return "same size"


def parity_phrase(m: Metric | None) -> str | None:
    if m is None:
        return None
    if m.value is None:
        return "parity not meaningful" if (m.reason or "").startswith("parity not meaningful") else "parity unmeasured"
    label = "agreement" if m.inputs.get("compared_by") == "agreement" else "parity"
    return f"{label} {m.value:.5f}"


def accuracy_phrase(m: Metric | None) -> str | None:
    if m is None or m.value is None:
        return None
    i = m.inputs
    if i.get("metric") == "embedding_cosine":
        return f"embedding cosine {i['mean']:.4f}" if i.get("mean") is not None else None
    if i.get("optimized") is None or i.get("drop") is None:
        return None
    return f"top-1 {i['optimized']:.2f}% (drop {i['drop']:.2f} pts)"


def gates_phrase(report: Report) -> str:
    failed = [g.name for g in report.gates if not g.passed]
    if failed:
        return ("gate failed: " if len(failed) == 1 else "gates failed: ") + ", ".join(failed)
    if report.gates:
        return "all gates passed"
    return "no gates set"


def verdict(report: Report) -> str:
    """'2.13x faster (1.90–2.31), 3.91x smaller, parity 0.99912 — all gates passed'."""
    if report.status == "failed":
        return "run failed"
    m = report.metrics
    facts = [speed_phrase(m.get("speedup")), size_phrase(m.get("compression_ratio")),
             parity_phrase(m.get("parity")), accuracy_phrase(m.get("accuracy"))]
    shown = ", ".join(f for f in facts if f)
    return (shown + " — " if shown else "") + gates_phrase(report)


# ---------------------------------------------------------------- sections


def _size(facts: Any) -> str | None:
    return human_bytes(facts.bytes) if facts is not None else None


def _weights(facts: Any) -> str | None:
    if facts is None or facts.weights is None:
        return None
    dtypes = ", ".join(f"{k} {v:,}" for k, v in facts.weight_dtypes.items()) if len(facts.weight_dtypes) > 1 else \
        next(iter(facts.weight_dtypes), "")
    return f"{facts.weights:,}" + (f" ({dtypes})" if dtypes else "")


def _latency_row(report: Report) -> list[Any] | None:
    inp, out = report.latency.get("input"), report.latency.get("output")
    if inp is None and out is None:
        return None
    ref = out or inp
    speed = report.metrics.get("speedup")
    change = f"speedup {format_value('speedup', speed)}" if speed is not None and speed.value is not None else None
    return [f"latency, median ({ref.threads} threads, batch {ref.batch})",  # type: ignore[union-attr]
            f"{inp.median_ms:.3f} ms" if inp else None, f"{out.median_ms:.3f} ms" if out else None, change]


def summary_lines(report: Report) -> list[str]:
    """The short table first: files, size, weights, latency, accuracy, parity (rows without a
    measured value left out)."""
    inp, out = report.input, report.output
    m = report.metrics
    rows: list[list[Any]] = [["model", code(display_path(inp.path)), code(display_path(out.path)) if out and out.path else None, ""]]
    ratio = m.get("compression_ratio")
    if inp.bytes is not None or (out and out.bytes is not None):
        rows.append(["size", _size(inp), _size(out),
                     f"{ratio.value:.2f}x (input bytes / output bytes)" if ratio and ratio.value is not None else None])
    if inp.weights is not None or (out and out.weights is not None):
        q = m.get("quantization_ratio")
        rows.append(["weights", _weights(inp), _weights(out),
                     f"quantization ratio {q.value:.4f}" if q and q.value is not None else None])
    lat = _latency_row(report)
    if lat:
        rows.append(lat)
    acc = m.get("accuracy")
    i = acc.inputs if acc is not None and acc.value is not None else {}
    if all(isinstance(i.get(k), int | float) for k in ("baseline", "optimized", "drop")):
        rows.append([f"accuracy (top-1, {i.get('samples')} samples)", f"{i['baseline']:.2f}%", f"{i['optimized']:.2f}%",
                     f"drop {i['drop']:.2f} pts"])
    par = m.get("parity")
    if par is not None:
        rows.append(["parity (output vs input)", None, None,
                     format_value("parity", par) if par.value is not None else f"unmeasured: {par.reason}"])
    return ["", "## Summary", ""] + table(["", "input", "output", "change"], rows)


def gate_lines(report: Report) -> list[str]:
    if not report.gates:
        return []
    rows = [[g.name, f"{g.limit:g}", f"{g.value:.4g}" if g.value is not None else "unmeasured",
             "pass" if g.passed else "**FAIL**", g.message] for g in report.gates]
    return ["", "## Gates", ""] + table(["gate", "limit", "value", "result", "detail"], rows)


def findings_lines(report: Report) -> list[str]:
    if not report.findings:
        return []
    return ["", "## Findings", ""] + [f"- {one_line(tidy_paths(f))}" for f in report.findings]


def metric_lines(report: Report) -> list[str]:
    """Measured metrics in a table; the unmeasured ones in one line with their reasons."""
    measured = [(k, report.metrics[k]) for k in METRIC_ORDER if k in report.metrics and report.metrics[k].value is not None]
    missing = [(k, report.metrics[k]) for k in METRIC_ORDER if k in report.metrics and report.metrics[k].value is None]
    lines: list[str] = []
    if measured:
        lines += ["", "## Metrics", ""]
        lines += table(["metric", "value", "formula", "note"], [[k, format_value(k, m), m.formula, metric_note(m)] for k, m in measured])
    if missing:
        lines += ["", "Not measured:", ""] + [f"- {k}: {_why_missing(m)}" for k, m in missing]
    return lines


def _why_missing(m: Metric) -> str:
    """The reason without a leading 'accuracy not measured:' (the list says that already)."""
    reason = one_line(tidy_paths(m.reason or "no reason given"))
    return re.sub(r"^(\w+ )?not measured: ", "", reason) or reason


def latency_lines(report: Report) -> list[str]:
    if not report.latency:
        return []
    rows = [[key, f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", lat.runs, lat.batch, lat.threads, f"{lat.runtime} ({lat.device})"]
            for key, lat in report.latency.items()]
    return ["", "## Latency", ""] + table(["model", "median ms", "p90 ms", "runs", "batch", "threads", "runtime"], rows,
                                          ["", "right", "right", "right", "right", "right", ""])


def step_lines(report: Report) -> list[str]:
    if not report.steps:
        return []
    rows = []
    for s in report.steps:
        params = f"{s.params_before:,} → {s.params_after:,}" if s.params_before is not None and s.params_after is not None else None
        name = s.type + (" (inserted)" if s.inserted else "") + (" (cached)" if s.cached else "")
        rows.append([s.index, name, f"{s.form_in} → {s.form_out}", f"{s.seconds:.2f}", params, "; ".join(s.notes)])
    lines = ["", "## Steps", ""] + table(["#", "pass", "form", "seconds", "weights before → after", "notes"], rows)
    from optimize.prune_report import prune_markdown

    for s in report.steps:
        if s.sparsifies:
            lines += prune_markdown(f"Step {s.index}: {s.type} ({s.metrics.get('method')})", s.metrics)
    return lines


def environment_lines(report: Report) -> list[str]:
    hw, env = report.hardware, report.environment
    lines = ["", "## Environment", ""]
    if hw.get("cpu"):
        isa = ", ".join(hw.get("isa") or [])
        lines.append(f"- CPU: {hw.get('cpu')} ({hw.get('cores')} cores" + (f"; {isa}" if isa else "") + ")")
    lines.append(f"- GPU: {hw.get('gpu') or 'none'}")
    if env:
        lines.append("- " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append(f"- {report.tool.get('name', 'optimize')} {report.tool.get('version', '')}, seed {report.seed}, "
                 f"{report.seconds:.1f} s, started {report.started_at}")
    return lines


def to_markdown(report: Report) -> str:
    lines = [f"# {one_line(model_name(report))}: {verdict(report)}"]
    if report.status == "failed":
        lines += ["", f"**Status: failed.** {one_line(tidy_paths(report.error or 'no error message recorded'))}"]
    elif report.status == "gate_failed":
        lines += ["", "**Status: gate failed** — the model was written as a rejected file (see Gates)."]
    lines += summary_lines(report) + gate_lines(report) + findings_lines(report) + metric_lines(report) + latency_lines(report)
    from optimize.charts import markdown_lines as chart_lines  # PNGs beside this file, when written

    lines += chart_lines(report) + step_lines(report)
    if report.diagnostics is not None:
        from optimize.diagnose_md import markdown_lines

        lines += markdown_lines(report.diagnostics)
    lines += environment_lines(report)
    return "\n".join(lines) + "\n"


__all__ = ["model_name", "to_markdown", "verdict"]
