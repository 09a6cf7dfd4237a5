"""Sensitivity analysis for pruning (`optimize prune-scan`): prune one layer at a time at several
ratios, measure the model's quality each time, and propose per-layer ratios for a target.

Quality is top-1 accuracy on `data.eval` when the config gives labelled eval data, else the mean
output cosine against the unpruned model (on `data.eval` inputs, or random inputs from the input
spec). Each layer's proposal is the largest scanned ratio whose quality stays within the target
(accuracy drop ≤ `max_drop` points, or cosine ≥ `min_cosine`); the proposals come out as a
`layer_sparsity` map ready to paste into a prune pass.

Each (layer, ratio) point runs the prune pass itself with `include: [layer]`, so the scan measures
exactly what a pipeline would do; a layer that structured pruning cannot shrink alone (coupled to
an ignored layer by a residual add, or the output layer) is listed with the reason.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_RATIOS = (0.25, 0.5, 0.75)


def _config(config_path: str | None) -> Any:
    from optimize.config import load_config, load_config_text

    if config_path:
        return load_config(config_path)
    return load_config_text("schema_version: 1\npasses: []\n")


def _candidates(handle: Any, method: str) -> list[str]:
    """Layer names (torch modules) or weight names (ONNX) that a scan visits."""
    if handle.form == "torch":
        from passes.prune.torch_common import torch_layers

        return [n for n, _ in torch_layers(handle.module)]
    from optimize import onnx_io
    from optimize.inspect_onnx import iter_weight_uses

    if method == "structured":
        from passes.prune.onnx_structured import analyse

        return [c.producer.name or c.weight for c in analyse(onnx_io.load(handle.onnx_path))]
    seen: list[str] = []
    for u in iter_weight_uses(onnx_io.load(handle.onnx_path)):
        if u.key not in seen and u.node.op_type != "Gather":
            seen.append(u.key)
    return seen


def _check_layers(handle: Any, layers: list[str], method: str) -> None:
    """--layer names the model does not have: exit 2 with some names it has."""
    from optimize.errors import UsageError

    candidates = _candidates(handle, method)
    if handle.form == "torch":
        known = {n for n, _ in handle.module.named_modules()}
    else:
        from optimize import onnx_io

        graph = onnx_io.load(handle.onnx_path, load_external_data=False).graph
        known = {n.name for n in graph.node} | {i.name for i in graph.initializer}
    unknown = [n for n in layers if n not in known | set(candidates)]
    if unknown:
        some = candidates[:6]
        raise UsageError(f"--layer: the model has no layer {', '.join(map(repr, unknown))} (scannable layers: {', '.join(some)})")


def _outputs(handle: Any, ds: Any) -> list[np.ndarray]:
    if handle.form == "torch":
        from passes.prune.util import torch_outputs

        return torch_outputs(handle.module, ds, [s.name for s in handle.inputs])
    from optimize.runtime import predict, session

    return predict(session(handle.onnx_path), ds.inputs)[:1]


def _score(out: list[np.ndarray], ref: list[np.ndarray], labels: np.ndarray | None) -> float:
    if labels is not None and out[0].ndim == 2:
        return round(100.0 * float((out[0].argmax(-1) == labels).mean()), 4)
    from optimize.runtime import parity

    p = parity(ref, out)
    return round(float(p["mean_cosine"]), 6) if p["mean_cosine"] is not None else float("nan")


def scan(
    model: str, *, config_path: str | None = None, method: str = "structured", ratios: tuple[float, ...] = DEFAULT_RATIOS,
    min_cosine: float = 0.95, max_drop: float = 1.0, samples: int = 128, trust_model: bool = False,
    layers: list[str] | None = None, progress: Any = None,
) -> dict[str, Any]:
    """Run the scan; returns a JSON-able dict (ratios, metric, baseline, per-layer rows, YAML)."""
    from optimize.context import RunContext
    from optimize.data import random_dataset
    from optimize.errors import UsageError
    from optimize.loaders import load_model

    if method not in ("structured", "magnitude"):
        raise UsageError(f"--method must be structured or magnitude, not {method!r}")
    bad = [r for r in ratios if not 0 < r < 1]
    if bad or not ratios:
        raise UsageError(f"--ratios must be fractions in (0, 1): {bad or 'none given'}")
    if not -1 <= min_cosine <= 1 or max_drop < 0:
        raise UsageError(f"--min-cosine must be in [-1, 1] and --max-drop at least 0 (got {min_cosine:g}, {max_drop:g})")
    cfg = _config(config_path)
    handle = load_model(model, model_cfg=cfg.model, trust_model=trust_model, base_dir=Path.cwd())
    if not handle.inputs:
        raise UsageError("the model's inputs are unknown: give -c CONFIG with model.inputs")
    if layers:
        _check_layers(handle, layers, method)
    with tempfile.TemporaryDirectory(prefix="optimize-scan-") as work:
        ctx = RunContext(config=cfg, work_dir=Path(work), inputs=list(handle.inputs), input_model=handle)
        ds = ctx.data("eval")
        if ds is None:
            ds = random_dataset(handle.inputs, min(samples, 64), 0)
            source = "random inputs from the input spec"
        else:
            ds = ds.take(samples)
            source = "data.eval"
        labels = ds.labels if ds.labels is not None and ds.labels.ndim == 1 else None
        ref = _outputs(handle, ds)
        baseline = _score(ref, ref, labels)
        accuracy = labels is not None and ref[0].ndim == 2
        metric = (
            f"top-1 accuracy % on {source} ({len(ds)} samples)" if accuracy
            else f"mean output cosine vs the unpruned model on {source} ({len(ds)} samples)"
        )
        names = layers or _candidates(handle, method)
        rows = []
        for i, name in enumerate(names):
            scores, reason = _scan_layer(handle, ctx, i, name, method, ratios, (ds, ref, labels))
            ok = [
                r for r in ratios
                if scores.get(f"{r:g}") is not None
                and ((baseline - scores[f"{r:g}"] <= max_drop) if accuracy else scores[f"{r:g}"] >= min_cosine)  # type: ignore[operator]
            ]
            proposed = max(ok) if ok else (0.0 if any(v is not None for v in scores.values()) else None)
            rows.append({"name": name, "scores": scores, "proposed": proposed, "reason": reason})
            if progress is not None:
                progress(i + 1, len(names), name)
    proposals = {r["name"]: r["proposed"] for r in rows if r["proposed"]}
    target = f"accuracy drop ≤ {max_drop} points" if accuracy else f"mean cosine ≥ {min_cosine}"
    return {
        "model": model,
        "method": method,
        "ratios": list(ratios),
        "metric": metric,
        "baseline": baseline,
        "target": target,
        "layers": rows,
        "layer_sparsity": proposals,
        "yaml": yaml_snippet(method, proposals, target),
    }


def _scan_layer(
    handle: Any, ctx: Any, i: int, name: str, method: str, ratios: tuple[float, ...], quality: tuple[Any, Any, Any],
) -> tuple[dict[str, float | None], str | None]:
    """(score per ratio, why a ratio could not be scanned) of one layer pruned alone."""
    from optimize.errors import OptimizeError
    from passes.prune.config import PruneConfig
    from passes.prune.prune_pass import PrunePass

    ds, ref, labels = quality
    scores: dict[str, float | None] = {}
    reason = None
    for r in ratios:
        ctx.step_index = i
        try:
            pc = PruneConfig(method=method, sparsity=r, include=[name], keep_output_layer=True)
            res = PrunePass(pc).run(handle, ctx)
        except OptimizeError as exc:
            reason = str(exc).splitlines()[0][:200]
            scores[f"{r:g}"] = None
            continue
        if not res.metrics.get("layers"):
            reason = next(
                (n for n in res.notes if "skipped" in n or "kept" in n or "nothing" in n),
                "nothing pruned (coupled to an ignored layer, or the output layer)",
            )
            scores[f"{r:g}"] = None
            break
        scores[f"{r:g}"] = _score(_outputs(res.model, ds), ref, labels)
    return scores, reason


def yaml_snippet(method: str, proposals: dict[str, float], target: str) -> str:
    import json

    lines = [
        f"# proposed by optimize prune-scan ({target}, each layer pruned alone: check the combination)",
        "passes:",
        "  - type: prune",
        f"    method: {method}",
        "    sparsity: 0.0",
    ]
    if proposals:
        lines.append("    layer_sparsity:")
        lines += [f"      {json.dumps(name)}: {ratio:g}" for name, ratio in proposals.items()]
    else:
        lines.append("    # no layer met the target at any scanned ratio")
    return "\n".join(lines) + "\n"
