"""`reduce_range: auto` on a CPU without int8 dot-product instructions: both weight ranges built,
the one closer to float kept.

Without VNNI, ONNX Runtime's u8s8 kernels sum pairs of products in 16 bits, which 8-bit weights
can saturate: a small MatMul model read cosine 0.92 instead of 1.0, and 7-bit weights (`reduce_range`)
avoid it. But 7-bit weights cost precision where nothing saturates: the all-MiniLM-L6-v2 encoder
read embedding cosine min 0.9791 with 7-bit weights and 0.9828 with 8-bit on real sentences, at
the same speed (same kernels). Which one wins depends on the model's values, so both are
quantized (the calibration cache makes the second static build cheap) and compared with the
float input on the pass's evaluation inputs; the report keeps both parities.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from passes.quantize.job import Job


def choose_weight_range(job: Job, out: Path, metrics: dict[str, Any], notes: list[str]) -> None:
    """`out` holds the 7-bit build; replace it by the full-range build when that is closer to float.
    Models over the external-data threshold keep 7-bit: a second build would double the time and
    memory of the largest step, and its weights file is named after the build (a rename breaks it)."""
    if job.large:
        notes.append("reduce_range auto: 7-bit weights (no VNNI on this CPU; the 8-bit comparison is skipped for a "
                     "model stored with external data)")
        return
    full = out.with_name("full-range.onnx")
    job.quantize(job.cfg.model_copy(update={"reduce_range": False}), full)
    evaluator = job.evaluator(want_accuracy=False)
    seven, eight = evaluator.check(out), evaluator.check(full)
    metrics["reduce_range_choice"] = {
        "7-bit min_cosine": seven.min_cosine, "8-bit min_cosine": eight.min_cosine, "inputs": evaluator.source,
    }
    if _better(eight, seven):
        for suffix in ("", ".data"):
            src = full.with_name(full.name + suffix)
            if src.exists():
                shutil.move(str(src), str(out.with_name(out.name + suffix)))
        job.cfg = job.cfg.model_copy(update={"reduce_range": False})
        metrics["reduce_range"] = False
        notes.append(f"reduce_range auto: 8-bit weights kept, closer to float than 7-bit on {evaluator.source} "
                     f"(min cosine {eight.min_cosine:.4f} vs {seven.min_cosine:.4f}); no VNNI on this CPU")
    else:
        for suffix in ("", ".data"):
            full.with_name(full.name + suffix).unlink(missing_ok=True)
        notes.append(f"reduce_range auto: 7-bit weights kept (min cosine {seven.min_cosine:.4f} vs "
                     f"{eight.min_cosine:.4f} with 8-bit on {evaluator.source}): this CPU has no int8 dot-product "
                     "instructions (VNNI), where ONNX Runtime's u8s8 kernels can saturate")


def _better(a: Any, b: Any) -> bool:
    if not a.all_finite or a.min_cosine is None:
        return False
    if not b.all_finite or b.min_cosine is None:
        return True
    return a.min_cosine > b.min_cosine
