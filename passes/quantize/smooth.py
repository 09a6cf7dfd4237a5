"""`smooth_alpha`: SmoothQuant's per-channel scales before dynamic int8.

Dynamic int8 gives a MatMul's input one scale per call, so a channel whose values run far above
the others (a transformer's LayerNorm outputs hold a few) sets the step for all of them. SmoothQuant
(Xiao et al., 2023) divides each input channel j by s_j = max|x_j|^α / max|W_j|^(1-α) and
multiplies row j of the weight by s_j: the product is unchanged and the input's range is flatter,
with α of each channel's spread moved into the weights (which have per-channel scales of their own).

The division goes into the parameters of the node that writes the input where nothing else reads
it (a fused Attention's value projection, a pre-LN model's norm: smooth_fold.py), else into a Mul
before the MatMuls (and fused Attention nodes) that read it, one per input tensor (a post-LN
encoder's norm output also feeds a residual add that must keep the unscaled values). `smooth_inputs:
norms` smooths only the inputs a normalization or a fused attention writes, as SmoothQuant's paper
does (where the channel outliers are). max|x_j| is measured on the user's samples
(activation_probe.py), as one call sees them (padding past the batch's longest row left out).
ONNX Runtime's `quantize_dynamic` has no smoothing (its static path offers one through Intel
Neural Compressor, for calibrated QDQ only), so it is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from passes.quantize.prepare import fresh_name
from passes.quantize.smooth_fold import ATTENTION, apply, free_division, producer_kind
from passes.quantize.smooth_search import scales


@dataclass
class Group:
    """The weighted nodes that read one input tensor (they share its channel scales)."""

    tensor: str
    nodes: list[Any] = field(default_factory=list)


def groups(graph: Any, op_types: list[str] | None, include: list[str] | None, exclude: list[str]) -> list[Group]:
    """Input tensors of MatMuls (and fused Attention nodes) by a 2-D float initializer, each with the
    nodes reading it, within `include`, not in `exclude`, of `op_types` when given."""
    inits = {t.name: t for t in graph.initializer}
    found: dict[str, Group] = {}
    for node in graph.node:
        if not _weighted(node, inits) or node.name in exclude or (include is not None and node.name not in include):
            continue
        if op_types is not None and node.op_type not in op_types:
            continue
        if node.input[0] in inits:
            continue
        found.setdefault(node.input[0], Group(node.input[0])).nodes.append(node)
    return list(found.values())


def _weighted(node: Any, inits: dict[str, Any]) -> bool:
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
        w = inits.get(node.input[1])
    elif (node.op_type, node.domain) == ATTENTION and len(node.input) > 1:
        w = inits.get(node.input[1])
    else:
        return False
    return w is not None and len(w.dims) == 2 and w.data_type == 1


def collect(src: Path, tensors: list[str], feeds: dict[str, np.ndarray], batch: int,
            max_rows: int = 2048) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """({tensor: max |x| per channel over every batch's rows}, {tensor: its rows per batch, batches
    kept while under `max_rows` rows}): the ranges set the scales; the rows, kept apart by batch (the
    per-call int8 range is a batch's), judge them. Rows as the runtime's call sees them, the padding
    of shorter sequences included (activation_probe.batch_rows): on MiniLM, leaving it out chose
    scales that read 0.9972 / 0.9928 (mean / min, docstrings) against 0.9983 / 0.9952 with it."""
    from passes.quantize.activation_probe import batch_rows, batches_of

    act_max: dict[str, np.ndarray] = {}
    rows: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    kept = dict.fromkeys(tensors, 0)
    for outs, mask in batches_of(src, tensors, feeds, batch, "smooth-ranges"):
        for t, x in outs.items():
            r = batch_rows(x, mask).astype(np.float32)
            if not r.size:
                continue
            m = np.abs(r).max(axis=0).astype(np.float64)
            act_max[t] = np.maximum(act_max[t], m) if t in act_max else m
            if kept[t] < max_rows:
                rows[t].append(r)
                kept[t] += len(r)
    return act_max, {t: v for t, v in rows.items() if v}


def smooth_model(model: Any, found: list[Group], act_max: dict[str, np.ndarray], alphas: dict[str, float],
                 originals: dict[str, np.ndarray]) -> int:
    """Rewrite `model` in place: a Mul by 1/s before each group given an α, its nodes' weights'
    rows (`originals`: weight_arrays) times s. Returns how many nodes read a smoothed input."""
    from onnx import numpy_helper

    graph = model.graph
    weights = group_weights(found, originals)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    done, folds = 0, []
    for g in found:
        if g.tensor not in alphas:
            continue
        s = scales(act_max[g.tensor], np.abs(weights[g.tensor]).max(axis=1), alphas[g.tensor])
        fold = free_division(graph, g.tensor, {n.name for n in g.nodes}, len(s))
        if fold is not None:
            folds.append((fold, 1.0 / s))
            scaled = g.tensor  # its writer's parameters take the division
        else:
            scaled = _insert_mul(graph, g, 1.0 / s, taken)
        for n in g.nodes:
            w = originals[n.input[1]]
            w_name = fresh_name(f"{n.input[1]}_smoothed", taken)
            graph.initializer.append(numpy_helper.from_array((w * s[:, None]).astype(np.float32), w_name))
            n.input[0], n.input[1] = scaled, w_name
            done += 1
    replaced = set(originals)
    for fold, inv_s in folds:  # after the rows: an attention's own weight may have been smoothed above
        replaced |= apply(graph, fold, inv_s, taken)
    _drop_unused(graph, replaced)
    return done


def weight_arrays(graph: Any, found: list[Group]) -> dict[str, np.ndarray]:
    """{weight name: its array} of every node in the groups."""
    from onnx import numpy_helper

    read = {n.input[1] for g in found for n in g.nodes}
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in read}


def group_weights(found: list[Group], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{input tensor: its nodes' weights side by side ([in, sum of outs])}."""
    return {g.tensor: np.concatenate([arrays[n.input[1]] for n in g.nodes], axis=1) for g in found}


def _insert_mul(graph: Any, g: Group, inv_s: np.ndarray, taken: set[str]) -> str:
    """A Mul by `inv_s` before the first of `g`'s nodes; returns its output's name."""
    import onnx
    from onnx import numpy_helper

    scaled = fresh_name(f"{g.tensor}_smoothed", taken)
    inv = fresh_name(f"{g.tensor}_smooth_inv", taken)
    graph.initializer.append(numpy_helper.from_array(inv_s.astype(np.float32), inv))
    outs = {n.output[0] for n in g.nodes}
    first = next(i for i, n in enumerate(graph.node) if n.output and n.output[0] in outs)
    graph.node.insert(first, onnx.helper.make_node("Mul", [g.tensor, inv], [scaled], name=f"{scaled}_mul"))
    return scaled


def _drop_unused(graph: Any, names: set[str]) -> None:
    """Initializers among `names` no node reads any more removed."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name not in names or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def choose_alphas(found: list[Group], weights: dict[str, np.ndarray], rows: dict[str, list[np.ndarray]],
                  act_max: dict[str, np.ndarray], alpha: float | str, code_max: int) -> dict[str, float]:
    """{input tensor: α}: `alpha` for every input the samples reach, or with `auto` each input's own
    (smooth_search.best_alpha), inputs it would not help left out."""
    from passes.quantize.smooth_search import best_alpha

    chosen: dict[str, float] = {}
    for g in found:
        if g.tensor not in rows or weights[g.tensor].shape[0] != act_max[g.tensor].shape[0]:
            continue  # never reached by the samples, or not a row-per-channel product
        if alpha != "auto":
            chosen[g.tensor] = float(alpha)
            continue
        best, _, _ = best_alpha(rows[g.tensor], weights[g.tensor], act_max[g.tensor], code_max)
        if best is not None:
            chosen[g.tensor] = best
    return chosen


def smooth_file(src: Path, dst: Path, alpha: float | str, feeds: dict[str, np.ndarray], batch: int, *,
                code_max: int, op_types: list[str] | None, include: list[str] | None,
                exclude: list[str], inputs: str = "all") -> dict[str, Any]:
    """Write `src` smoothed to `dst`; returns what was done ({} and nothing written when no input
    qualifies)."""
    import onnx

    from passes.quantize.int4 import save

    model = onnx.load(str(src))
    every = groups(model.graph, op_types, None, [])  # measured whole: the fallback's retries differ in exclude only
    if inputs == "norms":
        every = [g for g in every if producer_kind(model.graph, g.tensor) is not None]
    kept = {g.tensor for g in every}
    found = [g for g in groups(model.graph, op_types, include, exclude) if g.tensor in kept]
    if not found:
        return {}
    act_max, rows = _collected(src, [g.tensor for g in every], feeds, batch)
    arrays = weight_arrays(model.graph, found)
    alphas = choose_alphas(found, group_weights(found, arrays), rows, act_max, alpha, code_max)
    nodes = smooth_model(model, found, act_max, alphas, arrays) if alphas else 0
    if not nodes:
        return {}
    save(model, dst)
    samples = max((len(v) for v in feeds.values() if np.ndim(v) > 0), default=1)
    return {"alpha": alpha, "samples": samples, "inputs": len(alphas), "of_inputs": len(found), "nodes": nodes,
            "alphas": sorted(alphas.values())}


_LAST: list[tuple[tuple[Any, ...], Any]] = []  # the fallback's retries smooth the same file again: measure it once


def _collected(src: Path, tensors: list[str], feeds: dict[str, np.ndarray], batch: int) -> Any:
    """collect(), the last call's result reused when the file, tensors, samples and batch are the same."""
    n = max((len(v) for v in feeds.values() if np.ndim(v) > 0), default=1)
    key = (str(src), src.stat().st_mtime_ns, tuple(tensors), tuple(sorted(feeds)), n, batch,
           tuple(float(np.asarray(v, np.float64).sum()) for _, v in sorted(feeds.items())))
    if not (_LAST and _LAST[0][0] == key):
        _LAST[:] = [(key, collect(src, tensors, feeds, batch))]
    return _LAST[0][1]
