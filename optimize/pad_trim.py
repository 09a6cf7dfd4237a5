"""Padding past a batch's longest row, cut inside the graph (`output.pad_trim`).

Encoders served with fixed shapes get every batch padded to max_length, and spend most of their time
on columns every row masks: all-MiniLM-L6-v2 after the tool's int8, 8 real docstrings padded to 128
tokens (the longest 47) took 42.4 ms; the same batch cut at 47 columns 17.8 ms (Intel Xeon with AMX,
onnxruntime 1.32, 2 threads; docs/architecture.md). The rewrite puts that cut in the graph: L, one
past the last column any row of `attention_mask` keeps (at least 1), and every input of the mask's
(batch, sequence) shape sliced to [:, :L] before anything reads it. A model that ignores masked
positions (its attention masks them, its pooling skips them) and has no output along the sequence
axis then returns what it returns for the batch padded to its longest row: the same values in float
(to rounding), and with dynamic int8 what the per-call scales give that batch (the cut pad rows no
longer count in them). Left padding, or a batch whose longest row fills it, leaves L = S.

Before it is kept, the two files run the eval batch with masked columns added and must agree row by
row (optimize/pad_check.py, which holds per-call int8 scales for that), so a model that reads its
padding (unmasked pooling, say) is left alone. `auto` then keeps it where the two files, timed on
the eval batch as it is, say it is faster: a batch padded only to its longest row gains nothing.
Written by hand: ONNX Runtime removes padding only inside its CUDA attention kernels (the
RemovePadding / RestorePadding contrib ops of its packed mode); no library rewrites a graph to do it
on any runtime.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from optimize.pad_check import compare, held_scales, padded
from optimize.rewrite_step import Choice, apply_step, time_pair, timing_metrics

ALWAYS, NEVER = "always", "never"
MASK = "attention_mask"
_MASK_TYPES = {1, 6, 7, 9}  # float, int32, int64, bool
_PREFIX = "pad_trim"


def _dims(value: Any) -> list[str | int | None]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in value.type.tensor_type.shape.dim]


def sequence_inputs(model: Any) -> tuple[list[str], str | None]:
    """(the inputs to cut, why none) for `model`: every graph input when `attention_mask` is a 2-D
    input with a symbolic sequence axis, all inputs share its (batch, sequence) dims, no output names
    that sequence axis and no cut reads them already; else ([], the reason)."""
    g = model.graph
    weights = {t.name for t in g.initializer}
    inputs = [v for v in g.input if v.name not in weights]
    mask = next((v for v in inputs if v.name == MASK), None)
    if mask is None:
        return [], f"no `{MASK}` input"
    if _opset(model) < 11:
        return [], f"opset {_opset(model)}: the cut needs 11 or later (Range)"
    dims = _dims(mask)
    if mask.type.tensor_type.elem_type not in _MASK_TYPES or len(dims) != 2:
        return [], f"`{MASK}` is not a 2-D integer, bool or float tensor"
    if not isinstance(dims[1], str):
        return [], f"`{MASK}`'s sequence axis is fixed ({dims[1]}), not symbolic"
    odd = [v.name for v in inputs if _dims(v) != dims]
    if odd:
        return [], f"input {odd[0]} is not shaped like `{MASK}` {dims}"
    along = [v.name for v in g.output if dims[1] in _dims(v)]
    if along:
        return [], f"output {along[0]} runs along the sequence axis `{dims[1]}`"
    readers = [n.name for n in g.node if MASK in n.input]
    if readers and all(r.startswith(_PREFIX) for r in readers):
        return [], "its inputs are cut already"
    return [v.name for v in inputs], None


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _length_nodes(model: Any, p: str) -> list[Any]:
    """Nodes computing `{p}_len` (shape [1], int64): one past the last column any row keeps, >= 1."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any) -> str:
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{p}_{name}"))
        return f"{p}_{name}"

    def reduce_max(x: str, out: str, axes: list[int] | None) -> Any:
        if _opset(model) >= 18:
            ins = [x, const(out + "_axes", axes)] if axes is not None else [x]
            return helper.make_node("ReduceMax", ins, [f"{p}_{out}"], name=f"{p}_{out}", keepdims=0)
        extra = {"axes": axes} if axes is not None else {}
        return helper.make_node("ReduceMax", [x], [f"{p}_{out}"], name=f"{p}_{out}", keepdims=0, **extra)

    one, zero = const("one", 1), const("zero", 0)
    return [
        helper.make_node("Cast", [MASK], [f"{p}_mask64"], name=f"{p}_mask64", to=TensorProto.INT64),
        helper.make_node("Greater", [f"{p}_mask64", zero], [f"{p}_kept"], name=f"{p}_kept"),
        helper.make_node("Cast", [f"{p}_kept"], [f"{p}_kept64"], name=f"{p}_kept64", to=TensorProto.INT64),
        reduce_max(f"{p}_kept64", "column_kept", [0]),  # (S,): 1 where any row keeps the column
        helper.make_node("Shape", [MASK], [f"{p}_shape"], name=f"{p}_shape"),
        helper.make_node("Gather", [f"{p}_shape", one], [f"{p}_seq"], name=f"{p}_seq", axis=0),
        helper.make_node("Add", [f"{p}_seq", one], [f"{p}_seq1"], name=f"{p}_seq1"),
        helper.make_node("Range", [one, f"{p}_seq1", one], [f"{p}_columns"], name=f"{p}_columns"),
        helper.make_node("Mul", [f"{p}_column_kept", f"{p}_columns"], [f"{p}_ends"], name=f"{p}_ends"),
        reduce_max(f"{p}_ends", "last", None),  # scalar: one past the last column kept, 0 if none
        helper.make_node("Max", [f"{p}_last", one], [f"{p}_len0"], name=f"{p}_len0"),
        helper.make_node("Reshape", [f"{p}_len0", const("one_dim", [1])], [f"{p}_len"], name=f"{p}_len"),
    ]


def _rename_reads(graph: Any, old_to_new: dict[str, str]) -> None:
    """Every node of `graph` and of the graphs nested in it (If / Loop / Scan bodies read outer
    names) reads the new name where it read an old one."""
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in old_to_new:
                n.input[i] = old_to_new[name]
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _rename_reads(sub, old_to_new)


def rewrite(src: Path, dst: Path) -> tuple[list[str], str | None]:
    """Write `src` with its sequence inputs cut at the batch's longest row to `dst`, external
    weights streamed across: (the inputs cut, why none). Nothing is written when none is."""
    from onnx import helper

    from optimize import onnx_io

    model = onnx_io.load(src, load_external_data=False)
    names, why = sequence_inputs(model)
    if not names:
        return [], why
    p = _PREFIX
    taken = {t.name for t in model.graph.initializer} | {x for n in model.graph.node for x in (*n.input, *n.output)}
    while any(t.startswith(p + "_") for t in taken):
        p += "_"
    old_to_new = {name: f"{p}_{name}" for name in names}
    _rename_reads(model.graph, old_to_new)
    nodes = _length_nodes(model, p)
    axis = f"{p}_axis"
    model.graph.initializer.append(_int64s(axis, [1]))
    model.graph.initializer.append(_int64s(f"{p}_start", [0]))
    nodes += [helper.make_node("Slice", [name, f"{p}_start", f"{p}_len", axis], [cut], name=cut)
              for name, cut in old_to_new.items()]
    # shapes recorded for tensors downstream name the uncut sequence axis: let the runtime infer them
    seq = _dims(next(v for v in model.graph.input if v.name == MASK))[1]
    keep = [v for v in model.graph.value_info if seq not in _dims(v)]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    rest = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + rest)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx_io.save_streaming(model, dst, Path(src).parent)
    return names, None


def _int64s(name: str, values: list[int]) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(values, np.int64), name)


def check(plain: Path, cut: Path, inputs: dict[str, np.ndarray], names: list[str], threads: int,
          scratch: Path) -> dict[str, Any]:
    """Whether the model reads its padding (optimize/pad_check.py): `compare`'s record of the two
    files (their twins with per-call scales held, where they have any) on `inputs` with masked
    columns added, with `scales_held`."""
    feeds = padded(inputs, names)
    held = held_scales(plain, feeds, threads, scratch)
    if held is not None:
        rewrite(held, scratch / "cut" / "model.onnx")
        plain, cut = held, scratch / "cut" / "model.onnx"
    return {**compare(plain, cut, feeds, threads), "scales_held": held is not None}


def cut_copy(path: Path, folder: Path) -> Path:
    """`path` with its padding cut into `folder` when it has inputs to cut, else `path` itself."""
    dst = folder / "model.onnx"
    return dst if rewrite(path, dst)[0] else path


def _columns(inputs: dict[str, np.ndarray]) -> tuple[int, int]:
    """(columns, one past the last any row keeps) of the eval batch's mask."""
    mask = np.asarray(inputs[MASK]) > 0
    kept = np.flatnonzero(mask.any(axis=0))
    return mask.shape[1], int(kept[-1]) + 1 if kept.size else 1


def choose(path: Path, out_dir: Path, *, mode: str, inputs: dict[str, np.ndarray], threads: int,
           warmup: int, repeat: int, tolerance: float, progress: Any = None) -> Choice | None:
    """The file to hand back: `path` or its rewrite in `out_dir`, with what decided it; None when
    there is nothing to decide (mode `never`, or no input to cut)."""
    if mode == NEVER or MASK not in inputs:
        return None
    rewritten = out_dir / "model.onnx"
    names, why = rewrite(path, rewritten)
    if not names:
        return Choice(path, {"mode": mode, "kept": False, "reason": why}, [f"padding not cut in the graph: {why}"])
    columns, longest = _columns(inputs)
    metrics: dict[str, Any] = {"mode": mode, "inputs": names, "eval_columns": columns, "eval_longest": longest}
    if mode != ALWAYS and longest == columns:  # nothing to cut on this batch: neither check nor time it
        shutil.rmtree(out_dir, ignore_errors=True)
        return Choice(path, {**metrics, "kept": False}, [
            f"padding not cut in the graph: the eval batch's longest row fills its {columns} columns, so nothing "
            "would be cut here (output.pad_trim: always cuts it for inputs padded past their longest row)"])
    metrics["check"] = check(path, rewritten, inputs, names, threads, out_dir / "check")
    shutil.rmtree(out_dir / "check", ignore_errors=True)
    if not metrics["check"]["passed"]:
        shutil.rmtree(out_dir, ignore_errors=True)
        c = metrics["check"]
        how = ("their shapes change" if c["difference"] is None
               else f"by {c['difference']:.3g} of a row's norm, over {c['tolerance']:g}")
        return Choice(path, {**metrics, "kept": False}, [
            f"padding not cut in the graph: with masked columns added the model's outputs change ({how}): "
            "it reads its padding"])
    what = f"{', '.join(names)} cut in the graph at the batch's longest row"
    if mode == ALWAYS:
        return Choice(rewritten, {**metrics, "kept": True}, [f"{what} (output.pad_trim: always)"])
    timed = time_pair({"plain": path, "cut": rewritten}, inputs, threads=threads, warmup=warmup, repeat=repeat,
                      tolerance=tolerance, progress=progress, key="pad_trim", what="padding cut")
    est, plain_ms, cut_ms, _ = timed
    metrics.update(timing_metrics(("plain", "cut"), timed, threads, inputs))
    if est.low > 1.0:
        return Choice(rewritten, {**metrics, "kept": True}, [
            f"{what}: the eval batch's {columns} columns cut to {longest}, {est.value:.2f}x faster "
            f"[{est.low:.2f}, {est.high:.2f}] here ({plain_ms:.2f} → {cut_ms:.2f} ms); on a batch padded only to "
            "its longest row it cuts nothing"])
    shutil.rmtree(out_dir, ignore_errors=True)
    return Choice(path, {**metrics, "kept": False}, [
        f"padding not cut in the graph: cut from {columns} to {longest} columns it measured {est.value:.2f}x "
        f"[{est.low:.2f}, {est.high:.2f}], {est.verdict}"])


def apply(ctx: Any, final: Any, lineage: Any, inputs: dict[str, np.ndarray]) -> Any:
    """The final model with its padding cut or not (a new handle when it changed), recorded in the
    lineage. `auto` decides on `--device cpu` runs only."""
    return apply_step(ctx, final, lineage, inputs, mode=ctx.config.output.pad_trim, choose=choose, step_type="pad_trim",
                      what="padding cut", kept_when_failed={"kept": False})
