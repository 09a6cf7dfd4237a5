"""Latency measurement that survives a noisy 2-core machine.

Models being compared run interleaved (A B A B ...) in sessions with spinning disabled, after
warm-up, and a speedup is the median of the pairwise ratios, so a slow spell hits both sides.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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


@dataclass
class MoreRounds:
    """Keep adding rounds after the configured ones while `done(times)` is false, up to
    `max_rounds` rounds in all and `max_seconds` of extra timing (checked every `step` rounds)."""

    done: Callable[[dict[str, list[float]]], bool]
    max_rounds: int
    max_seconds: float
    step: int = 10


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
    model_threads: dict[str, int] | None = None,
    more: MoreRounds | None = None,
    what: str = "latency",
) -> dict[str, Timing]:
    """Time each ONNX model on the same inputs, interleaved; returns a Timing per model name.

    The order changes every round (`round_order`: A B, B A, ... for two models) so no model always
    runs on a cache or frequency state another left. Sub-millisecond models are timed over several calls per sample
    (the same count for every model) so timer and scheduler noise do not dominate.
    `model_threads` gives some models their own intra-op thread count (the same model at 1 and N
    threads, interleaved, for parallel_speedup); `more` adds rounds while a ratio is undecided;
    `what` names the timing on the progress line.
    """
    import onnxruntime as ort

    progress = progress or NullProgress()
    per_model = {name: (model_threads or {}).get(name, threads) for name in models}
    sessions = {name: session(path, threads=per_model[name], device=device) for name, path in models.items()}
    feeds = {name: feeds_for(s, inputs) for name, s in sessions.items()}
    from optimize.probes import sample_count

    batch = sample_count(inputs)  # scalar inputs have no batch axis
    inner = _calls_per_sample(sessions, feeds, warmup)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    label = f"{threads} thread{'s' if threads > 1 else ''}" if len(set(per_model.values())) == 1 else \
        " and ".join(sorted({str(t) for t in per_model.values()}, key=int)) + " threads"
    progress.start(key, f"{what} ({label}, batch {batch})", repeat)
    _rounds(sessions, feeds, inner, times, 0, repeat, lambda: progress.advance(key))
    if more is not None:
        t0 = time.perf_counter()
        while len(times[next(iter(times))]) < more.max_rounds and time.perf_counter() - t0 < more.max_seconds \
                and not more.done(times):
            done = len(times[next(iter(times))])
            _rounds(sessions, feeds, inner, times, done, min(more.step, more.max_rounds - done), lambda: None)
    progress.finish(key)
    runtime = f"onnxruntime {ort.__version__}"
    return {n: Timing(n, t, batch, per_model[n], warmup, runtime, device, inner) for n, t in times.items()}


def _calls_per_sample(sessions: dict[str, Any], feeds: dict[str, Any], warmup: int) -> int:
    """Warm every session up; calls per timed sample so the fastest model's sample lasts MIN_SAMPLE_MS."""
    fastest_ms = float("inf")
    for name, s in sessions.items():
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            s.run(None, feeds[name])
            fastest_ms = min(fastest_ms, (time.perf_counter() - t0) * 1000.0)
    return max(1, min(1000, int(MIN_SAMPLE_MS / max(fastest_ms, 1e-3))))


def _rounds(sessions: dict[str, Any], feeds: dict[str, Any], inner: int, times: dict[str, list[float]],
            first: int, count: int, tick: Callable[[], None]) -> None:
    """`count` interleaved rounds in `round_order(r, ...)`, each model timed over `inner` calls."""
    names = list(sessions)
    for r in range(first, first + count):
        for name in round_order(r, names):
            s, feed = sessions[name], feeds[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                s.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1000.0 / inner)
        tick()


def round_order(r: int, names: list[str]) -> list[str]:
    """The order of round r: row r of a Williams design (a Latin square balanced for carry-over):
    over n rounds (2n for an odd count) every model runs in every position, and right after every
    other model, equally often. Two models alternate (A B, B A). Reversing every other round
    instead runs the first and last model back to back at each round boundary, on a warm cache:
    two identical models measured that way with two others read a median speedup of 0.94, not 1.0."""
    rows = _williams(len(names))
    return [names[i] for i in rows[r % len(rows)]]


def _williams(n: int) -> list[list[int]]:
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + k) % n for x in first] for k in range(n)]
    if n % 2 == 0:
        return rows
    pool, out = rows + [row[::-1] for row in rows], []  # odd n: every row and its mirror, chained so
    while pool:  # that no round starts with the model that ended the one before
        nxt = next((row for row in pool if not out or row[0] != out[-1][-1]), pool[0])
        pool.remove(nxt)
        out.append(nxt)
    return out


def pairwise_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median of per-round ratios numerator/denominator (interleaved rounds)."""
    return float(statistics.median(a / b for a, b in zip(numerator.times_ms, denominator.times_ms, strict=True) if b > 0))


def torch_interleaved(module: Any, args: tuple[Any, ...], *, devices: dict[str, str], warmup: int, repeat: int,
                      threads: int) -> dict[str, Timing]:
    """The same torch module on several devices (a copy per device), timed interleaved round by round
    (used for gpu_speedup: CPU and CUDA, where ONNX Runtime has no GPU provider)."""
    import copy

    import torch

    torch.set_num_threads(threads)
    copies = {name: (copy.deepcopy(module).to(dev).eval(), tuple(a.to(dev) for a in args), dev)
              for name, dev in devices.items()}

    def call(name: str) -> float:
        m, a, dev = copies[name]
        t0 = time.perf_counter()
        m(*a)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000.0

    times: dict[str, list[float]] = {name: [] for name in copies}
    order = list(copies)
    with torch.inference_mode():
        for _ in range(max(warmup, 1)):
            for name in order:
                call(name)
        for r in range(repeat):
            for name in order if r % 2 == 0 else reversed(order):
                times[name].append(call(name))
    version = f"torch {torch.__version__}"
    return {n: Timing(n, t, int(args[0].shape[0]), threads, warmup, version, devices[n]) for n, t in times.items()}


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


def peak_rss_mb() -> float | None:
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
from optimize.benchmark import peak_rss_mb
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
peak = status("VmHWM") if base is not None else peak_rss_mb()
print(json.dumps({"peak_rss_mb": peak, "model_peak_mb": None if base is None else peak - base, "method": how}))
"""


def session_memory(path: str | Path, feeds_file: Path, threads: int) -> dict[str, Any]:
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

    if device == "cuda":
        raise UsageError("bench --device cuda needs ONNX Runtime's CUDA provider, which is not installed here")
    threads = sorted(set(threads)) if threads else default_threads()
    batches = sorted(set([batch] if isinstance(batch, int) else batch))
    with tempfile.TemporaryDirectory(prefix="optimize-bench-") as tmp:
        handles = _bench_handles(model, vs, Path(tmp), trust_model, input_shapes)
        memory = _bench_memory(handles, Path(tmp), max(batches), max(threads))
        rows = [
            row for b in batches
            for row in _bench_rows(handles, b, threads, warmup=warmup, repeat=repeat, device=device, progress=progress)
        ]
        memory["bench_process_peak_rss_mb"] = peak_rss_mb()
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
            "formulas": _bench_formulas(threads[0]),
        }


def _bench_handles(model: str, vs: str | None, tmp: Path, trust_model: bool, input_shapes: list[str] | None) -> dict[str, Any]:
    """MODEL (and OTHER) as ONNX handles, torch models exported into `tmp`."""
    from optimize.loaders import load_model

    handles: dict[str, Any] = {}
    for label, spec in (("model", model), ("vs", vs)):
        if spec is None:
            continue
        h = load_model(spec, trust_model=trust_model)
        if label == "model":
            h = _with_probe_shapes(h, input_shapes)
        if h.form == "torch":
            from optimize.export import export_to_onnx

            h = export_to_onnx(h, tmp / f"{label}.onnx")
        handles[label] = h
    return handles


def _bench_memory(handles: dict[str, Any], tmp: Path, batch: int, threads: int) -> dict[str, Any]:
    """Each model's session memory, measured in its own process so the numbers do not mix."""
    rng = np.random.default_rng(0)
    feeds_file = tmp / "inputs.npz"
    np.savez(feeds_file, **{sp.name: sp.random(batch, rng) for sp in handles["model"].inputs})
    return {label: session_memory(h.onnx_path, feeds_file, threads) for label, h in handles.items()}


def _bench_rows(handles: dict[str, Any], b: int, threads: list[int], *, warmup: int, repeat: int, device: str,
                progress: Progress | None) -> list[dict[str, Any]]:
    """One row per thread count at batch `b`: latency stats, speedup_vs, parallel_speedup."""
    rng = np.random.default_rng(0)
    inputs = {s.name: s.random(b, rng) for s in handles["model"].inputs}
    first: Timing | None = None
    rows = []
    for t in threads:
        timings = interleaved(
            {k: h.onnx_path for k, h in handles.items()}, inputs, threads=t, warmup=warmup, repeat=repeat,
            device=device, progress=progress, key=f"bench-b{b}-t{t}",
        )
        row: dict[str, Any] = {"batch": b, "threads": t}
        row.update({k: latency_stats(v) for k, v in timings.items()})
        if "vs" in timings:
            from optimize.speed import estimate, round_ratios

            r = round_ratios(timings["vs"].times_ms, timings["model"].times_ms)
            est = estimate(r)
            row["speedup_vs"] = est.value
            row["speedup_vs_iqr"] = [float(x) for x in np.percentile(r, [25, 75])]
            row["speedup_vs_interval"], row["speedup_vs_verdict"] = [est.low, est.high], est.verdict
        first = first or timings["model"]
        row["parallel_speedup"] = first.median_ms / timings["model"].median_ms if t != threads[0] else 1.0
        rows.append(row)
    return rows


def _bench_formulas(first_threads: int) -> dict[str, str]:
    from optimize.speed import F_INTERVAL, TOLERANCE

    return {
        "speedup_vs": "OTHER latency / MODEL latency (median of interleaved per-round ratios; > 1: MODEL is faster); "
        "speedup_vs_interval: " + F_INTERVAL + f" (tolerance ±{TOLERANCE:.0%})",
        "parallel_speedup": f"MODEL p50 at {first_threads} thread(s) / MODEL p50 at this thread count (same batch)",
        "throughput_per_s": "batch × 1000 / p50_ms (samples per second)",
        "outliers": "samples above Q3 + 1.5 × IQR (kept in the percentiles)",
    }
