"""The accuracy-aware fallback's search: which layers to keep in float so the model meets its goal.

Layers are ranked by the error each adds, then the k most sensitive are kept in float for k = 1,
2, 4, … (doubling) until the goal holds, and the smallest passing k is found by bisection between
the last failing and the first passing count: about 2·log2(layers) quantizations instead of one
per layer. Real models need this reach: a YOLOv8n detector's class scores stayed below a 0.95
cosine with 16 of its 64 convolutions in float, so a search capped at 8 layers could not succeed.

Ranking: each layer quantized alone and the whole model checked (the faithful measure) when that
scan fits SENSITIVITY_BUDGET_S; otherwise the error each layer adds in one run of the quantized
model (passes/quantize/layer_error.py). The variants quantize the weighted layers only (Conv,
MatMul, Gemm, unless `op_types` says otherwise), so keeping every layer in float converges on the
float model instead of leaving element-wise ops quantized.

Why hand-written: ONNX Runtime quantizes the configuration it is given; choosing the float layers
by measured error is this tool's part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passes.quantize.auto import WEIGHTED_LAYER_OPS, Check, Evaluator, Goal, QuantizeFn

SENSITIVITY_SAMPLES = 64  # calibration samples per single-layer quantization (sensitivity only)
SENSITIVITY_BUDGET_S = 180.0  # the per-layer scan gives way to the one-run ranking beyond this (see _scan)


@dataclass
class SearchResult:
    """The variant kept (None: nothing could be kept in float), how layers were ranked, and every
    count tried with its min cosine, for the report."""

    path: Path | None
    check: Check | None
    kept: list[str]
    sensitivity: dict[str, float]
    ranking: str = ""
    tried: list[dict[str, Any]] = field(default_factory=list)
    score: tuple[float, float] = (0.0, float("-inf"))


@dataclass
class Search:
    quantize: QuantizeFn
    settings: dict[str, Any]
    evaluator: Evaluator
    goal: Goal
    work: Path
    base_exclude: list[str]
    float_path: Path  # the quantizer's float input: the layer names and tensor names are its own

    def probe(self, kept: list[str], label: str) -> tuple[Path, Check]:
        out = self.work / f"fallback-{label}.onnx"
        self.quantize(self.settings, out, include=None, exclude=[*self.base_exclude, *kept])
        return out, self.evaluator.check(out)


def weighted_only(settings: dict[str, Any], op_types: list[str] | None) -> dict[str, Any]:
    """`settings` quantizing the weighted op types only (those of `op_types` when it is set)."""
    ops = [o for o in (op_types or WEIGHTED_LAYER_OPS) if o in WEIGHTED_LAYER_OPS] or list(WEIGHTED_LAYER_OPS)
    return {**settings, "op_types": ops}


def fallback(
    search: Search, layers: list[str], max_layers: int | None, progress: Any, key: str,
    failed: Path | None = None, budget_s: float = SENSITIVITY_BUDGET_S,
) -> SearchResult:
    """Keep the fewest most-sensitive layers in float that meet the goal (at least one layer stays
    quantized); when no count does, the best variant tried (by error)."""
    search.work.mkdir(parents=True, exist_ok=True)
    if not layers:
        return SearchResult(None, None, [], {})
    sensitivity, ranking = _rank(search, layers, progress, key, failed, budget_s)
    order = sorted(layers, key=lambda n: -sensitivity.get(n, 0.0))
    limit = len(order) - 1 if max_layers is None else min(max_layers, len(order) - 1)
    result = SearchResult(None, None, [], sensitivity, ranking)
    if limit < 1:
        return result
    progress.start(f"{key}.search", "keeping the most sensitive layers in float", None)
    try:
        _doubling_then_bisection(search, order, limit, result)
    finally:
        progress.finish(f"{key}.search")
    return result


def _doubling_then_bisection(search: Search, order: list[str], limit: int, result: SearchResult) -> None:
    failing, passing = 0, None
    k = 1
    while passing is None:
        if _try(search, order, k, result):
            passing = k
        else:
            failing = k
            if k >= limit:
                return
            k = min(2 * k, limit)
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if _try(search, order, mid, result):
            passing = mid
        else:
            failing = mid


def _try(search: Search, order: list[str], k: int, result: SearchResult) -> bool:
    """Quantize with the k most sensitive layers in float; keep the file when it is the best so far:
    a passing variant with fewer float layers, else the smallest error."""
    out, check = search.probe(order[:k], str(k))
    ok, _ = search.goal.judge(check)
    result.tried.append({"float_layers": k, "min_cosine": check.min_cosine, "passed": ok})
    score = (1.0, -float(k)) if ok else (0.0, -check.error())
    if result.check is None or score > result.score:
        if result.path is not None:
            _remove(result.path)
        result.path, result.check, result.kept, result.score = out, check, order[:k], score
    else:
        _remove(out)
    return ok


def _rank(
    search: Search, layers: list[str], progress: Any, key: str, failed: Path | None, budget_s: float,
) -> tuple[dict[str, float], str]:
    scanned = _scan(search, layers, progress, key, budget_s)
    if scanned is not None:
        return scanned, "each layer quantized alone: the error it adds to the outputs (1 − mean cosine)"
    from optimize.probes import slice_samples
    from passes.quantize.layer_error import added_errors

    source = failed
    if source is None:
        source, _ = search.probe([], "ranking")
    sample = slice_samples(search.evaluator.inputs, 0, 1)
    errors = added_errors(search.float_path, source, layers, sample, search.work, search.evaluator.ctx.threads)
    if failed is None:
        _remove(source)
    return errors, ("the error each layer adds in one run of the quantized model (relative output error "
                    "minus input error; the per-layer scan would exceed its time budget)")


def _scan(search: Search, layers: list[str], progress: Any, key: str, budget_s: float) -> dict[str, float] | None:
    """Each layer quantized alone: the error it adds. None when the scan, timed on its first layers,
    would take longer than `budget_s` (62 layers of a 736x1088 detector took over 5 minutes).
    Timed in this process's CPU seconds over its threads, not wall time, so that a busy machine (a
    shared CI runner) does not change the ranking and with it the model: PP-OCRv4 det got the cheap
    ranking under load and missed its floor with 61 of 62 layers in float (0.9746, exit 3), where
    the scan, alone on the machine, met it with 32 (0.9822)."""
    settings = dict(search.settings)
    if settings.get("mode") == "static":
        settings["calibration_samples"] = min(int(settings.get("calibration_samples", 256)), SENSITIVITY_SAMPLES)
    sensitivity: dict[str, float] = {}
    progress.start(key, "per-layer sensitivity (each layer quantized alone)", len(layers))
    threads = max(1, int(search.evaluator.ctx.threads or 1))
    started = time.process_time()
    try:
        for i, name in enumerate(layers):
            out = search.work / f"sens-{i}.onnx"
            search.quantize(settings, out, include=[name], exclude=search.base_exclude)
            sensitivity[name] = search.evaluator.check(out).error()
            _remove(out)
            progress.advance(key)
            spent = (time.process_time() - started) / threads
            if i >= 1 and spent / (i + 1) * len(layers) > budget_s:
                return None
    finally:
        progress.finish(key)
    return sensitivity


def _remove(path: Path) -> None:
    for f in (path, path.with_name(path.name + ".data")):
        f.unlink(missing_ok=True)
