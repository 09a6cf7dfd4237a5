"""What a following quantize pass costs in min output cosine, measured once on the input model, so
that `sparsity: auto` with a gate as its only target can hold its probes above the gate by it.

The probes are measured in torch, before any quantization; the gate reads the quantized output. On
all-MiniLM-L6-v2 with dynamic int8, int8 alone took 0.016 of the min cosine on held-out text, and a
ratio whose probe just met 0.95 read 0.939 after int8 (docs/distill.md). So: take the input model as
ONNX (the pipeline's baseline export), run the pipeline's own quantize pass on it (the user's
settings, calibration data included) in a private folder, and compare it with the input model on the
search's eval samples; the probes' target becomes the gate plus that loss. An explicit
`search_min_cosine` is the user's target and is kept as given.

Measured only when the quantize pass runs on ONNX after this prune (no training pass after it: a
quantize pass before distill trains in torch, quantization-aware). It is an estimate: the quantize
pass runs on the baseline export (the export step may choose another graph), without any fp16 or
graph pass between, and a pruned model can lose more to int8 than the unpruned one. Any failure
leaves the target at the gate, with a note; it never fails the run.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from passes.prune.config import PruneConfig


def passes_after(ctx: Any, cfg: PruneConfig) -> list[Any] | None:
    """The pass configs after this prune pass (found by identity, else as the first prune with an
    auto ratio); None when it is not in the pipeline's config."""
    passes = list(getattr(getattr(ctx, "config", None), "passes", None) or [])
    here = [i for i, p in enumerate(passes) if p is cfg] or [
        i for i, p in enumerate(passes) if getattr(p, "type", None) == "prune"
        and "auto" in (getattr(p, "sparsity", None), getattr(p, "head_sparsity", None))]
    return passes[here[0] + 1:] if here else None


def following_quantize(ctx: Any, cfg: PruneConfig) -> Any | None:
    """The config of the quantize pass after this prune pass when it runs on ONNX (no distill
    after it), else None."""
    after = passes_after(ctx, cfg) or []
    q = next((i for i, p in enumerate(after) if getattr(p, "type", None) == "quantize"), None)
    if q is None or any(getattr(p, "type", None) == "distill" for p in after[q + 1:]):
        return None
    return after[q]


def quantize_margin(ctx: Any, qcfg: Any, teacher: Any, eval_ds: Any, reference: list[Any]) -> dict[str, Any]:
    """{'min_cosine': the quantized input model's min cosine against it on `eval_ds`, 'margin':
    1 − that, 'seconds'}; or {'reason': why not measured}."""
    from optimize import progress

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="prune-int8-margin-", dir=ctx.work_dir))  # private: one per process
    try:
        with progress.task(ctx.progress, "prune.search.int8", "prune search: what the quantize pass costs the input model", None):
            found = _quantized_min_cosine(ctx, qcfg, teacher, eval_ds, reference, work)
    except Exception as exc:  # an estimate for the search; the pipeline's own passes report real failures
        return {"reason": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if found is None:
        return {"reason": "the quantized input model's outputs could not be compared"}
    return {"min_cosine": round(float(found), 6), "margin": round(max(0.0, 1.0 - float(found)), 6),
            "seconds": round(time.perf_counter() - t0, 1)}


def _quantized_min_cosine(ctx: Any, qcfg: Any, teacher: Any, eval_ds: Any, reference: list[Any], work: Path) -> float | None:
    from optimize.runtime import parity, predict, session

    onnx_teacher = ctx.baseline if getattr(ctx.baseline, "onnx_path", None) is not None else export_on_cpu(ctx, teacher, work / "input.onnx")
    quantized = through_quantize(ctx, qcfg, onnx_teacher, work)
    got = predict(session(quantized.onnx_path, threads=ctx.threads), eval_ds.inputs)[:1]
    return parity(reference, got)["min_cosine"]


def through_quantize(ctx: Any, qcfg: Any, handle: Any, work: Path) -> Any:
    """`handle` (ONNX) through the pipeline's quantize pass `qcfg`, in `work`, quietly."""
    from optimize import registry
    from optimize.progress import NullProgress

    inner = dataclasses.replace(ctx, work_dir=work, _data=ctx._data, progress=NullProgress())  # its own folder, quiet
    return registry.get("quantize")(qcfg).run(handle, inner).model


def export_on_cpu(ctx: Any, handle: Any, path: Path, exporter: str | None = None, attention: str | None = None) -> Any:
    """A CPU copy of `handle`'s torch module exported to `path` as the config's output asks (or with
    `exporter` / `attention`, when given)."""
    from optimize.export import copy_module, export_to_onnx

    module = copy_module(handle.module).cpu()
    out = ctx.config.output
    return export_to_onnx(handle.replace(module=module), path, opset=out.opset, exporter=exporter or out.exporter,
                          attention=attention)
