"""Residual Add + LayerNormalization written so ONNX Runtime's CPU kernels run them fast.

At its default optimization level ONNX Runtime fuses a residual `Add` followed by
`LayerNormalization` into its contrib op `SkipLayerNormalization` (for the CPU provider too). That
op's float CPU kernel sums each row in one scalar loop, where the `LayerNormalization` kernel is
vectorized. Measured on an AMD EPYC of family 26 (Zen 5, AVX-512 VNNI), onnxruntime 1.32, one op
on 8 × 128 × 384 floats: the fused op 858 µs at 2 threads against 186 µs for `Add` +
`LayerNormalization` (1,619 against 202 µs on one thread); in all-MiniLM-L6-v2 after dynamic int8
the six fused ops were 16 % of the model's kernel time, and through the pipeline the model ran
1.14x [1.13, 1.16] faster without them (24.0 → 21.0 ms, batch 8, 2 threads).

The fusion matches `Add` nodes only. ONNX `Sum` of the same two tensors computes the same values
(same broadcasting from opset 8) and is left alone, so writing the residual `Add` as `Sum` keeps a
default session on the fast kernels, with no session setting for the user to remember. A `Sum` also
hides the add from the runtime's other fusions (its Attention fusion looks for an `Add` among a
layer norm's consumers), so `auto` rewrites only the adds the runtime fuses into
SkipLayerNormalization, and keeps the rewrite only when the two files, timed interleaved on this
machine, say it is faster (the 95% interval of the ratio above 1). ONNX Runtime's CUDA kernel for
the fused op is fast, so `auto` decides on `--device cpu` runs only. Written by hand: no library
rewrites a graph to avoid one runtime's fusion.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from optimize.rewrite_step import Choice, apply_step, time_pair, timing_metrics

AUTO, AVOID, ALLOW = "auto", "avoid", "allow"


def residual_adds(model: Any) -> list[Any]:
    """The main graph's `Add` nodes that start a layer norm: feeding only a `LayerNormalization`
    (its input 0), or a decomposed one (`ReduceMean` and the `Sub` that centres on it), adding two
    computed tensors (no initializer or Constant: a bias add is not a residual), not a graph output.
    None below opset 8 (`Sum` broadcasts from opset 8), none with attributes (opset-6 `broadcast`),
    none whose inputs are known not to be floats (`Sum` takes floats only)."""
    g = model.graph
    if _opset(model) < 8:
        return []
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    outputs = {o.name for o in g.output}
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for n in g.node:
        if n.op_type != "Add" or n.domain not in ("", "ai.onnx") or len(n.input) != 2 or n.attribute:
            continue
        if set(n.input) & consts or n.output[0] in outputs or any(types.get(i, FLOAT) not in FLOATS for i in n.input):
            continue
        if _norm_output(n.output[0], consumers) is not None:
            found.append(n)
    return found


FLOAT = 1
FLOATS = {1, 10, 11, 16}  # float, float16, double, bfloat16 (TensorProto element types)


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _norm_output(name: str, consumers: dict[str, list[Any]]) -> str | None:
    """The output of the layer norm that `name` starts (the decomposition's last node for a
    decomposed one), or None when `name` does not start one."""
    users = consumers.get(name, [])
    kinds = sorted(u.op_type for u in users)
    if kinds == ["LayerNormalization"]:
        return users[0].output[0] if users[0].input[0] == name else None
    if kinds != ["ReduceMean", "Sub"]:
        return None
    mean = next(u for u in users if u.op_type == "ReduceMean")
    sub = next(u for u in users if u.op_type == "Sub")
    if list(sub.input) != [name, mean.output[0]]:
        return None
    div = next((u for u in consumers.get(sub.output[0], []) if u.op_type == "Div"), None)
    end = div.output[0] if div is not None else sub.output[0]
    for op in ("Mul", "Add"):  # the scale, then the shift
        nxt = consumers.get(end, [])
        if len(nxt) == 1 and nxt[0].op_type == op:
            end = nxt[0].output[0]
    return end


def fused_adds(model: Any, runtime: Any) -> list[Any]:
    """The residual adds whose layer norm ONNX Runtime fused into SkipLayerNormalization in
    `runtime`, its optimized graph (the fused node keeps the layer norm's output name)."""
    fused = {o for n in runtime.graph.node if n.op_type == "SkipLayerNormalization" for o in n.output[:1]}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return [n for n in residual_adds(model) if _norm_output(n.output[0], consumers) in fused]


def rewrite(src: Path, dst: Path, only: set[str] | None = None) -> int:
    """Write `src` with its residual adds (those whose outputs are in `only`, when given) as `Sum`
    to `dst`, external weights streamed across; returns how many were rewritten."""
    from optimize import onnx_io

    model = onnx_io.load(src, load_external_data=False)
    adds = [n for n in residual_adds(model) if only is None or n.output[0] in only]
    for n in adds:
        n.op_type = "Sum"
    onnx_io.save_streaming(model, dst, Path(src).parent)
    return len(adds)


def runtime_fused(path: Path, work: Path, threads: int) -> set[str]:
    """Outputs of the residual adds a default ONNX Runtime CPU session fuses into
    SkipLayerNormalization for `path` (the fusion needs shape facts the file may not carry)."""
    from optimize import onnx_io
    from optimize.diagnose import runtime_graph

    try:
        runtime = onnx_io.load(runtime_graph(path, work / "runtime.onnx", threads), load_external_data=False)
        model = onnx_io.load(path, load_external_data=False)
        return {n.output[0] for n in fused_adds(model, runtime)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def choose(path: Path, out_dir: Path, *, mode: str, inputs: dict[str, np.ndarray], threads: int,
           warmup: int, repeat: int, tolerance: float, progress: Any = None) -> Choice | None:
    """The layout to hand back: `path` itself or its rewrite in `out_dir`, with what decided it;
    None when there is nothing to decide (mode `allow`, no residual add before a layer norm, or in
    `auto` none that ONNX Runtime fuses). `auto` rewrites only the adds the runtime fuses (a Sum
    also hides an add from its other fusions, e.g. Attention); `avoid` rewrites every one."""
    from optimize import onnx_io

    if mode == ALLOW:
        return None
    found = len(residual_adds(onnx_io.load(path, load_external_data=False)))
    if not found:
        return None
    metrics: dict[str, Any] = {"mode": mode, "residual_adds": found}
    only = None
    if mode == AUTO:
        only = runtime_fused(path, out_dir / "probe", threads)
        metrics["fused"] = len(only)
        if not only:
            shutil.rmtree(out_dir, ignore_errors=True)
            return None
    rewritten = out_dir / "model.onnx"
    metrics["rewritten"] = rewrite(path, rewritten, only)
    if mode == AVOID:
        return Choice(rewritten, {**metrics, "layout": "sum"}, [
            f"{metrics['rewritten']} residual Add before a layer norm written as Sum (output.skip_layernorm: avoid)"])
    timed = _time_both(path, rewritten, inputs, threads, warmup, repeat, tolerance, progress)
    est, add_ms, sum_ms, _ = timed
    metrics.update(timing_metrics(("add", "sum"), timed, threads, inputs))
    # The two files compute the same values, so any speed the interval is sure of decides: the speed
    # tolerance that keeps the report from claiming noise as a change is not needed here (one fused op
    # of eleven is ~3% of MiniLM's time, at the edge of that band)
    if est.low > 1.0:
        return Choice(rewritten, {**metrics, "layout": "sum"}, [
            f"{metrics['rewritten']} residual Add before a layer norm written as Sum, so ONNX Runtime no longer fuses "
            f"them into SkipLayerNormalization (its CPU kernel is slow): {est.value:.2f}x faster "
            f"[{est.low:.2f}, {est.high:.2f}] here ({add_ms:.2f} → {sum_ms:.2f} ms)"])
    shutil.rmtree(out_dir, ignore_errors=True)
    return Choice(path, {**metrics, "layout": "add"}, [
        f"the graph keeps its residual Add ({metrics['fused']} fused by ONNX Runtime into SkipLayerNormalization): "
        f"written as Sum it measured {est.value:.2f}x [{est.low:.2f}, {est.high:.2f}], {est.verdict}"])


def _time_both(path: Path, rewritten: Path, inputs: dict[str, np.ndarray], threads: int, warmup: int, repeat: int,
               tolerance: float, progress: Any) -> tuple[Any, float, float, int]:
    return time_pair({"add": path, "sum": rewritten}, inputs, threads=threads, warmup=warmup, repeat=repeat,
                     tolerance=tolerance, progress=progress, key="skip_layernorm", what="residual layout")


def apply(ctx: Any, final: Any, lineage: Any, inputs: dict[str, np.ndarray]) -> Any:
    """The final model in the chosen layout (a new handle when it changed), recorded in the lineage.
    `auto` decides on `--device cpu` runs only (the fused op is fast on GPUs)."""
    return apply_step(ctx, final, lineage, inputs, mode=ctx.config.output.skip_layernorm, choose=choose, step_type="skip_layernorm",
                      what="residual layout", kept_when_failed={"layout": "add"})
