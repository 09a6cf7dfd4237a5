"""Residual Add + LayerNormalization written so ONNX Runtime's CPU kernels run them fast.

At its default optimization level ONNX Runtime fuses a residual `Add` followed by
`LayerNormalization` into its contrib op `SkipLayerNormalization` (for the CPU provider too). That
op's float CPU kernel sums each row in one scalar loop, where the `LayerNormalization` kernel is
vectorized. Measured on an AMD EPYC of family 26 (Zen 5, AVX-512 VNNI), onnxruntime 1.32, one op
on 8 × 128 × 384 floats: the fused op 858 µs at 2 threads against 186 µs for `Add` +
`LayerNormalization` (1,619 against 202 µs on one thread); in all-MiniLM-L6-v2 after dynamic int8
the six fused ops were 16 % of the model's time, and the model ran 1.13x faster without them.

The fusion matches `Add` nodes only. ONNX `Sum` of the same two tensors computes the same values
(same broadcasting since opset 8; `LayerNormalization` needs opset 17) and is left alone, so writing
each residual `Add` before a layer norm as `Sum` keeps a default session on the fast kernels, with
no session setting for the user to remember. ONNX Runtime's CUDA kernel for the fused op is fast,
so this is a CPU layout: `output.skip_layernorm: auto` applies it only to runs on the CPU, and only
when the two layouts, timed interleaved on this machine, say it is faster. Written by hand: no
library rewrites a graph to avoid one runtime's fusion.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AUTO, AVOID, ALLOW = "auto", "avoid", "allow"
ROUNDS = 20  # interleaved rounds for `auto` (more are added while the verdict is open, up to 3x)
EXTRA_SECONDS = 10.0


@dataclass
class LayoutChoice:
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def residual_adds(model: Any) -> list[Any]:
    """The main graph's `Add` nodes that start a layer norm: feeding only a `LayerNormalization`
    (its input 0), or a decomposed one (`ReduceMean` and the `Sub` that centres on it), adding two
    computed tensors (no initializer or Constant: a bias add is not a residual), not a graph output."""
    g = model.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    outputs = {o.name for o in g.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for n in g.node:
        if n.op_type != "Add" or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
            continue
        if set(n.input) & consts or n.output[0] in outputs:
            continue
        if _starts_layer_norm(n.output[0], consumers.get(n.output[0], [])):
            found.append(n)
    return found


def _starts_layer_norm(name: str, users: list[Any]) -> bool:
    kinds = sorted(u.op_type for u in users)
    if kinds == ["LayerNormalization"]:
        return users[0].input[0] == name
    if kinds == ["ReduceMean", "Sub"]:
        mean = next(u for u in users if u.op_type == "ReduceMean")
        sub = next(u for u in users if u.op_type == "Sub")
        return list(sub.input) == [name, mean.output[0]]
    return False


def rewrite(src: Path, dst: Path) -> int:
    """Write `src` with its residual adds as `Sum` to `dst`; returns how many were rewritten."""
    from optimize import onnx_io

    model = onnx_io.load(src)
    adds = residual_adds(model)
    for n in adds:
        n.op_type = "Sum"
    onnx_io.save(model, dst)
    return len(adds)


def count(path: Path) -> int:
    from optimize import onnx_io

    return len(residual_adds(onnx_io.load(path, load_external_data=False)))


def fused_count(path: Path, work: Path, threads: int) -> int:
    """SkipLayerNormalization nodes in the graph a default ONNX Runtime CPU session runs for `path`
    (the fusion needs shape facts the file may not carry, so a residual add is not always fused)."""
    from optimize import onnx_io
    from optimize.diagnose import runtime_graph

    graph = runtime_graph(path, work / "runtime.onnx", threads)
    try:
        model = onnx_io.load(graph, load_external_data=False)
        return sum(n.op_type == "SkipLayerNormalization" for n in model.graph.node)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def choose(path: Path, out_dir: Path, *, mode: str, inputs: dict[str, np.ndarray], threads: int,
           warmup: int, tolerance: float, progress: Any = None) -> LayoutChoice | None:
    """The layout to hand back: `path` itself or its rewrite in `out_dir`, with what decided it;
    None when there is nothing to decide (mode `allow`, no residual add before a layer norm, or in
    `auto` none that ONNX Runtime fuses)."""
    if mode == ALLOW:
        return None
    found = count(path)
    if not found:
        return None
    metrics: dict[str, Any] = {"mode": mode, "residual_adds": found}
    if mode == AUTO:
        metrics["fused"] = fused_count(path, out_dir / "probe", threads)
        if not metrics["fused"]:
            shutil.rmtree(out_dir, ignore_errors=True)
            return None
    out_dir.mkdir(parents=True, exist_ok=True)
    rewritten = out_dir / "model.onnx"
    rewrite(path, rewritten)
    if mode == AVOID:
        return LayoutChoice(rewritten, {**metrics, "layout": "sum"},
                            [f"{found} residual Add before a layer norm written as Sum (output.skip_layernorm: avoid)"])
    est, add_ms, sum_ms, rounds = _time_both(path, rewritten, inputs, threads, warmup, tolerance, progress)
    metrics.update(add_ms=round(add_ms, 3), sum_ms=round(sum_ms, 3), speedup=round(est.value, 4),
                   interval=[round(est.low, 4), round(est.high, 4)], verdict=est.verdict, rounds=rounds,
                   threads=threads, batch=_batch(inputs))
    from optimize.speed import FASTER

    if est.verdict == FASTER:
        return LayoutChoice(rewritten, {**metrics, "layout": "sum"}, [
            f"{found} residual Add before a layer norm written as Sum, so ONNX Runtime no longer fuses "
            f"{metrics['fused']} of them into SkipLayerNormalization (its CPU kernel is slow): {est.value:.2f}x faster "
            f"[{est.low:.2f}, {est.high:.2f}] here ({add_ms:.2f} → {sum_ms:.2f} ms)"])
    shutil.rmtree(out_dir, ignore_errors=True)
    return LayoutChoice(path, {**metrics, "layout": "add"}, [
        f"the graph keeps its {found} residual Add (ONNX Runtime fuses {metrics['fused']} into SkipLayerNormalization): "
        f"written as Sum it measured {est.value:.2f}x [{est.low:.2f}, {est.high:.2f}], {est.verdict}"])


def _time_both(path: Path, rewritten: Path, inputs: dict[str, np.ndarray], threads: int, warmup: int,
               tolerance: float, progress: Any) -> tuple[Any, float, float, int]:
    from optimize import benchmark
    from optimize.speed import estimate, round_ratios

    def done(times: dict[str, list[float]]) -> bool:
        return estimate(round_ratios(times["add"], times["sum"]), tolerance).settled

    t = benchmark.interleaved({"add": path, "sum": rewritten}, inputs, threads=threads, warmup=warmup, repeat=ROUNDS,
                              progress=progress, key="skip_layernorm",
                              more=benchmark.MoreRounds(done, 3 * ROUNDS, EXTRA_SECONDS))
    ratios = round_ratios(t["add"].times_ms, t["sum"].times_ms)
    return estimate(ratios, tolerance), t["add"].median_ms, t["sum"].median_ms, len(ratios)


def _batch(inputs: dict[str, np.ndarray]) -> int:
    from optimize.probes import sample_count

    return sample_count(inputs)


def step_record(index: int, mode: str, choice: LayoutChoice, seconds: float, weights: int | None) -> Any:
    """The lineage step that records the choice (inserted after the passes)."""
    from optimize.report import Step

    return Step(index=index, pass_index=None, type="skip_layernorm", config={"mode": mode}, form_in="onnx",
                form_out="onnx", seconds=round(seconds, 3), params_before=weights, params_after=weights,
                metrics=choice.metrics, notes=choice.notes, inserted=True)


def apply(ctx: Any, final: Any, lineage: Any, inputs: dict[str, np.ndarray]) -> Any:
    """The pipeline's step after the passes: the final model in the chosen layout (a new handle when
    it changed), recorded in the lineage. `auto` decides on CPU runs only (the fused op is fast on GPUs)."""
    from optimize.model_facts import weight_count

    mode = ctx.config.output.skip_layernorm
    if mode == AUTO and ctx.device != "cpu":
        return final
    t0 = time.perf_counter()
    m = ctx.config.measure
    out_dir = ctx.work_dir / f"{len(lineage.steps) + 1:02d}-skip_layernorm"
    choice = choose(Path(final.onnx_path), out_dir, mode=mode, inputs=inputs, threads=ctx.threads, warmup=m.warmup,
                    tolerance=m.speed_tolerance, progress=ctx.progress)
    if choice is None:
        return final
    lineage.steps.append(step_record(len(lineage.steps) + 1, mode, choice, time.perf_counter() - t0, weight_count(final)))
    return final if choice.path == Path(final.onnx_path) else final.replace(onnx_path=choice.path)
