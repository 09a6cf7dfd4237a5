"""Verification and measurement of the final model against the input model, and the Report.

Everything here is measured on the selected hardware with the recorded settings; what cannot be
measured is `null` with a reason. Formulas are the ones in docs/report.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from optimize import __version__
from optimize.errors import VerificationError
from optimize.report import Gate, Latency, Metric, ModelFacts, Report

log = logging.getLogger("optimize")

F_SPARSITY = "zero weights / total weights (output model)"
F_DENSITY = "non-zero weights / total weights (output model)"
F_PARAMS_REMOVED = "1 − output weights / input weights"
F_EFFECTIVE = "1 − non-zero output weights / input weights"
F_QRATIO = "Σ bits per weight × count / Σ 32 × count (output model)"
F_COMPRESSION = "input ONNX bytes / output ONNX bytes"
F_SPEEDUP = "input latency / output latency (median of interleaved pairwise ratios; same runtime, device, threads, batch)"
F_PARALLEL = "single-thread latency / multi-thread latency (output model)"
F_GPU = "CPU latency / GPU latency"
F_DISTILL = "student accuracy / teacher accuracy (output model / input model, eval data)"
F_ACCURACY = "top-1 accuracy on eval data: baseline (input), optimized (output), drop = baseline − optimized (points)"
F_PARITY = (
    "min over samples of cosine(input outputs, output outputs) over float outputs; agreement = min over integer/bool "
    "outputs of the share of equal elements (the value when every output is integer/bool); max |difference|; "
    "all outputs finite; null when the input model's outputs do not vary across the probes"
)


def _latency(t: Any) -> Latency:
    return Latency(**t.summary())


def measure(
    *, pl: Any, ctx: Any, baseline: Any, final: Any, last_torch: Any, state: dict[str, Any], started: float,
    started_at: str, env: dict[str, Any], hw: dict[str, Any],
) -> Report:
    from optimize.benchmark import interleaved, pairwise_ratio
    from optimize.pipeline import _model_facts
    from optimize.runtime import check_model, parity, predict, session

    cfg = pl.config
    progress = ctx.progress
    findings: list[str] = []
    metrics: dict[str, Metric] = {}

    # ---- verify: checker, loads in ONNX Runtime on the target, finite outputs, parity
    progress.start("verify", "verify (checker, ONNX Runtime load, parity)", None)
    check_model(final.onnx_path)
    device = ctx.device
    ort_device = "cpu"
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            ort_device = "cuda"
        else:
            findings.append(
                "ONNX Runtime here has no CUDA provider: the ONNX models were verified and timed on the CPU; "
                "GPU latency was measured with torch"
            )
    base_sess = session(baseline.onnx_path, threads=ctx.threads, device=ort_device)
    out_sess = session(final.onnx_path, threads=ctx.threads, device=ort_device)
    par_inputs, par_source = ctx.sample_inputs("eval", cfg.measure.parity_samples)
    ref = predict(base_sess, par_inputs, cfg.data.batch_size)
    got = predict(out_sess, par_inputs, cfg.data.batch_size)
    par = parity(ref, got)
    metrics["parity"] = parity_metric(par, ref, par_inputs, par_source, ctx.inputs, findings)
    _second_shape(ctx, base_sess, out_sess, metrics["parity"], findings)
    findings.extend(getattr(pl, "notes", None) or [])  # where probe shapes came from (file metadata)
    progress.finish("verify")

    # ---- accuracy on held-out data
    eval_ds = ctx.data("eval")
    acc_base = acc_out = None
    if eval_ds is not None and eval_ds.labels is not None and cfg.model.task == "classification":
        progress.start("accuracy", f"accuracy on {len(eval_ds)} eval samples", None)
        pb = predict(base_sess, eval_ds.inputs, cfg.data.batch_size)[0]
        po = predict(out_sess, eval_ds.inputs, cfg.data.batch_size)[0]
        acc_base = float((pb.argmax(axis=-1) == eval_ds.labels).mean() * 100)
        acc_out = float((po.argmax(axis=-1) == eval_ds.labels).mean() * 100) if np.isfinite(po).all() else None
        progress.finish("accuracy")
    if acc_base is not None and acc_out is not None:
        metrics["accuracy"] = Metric(
            value=acc_out, formula=F_ACCURACY,
            inputs={"metric": "top1_percent", "baseline": acc_base, "optimized": acc_out, "drop": acc_base - acc_out,
                    "samples": len(eval_ds), "source": eval_ds.description},
        )
    else:
        why = (
            "no labelled eval data (data.eval)" if eval_ds is None or eval_ds.labels is None
            else f"task '{cfg.model.task}' has no accuracy metric yet" if cfg.model.task != "classification"
            else "the output model produced non-finite outputs"
        )
        metrics["accuracy"] = Metric.missing(F_ACCURACY, f"accuracy not measured: {why}")

    distilled = any(s.type == "distill" for s in state["steps"])
    if distilled and acc_base and acc_out is not None:
        metrics["distillation_ratio"] = Metric(
            value=acc_out / acc_base, formula=F_DISTILL, inputs={"student": acc_out, "teacher": acc_base}
        )
    else:
        metrics["distillation_ratio"] = Metric.missing(
            F_DISTILL, "no distill pass in the pipeline" if not distilled else "accuracy not measured"
        )

    # ---- latency: interleaved, spinning off, same threads and batch
    m = cfg.measure
    rng = np.random.default_rng(ctx.seed)
    if eval_ds is not None and len(eval_ds) >= m.batch:
        bench_inputs = eval_ds.take(m.batch).inputs
    else:
        ctx.resolve_shapes_from_data()
        bench_inputs = {s.name: s.random(m.batch, rng) for s in (ctx.inputs or baseline.inputs)}
    latency: dict[str, Latency] = {}
    timings = interleaved(
        {"input": baseline.onnx_path, "output": final.onnx_path}, bench_inputs, threads=ctx.threads,
        warmup=m.warmup, repeat=m.repeat, device=ort_device, progress=progress, key="latency",
    )
    latency["input"], latency["output"] = _latency(timings["input"]), _latency(timings["output"])
    speedup = pairwise_ratio(timings["input"], timings["output"])
    metrics["speedup"] = Metric(
        value=speedup, formula=F_SPEEDUP,
        inputs={"input_ms": timings["input"].median_ms, "output_ms": timings["output"].median_ms,
                "threads": ctx.threads, "batch": m.batch, "runs": m.repeat,
                "round_ratios": [a / b for a, b in zip(timings["input"].times_ms, timings["output"].times_ms, strict=True) if b > 0]},
    )
    slow_at = len(findings) if speedup < 1.0 else None  # its likely cause is added after the diagnostics
    if speedup < 1.0:
        findings.append(
            f"the output model is SLOWER than the input: speedup {speedup:.2f}x at {ctx.threads} threads, batch {m.batch}"
        )
    if m.single_thread and ctx.threads > 1:
        t1 = interleaved(
            {"input": baseline.onnx_path, "output": final.onnx_path}, bench_inputs, threads=1,
            warmup=m.warmup, repeat=m.repeat, device=ort_device, progress=progress, key="latency-1t",
        )
        latency["input_1t"], latency["output_1t"] = _latency(t1["input"]), _latency(t1["output"])
        metrics["parallel_speedup"] = Metric(
            value=t1["output"].median_ms / timings["output"].median_ms, formula=F_PARALLEL,
            inputs={"single_thread_ms": t1["output"].median_ms, "multi_thread_ms": timings["output"].median_ms,
                    "threads": ctx.threads, "note": "medians of separate runs, not interleaved"},
        )
    else:
        metrics["parallel_speedup"] = Metric.missing(
            F_PARALLEL, "only one thread configured" if ctx.threads <= 1 else "measure.single_thread is false"
        )

    metrics["gpu_speedup"] = _gpu_speedup(ctx, last_torch, bench_inputs, timings["output"], latency, ort_device, findings)

    # ---- weights, sizes, formats (counted from the files)
    in_facts = state["input_facts"]
    out_facts = _model_facts(final.onnx_path, "onnx", final)
    total, nonzero = out_facts["weights"], out_facts["nonzero_weights"]
    in_total = in_facts["weights"]
    if total:
        metrics["sparsity"] = Metric(value=(total - nonzero) / total, formula=F_SPARSITY,
                                     inputs={"zero": total - nonzero, "total": total})
        metrics["density"] = Metric(value=nonzero / total, formula=F_DENSITY, inputs={"nonzero": nonzero, "total": total})
        from optimize.inspect_onnx import logical_weight_bits

        stored_bits = out_facts["weight_bits"]
        logical_bits = logical_weight_bits(final.onnx_path)  # binary/ternary codes stored in int8: fewer bits
        q_inputs: dict[str, Any] = {"bits": logical_bits if logical_bits is not None else stored_bits,
                                    "weights": total, "dtypes": out_facts["weight_dtypes"]}
        if logical_bits is not None:
            q_inputs.update(bits_are="logical", logical_bits=logical_bits, stored_bits=stored_bits,
                            stored_ratio=stored_bits / (32 * total))
        metrics["quantization_ratio"] = Metric(value=q_inputs["bits"] / (32 * total), formula=F_QRATIO, inputs=q_inputs)
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
                "input_file": "the input ONNX file" if baseline is pl.handle else "the input model exported to FP32 ONNX"},
    )
    if metrics["sparsity"].value and metrics["sparsity"].value > 0.05 and metrics["params_removed"].value is not None \
            and metrics["params_removed"].value < 0.01:
        findings.append(
            "unstructured zeros do not make ONNX Runtime's dense CPU kernels faster; they shrink the compressed file, "
            "not latency (structured pruning removes work)"
        )
    if total and in_total and total > in_total:
        findings.append(
            f"the output stores more weight elements than the input ({in_total:,} → {total:,}): a weight shared "
            "between subgraphs or nodes was duplicated (ONNX Runtime's quantizer copies shared weights per use)"
        )

    diagnostics = _diagnostics(ctx, baseline, final, bench_inputs, ort_device, speedup, metrics, findings)
    if slow_at is not None:
        causes = diagnostics.likely_causes if diagnostics is not None else []
        findings[slow_at] += (" — likely cause: " + "; ".join(causes)) if causes else _slow_cause(state, hw)

    report = Report(
        tool={"name": "optimize", "version": __version__},
        status="ok",
        started_at=started_at,
        seconds=0.0,
        seed=cfg.seed,
        config=pl.config_dump,
        environment=env,
        hardware=hw,
        input=ModelFacts(**in_facts),
        output=ModelFacts(**out_facts),
        steps=state["steps"],
        metrics=metrics,
        latency=latency,
        findings=findings,
        diagnostics=diagnostics,
    )
    report.gates = evaluate_gates(cfg.gates, report)
    if not par["all_finite"]:
        report.gates.append(Gate(name="finite_outputs", limit=1, value=0, passed=False,
                                 message="finite_outputs: the output model produced NaN or Inf"))
    if any(not g.passed for g in report.gates):
        report.status = "gate_failed"
    report.seconds = round(time.time() - started, 3)
    return report


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


def _diagnostics(ctx: Any, baseline: Any, final: Any, inputs: dict[str, np.ndarray], ort_device: str, speedup: float,
                 metrics: dict[str, Metric], findings: list[str]) -> Any:
    """optimize.diagnose on the input and output models; never fails the run (null + a debug log)."""
    from optimize.diagnose import diagnose, summary_findings

    ctx.progress.start("diagnose", "diagnostics (ONNX Runtime's optimized graphs, kernel profile)", None)
    try:
        diag = diagnose(
            baseline.onnx_path, final.onnx_path, ctx.work_dir / "diagnose", inputs, ctx.threads, ort_device,
            speedup=speedup, sparsity=metrics["sparsity"].value, params_removed=metrics["params_removed"].value,
        )
    except Exception:
        log.debug("diagnostics failed", exc_info=True)
        return None
    finally:
        ctx.progress.finish("diagnose")
    findings.extend(summary_findings(diag))
    return diag


def _slow_cause(state: dict[str, Any], hw: dict[str, Any]) -> str:
    from optimize.hardware import has_int8_dot_product

    quantized = any(s.type == "quantize" for s in state["steps"])
    if quantized and not has_int8_dot_product():
        return (
            " — likely cause: this CPU has no int8 dot-product instructions (VNNI/AMX), so int8 kernels gain little "
            "and Quantize/Dequantize overhead dominates on small layers; consider keeping FP32 or structured pruning"
        )
    if quantized:
        return " — likely cause: tiny layers where Quantize/Dequantize overhead dominates"
    return ""


def _gpu_speedup(ctx: Any, last_torch: Any, inputs: dict[str, np.ndarray], cpu_timing: Any,
                 latency: dict[str, Latency], ort_device: str, findings: list[str]) -> Metric:
    if ctx.device != "cuda":
        return Metric.missing(F_GPU, "not measured: --device is cpu" if ctx.device == "cpu" else "no GPU visible")
    if ort_device == "cuda":
        return Metric.missing(F_GPU, "ONNX Runtime CUDA timing is reported as the output latency itself")
    if last_torch is None:
        return Metric.missing(F_GPU, "no torch form of the model to time on the GPU, and ONNX Runtime has no CUDA provider")
    import torch

    from optimize.benchmark import torch_latency
    from optimize.export import finalized_module

    module = finalized_module(last_torch.module)
    args = tuple(torch.from_numpy(inputs[s.name]) for s in last_torch.inputs)
    cfg = ctx.config.measure
    gpu = torch_latency(module, args, device="cuda", warmup=cfg.warmup, repeat=cfg.repeat, threads=ctx.threads)
    cpu = torch_latency(module, args, device="cpu", warmup=cfg.warmup, repeat=cfg.repeat, threads=ctx.threads)
    latency["torch_cuda"], latency["torch_cpu"] = _latency(gpu), _latency(cpu)
    findings.append("gpu_speedup compares the last torch form of the model on CPU and CUDA (torch runtime)")
    return Metric(value=cpu.median_ms / gpu.median_ms, formula=F_GPU + " (torch, same model, same batch)",
                  inputs={"cpu_ms": cpu.median_ms, "gpu_ms": gpu.median_ms})


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
    if gates.min_speedup is not None:
        add("min_speedup", gates.min_speedup, m["speedup"].value if "speedup" in m else None, ok_when_ge=True, unit="x")
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
    return out


__all__ = ["measure", "evaluate_gates", "VerificationError"]
