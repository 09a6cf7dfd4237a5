"""The report's speed metrics: speedup, parallel_speedup and gpu_speedup, each the median of
interleaved per-round ratios with a 95 % interval and a verdict (optimize.speed).

One interleaved run times the input and output models at the configured threads and, when
`measure.single_thread` is on, the same two files at 1 thread, in the same rounds (round orders from
a Williams design, optimize.benchmark.round_order): speedup pairs input/output at N threads, parallel_speedup pairs the output at 1
thread with the output at N threads. While either interval straddles the tolerance band, rounds are
added (up to `measure.max_repeat`, default 3 × repeat, and at most EXTRA_SECONDS of extra timing);
the metric records how many ran and why they stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from optimize.report import Latency, Metric
from optimize.speed import F_INTERVAL, SAME, SLOWER, RatioEstimate, estimate, round_ratios

EXTRA_SECONDS = 10.0

F_SPEEDUP = ("input latency / output latency: median of the interleaved per-round ratios (same runtime, device, "
             "threads, batch); " + F_INTERVAL)
F_PARALLEL = ("single-thread latency / multi-thread latency of the output model: median of the per-round ratios, "
              "1 and N threads interleaved in the same rounds; " + F_INTERVAL)
F_GPU = "CPU latency / GPU latency (torch, same model, same batch): median of the interleaved per-round ratios; " + F_INTERVAL


@dataclass
class SpeedResult:
    metrics: dict[str, Metric]
    latency: dict[str, Latency]
    output_timing: Any
    speedup: RatioEstimate


def ratio_metric(formula: str, ratios: list[float], tolerance: float, inputs: dict[str, Any]) -> Metric:
    """A speed-ratio Metric: value = median, interval, verdict, tolerance; inputs keep the ratios."""
    est = estimate(ratios, tolerance)
    return Metric(value=est.value, formula=formula, interval=[est.low, est.high], verdict=est.verdict,
                  tolerance=tolerance, inputs={**inputs, **est.inputs(), "round_ratios": ratios})


def measure_speed(ctx: Any, baseline: Any, final: Any, inputs: dict[str, np.ndarray], ort_device: str) -> SpeedResult:
    """Time the input and output models interleaved and build speedup and parallel_speedup."""
    from optimize import benchmark

    m = ctx.config.measure
    tol = m.speed_tolerance
    models = {"input": baseline.onnx_path, "output": final.onnx_path}
    pairs = {"speedup": ("input", "output")}
    parallel = bool(m.single_thread and ctx.threads > 1)
    if parallel:
        models.update(input_1t=baseline.onnx_path, output_1t=final.onnx_path)
        pairs["parallel_speedup"] = ("output_1t", "output")
    max_rounds = max(m.repeat, m.max_repeat or 3 * m.repeat)

    def done(times: dict[str, list[float]]) -> bool:
        return all(estimate(round_ratios(times[a], times[b]), tol).settled for a, b in pairs.values())

    timings = benchmark.interleaved(
        models, inputs, threads=ctx.threads, warmup=m.warmup, repeat=m.repeat, device=ort_device,
        progress=ctx.progress, key="latency", model_threads={"input_1t": 1, "output_1t": 1} if parallel else None,
        more=benchmark.MoreRounds(done, max_rounds, EXTRA_SECONDS),
    )
    latency = {k: Latency(**t.summary()) for k, t in timings.items()}
    rounds = len(timings["output"].times_ms)
    stopped = ("settled" if done({k: t.times_ms for k, t in timings.items()})
               else "max_repeat reached" if rounds >= max_rounds else f"{EXTRA_SECONDS:g} s of extra rounds reached")
    common = {"threads": ctx.threads, "batch": m.batch, "runs": rounds, "rounds_configured": m.repeat,
              "rounds_max": max_rounds, "stopped": stopped}
    tin, tout = timings["input"], timings["output"]
    metrics = {"speedup": ratio_metric(F_SPEEDUP, round_ratios(tin.times_ms, tout.times_ms), tol,
                                       {"input_ms": tin.median_ms, "output_ms": tout.median_ms, **common})}
    if parallel:
        t1 = timings["output_1t"]
        metrics["parallel_speedup"] = ratio_metric(
            F_PARALLEL, round_ratios(t1.times_ms, tout.times_ms), tol,
            {"single_thread_ms": t1.median_ms, "multi_thread_ms": tout.median_ms, **common},
        )
    else:
        metrics["parallel_speedup"] = Metric.missing(
            F_PARALLEL, "only one thread configured" if ctx.threads <= 1 else "measure.single_thread is false"
        )
    sp = metrics["speedup"]
    est = RatioEstimate(sp.value, sp.interval[0], sp.interval[1], sp.verdict, tol, rounds)  # type: ignore[arg-type,index]
    return SpeedResult(metrics, latency, tout, est)


def speed_finding(est: RatioEstimate, threads: int, batch: int) -> str | None:
    """The sentence a reader needs about the speedup: SLOWER (its cause is appended later), or that
    the run could not tell the two apart. A faster verdict needs no finding."""
    shown = f"{est.value:.2f}x (95% interval {est.low:.2f}–{est.high:.2f})"
    where = f"at {threads} thread{'s' if threads != 1 else ''}, batch {batch}, {est.rounds} interleaved rounds"
    if est.verdict == SLOWER:
        return f"the output model is SLOWER than the input: speedup {shown} {where}"
    if est.verdict == SAME:
        return (f"no measurable speed change: speedup {shown} {where}; the interval is not clear of the "
                f"±{est.tolerance:.0%} tolerance band around 1")
    return None


def gpu_speedup(ctx: Any, last_torch: Any, inputs: dict[str, np.ndarray], latency: dict[str, Latency],
                ort_device: str, findings: list[str]) -> Metric:
    """CPU vs CUDA latency of the last torch form of the model, interleaved (torch runtime)."""
    if ctx.device != "cuda":
        return Metric.missing(F_GPU, "not measured: --device is cpu" if ctx.device == "cpu" else "no GPU visible")
    if ort_device == "cuda":
        return Metric.missing(F_GPU, "ONNX Runtime CUDA timing is reported as the output latency itself")
    if last_torch is None:
        return Metric.missing(F_GPU, "no torch form of the model to time on the GPU, and ONNX Runtime has no CUDA provider")
    import torch

    from optimize.benchmark import torch_interleaved
    from optimize.export import finalized_module

    module = finalized_module(last_torch.module)
    args = tuple(torch.from_numpy(inputs[s.name]) for s in last_torch.inputs)
    m = ctx.config.measure
    t = torch_interleaved(module, args, devices={"torch_cpu": "cpu", "torch_cuda": "cuda"}, warmup=m.warmup,
                          repeat=m.repeat, threads=ctx.threads)
    latency["torch_cuda"], latency["torch_cpu"] = Latency(**t["torch_cuda"].summary()), Latency(**t["torch_cpu"].summary())
    findings.append("gpu_speedup compares the last torch form of the model on CPU and CUDA (torch runtime)")
    cpu, gpu = t["torch_cpu"], t["torch_cuda"]
    return ratio_metric(F_GPU, round_ratios(cpu.times_ms, gpu.times_ms), m.speed_tolerance,
                        {"cpu_ms": cpu.median_ms, "gpu_ms": gpu.median_ms, "runs": m.repeat})


__all__ = ["F_GPU", "F_PARALLEL", "F_SPEEDUP", "SpeedResult", "gpu_speedup", "measure_speed", "ratio_metric", "speed_finding"]
