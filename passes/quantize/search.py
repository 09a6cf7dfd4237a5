"""`format: auto`: build the int8 forms that fit the model, check and time each against the float
input on this hardware, keep the best passing one (see passes/quantize/auto.py for the parts).

A candidate that fails to build, load or run is rejected with its reason; the run never fails
because one candidate did. When none builds or passes, the float input is kept and the notes say why.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from passes.quantize.auto import Candidate, Evaluator, choose, time_candidates
from passes.quantize.fallback import run_fallback

if TYPE_CHECKING:
    from passes.quantize.job import Job

STATIC_QOPERATOR_SKIPPED = "int8 static QOperator: measured 0.1–0.2x of float on CPUs without VNNI; not a candidate"


def candidate_settings(job: Job) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(name, settings) of the forms worth building for this model, and why others were not."""
    from optimize.inspect_onnx import op_counts

    cfg = job.cfg
    counts = op_counts(job.qin)
    has_matmul = any(op in counts for op in ("MatMul", "Gemm", "Attention", "com.microsoft.Attention"))
    modes = [cfg.mode] if "mode" in cfg.model_fields_set else ["dynamic", "static"]
    settings: list[tuple[str, dict[str, Any]]] = []
    skipped: list[str] = []
    per = "per-channel" if cfg.per_channel else "per-tensor"
    if "dynamic" in modes:
        if has_matmul:
            settings.append((f"int8 dynamic {per}",
                             {"mode": "dynamic", "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range}))
        else:
            skipped.append("int8 dynamic: no MatMul/Gemm (dynamic Conv becomes slow per-tensor ConvInteger)")
    if "static" in modes:
        rr = cfg.reduce_range  # resolved for this CPU (config.resolved)
        reason = job.calibration_refusal()
        if reason is None:
            settings.append((f"int8 static QDQ {per}" + (" reduce-range" if rr else ""),
                             {"mode": "static", "format": "qdq", "per_channel": cfg.per_channel, "reduce_range": rr}))
        else:
            skipped.append(f"int8 static: {reason}")
    skipped.append(STATIC_QOPERATOR_SKIPPED)
    return settings, skipped


def build_candidates(job: Job, settings: list[tuple[str, dict[str, Any]]], work: Path, evaluator: Evaluator,
                     goal: Any) -> tuple[list[Candidate], dict[str, tuple[dict[str, Any], list[str]]]]:
    """Quantize, check and (when it misses the goal) fall back each setting; failures are rejections."""
    from optimize import onnx_io

    built: list[Candidate] = []
    extra: dict[str, tuple[dict[str, Any], list[str]]] = {}
    key = "quantize.candidates"
    job.ctx.progress.start(key, "format auto: building candidates", len(settings))
    for i, (name, st) in enumerate(settings):
        path = work / f"cand-{i}.onnx"
        cand_metrics: dict[str, Any] = {}
        cand_notes: list[str] = []
        c = Candidate(name, path, st)
        built.append(c)
        try:
            repair = job.quantize(job.variant(st), path, cand_metrics, cand_notes)
            onnx_io.normalize_ir_version_file(path)
            c.float_nodes = list(repair.float_nodes)
            c.check = evaluator.check(path)
            c.passed, c.reason = goal.judge(c.check)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot be built or run is rejected
            c.passed, c.reason, c.failed = False, f"failed: {str(exc).strip() or type(exc).__name__}", True
            job.ctx.progress.advance(key)
            continue
        extra[name] = (cand_metrics, cand_notes)
        if not c.passed and job.cfg.fallback_max_layers != 0 and evaluator.realistic:
            fc = _fallback_candidate(job, c, st, work / f"fallback-{i}", evaluator, goal)
            if fc is not None:
                built.append(fc)
                extra[fc.name] = (cand_metrics, cand_notes)
        job.ctx.progress.advance(key)
    job.ctx.progress.finish(key)
    return built, extra


def _fallback_candidate(job: Job, c: Candidate, st: dict[str, Any], work: Path, evaluator: Evaluator,
                        goal: Any) -> Candidate | None:
    from optimize import onnx_io

    try:
        found = run_fallback(job, st, work, evaluator, goal, failed=c.path)
    except Exception as exc:  # noqa: BLE001 - the fallback is an attempt; the candidate stays rejected
        c.reason = f"{c.reason}; fallback failed: {str(exc).strip() or type(exc).__name__}"
        return None
    if found.path is None or found.check is None:
        return None
    onnx_io.normalize_ir_version_file(found.path)
    fc = Candidate(f"{c.name} + {len(found.kept)} float layer(s)", found.path, st,
                   float_nodes=found.kept, sensitivity=found.sensitivity)
    fc.check = found.check
    fc.passed, fc.reason = goal.judge(found.check)
    return fc


def run_auto(job: Job, specs: list[Any], fused: Path, out: Path, metrics: dict[str, Any], notes: list[str]) -> Path:
    """The chosen model's path (`out`, or the float input `job.src` when float wins)."""
    from optimize import onnx_io
    from optimize.hardware import cpu_info, has_int8_dot_product

    cfg = job.cfg
    goal = job.goal(auto=True)
    evaluator = job.evaluator(want_accuracy=goal.max_accuracy_drop is not None)
    settings, skipped = candidate_settings(job)
    work = out.parent / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    candidates = [Candidate("float (input)", job.src, {"mode": "float"}, quantized=False, passed=True)]
    if fused != job.src:
        rewritten = bool(metrics.get("rewrites", {}).get("applied"))
        what = " + ".join((["fused"] if cfg.fusion != "none" else []) + (["rewritten"] if rewritten else []))
        candidates.append(Candidate(f"float {what}", fused, {"mode": "float", "fusion": cfg.fusion,
                                                             "rewritten": rewritten}, quantized=False))
    built, extra = build_candidates(job, settings, work, evaluator, goal)
    candidates.extend(built)
    runnable = [c for c in candidates if not c.failed]
    for c in runnable:
        if c.check is None:
            c.check = evaluator.check(c.path)
            if c.quantized or c.path != job.src:
                c.passed, c.reason = goal.judge(c.check)
        c.bytes = onnx_io.total_bytes(c.path)
    timing = time_candidates(job.ctx, job.src, runnable, specs)
    chosen, why = choose(runnable, cfg.objective, tuple(skipped))
    float_bytes = candidates[0].bytes or 0
    metrics.update(
        format="auto", objective=cfg.objective, chosen=chosen.name,
        candidates=[{**c.row(float_bytes), "chosen": c is chosen} for c in candidates], candidate_timing=timing,
        goal={"min_parity_cosine": goal.floor, "floor_source": goal.floor_source,
              "max_accuracy_drop": goal.max_accuracy_drop, "parity_samples": evaluator.samples,
              "parity_source": evaluator.source},
        not_candidates=skipped, cpu_isa=cpu_info()["isa"], int8_dot_product=has_int8_dot_product(),
        float_nodes=list(chosen.float_nodes),
        mode=chosen.settings.get("mode"), per_channel=chosen.settings.get("per_channel", cfg.per_channel),
        reduce_range=chosen.settings.get("reduce_range", cfg.reduce_range),
    )
    if chosen.sensitivity is not None:
        metrics["sensitivity"] = {k: round(v, 6) for k, v in sorted(chosen.sensitivity.items(), key=lambda kv: -kv[1])}
    notes.append(_summary(job, chosen, candidates, timing, float_bytes))
    notes.extend(why)
    if chosen.float_nodes:
        notes.append(f"layers kept in float: {', '.join(chosen.float_nodes)}")
    result = _adopt(chosen, job.src, out, extra, metrics, notes)
    if chosen.sensitivity is not None:  # a fallback candidate: judged on the samples it was tuned on
        from passes.quantize.fallback import held_out_report

        held_out_report(evaluator, result, goal, metrics, notes)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _summary(job: Job, chosen: Candidate, candidates: list[Candidate], timing: dict[str, Any], float_bytes: int) -> str:
    def row(c: Candidate) -> str:
        if c.failed:
            return f"{c.name}: rejected ({c.reason})"
        cos = c.check.min_cosine if c.check and c.check.min_cosine is not None else float("nan")
        size = float_bytes / c.bytes if c.bytes else 0
        return (f"{c.name}: {c.speedup:.2f}x, {size:.1f}x smaller, min cosine {cos:.4f}"
                + ("" if c.passed else f" (rejected: {c.reason})"))

    return (f"format auto ({job.cfg.objective}): chose {chosen.name} — measured at {job.ctx.threads} threads, batch "
            f"{timing['batch']}, interleaved against the float input; candidates: " + "; ".join(map(row, candidates)))


def _adopt(chosen: Candidate, src: Path, out: Path, extra: dict[str, tuple[dict[str, Any], list[str]]],
           metrics: dict[str, Any], notes: list[str]) -> Path:
    from optimize import onnx_io
    from optimize.inspect_onnx import all_graphs

    if not (chosen.quantized or chosen.path != src):
        metrics["mode"] = "float"
        return src
    cm, cn = extra.get(chosen.name, ({}, []))
    metrics.update({k: v for k, v in cm.items() if k.startswith("calibration")})
    notes.extend(cn)
    model = onnx_io.load(chosen.path, load_external_data=False)
    if any(onnx_io.uses_external(t) for g in all_graphs(model.graph) for t in g.initializer):
        # the file names its data file (cand-0.onnx.data, fused.onnx.data): written anew as out's own
        onnx_io.save_streaming(model, out, chosen.path.parent)
    else:
        shutil.copyfile(chosen.path, out)
    return out
