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
    from optimize.probes import sample_count

    batch = sample_count(inputs)  # scalar inputs have no batch axis
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


def default_threads(cores: int | None = None) -> list[int]:
    """1, 2, 4, … up to all cores, and all cores itself."""
    import os

    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return sorted(set(out + [cores]))


def latency_stats(t: Timing) -> dict[str, Any]:
    """p50/p90/p99, mean, spread, throughput and outliers of one timed series.

    Outliers are samples above Q3 + 1.5 × IQR (Tukey's fence): on a shared machine they are mostly
    other processes taking the CPU; they stay in the percentiles (nothing is discarded) and are
    counted here so a noisy run is visible."""
    arr = np.asarray(t.times_ms, dtype=float)
    q1, q3 = np.percentile(arr, [25, 75])
    fence = q3 + 1.5 * (q3 - q1)
    outliers = arr[arr > fence]
    p50 = float(np.median(arr))
    return {
        "p50_ms": p50,
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "throughput_per_s": t.batch * 1000.0 / p50 if p50 > 0 else None,
        "outliers": {"count": int(len(outliers)), "fence_ms": float(fence), "max_ms": float(outliers.max()) if len(outliers) else None},
        "runs": len(arr),
        "warmup": t.warmup,
        "calls_per_sample": t.calls_per_sample,
        "batch": t.batch,
        "threads": t.threads,
        "runtime": t.runtime,
        "device": t.device,
    }


def _rss_mb() -> float | None:
    """Current resident memory of this process (Linux /proc), in MB (10^6 bytes)."""
    try:
        import os

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (getrusage ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
    except (ImportError, OSError):
        return None


_MEMORY_PROBE = """
import json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
from optimize.benchmark import _peak_rss_mb
from optimize.runtime import feeds_for, session
feeds = dict(np.load(sys.argv[2]))

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(key)

try:  # reset the high-water mark (Linux), so the peak below is this model's, not the imports'
    Path("/proc/self/clear_refs").write_text("5")
    base, how = status("VmRSS"), "VmHWM after resetting it (Linux /proc/self/clear_refs)"
except OSError:
    base, how = None, "getrusage ru_maxrss (imports included)"
s = session(sys.argv[1], threads=int(sys.argv[3]))
s.run(None, feeds_for(s, feeds))
peak = status("VmHWM") if base is not None else _peak_rss_mb()
print(json.dumps({"peak_rss_mb": peak, "model_peak_mb": None if base is None else peak - base, "method": how}))
"""


def _session_memory(path: str | Path, feeds_file: Path, threads: int) -> dict[str, Any]:
    """Peak memory of one model's session in a fresh process (see bench_models)."""
    import json
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    try:
        done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(Path(path).resolve()), str(feeds_file.resolve()), str(threads)],
                              capture_output=True, text=True, timeout=600, cwd=root)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    return {"peak_rss_mb": None, "model_peak_mb": None, "reason": f"not measured: {reason}"}


def _with_probe_shapes(handle: Any, flags: list[str] | None) -> Any:
    from optimize.shapes import resolve_for_model, shapes_from_flags

    path = handle.onnx_path if handle.form == "onnx" else None
    specs, _ = resolve_for_model(path, handle.inputs, shapes_from_flags(flags), "--input-shape")
    return handle.replace(inputs=specs)


def bench_models(
    model: str,
    vs: str | None = None,
    threads: list[int] | None = None,
    batch: int | list[int] = 1,
    warmup: int = 5,
    repeat: int = 30,
    device: str = "cpu",
    progress: Progress | None = None,
    trust_model: bool = False,
    input_shapes: list[str] | None = None,
) -> dict[str, Any]:
    """`optimize bench`: MODEL (and OTHER, interleaved) over a batch sweep × thread sweep.

    `input_shapes` (`--input-shape NAME=1x3x640x640`) give the shapes of inputs with symbolic dims
    (else the file's metadata; a symbolic non-batch dim that nothing resolves is exit 2).

    For every (batch, threads): p50/p90/p99, throughput, outliers, `speedup_vs` (OTHER / MODEL, the
    median of interleaved per-round ratios) and `parallel_speedup` (MODEL's p50 at the first thread
    count / at this one, same batch; medians of separate runs). Memory: the process's resident set
    growth while each model's session is created and run once (`session_rss_mb`, ONNX Runtime's
    native allocations included), and the process's peak resident set (`getrusage`), which also
    holds Python, torch and ONNX Runtime themselves. tracemalloc is not used: it sees only Python
    allocations, not ONNX Runtime's arenas.
    """
    import tempfile

    from optimize.errors import UsageError
    from optimize.handle import ModelHandle
    from optimize.loaders import load_model

    if device == "cuda":
        raise UsageError("bench --device cuda needs ONNX Runtime's CUDA provider, which is not installed here")
    threads = sorted(set(threads)) if threads else default_threads()
    batches = sorted(set([batch] if isinstance(batch, int) else batch))
    with tempfile.TemporaryDirectory(prefix="optimize-bench-") as tmp:
        handles: dict[str, ModelHandle] = {}
        for label, spec in (("model", model), ("vs", vs)):
            if spec is None:
                continue
            h = load_model(spec, trust_model=trust_model)
            if label == "model":
                h = _with_probe_shapes(h, input_shapes)
            if h.form == "torch":
                from optimize.export import export_to_onnx

                h = export_to_onnx(h, Path(tmp) / f"{label}.onnx")
            handles[label] = h
        memory: dict[str, Any] = {}
        rng = np.random.default_rng(0)
        feeds_file = Path(tmp) / "inputs.npz"
        np.savez(feeds_file, **{sp.name: sp.random(max(batches), rng) for sp in handles["model"].inputs})
        for label, h in handles.items():  # each model in its own process, so the numbers do not mix
            memory[label] = _session_memory(h.onnx_path, feeds_file, max(threads))
        rows: list[dict[str, Any]] = []
        for b in batches:
            rng = np.random.default_rng(0)
            inputs = {s.name: s.random(b, rng) for s in handles["model"].inputs}
            first: Timing | None = None
            for t in threads:
                timings = interleaved(
                    {k: h.onnx_path for k, h in handles.items()}, inputs, threads=t, warmup=warmup, repeat=repeat,
                    device=device, progress=progress, key=f"bench-b{b}-t{t}",
                )
                row: dict[str, Any] = {"batch": b, "threads": t}
                row.update({k: latency_stats(v) for k, v in timings.items()})
                if "vs" in timings:
                    r = [a / c for a, c in zip(timings["vs"].times_ms, timings["model"].times_ms, strict=True) if c > 0]
                    row["speedup_vs"] = pairwise_ratio(timings["vs"], timings["model"])
                    row["speedup_vs_iqr"] = [float(x) for x in np.percentile(r, [25, 75])]
                first = first or timings["model"]
                row["parallel_speedup"] = first.median_ms / timings["model"].median_ms if t != threads[0] else 1.0
                rows.append(row)
        memory["bench_process_peak_rss_mb"] = _peak_rss_mb()
        memory["what"] = (
            "per model, in a fresh Python process with onnxruntime imported: model_peak_mb = peak resident memory "
            "while creating the ONNX Runtime session and running it once at the largest batch and thread count, "
            "minus the resident memory before (weights, arenas, activations); peak_rss_mb = that process's peak; "
            "bench_process_peak_rss_mb = this process's peak (getrusage), libraries included"
        )
        from optimize.hardware import cpu_info

        hw = cpu_info()
        return {
            "models": {k: h.source for k, h in handles.items()},
            "device": device,
            "batches": batches,
            "threads": threads,
            "warmup": warmup,
            "repeat": repeat,
            "results": rows,
            "memory": memory,
            "hardware": {"cpu": hw.get("cpu"), "cores": hw.get("cores"), "isa": hw.get("isa")},
            "formulas": {
                "speedup_vs": "OTHER latency / MODEL latency (median of interleaved per-round ratios; > 1: MODEL is faster)",
                "parallel_speedup": f"MODEL p50 at {threads[0]} thread(s) / MODEL p50 at this thread count (same batch)",
                "throughput_per_s": "batch × 1000 / p50_ms (samples per second)",
                "outliers": "samples above Q3 + 1.5 × IQR (kept in the percentiles)",
            },
        }
