"""Latency measurement that survives a noisy 2-core machine.

Models being compared run interleaved (A B A B ...) in sessions with spinning disabled, after
warm-up, and a speedup is the median of the pairwise ratios, so a slow spell hits both sides.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.progress import NullProgress, Progress
from optimize.runtime import feeds_for, session

# A timed sample shorter than this is mostly timer and scheduler noise; faster models are timed
# over several calls per sample.
MIN_SAMPLE_MS = 2.0


@dataclass
class Timing:
    name: str
    times_ms: list[float]
    batch: int
    threads: int
    warmup: int
    runtime: str
    device: str
    calls_per_sample: int = 1

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def summary(self) -> dict[str, Any]:
        arr = np.asarray(self.times_ms)
        return {
            "median_ms": float(np.median(arr)),
            "p90_ms": float(np.percentile(arr, 90)),
            "min_ms": float(arr.min()),
            "runs": len(arr),
            "warmup": self.warmup,
            "batch": self.batch,
            "threads": self.threads,
            "runtime": self.runtime,
            "device": self.device,
            "calls_per_sample": self.calls_per_sample,
        }


def interleaved(
    models: dict[str, str | Path],
    inputs: dict[str, np.ndarray],
    *,
    threads: int,
    warmup: int = 5,
    repeat: int = 30,
    device: str = "cpu",
    progress: Progress | None = None,
    key: str = "bench",
) -> dict[str, Timing]:
    """Time each ONNX model on the same inputs, interleaved; returns a Timing per model name.

    The order alternates every round (A B, B A, ...) so neither model always runs on a cache or
    frequency state the other left. Sub-millisecond models are timed over several calls per sample
    (the same count for every model) so timer and scheduler noise do not dominate.
    """
    import onnxruntime as ort

    progress = progress or NullProgress()
    sessions = {name: session(path, threads=threads, device=device) for name, path in models.items()}
    feeds = {name: feeds_for(s, inputs) for name, s in sessions.items()}
    batch = len(next(iter(inputs.values())))
    fastest_ms = float("inf")
    for name, s in sessions.items():
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            s.run(None, feeds[name])
            fastest_ms = min(fastest_ms, (time.perf_counter() - t0) * 1000.0)
    inner = max(1, min(1000, int(MIN_SAMPLE_MS / max(fastest_ms, 1e-3))))
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    progress.start(key, f"latency ({threads} thread{'s' if threads > 1 else ''}, batch {batch})", repeat)
    for r in range(repeat):
        for name in order if r % 2 == 0 else reversed(order):
            s, feed = sessions[name], feeds[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                s.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1000.0 / inner)
        progress.advance(key)
    progress.finish(key)
    runtime = f"onnxruntime {ort.__version__}"
    return {n: Timing(n, t, batch, threads, warmup, runtime, device, inner) for n, t in times.items()}


def pairwise_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median of per-round ratios numerator/denominator (interleaved rounds)."""
    return float(statistics.median(a / b for a, b in zip(numerator.times_ms, denominator.times_ms, strict=True) if b > 0))


def torch_latency(module: Any, args: tuple[Any, ...], *, device: str, warmup: int, repeat: int, threads: int) -> Timing:
    """Latency of a torch module (used for GPU timing, where ONNX Runtime has no GPU provider)."""
    import torch

    module = module.to(device).eval()
    args = tuple(a.to(device) for a in args)
    if device == "cpu":
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(*args)
        sync()
        for _ in range(repeat):
            t0 = time.perf_counter()
            module(*args)
            sync()
            times.append((time.perf_counter() - t0) * 1000.0)
    return Timing("torch", times, int(args[0].shape[0]), threads, warmup, f"torch {torch.__version__}", device)


def bench_models(
    model: str,
    vs: str | None = None,
    threads: list[int] | None = None,
    batch: int = 1,
    warmup: int = 5,
    repeat: int = 30,
    device: str = "cpu",
    progress: Progress | None = None,
    trust_model: bool = False,
) -> dict[str, Any]:
    """`optimize bench`: latency of MODEL (and OTHER, interleaved) over a thread sweep."""
    import os
    import tempfile

    from optimize.errors import UsageError
    from optimize.handle import ModelHandle
    from optimize.loaders import load_model

    if device == "cuda":
        raise UsageError("bench --device cuda needs ONNX Runtime's CUDA provider, which is not installed here")
    threads = threads or sorted({1, os.cpu_count() or 1})
    with tempfile.TemporaryDirectory(prefix="optimize-bench-") as tmp:
        handles: dict[str, ModelHandle] = {}
        for label, spec in (("model", model), ("vs", vs)):
            if spec is None:
                continue
            h = load_model(spec, trust_model=trust_model)
            if h.form == "torch":
                from optimize.export import export_to_onnx

                h = export_to_onnx(h, Path(tmp) / f"{label}.onnx")
            handles[label] = h
        rng = np.random.default_rng(0)
        inputs = {s.name: s.random(batch, rng) for s in handles["model"].inputs}
        results: dict[str, Any] = {"batch": batch, "warmup": warmup, "repeat": repeat, "device": device, "threads": {}}
        base: dict[str, Timing] = {}
        for t in threads:
            timings = interleaved(
                {k: h.onnx_path for k, h in handles.items()}, inputs, threads=t, warmup=warmup, repeat=repeat,
                progress=progress, key=f"bench-{t}",
            )
            row: dict[str, Any] = {k: v.summary() for k, v in timings.items()}
            if "vs" in timings:
                row["speedup_vs"] = pairwise_ratio(timings["vs"], timings["model"])
            results["threads"][str(t)] = row
            base.setdefault("first", timings["model"])
            if t != threads[0]:
                row["parallel_speedup"] = base["first"].median_ms / timings["model"].median_ms
        results["models"] = {k: h.source for k, h in handles.items()}
        return results
