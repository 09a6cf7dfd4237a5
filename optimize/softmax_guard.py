"""Softmax written so the CPU never computes denormal floats in it.

An attention mask adds a huge negative number (PyTorch writes the float minimum) to the scores of
padded keys; a causal mask does it to every later token. ONNX Runtime's CPU Softmax subtracts the
row's maximum and takes `exp` of what is left: for anything below about -87 the result is smaller
than the smallest normal float, and computing such values costs a microcode assist per element on
Intel CPUs. Measured on an Intel Xeon (family 6, model 167 as KVM reports it; AVX-512 VNNI, AMX),
onnxruntime 1.32, 2 threads: one Softmax of 8 × 12 × 128 × 128 floats took 0.44 ms, and 3.8-7.6 ms
with a sixth of each row masked; in all-MiniLM-L6-v2 after dynamic int8 the six Softmax ops took 38%
of the model's kernel time on 8 real sentences padded to 128 tokens, against 5% on the same batch
with no padding (docs/distill.md, "Denormals in the attention's softmax").

ONNX Runtime's session option `session.set_denormal_as_zero` removes the stall, but only for the
first session a process creates, and only for users who know to set it. So the graph does it:
every float32 Softmax over one axis gets its input floored at the row's maximum minus `MARGIN`,
`Softmax(Max(x, ReduceMax(x) - 60))`. Exact to float32: a key the floor raises had a weight under
e^-60 ≈ 9e-27 of the row's largest and gets exactly that, far under float32's resolution even
summed over millions of keys. Three cheap ops per Softmax, so it costs a little where nothing is masked; `auto`
keeps the rewrite only where the two files, timed interleaved on this machine, say it is faster.
Written by hand: no library rewrites a graph around one runtime's denormal handling.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from optimize.rewrite_step import Choice, apply_step, time_pair, timing_metrics

ALWAYS, NEVER = "always", "never"
MARGIN = 60.0
FLOAT = 1  # TensorProto.FLOAT
_PREFIX = "softmax_guard"


def guardable(model: Any) -> list[Any]:
    """The main graph's Softmax nodes over one axis (opset 13 on; before it, only the last axis)
    whose input is known to be float32, not already guarded."""
    from onnx import shape_inference

    opset = _opset(model)
    g = model.graph
    if not any(n.op_type == "Softmax" for n in g.node):
        return []
    try:  # element types only: infer on a copy without the weights' data
        inferred = shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - a graph onnx cannot infer is left alone
        inferred = g
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    found = []
    for n in g.node:
        if n.op_type != "Softmax" or n.domain not in ("", "ai.onnx") or n.input[0].startswith(_PREFIX):
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        if (opset >= 13 or axis == -1) and types.get(n.input[0]) == FLOAT:
            found.append(n)
    return found


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _free_prefix(model: Any) -> str:
    """`softmax_guard`, or `softmax_guard2`, … : one no tensor or node of the graph already starts with
    (a file guarded before, with a Softmax added since)."""
    g = model.graph
    names = [t.name for t in g.initializer] + [x for n in g.node for x in (*n.input, *n.output, n.name)]
    k = 1
    while any(name.startswith(f"{_PREFIX}{k if k > 1 else ''}_") for name in names):
        k += 1
    return f"{_PREFIX}{k if k > 1 else ''}"


def _guard_nodes(model: Any, node: Any, prefix: str, k: int) -> list[Any]:
    """The three nodes that floor `node`'s input, `node` re-wired to read the floored tensor."""
    from onnx import helper, numpy_helper

    x, p = node.input[0], f"{prefix}_{k}"
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    if _opset(model) >= 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), p + "_axes"))
        peak = helper.make_node("ReduceMax", [x, p + "_axes"], [p + "_max"], name=p + "_max", keepdims=1)
    else:
        peak = helper.make_node("ReduceMax", [x], [p + "_max"], name=p + "_max", axes=[axis], keepdims=1)
    floor = helper.make_node("Sub", [p + "_max", prefix + "_margin"], [p + "_floor"], name=p + "_floor")
    floored = helper.make_node("Max", [x, p + "_floor"], [p + "_x"], name=p + "_x")
    node.input[0] = p + "_x"
    return [peak, floor, floored]


def rewrite(src: Path, dst: Path) -> int:
    """Write `src` with every guardable Softmax floored to `dst`, external weights streamed across;
    returns how many were guarded. Nothing is written (and `dst`'s folder not made) when none is."""
    from onnx import numpy_helper

    from optimize import onnx_io

    model = onnx_io.load(src, load_external_data=False)
    targets = {n.output[0] for n in guardable(model)}  # node wrappers are not stable objects
    if not targets:
        return 0
    prefix = _free_prefix(model)
    model.graph.initializer.append(numpy_helper.from_array(np.array(MARGIN, np.float32), prefix + "_margin"))
    nodes, k = [], 0
    for n in model.graph.node:
        if n.op_type == "Softmax" and n.output[0] in targets:
            nodes += _guard_nodes(model, n, prefix, k)
            k += 1
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx_io.save_streaming(model, dst, Path(src).parent)
    return k


def guarded_copy(path: Path, folder: Path) -> Path:
    """`path` guarded into `folder` when it has a Softmax to guard, else `path` itself: for callers
    that time a model as the pipeline will hand it out (the prune pass's shapes, the export's
    candidates)."""
    dst = folder / "model.onnx"
    return dst if rewrite(path, dst) else path


def choose(path: Path, out_dir: Path, *, mode: str, inputs: dict[str, np.ndarray], threads: int,
           warmup: int, repeat: int, tolerance: float, progress: Any = None) -> Choice | None:
    """The file to hand back: `path` itself or its rewrite in `out_dir`, with what decided it; None
    when there is nothing to decide (mode `never`, or no float32 Softmax)."""
    if mode == NEVER:
        return None
    rewritten = out_dir / "model.onnx"
    found = rewrite(path, rewritten)  # every float32 Softmax found is guarded
    if not found:
        return None
    metrics: dict[str, Any] = {"mode": mode, "softmax": found, "guarded": found, "margin": MARGIN}
    if mode == ALWAYS:
        return Choice(rewritten, {**metrics, "kept": True}, [
            f"{found} Softmax input(s) floored at the row's max - {MARGIN:g} (output.softmax_guard: always)"])
    timed = time_pair({"plain": path, "guarded": rewritten}, inputs, threads=threads, warmup=warmup, repeat=repeat,
                      tolerance=tolerance, progress=progress, key="softmax_guard", what="softmax guard")
    est, plain_ms, guarded_ms, _ = timed
    metrics.update(timing_metrics(("plain", "guarded"), timed, threads, inputs))
    # same values either way, so any speed the interval is sure of decides (as for the residual layout)
    if est.low > 1.0:
        return Choice(rewritten, {**metrics, "kept": True}, [
            f"{found} Softmax input(s) floored at the row's max - {MARGIN:g}, so exp never makes denormal floats "
            f"(slow on this CPU): {est.value:.2f}x faster [{est.low:.2f}, {est.high:.2f}] here "
            f"({plain_ms:.2f} → {guarded_ms:.2f} ms)"])
    shutil.rmtree(out_dir, ignore_errors=True)
    return Choice(path, {**metrics, "kept": False}, [
        f"Softmax left as written: floored at the row's max - {MARGIN:g} it measured {est.value:.2f}x "
        f"[{est.low:.2f}, {est.high:.2f}], {est.verdict}"])


def apply(ctx: Any, final: Any, lineage: Any, inputs: dict[str, np.ndarray]) -> Any:
    """The final model guarded or not (a new handle when it changed), recorded in the lineage.
    `auto` decides on `--device cpu` runs only (GPUs handle denormals at full speed)."""
    return apply_step(ctx, final, lineage, inputs, mode=ctx.config.output.softmax_guard, choose=choose, step_type="softmax_guard",
                      what="softmax guard", kept_when_failed={"kept": False})
