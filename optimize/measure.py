"""Verification and measurement of the final model against the input model, and the Report.

Everything here is measured on the selected hardware with the recorded settings; what cannot be
measured is `null` with a reason. Formulas are the ones in docs/report.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from optimize import __version__
from optimize.errors import VerificationError
from optimize.report import Gate, Latency, Metric, ModelFacts, Report

if TYPE_CHECKING:
    from optimize.lineage import Lineage

log = logging.getLogger("optimize")

F_SPARSITY = "zero weights / total weights (output model)"
F_DENSITY = "non-zero weights / total weights (output model)"
F_PARAMS_REMOVED = "1 − output weights / input weights"
F_EFFECTIVE = "1 − non-zero output weights / input weights"
F_QRATIO = "Σ bits per weight × count / Σ 32 × count (output model)"
F_COMPRESSION = "input ONNX bytes / output ONNX bytes"
F_DISTILL = (
    "student accuracy / teacher accuracy on data.eval, measured by the distill step right after training (the student "
    "as trained, the teacher = the pipeline's input model in FP32, same data)"
)
F_RETAINED = "output model accuracy / input model accuracy on data.eval (end to end: every step included)"
F_ACCURACY = "top-1 accuracy on eval data: baseline (input), optimized (output), drop = baseline − optimized (points)"
F_PARITY = (
    "min over samples of cosine(input outputs, output outputs) over float outputs (an output with one value per "
    "sample is compared as one vector over the samples; an output of rank >= 3 whose "
    "channels differ in RMS by more than 100x is compared with each channel divided by its RMS); agreement = min over integer/bool "
    "outputs of the share of equal elements (the value when every output is integer/bool); max |difference|; "
    "all outputs finite; null when the input model's outputs do not vary across the probes"
)


@dataclass
class Verified:
    """What verification established: the ONNX Runtime sessions of both models on the target, the
    device they run on, and the raw parity (with `all_finite`)."""

    base_sess: Any
    out_sess: Any
    ort_device: str
    parity: dict[str, Any]
    batch: int  # the batch the models were compared at (optimize.runtime.verification_batch)

    def release(self) -> None:
        """Drop both sessions: each holds its model's weights (the input's in float, 2.4 GB for the
        large-model test), and the latency measurement and diagnostics make sessions of their own."""
        self.base_sess = self.out_sess = None


def measure(
    *, pl: Any, ctx: Any, baseline: Any, final: Any, last_torch: Any, lineage: Lineage, started: float,
    started_at: str, env: dict[str, Any], hw: dict[str, Any],
) -> Report:
    """Verify the final model, measure every metric against the baseline, apply the gates."""
    from optimize.benchmark import peak_rss_mb
    from optimize.model_facts import model_facts

    cfg = pl.config
    findings: list[str] = []
    metrics: dict[str, Metric] = {}
    ver = verify(ctx, baseline, final, metrics, findings)
    findings.extend(getattr(pl, "notes", None) or [])  # where probe shapes came from (file metadata)
    eval_ds = ctx.data("eval")
    accuracy_metrics(ctx, ver, eval_ds, lineage, metrics)
    ver.release()  # not needed past this point; held, they sat under the four latency sessions
    bench_inputs = bench_inputs_for(ctx, baseline, eval_ds)
    speedup, latency, slow_at = speed_metrics(ctx, baseline, final, last_torch, bench_inputs, ver.ort_device, metrics, findings)
    in_facts = lineage.input_facts or {}
    out_facts = model_facts(final.onnx_path, "onnx", final)
    weight_metrics(in_facts, out_facts, final.onnx_path, baseline is pl.handle, metrics)
    pruned = any(s.sparsifies for s in lineage.steps)
    findings.extend(weight_findings(in_facts, out_facts, metrics, pruned))
    diagnostics = _diagnostics(ctx, baseline, final, bench_inputs, ver.ort_device, speedup, metrics, findings,
                               _zero_share(in_facts), pruned)
    if slow_at is not None:
        causes = diagnostics.likely_causes if diagnostics is not None else []
        findings[slow_at] += (" — likely cause: " + "; ".join(causes)) if causes else _slow_cause(out_facts)

    report = Report(
        tool={"name": "optimize", "version": __version__}, status="ok", started_at=started_at, seconds=0.0,
        seed=cfg.seed, config=pl.config_dump, environment=env, hardware=hw, input=ModelFacts(**in_facts),
        output=ModelFacts(**out_facts), steps=lineage.steps, metrics=metrics, latency=latency, findings=findings,
        diagnostics=diagnostics,
    )
    apply_gates(report, cfg.gates, all_finite=bool(ver.parity["all_finite"]))
    report.seconds = round(time.time() - started, 3)
    report.peak_rss_mb = peak_rss_mb()
    return report


# ---------------------------------------------------------------- verification


def verify(ctx: Any, baseline: Any, final: Any, metrics: dict[str, Metric], findings: list[str]) -> Verified:
    """The checker, a load in ONNX Runtime on the target, finite outputs and parity (metrics['parity'])."""
    from optimize.runtime import check_model, parity, predict, reference_outputs, session

    cfg = ctx.config
    ctx.progress.start("verify", "verify (checker, ONNX Runtime load, parity)", None)
    check_model(final.onnx_path)
    ort_device = _ort_device(ctx.device, findings)
    base_sess = session(baseline.onnx_path, threads=ctx.threads, device=ort_device)
    out_sess = session(final.onnx_path, threads=ctx.threads, device=ort_device)
    par_inputs, par_source = ctx.sample_inputs("eval", ctx.parity_count())
    ref, batch = reference_outputs(base_sess, par_inputs, cfg.data.batch_size, cfg.measure.batch, par_source)
    if batch != cfg.data.batch_size:
        findings.append(
            f"the input model's outputs for a sample depend on the other samples in its batch (the first "
            f"samples run together and one at a time differ): parity and accuracy were compared at batch "
            f"{batch} (measure.batch), the batch it is timed at"
        )
    par = parity(ref, predict(out_sess, par_inputs, batch))
    metrics["parity"] = parity_metric(par, ref, par_inputs, par_source, ctx.inputs, findings)
    _second_shape(ctx, base_sess, out_sess, metrics["parity"], findings)
    ctx.progress.finish("verify")
    return Verified(base_sess, out_sess, ort_device, par, batch)


def _ort_device(device: str, findings: list[str]) -> str:
    """Where ONNX Runtime runs the models: CUDA when asked for and its provider is here, else the CPU."""
    if device != "cuda":
        return "cpu"
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"
    findings.append(
        "ONNX Runtime here has no CUDA provider: the ONNX models were verified and timed on the CPU; "
        "GPU latency was measured with torch"
    )
    return "cpu"


# ---------------------------------------------------------------- metrics


def accuracy_metrics(ctx: Any, ver: Verified, eval_ds: Any, lineage: Lineage, metrics: dict[str, Metric]) -> None:
    """accuracy (top-1 on labelled held-out data), distillation_ratio and accuracy_retained."""
    from optimize.runtime import predict

    cfg = ctx.config
    acc_base = acc_out = None
    if eval_ds is not None and eval_ds.labels is not None and cfg.model.task == "classification":
        ctx.progress.start("accuracy", f"accuracy on {len(eval_ds)} eval samples", None)
        pb = predict(ver.base_sess, eval_ds.inputs, ver.batch)[0]
        po = predict(ver.out_sess, eval_ds.inputs, ver.batch)[0]
        acc_base = float((pb.argmax(axis=-1) == eval_ds.labels).mean() * 100)
        acc_out = float((po.argmax(axis=-1) == eval_ds.labels).mean() * 100) if np.isfinite(po).all() else None
        ctx.progress.finish("accuracy")
    if acc_base is not None and acc_out is not None:
        metrics["accuracy"] = Metric(
            value=acc_out, formula=F_ACCURACY,
            inputs={"metric": "top1_percent", "baseline": acc_base, "optimized": acc_out, "drop": acc_base - acc_out,
                    "samples": len(eval_ds), "source": eval_ds.description},
        )
    else:
        why = (
            "no eval data (data.eval)" if eval_ds is None
            else "data.eval has no labels (for an embedding model, model.task: embedding measures the cosine "
            "to the input model's embeddings)" if eval_ds.labels is None
            else f"task '{cfg.model.task}' has no accuracy metric yet" if cfg.model.task != "classification"
            else "the output model produced non-finite outputs"
        )
        metrics["accuracy"] = Metric.missing(F_ACCURACY, f"accuracy not measured: {why}")
    metrics["distillation_ratio"] = distillation_metric(lineage.steps)
    metrics["accuracy_retained"] = (
        Metric(value=acc_out / acc_base, formula=F_RETAINED, inputs={"output": acc_out, "input": acc_base})
        if acc_base and acc_out is not None
        else Metric.missing(F_RETAINED, metrics["accuracy"].reason or "the input model's accuracy is 0")
    )


def bench_inputs_for(ctx: Any, baseline: Any, eval_ds: Any) -> dict[str, np.ndarray]:
    """One latency batch: eval data when there is enough, else random inputs from the input spec."""
    m = ctx.config.measure
    if eval_ds is not None and len(eval_ds) >= m.batch:
        return eval_ds.take(m.batch).inputs
    ctx.resolve_shapes_from_data()
    rng = np.random.default_rng(ctx.seed)
    return {s.name: s.random(m.batch, rng) for s in (ctx.inputs or baseline.inputs)}


def speed_metrics(ctx: Any, baseline: Any, final: Any, last_torch: Any, bench_inputs: dict[str, np.ndarray],
                  ort_device: str, metrics: dict[str, Metric], findings: list[str]) -> tuple[float | None, dict[str, Latency], int | None]:
    """Latency (interleaved, spinning off, same threads and batch), speedups and gpu_speedup:
    (the speedup when the output is slower, else None; latencies; index of the slowdown finding)."""
    from optimize.speed_metrics import gpu_speedup, measure_speed, speed_finding

    speed = measure_speed(ctx, baseline, final, bench_inputs, ort_device)
    latency: dict[str, Latency] = speed.latency
    metrics.update(speed.metrics)
    slower = speed.speedup.verdict == "slower"
    slow_at = len(findings) if slower else None  # its likely cause is added after the diagnostics
    note = speed_finding(speed.speedup, ctx.threads, ctx.config.measure.batch)
    if note:
        findings.append(note)
    metrics["gpu_speedup"] = gpu_speedup(ctx, last_torch, bench_inputs, latency, ort_device, findings)
    return (speed.speedup.value if slower else None), latency, slow_at


def weight_metrics(in_facts: dict[str, Any], out_facts: dict[str, Any], out_path: Any, input_is_onnx: bool,
                   metrics: dict[str, Metric]) -> None:
    """sparsity, density, quantization_ratio, params_removed, effective_sparsity, compression_ratio
    (counted from the files)."""
    total, nonzero = out_facts["weights"], out_facts["nonzero_weights"]
    in_total = in_facts["weights"]
    if total:
        metrics["sparsity"] = Metric(value=(total - nonzero) / total, formula=F_SPARSITY,
                                     inputs={"zero": total - nonzero, "total": total})
        metrics["density"] = Metric(value=nonzero / total, formula=F_DENSITY, inputs={"nonzero": nonzero, "total": total})
        metrics["quantization_ratio"] = _quantization_ratio(out_facts, out_path)
    else:
        for k, f in (("sparsity", F_SPARSITY), ("density", F_DENSITY), ("quantization_ratio", F_QRATIO)):
            metrics[k] = Metric.missing(f, "the output model has no weights of weighted ops")
    if total and in_total:
        metrics["params_removed"] = Metric(value=1 - total / in_total, formula=F_PARAMS_REMOVED,
                                           inputs={"output": total, "input": in_total})
        metrics["effective_sparsity"] = Metric(value=1 - nonzero / in_total, formula=F_EFFECTIVE,
                                               inputs={"nonzero_output": nonzero, "input": in_total})
    else:
        for k, f in (("params_removed", F_PARAMS_REMOVED), ("effective_sparsity", F_EFFECTIVE)):
            metrics[k] = Metric.missing(f, "weights could not be counted")
    metrics["compression_ratio"] = Metric(
        value=in_facts["bytes"] / out_facts["bytes"], formula=F_COMPRESSION,
        inputs={"input_bytes": in_facts["bytes"], "output_bytes": out_facts["bytes"],
                "input_file": "the input ONNX file" if input_is_onnx else "the input model exported to FP32 ONNX"},
    )


def _quantization_ratio(out_facts: dict[str, Any], out_path: Any) -> Metric:
    from optimize.inspect_onnx import logical_weight_bits

    total = out_facts["weights"]
    stored_bits = out_facts["weight_bits"]
    logical_bits = logical_weight_bits(out_path)  # binary/ternary codes stored in int8: fewer bits
    q_inputs: dict[str, Any] = {"bits": logical_bits if logical_bits is not None else stored_bits,
                                "weights": total, "dtypes": out_facts["weight_dtypes"]}
    if logical_bits is not None:
        q_inputs.update(bits_are="logical", logical_bits=logical_bits, stored_bits=stored_bits,
                        stored_ratio=stored_bits / (32 * total))
    return Metric(value=q_inputs["bits"] / (32 * total), formula=F_QRATIO, inputs=q_inputs)


def weight_findings(in_facts: dict[str, Any], out_facts: dict[str, Any], metrics: dict[str, Metric],
                    pruned: bool = True) -> list[str]:
    """What the weight counts say about speed and size. `pruned`: a step of the run zeroed weights
    (without one, the output's zeros are int8 rounding, not a pruning choice to warn about)."""
    found = []
    sparsity, removed = metrics["sparsity"].value, metrics["params_removed"].value
    if pruned and sparsity and sparsity > 0.05 and removed is not None and removed < 0.01:
        found.append(
            "unstructured zeros do not make ONNX Runtime's dense CPU kernels faster; they shrink the compressed file, "
            "not latency (structured pruning removes work)"
        )
    total, in_total = out_facts["weights"], in_facts["weights"]
    if total and in_total and total > in_total:
        found.append(
            f"the output stores more weight elements than the input ({in_total:,} → {total:,}): a weight shared "
            "between subgraphs or nodes was duplicated (ONNX Runtime's quantizer copies shared weights per use)"
        )
    return found


def parity_metric(par: dict[str, Any], reference: list[np.ndarray], inputs: dict[str, np.ndarray], source: str,
                  specs: list[Any], findings: list[str]) -> Metric:
    """The parity metric: cosine (float outputs) / agreement (integer outputs) on the probe inputs,
    `null` with the reason when the probes are degenerate (the input model's outputs do not vary
    across them) or an output is non-finite; random token ids are marked as weak evidence."""
    from optimize.probes import degenerate_reason, sample_count, token_id_inputs

    n = sample_count(inputs)
    shapes = {k: list(np.shape(v)) for k, v in inputs.items()}
    info: dict[str, Any] = {**par, "samples": n, "source": source, "shapes": shapes, "evidence": "representative"}
    random = source.startswith("random")
    ids = token_id_inputs(specs) if random else []
    if random:
        info["evidence"] = "weak: random token ids" if ids else "random inputs from the input spec"
    if ids:
        findings.append(
            f"parity was measured on random token ids ({', '.join(ids)}): weak evidence — random ids overstate quality "
            "(0.997 on random ids vs 0.977 on real sentences in the field notes); set data.eval to a .txt/.jsonl file "
            "of real text (tokenized with the model's tokenizer)"
        )
    if not par["all_finite"]:
        return Metric(value=None, formula=F_PARITY, inputs=info, reason="the output model produced NaN or Inf")
    degenerate = degenerate_reason(reference, n)
    if degenerate is not None:
        info["degenerate"] = True
        what = ("set data.eval to representative inputs" + (" or --input-shape with the real input size" if random else ""))
        reason = f"parity not meaningful: {degenerate}; {what}"
        findings.append(reason)
        return Metric(value=None, formula=F_PARITY, inputs=info, reason=reason)
    return Metric(value=par["min_cosine"], formula=F_PARITY, inputs=info)


def _second_shape(ctx: Any, base_sess: Any, out_sess: Any, metric: Metric, findings: list[str]) -> None:
    """Parity again at a second size of each dim that stays symbolic (optimize.second_shape)."""
    from optimize import second_shape

    try:
        second = second_shape.second_shape_parity(base_sess, out_sess, ctx.inputs, ctx.seed, ctx.config.data.batch_size)
    except Exception:  # informative only: never fail the run over it
        log.debug("second-shape parity failed", exc_info=True)
        return
    if second is not None:
        metric.inputs["second_shape"] = second
        note = second_shape.finding(second, metric.value)
        if note:
            findings.append(note)


def _zero_share(facts: dict[str, Any]) -> float | None:
    """A model's share of zero weights, from its facts (None when it has no counted weights)."""
    total, nonzero = facts.get("weights"), facts.get("nonzero_weights")
    return (total - nonzero) / total if total and nonzero is not None else None


def _diagnostics(ctx: Any, baseline: Any, final: Any, inputs: dict[str, np.ndarray], ort_device: str, speedup: float,
                 metrics: dict[str, Metric], findings: list[str], input_sparsity: float | None, pruned: bool) -> Any:
    """optimize.diagnose on the input and output models; never fails the run (null + a debug log)."""
    from optimize.diagnose import diagnose, summary_findings

    ctx.progress.start("diagnose", "diagnostics (ONNX Runtime's optimized graphs, kernel profile)", None)
    try:
        diag = diagnose(
            baseline.onnx_path, final.onnx_path, ctx.work_dir / "diagnose", inputs, ctx.threads, ort_device,
            speedup=speedup, sparsity=metrics["sparsity"].value if pruned else None,
            params_removed=metrics["params_removed"].value,
            input_sparsity=input_sparsity,
        )
    except Exception:
        log.debug("diagnostics failed", exc_info=True)
        return None
    finally:
        ctx.progress.finish("diagnose")
    findings.extend(summary_findings(diag))
    return diag


def _slow_cause(out_facts: dict[str, Any]) -> str:
    """The cause of a slowdown when diagnostics did not run: named only with its evidence (integer
    kernels counted in the output file, on a CPU without int8 dot-product instructions)."""
    from optimize.diagnose import INTEGER_OPS
    from optimize.hardware import has_int8_dot_product

    integer = {op: n for op, n in (out_facts.get("ops") or {}).items() if op in INTEGER_OPS}
    if integer and not has_int8_dot_product():
        listed = ", ".join(f"{n} {op}" for op, n in sorted(integer.items()))
        return (
            f" — likely cause: the output runs integer kernels ({listed}) and this CPU has no int8 dot-product "
            "instructions (VNNI/AMX), so they gain little over FP32 (diagnostics did not run; see the log with -v)"
        )
    return " — cause not diagnosed (diagnostics did not run; see the log with -v)"


def distillation_metric(steps: list[Any]) -> Metric:
    """distillation_ratio from the last distill step's own measurement (right after training): the
    last step of a pass that trains (`Pass.trains`)."""
    from optimize import registry

    step = next((s for s in reversed(steps) if s.type in registry.names() and registry.get(s.type).trains), None)
    if step is None:
        return Metric.missing(F_DISTILL, "no distill pass in the pipeline")
    sm = step.metrics or {}
    if sm.get("distillation_ratio") is None:
        return Metric.missing(F_DISTILL, f"not measured by the distill step: {sm.get('accuracy_reason') or 'no accuracy'}")
    return Metric(value=sm["distillation_ratio"], formula=F_DISTILL,
                  inputs={"student": sm.get("student_accuracy"), "teacher": sm.get("teacher_accuracy"),
                          "samples": sm.get("eval_samples"), "step": step.index})


# ---------------------------------------------------------------- gates


def apply_gates(report: Report, gates: Any, all_finite: bool) -> None:
    """Every gate of the report: the configured ones (inconclusive passes also as findings) and the
    built-in finite_outputs; any failure makes the status gate_failed."""
    report.gates = evaluate_gates(gates, report)
    report.findings.extend(g.message for g in report.gates if g.passed and "inconclusive" in g.message)
    if not all_finite:
        report.gates.append(Gate(name="finite_outputs", limit=1, value=0, passed=False,
                                 message="finite_outputs: the output model produced NaN or Inf"))
    if any(not g.passed for g in report.gates):
        report.status = "gate_failed"


def evaluate_gates(gates: Any, report: Report) -> list[Gate]:
    """Each configured gate becomes a pass/fail line. A missing or NaN value fails its gate."""
    out: list[Gate] = []

    def add(name: str, limit: float, value: float | None, ok_when_ge: bool, unit: str = "", why: str | None = None) -> None:
        if value is None or value != value:  # None or NaN never passes
            what = why or "not measured"
            out.append(Gate(name=name, limit=limit, value=None, passed=False,
                            message=f"{name}: {what}, so it cannot pass (limit {limit}{unit}) FAILED"))
            return
        passed = value >= limit if ok_when_ge else value <= limit
        rel = (">=" if passed else "<") if ok_when_ge else ("<=" if passed else ">")
        out.append(Gate(name=name, limit=limit, value=value, passed=passed,
                        message=f"{name}: {value:.4g}{unit} {rel} {limit}{unit}{'' if passed else ' FAILED'}"))

    m = report.metrics
    if gates.max_accuracy_drop is not None:
        acc = m.get("accuracy")
        drop = acc.inputs.get("drop") if acc and acc.value is not None else None
        add("max_accuracy_drop", gates.max_accuracy_drop, drop, ok_when_ge=False, unit=" pts")
    def speed(name: str, metric: str) -> None:
        limit = getattr(gates, name, None)
        if limit is None:
            return
        sp = m.get(metric)
        if sp is None or sp.value is None or sp.value != sp.value:
            add(name, limit, None, ok_when_ge=True, unit="x", why=sp.reason if sp else None)
        else:  # judged on the interval (optimize.speed.judge_min); a metric without one: its value
            from optimize.speed import judge_min

            j = judge_min(name, limit, sp.value, sp.interval, gates.speed_bound)
            out.append(Gate(name=name, limit=limit, value=sp.value, passed=j.passed, message=j.message))

    speed("min_speedup", "speedup")
    if gates.max_size_mb is not None:
        size = report.output.bytes / 1e6 if report.output and report.output.bytes is not None else None
        add("max_size_mb", gates.max_size_mb, size, ok_when_ge=False, unit=" MB")
    if gates.min_sparsity is not None:
        add("min_sparsity", gates.min_sparsity, m["sparsity"].value if "sparsity" in m else None, ok_when_ge=True)
    par = m.get("parity")
    if gates.min_parity_cosine is not None:
        add("min_parity_cosine", gates.min_parity_cosine, par.value if par else None, ok_when_ge=True,
            why=par.reason if par else None)
    if gates.min_output_agreement is not None:
        agree = par.inputs.get("agreement") if par and par.value is not None else None
        why = (par.reason if par and par.value is None else "the model has no integer or bool outputs") if par else None
        add("min_output_agreement", gates.min_output_agreement, agree, ok_when_ge=True, why=why)
    if gates.max_latency_ms is not None:
        lat = report.latency.get("output")
        add("max_latency_ms", gates.max_latency_ms, lat.median_ms if lat else None, ok_when_ge=False, unit=" ms")
    for name, metric, ge in (("min_token_agreement", "token_agreement", True),
                             ("max_perplexity_ratio", "perplexity_ratio", False)):  # decoder LLMs (optimize/llm)
        limit = getattr(gates, name, None)
        if limit is not None:
            found = m.get(metric)
            add(name, limit, found.value if found else None, ok_when_ge=ge, why=found.reason if found else None)
    speed("min_decode_speedup", "decode_speedup")
    speed("min_prefill_speedup", "prefill_speedup")
    return out


__all__ = ["measure", "verify", "apply_gates", "evaluate_gates", "VerificationError"]
