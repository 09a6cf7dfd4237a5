"""What a following quantize pass costs in min output cosine, measured once on the input model, so
that `sparsity: auto` with a gate as its only target can hold its probes above the gate by it.

The probes are measured in torch, before any quantization; the gate reads the quantized output. On
all-MiniLM-L6-v2 with dynamic int8, int8 alone took 0.016 of the min cosine on held-out text, and a
ratio whose probe just met 0.95 read 0.939 after int8 (docs/distill.md). So: export the input model,
run the pipeline's own quantize pass on it (the user's settings, calibration data included), and
compare it with the input model on data.eval; the probes' target becomes the gate plus that loss.
An explicit `search_min_cosine` is the user's target and is kept as given.

Measured only when the quantize pass runs on ONNX after this prune (no training pass after it: a
quantize pass before distill trains in torch, quantization-aware). Any failure here leaves the
target at the gate, with a note; it never fails the run.
"""

from __future__ import annotations

import time
from typing import Any

from passes.prune.config import PruneConfig


def following_quantize(ctx: Any, cfg: PruneConfig) -> Any | None:
    """The config of the quantize pass after this prune pass when it runs on ONNX (no distill
    after it), else None. This pass is found by identity, else as the first prune with an auto ratio."""
    passes = list(getattr(getattr(ctx, "config", None), "passes", None) or [])
    here = [i for i, p in enumerate(passes) if p is cfg] or [
        i for i, p in enumerate(passes) if getattr(p, "type", None) == "prune"
        and "auto" in (getattr(p, "sparsity", None), getattr(p, "head_sparsity", None))]
    if not here:
        return None
    after = passes[here[0] + 1:]
    q = next((i for i, p in enumerate(after) if getattr(p, "type", None) == "quantize"), None)
    if q is None or any(getattr(p, "type", None) == "distill" for p in after[q + 1:]):
        return None
    return after[q]


def quantize_margin(ctx: Any, qcfg: Any, teacher: Any, eval_ds: Any, reference: list[Any]) -> dict[str, Any]:
    """{'min_cosine': the quantized input model's min cosine against it on `eval_ds`, 'margin':
    1 − that, 'seconds'}; or {'reason': why not measured}."""
    from optimize import registry
    from optimize.export import export_to_onnx
    from optimize.runtime import parity, predict, session

    t0 = time.perf_counter()
    try:
        work = ctx.step_dir("prune-int8-margin")
        out = ctx.config.output
        onnx_teacher = export_to_onnx(teacher, work / "input.onnx", opset=out.opset, exporter=out.exporter)
        quantized = registry.get("quantize")(qcfg).run(onnx_teacher, ctx).model
        got = predict(session(quantized.onnx_path), eval_ds.inputs)[:1]
        found = parity(reference, got)["min_cosine"]
    except Exception as exc:  # an estimate for the search; the pipeline's own passes report real failures
        return {"reason": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"}
    if found is None:
        return {"reason": "the quantized input model's outputs could not be compared"}
    return {"min_cosine": round(float(found), 6), "margin": round(max(0.0, 1.0 - float(found)), 6),
            "seconds": round(time.perf_counter() - t0, 1)}
