"""Peak memory of each decoder model — the FP32 reference and the output — for the report's
`memory_ratio`: each model in a fresh process (optimize.benchmark.session_memory) that creates its
ONNX Runtime session and runs one prefill of the speed prompt with an empty cache. The process's
high-water mark is reset after the imports (Linux), so the peak is the model's: weights as the
runtime holds them, its arenas, and the prefill's activations. One process per model, because in
the run's own process both sessions and the exporter's torch model are resident at once (a
SmolLM2 run peaks at ~7 GB) and no share of that belongs to one model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

F_MEMORY = ("output model's peak resident memory / FP32 model's, each in a fresh process that creates the model's "
            "ONNX Runtime session and runs one prefill of the speed prompt (VmHWM after a reset, minus the RSS before "
            "the session)")


def model_memory(models: dict[str, Any], prompt: list[int], threads: int, work: Path) -> dict[str, dict[str, Any]]:
    """name → {peak_rss_mb, model_peak_mb, method} (or nulls with `reason`) for each model
    (optimize.llm.generation.OrtCausalLM: its path, and its input names for the prefill feed)."""
    from optimize.benchmark import session_memory

    work.mkdir(parents=True, exist_ok=True)
    ids = np.asarray([list(prompt)], np.int64)
    out = {}
    for name, lm in models.items():
        feeds = work / f"prefill-{name}.npz"
        np.savez(feeds, **lm.feed(ids, 0), **dict(zip(lm.past_names, lm.empty_cache(), strict=True)))
        out[name] = session_memory(lm.path, feeds, threads)
        feeds.unlink(missing_ok=True)
    return out


def memory_metric(memory: dict[str, dict[str, Any]], reference: str, name: str) -> Any:
    """The report's `memory_ratio` (optimize.report.Metric), null with the reason when either
    model's peak was not measured."""
    from optimize.report import Metric

    ref, out = memory.get(reference, {}), memory.get(name, {})
    a, b = ref.get("model_peak_mb"), out.get("model_peak_mb")
    inputs = {"output_model_peak_mb": b, "fp32_model_peak_mb": a, "output_process_peak_mb": out.get("peak_rss_mb"),
              "fp32_process_peak_mb": ref.get("peak_rss_mb"), "method": out.get("method") or ref.get("method")}
    if a is None or b is None or a <= 0:
        reason = out.get("reason") or ref.get("reason") or "not measured: no per-model peak on this OS (Linux only)"
        return Metric(value=None, formula=F_MEMORY, inputs=inputs, reason=reason)
    return Metric(value=b / a, formula=F_MEMORY, inputs=inputs)
