"""A fixed quantization format under a parity floor or accuracy gate: check the quantized model and,
when it misses, keep its most sensitive layers in float (the accuracy-aware fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from passes.quantize.auto import Evaluator, Goal, weighted_layers
from passes.quantize.layer_search import Search, SearchResult, fallback, weighted_only

# On ocr-rec (SVTR) the search met 0.98 on random images while real text lines read 0.912: it
# optimizes the layers that matter for noise, and hands back a model that passes on noise alone.
RANDOM_PARITY_WHY = ("parity on random inputs cannot tell which layers matter on real data; give data.eval "
                     "(or data.calibration) for the accuracy-aware fallback")

if TYPE_CHECKING:
    from passes.quantize.job import Job


def run_fallback(
    job: Job, settings: dict[str, Any], work: Path, evaluator: Evaluator, goal: Goal, failed: Path | None = None,
) -> SearchResult:
    """Keep the most sensitive layers in float until `goal` holds (passes/quantize/layer_search.py).
    `failed`: the fully quantized model that missed the goal, when it is at hand (it ranks layers
    cheaply when the per-layer scan would not fit its budget)."""
    cfg = job.cfg
    settings = weighted_only(settings, cfg.op_types)
    layers = weighted_layers(job.qin, settings["op_types"], cfg.exclude_nodes)
    search = Search(job.quantize_fn(), settings, evaluator, goal, work, list(cfg.exclude_nodes), job.qin)
    return fallback(search, layers, cfg.fallback_max_layers, job.ctx.progress, "quantize.sensitivity", failed)


def fixed_with_fallback(job: Job, out: Path, metrics: dict[str, Any], notes: list[str]) -> Path:
    """A fixed format: when a parity floor / accuracy gate applies, check it and fall back if needed."""
    import shutil

    cfg = job.cfg
    goal = job.goal(auto=False)
    if not goal.active:
        return out
    evaluator = job.evaluator(want_accuracy=goal.max_accuracy_drop is not None)
    if goal.floor is None and evaluator.eval_ds is None:
        return out  # only an accuracy gate, and no labelled data to check it on here
    check = evaluator.check(out)
    ok, reason = goal.judge(check)
    metrics["goal"] = {"min_parity_cosine": goal.floor, "floor_source": goal.floor_source,
                       "max_accuracy_drop": goal.max_accuracy_drop}
    metrics["parity_all_quantized"] = {"min_cosine": check.min_cosine, "mean_cosine": check.mean_cosine,
                                       "accuracy_drop": check.accuracy_drop}
    if ok:
        metrics["float_nodes"] = []
        return out
    if cfg.fallback_max_layers == 0:
        notes.append(f"the quantized model misses its goal ({reason}); fallback is off (fallback_max_layers: 0)")
        return out
    if not evaluator.realistic:
        notes.append(f"the quantized model misses its goal ({reason}); no fallback: {RANDOM_PARITY_WHY}")
        return out
    settings = {k: getattr(cfg, k) for k in ("mode", "format", "per_channel", "reduce_range")}
    found = run_fallback(job, settings, out.parent / "fallback", evaluator, goal, failed=out)
    if found.path is None:
        notes.append(f"the quantized model misses its goal ({reason}); no fallback: it has no weighted layer "
                     "that could be kept in float while another stays quantized")
        return out
    shutil.move(str(found.path), str(out))
    shutil.rmtree(out.parent / "fallback", ignore_errors=True)
    fallback_report(metrics, notes, reason, found, goal)
    held_out_report(evaluator, out, goal, metrics, notes)
    return out


def held_out_report(evaluator: Evaluator, path: Path, goal: Goal, metrics: dict[str, Any], notes: list[str]) -> None:
    """`parity_held_out`: the chosen model on eval samples the fallback did not choose on, and a
    note when those miss the floor its own samples met."""
    try:
        held = evaluator.held_out(path)
    except Exception as exc:  # a check of a choice already made: say why, never fail the pass over it
        notes.append(f"the fallback's choice was not checked on other data.eval samples: {type(exc).__name__}: "
                     f"{(str(exc).strip().splitlines() or [''])[0][:200]}")
        return
    if held is None:
        if evaluator.realistic:
            notes.append(f"the fallback chose on all {evaluator.samples} data.eval sample(s), none left to check "
                         "its choice on: on other inputs the min cosine can be lower (PP-OCRv4 rec: 0.9805 on the 12 "
                         "it chose on, 0.9734 on 12 others); data.eval beyond what parity reads (2^26 input "
                         "elements) adds that check")
        return
    metrics["parity_held_out"] = held
    low = held["min_cosine"]
    if not held["all_finite"]:
        notes.append(f"on {held['samples']} data.eval samples the fallback did not choose on, the model's outputs "
                     "are not all finite (NaN or inf)")
    elif goal.floor is not None and low is not None and low < goal.floor:
        notes.append(f"on {held['samples']} data.eval samples the fallback did not choose on, min cosine {low:.4f}, "
                     f"below the floor {goal.floor:g} its own samples met: the layers kept in float fit those samples; "
                     "raise measure.parity_samples (the fallback then judges on that many)")


def fallback_report(metrics: dict[str, Any], notes: list[str], reason: str | None, found: SearchResult,
                    goal: Goal) -> None:
    best, kept = found.check, found.kept
    assert best is not None
    ok, why = goal.judge(best)
    metrics["float_nodes"] = list(kept)
    metrics["sensitivity"] = {k: round(v, 6) for k, v in sorted(found.sensitivity.items(), key=lambda kv: -kv[1])}
    metrics["sensitivity_ranking"] = found.ranking
    metrics["fallback_tried"] = found.tried
    metrics["fallback_goal_met"] = ok
    metrics["parity_after_fallback"] = {"min_cosine": best.min_cosine, "mean_cosine": best.mean_cosine,
                                        "accuracy_drop": best.accuracy_drop}
    shown = ", ".join(kept[:8]) + (f", … ({len(kept)} in all)" if len(kept) > 8 else "")
    if ok:
        notes.append(
            f"accuracy-aware fallback: fully quantized, {reason}; kept the {len(kept)} most sensitive "
            f"layer(s) in float ({shown}), quantizing weighted layers only: min cosine {best.min_cosine:.4f}"
        )
    else:
        notes.append(
            f"accuracy-aware fallback did NOT meet the goal ({why}) even with {len(kept)} layer(s) in float "
            f"({shown}); kept the best variant: the pipeline's gates decide whether it is rejected"
        )
