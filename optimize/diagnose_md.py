"""The "Why is it (not) faster?" section of the Markdown report, from optimize.diagnose's
Diagnostics (the terminal table is cli/render.py)."""

from __future__ import annotations

from typing import Any

from optimize.diagnose import KINDS, Diagnostics, GraphFacts


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _graph_rows(cols: list[GraphFacts | None]) -> list[list[str]]:
    """Rows of the kernel table; a row with no value in any column is left out."""
    def row(label: str, fn: Any) -> list[str]:
        return [label] + ["—" if g is None else fn(g) for g in cols]

    rows = [row("nodes", lambda g: str(g.nodes))]
    for kind in KINDS:
        if any(g is not None and g.kernels.get(kind) for g in cols):
            rows.append(row(f"{kind} compute kernels", lambda g, k=kind: str(g.kernels.get(k, 0))))
    rows += [
        row("weights in integer kernels", lambda g: _pct(g.integer_weight_share)),
        row("unfused Q→DQ pairs", lambda g: str(g.qdq_pairs_unfused)),
        row("weights dequantized into float kernels", lambda g: str(g.dequantized_weights_to_float)),
        row("QOperator per-channel nodes", lambda g: str(g.qoperator_per_channel)),
        row("Cast nodes", lambda g: str(g.casts)),
    ]
    return [r for r in rows if any(c != "—" for c in r[1:])]


def _profile_lines(diag: Diagnostics) -> list[str]:
    from optimize.md_format import table

    profs = [diag.input.profile, diag.output.profile]
    if not any(profs):
        return []
    kinds = list(dict.fromkeys(k for p in profs if p for k in p.ms_by_kind))
    rows = [["total ms"] + [f"{p.total_kernel_ms:.3f}" if p else "—" for p in profs]]
    rows += [[k] + [f"{p.ms_by_kind.get(k, 0.0):.3f} ms ({p.share_by_kind.get(k, 0.0):.0%})" if p else "—" for p in profs]
             for k in kinds]
    lines = [""] + table(["kernel time per run (ONNX Runtime profiler)", "input", "output"], rows, ["", "right", "right"])
    out = diag.output.profile
    if out and out.top_ops:
        lines += ["", "Most expensive ops in the output: " + ", ".join(
            f"{o.op} ({o.kind}, {o.nodes} nodes) {o.ms:.3f} ms {o.share:.0%}" for o in out.top_ops[:5]) + "."]
    return lines


def markdown_lines(diag: Diagnostics) -> list[str]:
    """The "Why is it (not) faster?" section of the Markdown report (cells escaped by
    optimize.md_format; rows and tables without any value left out)."""
    from optimize.md_format import one_line, table

    lines = ["", "## Why is it (not) faster?", ""]
    if diag.likely_causes:
        lines += ["**Likely causes of the slowdown:**", ""] + [f"- {one_line(c)}" for c in diag.likely_causes] + [""]
    lines += [
        f"ONNX Runtime settings: {diag.runtime_settings.get('provider')}, {diag.runtime_settings.get('threads')} threads, "
        f"{diag.runtime_settings.get('graph_optimization_level')}. CPU int8 dot product (VNNI/AMX): "
        f"{'yes' if diag.int8_dot_product else 'no' if diag.int8_dot_product is False else 'unknown'}.",
    ]
    rows = _graph_rows([diag.input.file, diag.input.runtime, diag.output.file, diag.output.runtime])
    if rows:
        lines += [""] + table(["", "input file", "input as run", "output file", "output as run"], rows)
    lines += _profile_lines(diag)
    reasons = [f"- {label}: {one_line(d.reason)}" for label, d in (("input", diag.input), ("output", diag.output)) if d.reason]
    return lines + ([""] + reasons if reasons else [])
