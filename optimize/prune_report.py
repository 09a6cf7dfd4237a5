"""Markdown sections for a prune step's metrics: the per-layer table, MACs before/after, the
compressed size, the gradual schedule's per-step table, `sparsity: auto`'s search curve and a
sensitivity scan. Used by
`optimize.report_md.to_markdown` and by `optimize prune-scan`."""

from __future__ import annotations

from typing import Any

from optimize.md_format import human_bytes, table


def _shape(v: Any) -> str:
    return "×".join(str(d) for d in v) if isinstance(v, list) else "—"


def _size(v: Any) -> str:
    return human_bytes(v) if isinstance(v, int | float) else _fmt(v)


def _after_all(step: dict[str, Any]) -> str:
    """The output cosine a pruning step's `quality_after` holds, as the report phrases it."""
    q = step.get("quality_after") or {}
    return f"output cosine after all pruning mean {_fmt(q.get('mean_cosine'))} / min {_fmt(q.get('min_cosine'))} on {q.get('on')}"


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def prune_markdown(title: str, metrics: dict[str, Any]) -> list[str]:
    """Lines of Markdown for one prune step (empty when the metrics carry nothing to tabulate)."""
    lines: list[str] = []
    layers = metrics.get("layers") or []
    if not layers and "compressed_bytes" not in metrics:
        return lines
    lines += ["", f"### {title}", ""]
    if layers:
        rows = []
        for e in layers:
            removed = e.get("params_removed", e.get("weights_removed", e.get("zeros")))
            name = e["name"] + (f" ({e['kind']})" if e.get("kind") else "")
            sparsity = e.get("sparsity")
            rows.append([name, _shape(e.get("shape_before")), _shape(e.get("shape_after")),
                         _fmt(sparsity) if sparsity is not None else "—", _fmt(removed)])
        lines += table(["layer", "shape before", "shape after", "sparsity", "params removed"], rows) + [""]
    facts = []
    for key, unit, noun in (("drop_layers", "blocks", "blocks"), ("drop_attention", "attention_sublayers", "attention sublayers")):
        d = metrics.get(key)
        if isinstance(d, dict):
            q = d.get("quality_after_drop") or {}
            where = f"; blocks {d['removed_original']} of the input model" if d.get("removed_original") else ""
            facts.append(f"{noun} removed {d.get('removed')} of {d.get(unit + '_before')} ({d.get('selection')}{where}); output "
                         f"cosine after the drop mean {_fmt(q.get('mean_cosine'))} / min {_fmt(q.get('min_cosine'))} on {q.get('on')}")
    r = metrics.get("qk_rank")
    if isinstance(r, dict):
        facts.append(f"queries and keys at rank {r.get('rank')} of {r.get('head_dims')} dims per head in "
                     f"{r.get('attention_modules')} attention modules (fitted on {r.get('samples')} samples); {_after_all(r)}")
    r = metrics.get("attention_stand_in")
    if isinstance(r, dict):
        facts.append(f"a {r.get('form')} stand-in for the attention of blocks {r.get('blocks')} of the input model "
                     f"(fitted on {r.get('samples')} samples, R² {r.get('fit_r2')}); {_after_all(r)}")
    if metrics.get("params_before") is not None:
        facts.append(f"params {metrics['params_before']} → {metrics.get('params_after')}")
    if metrics.get("sparsity") is not None:
        facts.append(f"sparsity {_fmt(metrics['sparsity'])}")
    mb, ma = metrics.get("macs_before"), metrics.get("macs_after")
    if mb is not None or ma is not None:
        batch = metrics.get("macs_batch")
        facts.append(f"MACs {_fmt(mb)} → {_fmt(ma)}" + (f" (batch {batch})" if batch else ""))
    c = metrics.get("compressed_bytes")
    if isinstance(c, dict):
        facts.append(
            f"weights compressed (zlib) {_size(c.get('zip_before'))} → {_size(c.get('zip_after'))} "
            f"(raw {_size(c.get('raw_before'))} → {_size(c.get('raw_after'))})"
        )
    g = metrics.get("nm_gpu")
    if isinstance(g, dict):
        if g.get("speedup") is not None:
            facts.append(
                f"2:4 on GPU: dense {g['dense_ms']} ms, sparse {g['sparse_ms']} ms, speedup {g['speedup']}x ({g.get('dtype')})"
            )
        else:
            facts.append(f"2:4 on GPU: not measured ({g.get('reason')})")
    lines += [f"- {f}" for f in facts]
    lines += search_markdown(metrics.get("search"))
    lines += shapes_markdown(metrics.get("shapes"))
    rows = metrics.get("per_step") or []
    if len(rows) > 1:
        keys = [k for k in rows[0] if k != "step"]
        for r in rows[1:]:
            keys += [k for k in r if k not in keys and k != "step"]
        lines += [""] + table(["step", *keys], [[r.get("step"), *(_fmt(r.get(k)) for k in keys)] for r in rows])
    return lines


def search_markdown(search: Any) -> list[str]:
    """`sparsity: auto`'s curve: one row per probe (ratio → quality after its short distillation,
    MACs, latency), the chosen point marked, and the target it was held to."""
    if not isinstance(search, dict) or not search.get("curve"):
        return []
    chosen = search.get("chosen") or {}
    rows = []
    for p in search["curve"]:
        mark = "**chosen**" if (p.get("sparsity"), p.get("head_sparsity")) == (chosen.get("sparsity"), chosen.get("head_sparsity")) else ""
        rows.append([_fmt(p.get("sparsity")), _fmt(p.get("head_sparsity")), _fmt(p.get("min_cosine_before_distill")),
                     _fmt(p.get("min_cosine")), _fmt(p.get("mean_cosine")), _fmt(p.get("macs_reduction")),
                     _fmt(p.get("latency_ms")), "yes" if p.get("meets") else "no", mark])
    target = f"min cosine ≥ {_fmt(search.get('threshold'))} ({search.get('threshold_from')}) on {search.get('quality_on')}"
    stop = "; the time budget stopped the search" if search.get("stopped_by_budget") else ""
    head = ["", f"Pruning search: {target}; each probe {search.get('probe_training')}{stop}. Chosen: sparsity "
                f"{_fmt(chosen.get('sparsity'))}, head_sparsity {_fmt(chosen.get('head_sparsity'))}.", ""]
    return head + table(["sparsity", "head_sparsity", "min cos (pruned)", "min cos (distilled)", "mean cos", "MACs ÷",
                         "latency ms", "meets", ""], rows)


def shapes_markdown(shapes: Any) -> list[str]:
    """`shapes`: one row per candidate (its settings, latency, speedup with its interval, output cosine
    before training), the kept one marked, and why it was kept."""
    if not isinstance(shapes, dict) or not shapes.get("rows"):
        return []
    rows = []
    for i, r in enumerate(shapes["rows"]):
        shape = ", ".join(f"{k}: {v}" for k, v in (r.get("shape") or {}).items()) or "the pass's own"
        iv = r.get("interval") or [None, None]
        speed = f"{_fmt(r.get('speedup'))}x [{_fmt(iv[0])}, {_fmt(iv[1])}]" if r.get("speedup") is not None else (r.get("reason") or "null")
        cos = r.get("untrained_cosine") or {}
        rows.append([str(i), shape, _fmt(r.get("ms")), speed, f"{_fmt(cos.get('mean'))} / {_fmt(cos.get('min'))}",
                     _fmt(r.get("macs_reduction")), "**kept**" if i == shapes.get("chosen") else ""])
    base = next((r["input_ms"] for r in shapes["rows"] if r.get("input_ms") is not None), None)
    head = ["", f"Shapes (target {_fmt(shapes.get('target_speedup'))}x over the input model, both through "
                f"{shapes.get('through')}; input {_fmt(base)} ms; {shapes.get('formula')}). "
                f"Kept shape {shapes.get('chosen')}: {shapes.get('why')}.", ""]
    return head + table(["#", "shape", "latency ms", "speedup", "cosine untrained mean / min", "MACs ÷", ""], rows)


def scan_markdown(scan: dict[str, Any]) -> list[str]:
    """The sensitivity table of `passes.prune.scan.scan` as Markdown."""
    ratios = scan["ratios"]
    metric = scan["metric"]
    rows = [[row["name"], *(_fmt(row["scores"].get(f"{r:g}")) for r in ratios), _fmt(row["proposed"])] for row in scan["layers"]]
    lines = table(["layer", *(f"{r:g}" for r in ratios), "proposed"], rows)
    lines += ["", f"Scores: {metric}."]
    return lines
