"""Magnitude and N:M pruning straight on ONNX: weight tensors are rewritten in the ModelProto
itself (initializers, Constant nodes' `value`, If/Loop/Scan bodies), because no library prunes
ONNX initializers. Weight discovery is shared with the report's weight count
(`optimize.inspect_onnx`). Memory stays bounded by the largest tensor (models over 2 GB:
tests/integration/test_large_model.py): the proto is read without its external data, each weight is read,
pruned and written on its own, and untouched external tensors are copied file-to-file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimize.pass_api import PassResult
from passes.prune import torch_common as PT
from passes.prune.config import PruneConfig
from passes.prune.masks import GlobalCut, layer_entry, magnitude_keep, nm_keep

_NO_SPEEDUP = (
    "unstructured and N:M zeros do not make dense runtimes (ONNX Runtime on CPU) faster: they "
    "shrink the compressed file, not the latency; use method: structured to remove work"
)
_NM_GPU = (
    "N:M (2:4) sparsity is only faster with sparse tensor-core kernels on a GPU "
    "(torch.sparse.to_sparse_semi_structured); the exported ONNX stays dense"
)
ONNX_FLOAT = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}
# weighted ONNX ops that are embedding lookups, not layers: kept unless `include` names them
EMBEDDING_OPS = {"Gather"}


def onnx_in_axes(use: Any, ndim: int) -> tuple[int, ...] | None:
    """The axes of the stored weight that form the input dimension of `use.node`, following
    Transpose/Cast/Identity between the stored tensor and the op. None when unknown."""
    node, i = use.node, use.input_index
    attrs = {a.name: a for a in node.attribute}
    op = node.op_type
    axes: tuple[int, ...] | None
    if op in ("Conv", "ConvInteger") and ndim >= 2:
        axes = tuple(range(1, ndim))
    elif op == "ConvTranspose" and ndim >= 2:
        axes = (0, *range(2, ndim))
    elif op == "MatMul" and ndim >= 2:
        axes = (ndim - 2,) if i == 1 else (ndim - 1,)  # Y = X·W: W is (..., K, N); W·X: (..., M, K)
    elif op == "Gemm" and ndim == 2:
        if i == 1:
            axes = (1,) if ("transB" in attrs and attrs["transB"].i) else (0,)
        else:
            axes = (0,) if ("transA" in attrs and attrs["transA"].i) else (1,)
    elif op in ("LSTM", "GRU", "RNN") and ndim == 3:
        axes = (2,)  # (directions, gates*hidden, input or hidden)
    else:
        return None
    for via in use.via:  # weighted-op side first
        if via.op_type in ("Cast", "Identity"):
            continue
        if via.op_type != "Transpose":
            return None
        perm = next((list(a.ints) for a in via.attribute if a.name == "perm"), None) or list(reversed(range(ndim)))
        axes = tuple(perm[a] for a in axes)
    return axes


def onnx_output_weights(model: Any, uses: list[Any]) -> set[str]:
    """Weights of the last weighted nodes on every path to a graph output (walking back from the
    main graph's outputs, into If/Loop/Scan bodies, stopping at the first weighted node)."""
    from optimize.inspect_onnx import all_graphs

    weights_of: dict[tuple[str, ...], list[str]] = {}
    for u in uses:
        weights_of.setdefault(tuple(u.node.output), []).append(u.key)
    producers: dict[str, Any] = {}
    for g in all_graphs(model.graph):
        for n in g.node:
            for o in n.output:
                producers[o] = n
    found: set[str] = set()
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            continue
        key = tuple(node.output)
        if key in weights_of:
            found.update(weights_of[key])
            continue
        stack.extend(i for i in node.input if i)
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.g.ByteSize() else []) + list(attr.graphs)
            for sg in subgraphs:
                stack.extend(o.name for o in sg.output)
    return found



@dataclass
class _Selection:
    """The weights to prune (name → its uses), and those left alone with the reason."""

    chosen: dict[str, list[Any]] = field(default_factory=dict)
    embeddings: list[str] = field(default_factory=list)
    non_float: list[str] = field(default_factory=list)
    kept_out: list[str] = field(default_factory=list)


def _select(cfg: PruneConfig, proto: Any, uses: list[Any]) -> _Selection:
    from onnx import TensorProto

    by_name: dict[str, list[Any]] = {}
    for u in uses:
        by_name.setdefault(u.key, []).append(u)
    out_weights = onnx_output_weights(proto, uses) if cfg.keep_output_layer else set()
    sel = _Selection()
    for name, us in by_name.items():
        names = [name, us[0].name, *(u.node.name for u in us if u.node.name)]
        if any(u.node.op_type in EMBEDDING_OPS for u in us) and not (cfg.include and PT.matches(names, cfg.include)):
            sel.embeddings.append(name)
            continue
        if not PT.selected(cfg, names):
            continue
        if name in out_weights:
            sel.kept_out.append(name)
            continue
        dtype = TensorProto.DataType.Name(us[0].tensor.data_type)
        if dtype not in ONNX_FLOAT:
            sel.non_float.append(f"{name} ({dtype.lower()})")
            continue
        sel.chosen[name] = us
    return sel


class _Rewriter:
    """Prunes one chosen weight at a time, recording its report entry or why it was skipped."""

    def __init__(self, cfg: PruneConfig, chosen: dict[str, list[Any]], src_dir: Path, ctx: Any, key: str) -> None:
        self.cfg, self.chosen, self.src_dir, self.ctx, self.key = cfg, chosen, src_dir, ctx, key
        global_scope = cfg.method == "magnitude" and cfg.scope == "global"
        self.global_cut = GlobalCut(chosen, self.read, cfg.sparsity) if global_scope else None
        self.no_layout: list[str] = []
        self.not_divisible: list[str] = []
        self.entries: dict[str, dict[str, Any]] = {}

    def read(self, n: str) -> np.ndarray:
        from optimize import onnx_io

        return onnx_io.tensor_array(self.chosen[n][0].tensor, self.src_dir)

    def _keep(self, n: str, arr: np.ndarray) -> np.ndarray | None:
        cfg = self.cfg
        if self.global_cut is not None:
            return self.global_cut.keep(arr)
        if cfg.method == "magnitude":
            return magnitude_keep({n: arr}, cfg.sparsity, "layer")[n]
        axes = next(
            (ax for u in self.chosen[n] if u.node.op_type not in EMBEDDING_OPS
             for ax in [onnx_in_axes(u, arr.ndim)] if ax is not None),
            None,
        )
        if axes is None:
            self.no_layout.append(n)
            return None
        keep = nm_keep(arr, axes, cfg.n, cfg.m)
        if keep is None:
            self.not_divisible.append(n)
        return keep

    def pruned(self, n: str) -> np.ndarray | None:
        """The pruned array for weight `n` (None when N:M does not apply to it)."""
        arr = self.read(n)
        keep = self._keep(n, arr)
        if keep is None:
            return None
        new = np.where(keep, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype, copy=False)
        del keep
        zeros = int(new.size - np.count_nonzero(new))
        self.entries[n] = layer_entry(n, arr.shape, new.shape, zeros, int(new.size))
        self.ctx.progress.advance(self.key)
        return new

    def raw_of(self, n: str) -> Any:
        from onnx import numpy_helper

        def produce() -> bytes:
            new = self.pruned(n)
            if new is None:  # unchanged: the original bytes
                return self.read(n).tobytes()
            return numpy_helper.from_array(new).raw_data
        return produce

    def write(self, proto: Any, path: Path) -> Path:
        """Small tensors are replaced in the proto; external ones are streamed by the writer."""
        from onnx import numpy_helper

        from optimize import onnx_io

        replace: dict[Any, Any] = {}
        for n, us in self.chosen.items():
            t = us[0].tensor
            if onnx_io.uses_external(t):
                replace[onnx_io.external_key(t)] = self.raw_of(n)
            else:
                new = self.pruned(n)
                if new is not None:
                    t.CopyFrom(numpy_helper.from_array(new, t.name))
        return onnx_io.save_streaming(proto, path, self.src_dir, replace)


def run_onnx(cfg: PruneConfig, pass_name: str, model: Any, ctx: Any) -> PassResult:
    from optimize import onnx_io
    from optimize.errors import PassError
    from optimize.inspect_onnx import iter_weight_uses, weight_stats

    if cfg.method == "structured":  # check() rejects this at plan time
        raise PassError(pass_name, "structured pruning needs a torch model; the model is ONNX at this point")
    src_dir = Path(model.onnx_path).parent
    proto = onnx_io.load(model.onnx_path, load_external_data=False)
    stats_before = weight_stats(model.onnx_path)
    sel = _select(cfg, proto, list(iter_weight_uses(proto)))
    key = f"{getattr(ctx, 'step_index', 0)}-prune"
    ctx.progress.start(key, f"prune ({cfg.method}, ONNX)", len(sel.chosen))
    try:
        rw = _Rewriter(cfg, sel.chosen, src_dir, ctx, key)
        path = rw.write(proto, ctx.step_dir(pass_name) / "model.onnx")
    finally:
        ctx.progress.finish(key)
    entries = [rw.entries[n] for n in sel.chosen if n in rw.entries]
    metrics = _metrics(cfg, path, stats_before, {n for n in sel.chosen if n in rw.entries}, entries)
    ctx.log.info("prune: %s on ONNX, %d weight(s), sparsity of selected weights %.3f",
                 cfg.method, len(entries), metrics["selected_sparsity"])
    return PassResult(model.replace(onnx_path=path), metrics=metrics, notes=_notes(cfg, sel, rw))


def _notes(cfg: PruneConfig, sel: _Selection, rw: _Rewriter) -> list[str]:
    notes: list[str] = []
    if rw.no_layout:
        notes.append(f"N:M skipped {len(rw.no_layout)} weight(s) whose input axis is unknown: {PT.short_list(rw.no_layout)}")
    if rw.not_divisible:
        notes.append(
            f"N:M skipped {len(rw.not_divisible)} weight(s) whose input dimension is not divisible by "
            f"{cfg.m}: {PT.short_list(rw.not_divisible)}"
        )
    if sel.kept_out:
        notes.append(f"output layer kept whole: {PT.short_list(sel.kept_out)}")
    if sel.embeddings:
        notes.append(
            f"embedding table(s) not pruned (add an include pattern to prune them): {PT.short_list(sel.embeddings)}"
        )
    if sel.non_float:
        notes.append(f"non-float weights skipped (already quantized): {PT.short_list(sel.non_float)}")
    if not rw.entries:
        notes.append("no weight matched the selection: nothing pruned")
    notes.append(_NO_SPEEDUP)
    if cfg.method == "nm":
        notes.append(_NM_GPU)
    return notes


def _metrics(cfg: PruneConfig, path: Path, stats_before: Any, keeps: set[str], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Sparsity of the selected and of all dense weights (embedding tables aside), measured on the file."""
    from optimize.inspect_onnx import weight_stats

    stats = weight_stats(path)
    dense = [t for t in stats.tensors if t.op_type not in EMBEDDING_OPS]
    tot = sum(t.count for t in dense)
    zero = tot - sum(t.nonzero for t in dense)
    sel = [t for t in stats.tensors if t.name in keeps]
    sel_tot = sum(t.count for t in sel)
    sel_zero = sel_tot - sum(t.nonzero for t in sel)
    metrics: dict[str, Any] = {"method": cfg.method, "target_sparsity": cfg.sparsity}
    if cfg.method == "magnitude":
        metrics["scope"] = cfg.scope
    else:
        metrics["pattern"] = f"{cfg.n}:{cfg.m}"
    metrics.update(
        selected_weights_total=sel_tot,
        selected_weights_zero=sel_zero,
        selected_sparsity=round(sel_zero / sel_tot, 6) if sel_tot else 0.0,
        weights_total=tot,
        weights_zero=zero,
        sparsity=round(zero / tot, 6) if tot else 0.0,
        params_before=stats_before.total,
        params_after=stats.total,
        params_nonzero_after=stats.nonzero,
        layers_pruned=len(entries),
        layers=entries,
    )
    return metrics
