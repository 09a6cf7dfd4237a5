"""A fixed quantization format under a parity floor or accuracy gate: check the quantized model and,
when it misses, keep its most sensitive layers in float (the accuracy-aware fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from passes.quantize.auto import SENSITIVITY_BUDGET_S, Evaluator, Goal, fallback, weighted_layers

if TYPE_CHECKING:
    from passes.quantize.job import Job


def run_fallback(
    job: Job, settings: dict[str, Any], work: Path, evaluator: Evaluator, goal: Goal,
) -> tuple[Any, Any, list[str], dict[str, float]]:
    """Keep the most sensitive layers in float until `goal` holds (passes/quantize/auto.py: fallback)."""
    cfg = job.cfg
    layers = weighted_layers(job.qin, cfg.op_types, cfg.exclude_nodes)
    return fallback(
        job.quantize_fn(), settings, layers, evaluator, goal, cfg.fallback_max_layers, work,
        job.ctx.progress, "quantize.sensitivity", cfg.exclude_nodes,
    )

def fixed_with_fallback(job: Job, out: Path, metrics: dict[str, Any], notes: list[str]) -> Path:
    """A fixed format: when a parity floor / accuracy gate applies, check it and fall back if needed."""
    import shutil

    cfg = job.cfg
    goal = job.goal(auto=False)
    if not goal.active:
        return out
    evaluator = Evaluator(job.ctx, job.src, want_accuracy=goal.max_accuracy_drop is not None)
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
    settings = {k: getattr(cfg, k) for k in ("mode", "format", "per_channel", "reduce_range")}
    path, best, kept, sens = run_fallback(job, settings, out.parent / "fallback", evaluator, goal)
    if path is None:
        why = ("the per-layer sensitivity scan would take longer than "
               f"{SENSITIVITY_BUDGET_S:.0f} s on this model" if not sens else "it has no layer to keep in float")
        if not weighted_layers(job.qin, cfg.op_types, cfg.exclude_nodes):
            why = "it has no weighted layer to keep in float"
        notes.append(f"the quantized model misses its goal ({reason}); no fallback: {why}")
        return out
    shutil.move(str(path), str(out))
    shutil.rmtree(out.parent / "fallback", ignore_errors=True)
    fallback_report(metrics, notes, reason, best, kept, sens, goal)
    return out

def fallback_report(metrics: dict[str, Any], notes: list[str], reason: str | None, best: Any,
                     kept: list[str], sens: dict[str, float], goal: Any) -> None:
    ok, why = goal.judge(best)
    metrics["float_nodes"] = list(kept)
    metrics["sensitivity"] = {k: round(v, 6) for k, v in sorted(sens.items(), key=lambda kv: -kv[1])}
    metrics["fallback_goal_met"] = ok
    metrics["parity_after_fallback"] = {"min_cosine": best.min_cosine, "mean_cosine": best.mean_cosine,
                                        "accuracy_drop": best.accuracy_drop}
    if ok:
        notes.append(
            f"accuracy-aware fallback: fully quantized, {reason}; kept the {len(kept)} most sensitive "
            f"layer(s) in float ({', '.join(kept)}): min cosine {best.min_cosine:.4f}"
        )
    else:
        notes.append(
            f"accuracy-aware fallback did NOT meet the goal ({why}) even with {len(kept)} layer(s) in float "
            f"({', '.join(kept)}); kept the best variant: the pipeline's gates decide whether it is rejected"
        )
