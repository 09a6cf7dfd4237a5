"""Structured pruning straight on an ONNX graph: remove output neurons / channels of a MatMul,
Gemm or Conv together with the matching inputs of every consumer, so the tensors really shrink.

A producer qualifies when everything its output flows into, up to the next weighted ops, works
channel by channel:

    producer (MatMul X·W | Gemm | Conv, group 1) ──► channel-wise ops ──► consumers (MatMul | Gemm | Conv)

- channel-wise ops: unary elementwise ops (Relu, Gelu, Erf, Sigmoid, Tanh, Clip, …),
  BatchNormalization (Conv), and binary elementwise ops (Add, Sub, Mul, Div, Pow, Max, Min) whose
  other operand is a constant that is a scalar or a per-channel vector (a bias), or another tensor
  of the same region (GELU's `x · Φ(x)`, SiLU's `x · σ(x)`);
- consumers contract over the channel axis: MatMul with the region as its left input and a constant
  right input, Gemm likewise, Conv (group 1) with the region as its data input.

Anything else (a residual Add with another activation, a Reshape, a graph output, a grouped
Conv, a weight used through Transpose/DequantizeLinear) blocks the producer: pruning it would
change a shape something else depends on. Plain MLP / CNN chains and transformer FFN blocks
(MatMul → Add bias → GELU → MatMul) qualify; residual-stream writers and the output layer do not.

Channels are ranked by ‖producer column‖ · ‖consumer row‖ (L1 or L2), the weights that a channel
brings in and sends on. The rewritten model is checked (onnx.checker with shape inference) and
compared against the input in ONNX Runtime (parity on eval data or random inputs).

Written by hand: no maintained library removes channels from an ONNX graph (Torch-Pruning and
the like work on torch modules; onnx-ir / onnxscript rewrite patterns but do not prune).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimize.pass_api import PassResult
from passes.prune import torch_common as PT
from passes.prune import util as U
from passes.prune.config import PruneConfig

UNARY = {
    "Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Softplus", "Softsign", "HardSigmoid",
    "HardSwish", "Mish", "Identity", "Neg", "Abs", "Exp", "Sqrt", "Cast", "Dropout", "Clip", "Celu", "ThresholdedRelu",
    "PRelu",
}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}


@dataclass
class _Edit:
    """How to shrink one constant operand: which tensor, which axis."""

    node: Any
    index: int
    axis: int


@dataclass
class Candidate:
    producer: Any
    weight: str  # producer weight name
    out_axis: int  # channel axis of the producer weight
    channels: int
    edits: list[_Edit] = field(default_factory=list)  # producer weight/bias, region constants, consumer weights
    consumers: list[_Edit] = field(default_factory=list)
    blocked: str | None = None


class _Graph:
    def __init__(self, proto: Any) -> None:
        from onnx import numpy_helper

        self.proto = proto
        g = proto.graph
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and a.t is not None:
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for n in g.node:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))
        # every tensor read by a subgraph is treated as used by an unknown op
        self.subgraph_reads: set[str] = set()
        from optimize.inspect_onnx import all_graphs

        for sg in list(all_graphs(g))[1:]:
            for n in sg.node:
                self.subgraph_reads.update(x for x in n.input if x)
        self.outputs = {o.name for o in g.output}
        self.ranks: dict[str, int] = {}
        try:
            from onnx import shape_inference

            inferred = shape_inference.infer_shapes(proto)
            for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
                if vi.type.tensor_type.HasField("shape"):
                    self.ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        except Exception:
            pass


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else a.f
    return default


def _producer(node: Any, G: _Graph) -> tuple[str, int, int, int] | None:
    """(weight name, weight out axis, channel count, activation channel axis) for a weighted node
    whose weight is a constant; None otherwise. Activation axis: -1 (MatMul/Gemm) or 1 (Conv)."""
    if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in G.consts:
        w = G.consts[node.input[1]]
        if w.ndim == 2 and node.input[0] not in G.consts:
            return node.input[1], 1, int(w.shape[1]), -1
    if node.op_type == "Gemm" and node.input[1] in G.consts and not _attr(node, "transA", 0):
        w = G.consts[node.input[1]]
        axis = 0 if _attr(node, "transB", 0) else 1
        return node.input[1], axis, int(w.shape[axis]), -1
    if node.op_type == "Conv" and node.input[1] in G.consts and _attr(node, "group", 1) == 1:
        w = G.consts[node.input[1]]
        return node.input[1], 0, int(w.shape[0]), 1
    return None


def _channel_const(arr: np.ndarray, channels: int, act_axis: int, act_rank: int | None) -> int | None | str:
    """For a constant operand broadcast against the activation: 'scalar' when it has one element,
    the axis of `arr` holding the channels when it is a per-channel vector, None otherwise."""
    if arr.size == 1:
        return "scalar"
    if act_axis == -1:
        if arr.shape and arr.shape[-1] == channels and int(np.prod(arr.shape[:-1])) == 1:
            return arr.ndim - 1
        return None
    if act_rank is None:
        return None
    # Conv activation (N, C, *spatial): right-aligned, the channel axis of arr is ndim - (rank - 1)
    pos = arr.ndim - (act_rank - 1)
    if pos < 0 or arr.shape[pos] != channels or arr.size != channels:
        return None
    return pos


def analyse(proto: Any) -> list[Candidate]:
    """Every weighted node of the main graph with its region, or the reason it is blocked."""
    G = _Graph(proto)
    out = []
    for node in proto.graph.node:
        info = _producer(node, G)
        if info is not None:
            out.append(_candidate(node, info, G, proto))
    return out


@dataclass
class _Walk:
    """The walk from a producer's output through channel-wise ops to its consumers."""

    cand: Candidate
    G: _Graph
    proto: Any
    act_axis: int
    act_rank: int | None
    region: set[str]
    seen: set[int]


def _candidate(node: Any, info: tuple[str, int, int, int], G: _Graph, proto: Any) -> Candidate:
    wname, w_axis, channels, act_axis = info
    cand = Candidate(node, wname, w_axis, channels)
    cand.edits.append(_Edit(node, 1, w_axis))
    if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2]:
        b = G.consts.get(node.input[2])
        if b is None:
            cand.blocked = "bias is not a constant"
        elif b.size == channels:
            cand.edits.append(_Edit(node, 2, b.ndim - 1))
        elif b.size != 1:
            cand.blocked = f"bias shape {list(b.shape)} is not per-channel"
    act_rank = G.ranks.get(node.input[0]) if act_axis == 1 else None
    _walk_region(_Walk(cand, G, proto, act_axis, act_rank, {node.output[0]}, {id(node)}))
    if cand.blocked is None and not cand.consumers:
        cand.blocked = "no consumer weight to shrink"
    return cand


def _walk_region(w: _Walk) -> None:
    cand, G = w.cand, w.G
    stack = list(w.region)
    while stack and cand.blocked is None:
        t = stack.pop()
        if t in G.outputs:
            cand.blocked = f"'{t}' is a graph output"
            break
        if t in G.subgraph_reads:
            cand.blocked = f"'{t}' is read inside a subgraph"
            break
        for user, idx in G.consumers.get(t, []):
            new = _visit(w, user, idx, t)
            if cand.blocked:
                break
            if new is not None and new not in w.region:
                w.region.add(new)
                stack.append(new)


def _visit(w: _Walk, user: Any, idx: int, t: str) -> str | None:
    """The tensor `user` adds to the region (None: none); sets `cand.blocked` when it blocks."""
    op = user.op_type
    if op in ("MatMul", "Gemm", "Conv") and idx == 0:
        _add_consumer(w, user)
        return None
    if id(user) in w.seen:
        return None
    if op in UNARY:
        _unary(w, user)
    elif op == "BatchNormalization" and w.act_axis == 1 and idx == 0:
        _batchnorm(w, user)
    elif op in BINARY:
        _binary(w, user, idx)
    else:
        w.cand.blocked = f"'{t}' flows into {op} '{user.name}', which is not channel-wise"
    if w.cand.blocked:
        return None
    w.seen.add(id(user))
    return user.output[0]


def _add_consumer(w: _Walk, user: Any) -> None:
    cand, op = w.cand, user.op_type
    pinfo = _producer(user, w.G)
    trans_a = op == "Gemm" and _attr(user, "transA", 0)
    if pinfo is None or trans_a:
        cand.blocked = f"consumer {op} '{user.name}' has no constant weight it can shrink"
        return
    weight = w.G.consts[user.input[1]]
    k_axis = {"MatMul": 0, "Conv": 1}.get(op, 1 if _attr(user, "transB", 0) else 0)
    if weight.shape[k_axis] != cand.channels:
        cand.blocked = f"consumer '{user.name}' does not contract over the channels"
        return
    if id(user) not in w.seen:
        w.seen.add(id(user))
        cand.consumers.append(_Edit(user, 1, k_axis))


def _unary(w: _Walk, user: Any) -> None:
    for extra in list(user.input)[1:]:  # Clip min/max, PRelu slope
        if not extra:
            continue
        arr = w.G.consts.get(extra)
        kind = None if arr is None else _channel_const(arr, w.cand.channels, w.act_axis, w.act_rank)
        if kind is None:
            w.cand.blocked = f"{user.op_type} '{user.name}' takes a non-channel-wise operand"
            return
        if kind != "scalar":
            w.cand.edits.append(_Edit(user, list(user.input).index(extra), int(kind)))


def _batchnorm(w: _Walk, user: Any) -> None:
    for j in range(1, 5):
        arr = w.G.consts.get(user.input[j])
        if arr is None or arr.shape != (w.cand.channels,):
            w.cand.blocked = f"BatchNormalization '{user.name}' parameters are not per-channel constants"
            return
        w.cand.edits.append(_Edit(user, j, 0))


def _binary(w: _Walk, user: Any, idx: int) -> None:
    op = user.op_type
    other_idx = 1 - idx
    other = user.input[other_idx]
    if other in w.region and other_idx < len(user.input):
        return
    if other in w.G.consts:
        kind = _channel_const(w.G.consts[other], w.cand.channels, w.act_axis, w.act_rank)
        if kind is None:
            w.cand.blocked = f"{op} '{user.name}' broadcasts a constant that is not per-channel"
        elif kind != "scalar":
            w.cand.edits.append(_Edit(user, other_idx, int(kind)))
        return
    # the other operand may join the region later (x * f(x)): only if it derives from it
    if not _derives_from(other, w.region, w.proto, w.G):
        w.cand.blocked = f"{op} '{user.name}' combines the channels with another tensor (residual?)"


def _derives_from(name: str, region: set[str], proto: Any, G: _Graph, depth: int = 0) -> bool:
    """True when `name` is computed only from region tensors and constants by channel-wise ops."""
    if name in region:
        return True
    if name in G.consts or depth > 16:
        return name in G.consts and G.consts[name].size == 1
    node = next((n for n in proto.graph.node if name in n.output), None)
    if node is None or node.op_type not in UNARY | BINARY:
        return False
    return all(_derives_from(i, region, proto, G, depth + 1) for i in node.input if i)


def _norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(arr.astype(np.float64)), axis, 0).reshape(arr.shape[axis], -1)
    return moved.sum(1) if p == 1 else np.sqrt((moved**2).sum(1))


def run_onnx_structured(cfg: PruneConfig, name: str, model: Any, ctx: Any) -> PassResult:
    from optimize import onnx_io
    from optimize.errors import PassError
    from optimize.inspect_onnx import weight_stats
    from optimize.runtime import check_model

    proto = onnx_io.load(model.onnx_path)
    stats_before = weight_stats(proto)
    candidates = analyse(proto)
    inits = {i.name: i for i in proto.graph.initializer}
    const_nodes = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}
    entries, blocked = _Shrinker(cfg, proto).shrink_all(candidates)
    _drop_unused(proto, inits, const_nodes)
    path = onnx_io.save(proto, ctx.step_dir(name) / "model.onnx")
    try:
        check_model(path)
    except Exception as exc:
        raise PassError(name, f"the pruned ONNX graph is invalid: {exc}") from None
    stats = weight_stats(proto)
    metrics: dict[str, Any] = {"method": "structured", "target_sparsity": cfg.sparsity, "importance": cfg.importance}
    samples, source = _parity(metrics, name, model, path, ctx)
    one = {k: (1, *v.shape[1:]) for k, v in samples.items()}
    metrics["macs_before"] = U.onnx_macs(onnx_io.load(model.onnx_path), one)
    metrics["macs_after"] = U.onnx_macs(proto, one)
    metrics["macs_batch"] = 1
    mb, ma = metrics["macs_before"], metrics["macs_after"]
    metrics["macs_reduction"] = round(mb / ma, 4) if mb and ma else None
    before, after = stats_before.total, stats.total
    metrics.update(
        params_before=before, params_after=after,
        params_removed=round(1 - after / before, 6) if before else 0.0,
        params_nonzero_after=stats.nonzero,
        weights_total=after, weights_zero=after - stats.nonzero,
        sparsity=round((after - stats.nonzero) / after, 6) if after else 0.0,
        layers_pruned=len(entries), layers=entries,
    )
    notes: list[str] = []
    if blocked:
        notes.append(f"structured ONNX pruning skipped {len(blocked)} weighted node(s): {PT.short_list(blocked, 6)}")
    if not entries:
        notes.append("structured ONNX pruning found no producer/consumer chain it could shrink: nothing removed")
    notes.append(
        f"structured ONNX pruning: {len(entries)} layer(s) shrunk, weights {before} → {after}; parity min cosine "
        f"{metrics['parity']['min_cosine']} on {source}"
    )
    ctx.log.info("prune: structured on ONNX, %d layer(s), weights %d → %d", len(entries), before, after)
    return PassResult(model.replace(onnx_path=path), metrics=metrics, notes=notes)


class _Shrinker:
    """Removes the lowest-ranked channels of each selected candidate: new, smaller initializers
    for the producer, its region's per-channel constants and the consumers."""

    def __init__(self, cfg: PruneConfig, proto: Any) -> None:
        self.cfg, self.proto = cfg, proto
        self.G = _Graph(proto)
        self.p = 1 if cfg.importance == "l1" else 2
        self.counter = 0

    def shrink_all(self, candidates: list[Candidate]) -> tuple[list[dict[str, Any]], list[str]]:
        """(report entries, blocked producers the selection named)."""
        cfg = self.cfg
        entries, blocked = [], []
        for cand in candidates:
            node = cand.producer
            names = [cand.weight, node.name, f"{node.name}.weight"]
            if cand.blocked:
                if PT.selected(cfg, names):
                    blocked.append(f"{node.name or cand.weight}: {cand.blocked}")
                continue
            if not PT.selected(cfg, names):
                continue
            keep_n = self._keep_count(cand, U.layer_ratio(names, cfg.layer_sparsity, cfg.sparsity))
            if keep_n < cand.channels:
                entries.append(self._shrink(cand, keep_n))
        return entries, blocked

    def _keep_count(self, cand: Candidate, ratio: float) -> int:
        keep_n = cand.channels - int(round(ratio * cand.channels))
        if self.cfg.round_to:
            keep_n = min(cand.channels, int(math.ceil(keep_n / self.cfg.round_to) * self.cfg.round_to))
        return max(1, keep_n)

    def _shrink(self, cand: Candidate, keep_n: int) -> dict[str, Any]:
        from onnx import numpy_helper

        node, consts = cand.producer, self.G.consts
        score = _norms(consts[cand.weight], cand.out_axis, self.p)
        for c in cand.consumers:
            score = score * _norms(consts[c.node.input[c.index]], c.axis, self.p)
        keep = np.sort(np.argsort(-score, kind="stable")[:keep_n])
        w_before = list(consts[cand.weight].shape)
        removed = weights_removed = 0
        weight_edits = {id(cand.edits[0]), *(id(c) for c in cand.consumers)}
        for e in cand.edits + cand.consumers:
            src = e.node.input[e.index]
            arr = consts[src]
            new = np.take(arr, keep, axis=e.axis)
            removed += int(arr.size - new.size)
            if id(e) in weight_edits:
                weights_removed += int(arr.size - new.size)
            self.counter += 1
            new_name = f"{src}__pruned{self.counter}"
            self.proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(new), new_name))
            consts[new_name] = new
            e.node.input[e.index] = new_name
        return {
            "name": node.name or cand.weight,
            "op": node.op_type,
            "weight": cand.weight,
            "channels_before": cand.channels,
            "channels_after": int(keep_n),
            "shape_before": w_before,
            "shape_after": [keep_n if i == cand.out_axis else d for i, d in enumerate(w_before)],
            "consumers": [c.node.name or c.node.input[1] for c in cand.consumers],
            "params_removed": removed,
            "weights_removed": weights_removed,
        }


def _drop_unused(proto: Any, inits: dict[str, Any], const_nodes: dict[str, Any]) -> None:
    """Drop the constants nothing reads any more, and stale shapes."""
    from optimize.inspect_onnx import all_graphs

    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    for sg in list(all_graphs(proto.graph))[1:]:
        used |= {i for n in sg.node for i in n.input}
    for name in [i.name for i in proto.graph.initializer if i.name not in used]:
        proto.graph.initializer.remove(inits.get(name) or next(i for i in proto.graph.initializer if i.name == name))
    for name, n in const_nodes.items():
        if name not in used:
            proto.graph.node.remove(n)
    del proto.graph.value_info[:]


def _parity(metrics: dict[str, Any], name: str, model: Any, path: Any, ctx: Any) -> tuple[dict[str, Any], str]:
    """Compare the pruned model with the input in ONNX Runtime; returns (samples, their source)."""
    from optimize.errors import PassError
    from optimize.runtime import parity, predict, session

    try:
        ds = ctx.data("eval")
        if ds is None:
            from optimize.data import random_dataset

            ds, source = random_dataset(model.inputs, 32, getattr(ctx, "seed", 0)), "random inputs from the input spec"
        else:
            ds, source = ds.take(32), "data.eval"
        samples = ds.inputs
        ref = predict(session(model.onnx_path), samples)
        got = predict(session(path), samples)
        par = parity(ref, got)
        metrics["parity"] = {**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in par.items()}, "on": source}
    except Exception as exc:
        raise PassError(name, f"the pruned ONNX model does not run: {str(exc).splitlines()[0][:300]}") from None
    return samples, source
