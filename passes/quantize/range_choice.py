"""`reduce_range: auto` on a CPU without int8 dot-product instructions: both weight ranges built,
the one closer to float kept.

Without VNNI, ONNX Runtime's u8s8 kernels sum pairs of products in 16 bits, which 8-bit weights
can saturate: a small MatMul model read cosine 0.92 instead of 1.0, and 7-bit weights (`reduce_range`)
avoid it. But 7-bit weights cost precision where nothing saturates: the all-MiniLM-L6-v2 encoder
read embedding cosine min 0.9791 with 7-bit weights and 0.9828 with 8-bit on real sentences, at
the same speed (same kernels). Which one wins depends on the model's values, so both are
quantized (the calibration cache makes the second static build cheap) and compared with the
float input on the pass's evaluation inputs; the report keeps both parities.

7-bit weights must win clearly (min cosine higher by more than SEVEN_BIT_MARGIN): saturation costs a
lot (0.92 against 1.0 above), while smaller differences are noise of the inputs. On MiniLM the same
64 sentences read 7-bit 0.9844 / 8-bit 0.9830 padded to 128 tokens, and 7-bit 0.9791 / 8-bit 0.9828
padded per batch (ONNX Runtime's dynamic activation ranges include the padding); a 0.0002 lead of
7-bit on the pass's inputs had picked the range that is worse for users who pad per batch.
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
    if _keep_eight(eight, seven):
        for suffix in ("", ".data"):
            src = full.with_name(full.name + suffix)
            if src.exists():
                shutil.move(str(src), str(out.with_name(out.name + suffix)))
        job.cfg = job.cfg.model_copy(update={"reduce_range": False})
        metrics["reduce_range"] = False
        notes.append(f"reduce_range auto: 8-bit weights kept: 7-bit was not closer to float by more than "
                     f"{SEVEN_BIT_MARGIN:g} on {evaluator.source} (min cosine {eight.min_cosine:.4f} with 8-bit, "
                     f"{seven.min_cosine:.4f} with 7-bit); no VNNI on this CPU")
    else:
        for suffix in ("", ".data"):
            full.with_name(full.name + suffix).unlink(missing_ok=True)
        notes.append(f"reduce_range auto: 7-bit weights kept (min cosine {seven.min_cosine:.4f} vs "
                     f"{eight.min_cosine:.4f} with 8-bit on {evaluator.source}): this CPU has no int8 dot-product "
                     "instructions (VNNI), where ONNX Runtime's u8s8 kernels can saturate")


SEVEN_BIT_MARGIN = 0.002  # how much closer 7-bit weights must be to be kept (module doc)


def _keep_eight(eight: Any, seven: Any) -> bool:
    """Whether the 8-bit build is kept: unless 7-bit is clearly closer to float."""
    if not eight.all_finite or eight.min_cosine is None:
        return False
    if not seven.all_finite or seven.min_cosine is None:
        return True
    return seven.min_cosine <= eight.min_cosine + SEVEN_BIT_MARGIN
