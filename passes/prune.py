"""prune: remove weights by magnitude (unstructured, layer-wise or global), whole channels /
neurons (structured, through Torch-Pruning's dependency graph so residuals and concatenations stay
consistent), or N:M semi-structured patterns. Torch and ONNX forms.

What is hand-written here, and why:

- Torch masks are a `torch.nn.utils.parametrize` parametrization (`WeightMask`: `X * mask`), not
  `torch.nn.utils.prune`: prune's forward-pre-hook and `weight_orig` renaming do not compose with
  the parametrizations that a later quantize pass stacks on the same weight, whereas
  parametrizations stack, survive training (a distill pass trains the module: masked weights stay
  zero because the forward multiplies by the mask) and are baked into plain weights by
  `optimize.export.finalized_module`.
- Magnitude and N:M masks are a few lines of numpy (argpartition / argsort per group) shared by
  the torch and ONNX forms, so both forms prune identically and the counts are exact.
- ONNX pruning rewrites weight tensors in the ModelProto itself — initializers, Constant nodes'
  `value` and the bodies of If/Loop/Scan subgraphs — because no library prunes ONNX initializers.
  Weight discovery is shared with the report's weight count (`optimize.inspect_onnx`).
- Structured pruning is Torch-Pruning's (`MetaPruner` + `MagnitudeImportance`); this module only
  picks the ignored layers (the output layer, include/exclude) and checks the result still runs
  with the same output shapes.

Unstructured and N:M zeros make no dense runtime faster (ONNX Runtime on CPU): the pass says so in
its notes; only structured pruning shrinks the matmuls.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from optimize.pass_api import Pass, PassConfig, PassResult
from passes import prune_torch as PT


class PruneConfig(PassConfig):
    method: Literal["magnitude", "structured", "nm"] = Field(
        "magnitude",
        description="magnitude: zero the smallest weights; structured: remove whole output channels/neurons, attention heads and FFN neurons (torch; on ONNX: output neurons/channels of MatMul/Gemm/Conv chains); nm: keep N of every M consecutive weights.",
    )
    sparsity: float = Field(
        0.5, ge=0.0, lt=1.0,
        description="Fraction of weights (magnitude) or of channels / FFN neurons per layer (structured) to remove.",
    )
    scope: Literal["layer", "global"] = Field(
        "layer",
        description="Rank weights (magnitude) or channel groups (structured) within each layer, or across all selected layers.",
    )
    importance: Literal["l1", "l2", "taylor"] = Field(
        "l2",
        description="structured: channel importance. l1/l2: weight norm; taylor: |weight × gradient| of a loss on data.calibration (or data.train) samples (data-driven).",
    )
    importance_samples: int = Field(
        128, ge=1, le=100_000, description="structured, importance taylor: data samples whose gradients are summed."
    )
    layer_sparsity: dict[str, float] = Field(
        default_factory=dict,
        description="Per-layer sparsity overriding `sparsity`: glob pattern on the layer / initializer name → fraction in [0, 1). The first matching pattern wins.",
    )
    max_ratio: float = Field(
        1.0, gt=0.0, le=1.0,
        description="structured: the largest fraction of any one layer's channels that may be removed (matters with scope: global).",
    )
    head_sparsity: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="structured, transformers: fraction of attention heads removed in each attention module (whole heads; `sparsity` then applies to FFN neurons).",
    )
    keep_hidden_size: bool = Field(
        True,
        description="structured, transformers: never prune the residual-stream width (layers whose output channels are coupled to a LayerNorm or an embedding); only heads and FFN neurons go.",
    )
    n: int = Field(2, ge=1, description="nm: weights kept in each group.")
    m: int = Field(4, ge=2, le=64, description="nm: group size along the input dimension.")
    include: list[str] = Field(
        default_factory=list, description="Only layers / initializers whose name matches one of these glob patterns."
    )
    exclude: list[str] = Field(default_factory=list, description="Skip layers / initializers matching these globs.")
    keep_output_layer: bool = Field(
        True, description="Never prune the final layer (the classifier head), whose outputs are the model's outputs."
    )
    round_to: int | None = Field(None, gt=0, description="structured: keep channel counts a multiple of this.")
    steps: int = Field(
        1, ge=1, le=1000,
        description="Gradual pruning: reach the target sparsity over this many steps (magnitude and structured, torch).",
    )
    schedule: Literal["linear", "cubic"] = Field(
        "cubic",
        description="Gradual pruning: sparsity after step k of K is s·k/K (linear) or s·(1−(1−k/K)³) (cubic, Zhu & Gupta 2017).",
    )
    finetune_epochs: int = Field(
        0, ge=0, le=10_000,
        description="Gradual pruning: epochs of fine-tuning (the distill loop, teacher = input model) between steps; needs data.train.",
    )
    finetune_lr: float = Field(1e-3, gt=0, le=10, description="Learning rate of the fine-tuning between steps.")
    nm_gpu_benchmark: bool = Field(
        True,
        description="nm on --device cuda: time the 2:4 model with sparse semi-structured kernels against dense fp16/bf16 in torch and report both.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> PruneConfig:
        if self.method == "nm" and self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        if self.method == "nm" and self.steps > 1:
            raise ValueError("steps > 1 (gradual pruning) applies to magnitude and structured, not to nm")
        bad = {k: v for k, v in self.layer_sparsity.items() if not 0.0 <= v < 1.0}
        if bad:
            raise ValueError(f"layer_sparsity values must be in [0, 1): {bad}")
        if self.importance == "taylor" and self.method != "structured":
            raise ValueError("importance: taylor applies to method: structured")
        if self.finetune_epochs and self.steps == 1:
            raise ValueError("finetune_epochs runs between gradual steps: set steps > 1 (or use a distill pass after prune)")
        return self


# --------------------------------------------------------------------------------------------
# shared helpers (numpy): selection, magnitude masks, N:M masks
# --------------------------------------------------------------------------------------------

_NO_SPEEDUP = (
    "unstructured and N:M zeros do not make dense runtimes (ONNX Runtime on CPU) faster: they "
    "shrink the compressed file, not the latency; use method: structured to remove work"
)
_NM_GPU = (
    "N:M (2:4) sparsity is only faster with sparse tensor-core kernels on a GPU "
    "(torch.sparse.to_sparse_semi_structured); the exported ONNX stays dense"
)
_ONNX_FLOAT = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}
# weighted ONNX ops that are embedding lookups, not layers: kept unless `include` names them
_EMBEDDING_OPS = {"Gather"}


def _keep_largest(absval: np.ndarray, n_zero: int) -> np.ndarray:
    """A flat keep-mask that drops exactly the `n_zero` smallest entries of `absval`."""
    keep = np.ones(absval.size, dtype=bool)
    if n_zero >= absval.size:
        keep[:] = False
    elif n_zero > 0:
        keep[np.argpartition(absval, n_zero - 1)[:n_zero]] = False
    return keep


def _magnitude_keep(
    weights: dict[str, np.ndarray], sparsity: float, scope: str, per_layer: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Keep-masks zeroing the smallest |w|: `sparsity` of each tensor (layer) or of all of them
    together (global: one threshold across the tensors). Tensors named in `per_layer` are pruned
    on their own to their own fraction."""
    per_layer = per_layer or {}
    absval = {k: np.abs(np.asarray(w, dtype=np.float32)).ravel() for k, w in weights.items()}
    out: dict[str, np.ndarray] = {}
    for k, a in absval.items():
        if scope == "layer" or k in per_layer:
            out[k] = _keep_largest(a, int(round(per_layer.get(k, sparsity) * a.size))).reshape(weights[k].shape)
    rest = {k: a for k, a in absval.items() if k not in out}
    if not rest:
        return out
    flat = np.concatenate(list(rest.values()))
    keep = _keep_largest(flat, int(round(sparsity * flat.size)))
    start = 0
    for k, a in rest.items():
        out[k] = keep[start : start + a.size].reshape(weights[k].shape)
        start += a.size
    return out



class _GlobalCut:
    """Global magnitude pruning, one tensor at a time: the threshold comes from one flat float32
    array of |w| over the selected weights (partitioned in place, no index array), then each
    tensor drops its entries below it, and entries equal to it in order until exactly
    round(sparsity × total) are dropped (as `_keep_largest` does on the concatenation)."""

    def __init__(self, chosen: dict[str, Any], read: Any, sparsity: float) -> None:
        sizes = {n: int(np.prod(us[0].tensor.dims, dtype=np.int64)) for n, us in chosen.items()}
        total = sum(sizes.values())
        self.n_zero = int(round(sparsity * total))
        self.threshold: float | None = None
        self.ties_left = 0
        if 0 < self.n_zero < total:
            flat = np.empty(total, dtype=np.float32)
            start = 0
            for n in chosen:
                flat[start : start + sizes[n]] = np.abs(np.asarray(read(n), dtype=np.float32)).ravel()
                start += sizes[n]
            flat.partition(self.n_zero - 1)
            self.threshold = float(flat[self.n_zero - 1])
            below = int(np.count_nonzero(flat < self.threshold))
            del flat
            self.ties_left = self.n_zero - below

    def keep(self, arr: np.ndarray) -> np.ndarray:
        if self.n_zero <= 0:
            return np.ones(arr.shape, dtype=bool)
        if self.threshold is None:  # every weight goes
            return np.zeros(arr.shape, dtype=bool)
        a = np.abs(np.asarray(arr, dtype=np.float32))
        keep = ~(a < self.threshold)
        if self.ties_left > 0:
            ties = np.flatnonzero(a == self.threshold)[: self.ties_left]
            keep.flat[ties] = False
            self.ties_left -= len(ties)
        return keep


def _nm_keep(w: np.ndarray, in_axes: tuple[int, ...], n: int, m: int) -> np.ndarray | None:
    """Keep the `n` largest |w| of every `m` consecutive weights along the input dimension.

    `in_axes` are the axes that make up one output unit's inputs (for a Conv: in-channels and
    kernel, flattened in that order). None when their size is not divisible by `m`.
    """
    rest = [a for a in range(w.ndim) if a not in in_axes]
    perm = rest + list(in_axes)
    t = np.abs(np.asarray(w, dtype=np.float32)).transpose(perm)
    in_size = int(np.prod([w.shape[a] for a in in_axes]))
    if in_size == 0 or in_size % m:
        return None
    groups = t.reshape(-1, in_size // m, m)
    top = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, top, True, axis=-1)
    return keep.reshape(t.shape).transpose(np.argsort(perm))


def _layer_entry(name: str, before: tuple[int, ...], after: tuple[int, ...], zeros: int, total: int) -> dict[str, Any]:
    return {
        "name": name,
        "shape_before": list(before),
        "shape_after": list(after),
        "weights": int(total),
        "zeros": int(zeros),
        "sparsity": round(zeros / total, 6) if total else 0.0,
    }


# --------------------------------------------------------------------------------------------
# torch: the mask parametrization
# --------------------------------------------------------------------------------------------

def __getattr__(name: str) -> Any:  # PEP 562: `from passes.prune import WeightMask`
    if name == "WeightMask":
        return PT.weight_mask_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch_in_axes(m: Any) -> tuple[int, ...]:
    from torch import nn

    nd = m.weight.dim()
    if isinstance(m, nn.modules.conv._ConvTransposeNd):  # (in, out/groups, *kernel)
        return (0, *range(2, nd))
    return tuple(range(1, nd))  # Linear (out, in); Conv (out, in/groups, *kernel)


def _weight_np(m: Any) -> np.ndarray:
    return m.weight.detach().float().cpu().numpy()


def _torch_sparsity_metrics(layers: list[tuple[str, Any]], selected: set[str]) -> dict[str, Any]:
    tot = zero = sel_tot = sel_zero = 0
    for name, m in layers:
        w = m.weight.detach()
        n, z = int(w.numel()), int(w.numel() - w.count_nonzero().item())
        tot, zero = tot + n, zero + z
        if name in selected:
            sel_tot, sel_zero = sel_tot + n, sel_zero + z
    return {
        "selected_weights_total": sel_tot,
        "selected_weights_zero": sel_zero,
        "selected_sparsity": round(sel_zero / sel_tot, 6) if sel_tot else 0.0,
        "weights_total": tot,
        "weights_zero": zero,
        "sparsity": round(zero / tot, 6) if tot else 0.0,
    }


# --------------------------------------------------------------------------------------------
# ONNX: layouts and the output layer
# --------------------------------------------------------------------------------------------


def _onnx_in_axes(use: Any, ndim: int) -> tuple[int, ...] | None:
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


def _onnx_output_weights(model: Any, uses: list[Any]) -> set[str]:
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


# --------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------


class PrunePass(Pass):
    name = "prune"
    summary = (
        "Zero the smallest weights (layer-wise or global), remove whole channels/neurons "
        "(structured, torch), or impose an N:M pattern; on torch or straight on ONNX initializers."
    )
    config_cls = PruneConfig
    accepts = frozenset({"torch", "onnx"})

    config: PruneConfig

    def check(self, plan: Any) -> None:
        from optimize.errors import ConfigError

        cfg = self.config
        key = f"{plan.key}.prune"
        if plan.form_at_pass == "onnx":
            torch_only = {
                "importance": cfg.importance == "taylor", "head_sparsity": cfg.head_sparsity > 0,
                "steps": cfg.steps > 1, "round_to": cfg.round_to is not None,
            }
            for field_name, used in torch_only.items():
                if used:
                    raise ConfigError(
                        f"{field_name} needs a torch model; the model is ONNX at this point", key=f"{key}.{field_name}"
                    )
        if cfg.importance == "taylor" and not (plan.has_data("calibration") or plan.has_data("train")):
            raise ConfigError(
                "importance: taylor ranks channels by gradients on data: declare data.calibration or data.train",
                key=f"{key}.importance",
            )
        if cfg.finetune_epochs and not plan.has_data("train"):
            raise ConfigError("finetune_epochs needs training data: declare data.train", key=f"{key}.finetune_epochs")
        if cfg.method == "structured" and plan.form_at_pass == "torch" and not plan.has_input_spec:
            raise ConfigError(
                "structured pruning traces the model with example inputs: declare model.inputs "
                "(name, shape, dtype)",
                key="model.inputs",
            )

    def run(self, model: Any, ctx: Any) -> PassResult:
        from passes import prune_util as U

        if model.form == "onnx":
            if self.config.method == "structured":
                from passes.prune_onnx_structured import run_onnx_structured

                result = run_onnx_structured(self, model, ctx)
            else:
                result = self._run_onnx(model, ctx)
            before = U.onnx_weight_arrays(model.onnx_path)
            after = U.onnx_weight_arrays(result.model.onnx_path)
            big = max(U.onnx_weight_bytes(model.onnx_path), U.onnx_weight_bytes(result.model.onnx_path))
            if big > U.COMPRESS_LIMIT_BYTES:
                result.metrics["compressed_bytes"] = {
                    "formula": "zlib (DEFLATE, level 6) of the weights' float bytes, as in a .zip",
                    "raw_before": None, "raw_after": None, "zip_before": None, "zip_after": None, "ratio": None,
                    "reason": f"not measured: {big} bytes of weights, over {U.COMPRESS_LIMIT_BYTES} "
                              "(zlib would add minutes)",
                }
                return result
        else:
            if self.config.method == "structured":
                result = self._run_structured(model, ctx)
            else:
                result = self._run_masked(model, ctx)
            before = U.torch_weight_arrays(model.module)
            after = U.torch_weight_arrays(result.model.module)
            if self.config.method == "nm" and str(getattr(ctx, "device", "cpu")).startswith("cuda") \
                    and self.config.nm_gpu_benchmark:
                from passes.prune_gpu import nm_gpu_benchmark

                result.metrics["nm_gpu"] = nm_gpu_benchmark(result.model, ctx)
        raw_b, zip_b = U.compressed_bytes(before)
        raw_a, zip_a = U.compressed_bytes(after)
        result.metrics["compressed_bytes"] = {
            "formula": "zlib (DEFLATE, level 6) of the weights' float bytes, as in a .zip",
            "raw_before": raw_b, "raw_after": raw_a, "zip_before": zip_b, "zip_after": zip_a,
            "ratio": round(zip_b / zip_a, 4) if zip_a else None,
        }
        return result

    # ---- torch: magnitude and N:M, as mask parametrizations -------------------------------

    def _run_masked(self, model: Any, ctx: Any) -> PassResult:
        import time

        from optimize.export import copy_module
        from passes import prune_util as U

        cfg = self.config
        module = copy_module(model.module)  # deepcopy that leaves the input's parametrizations alone
        params_before = sum(p.numel() for p in module.parameters())
        layers = PT.torch_layers(module)
        notes: list[str] = []
        out_layers: set[str] = set()
        if cfg.keep_output_layer:
            out_layers, why = PT.torch_output_layers(module, layers, PT.example_args(model.replace(module=module), ctx))
            if out_layers:
                notes.append(f"output layer kept whole: {PT.short_list(sorted(out_layers))} ({why})")
        chosen = [
            (n, m) for n, m in layers if n not in out_layers and PT.selected(cfg, [n, f"{n}.weight"])
        ]
        shapes = {n: tuple(m.weight.shape) for n, m in chosen}
        per_layer = {
            n: r for n, _ in chosen
            if (r := U.layer_ratio([n, f"{n}.weight"], cfg.layer_sparsity, -1.0)) >= 0
        }
        targets = U.schedule(1.0, cfg.steps, cfg.schedule)
        gradual = cfg.steps > 1
        if gradual:
            eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
            names = [s.name for s in model.inputs]
            reference = U.torch_outputs(model.module, eval_ds, names)
        step_rows: list[dict[str, Any]] = []
        key = f"{getattr(ctx, 'step_index', 0)}-prune"
        ctx.progress.start(key, f"prune ({cfg.method})", len(chosen) * cfg.steps)
        pruned: set[str] = set()
        try:
            for k, frac in enumerate(targets):
                t0 = time.perf_counter()
                if cfg.method == "magnitude":
                    keeps = _magnitude_keep(
                        {n: _weight_np(m) for n, m in chosen}, cfg.sparsity * frac, cfg.scope,
                        {n: r * frac for n, r in per_layer.items()},
                    )
                    for n, m in chosen:
                        PT.apply_mask(m, keeps[n])
                        pruned.add(n)
                        ctx.progress.advance(key)
                else:
                    skipped = []
                    for n, m in chosen:
                        keep = _nm_keep(_weight_np(m), _torch_in_axes(m), cfg.n, cfg.m)
                        if keep is None:
                            skipped.append(n)
                        else:
                            PT.apply_mask(m, keep)
                            pruned.add(n)
                        ctx.progress.advance(key)
                    if skipped:
                        notes.append(
                            f"N:M skipped {len(skipped)} layer(s) whose input dimension is not divisible by "
                            f"{cfg.m}: {PT.short_list(skipped)}"
                        )
                if not gradual:
                    break
                sel = _torch_sparsity_metrics(PT.torch_layers(module), pruned)
                row: dict[str, Any] = {
                    "step": k + 1, "target_sparsity": round(cfg.sparsity * frac, 6),
                    "sparsity": sel["selected_sparsity"],
                }
                row.update({f"{q}_after_prune": v for q, v in U.quality(module, eval_ds, names, reference).items()})
                if k < cfg.steps - 1 and cfg.finetune_epochs > 0:
                    module, ft = U.finetune(module, model.replace(module=module), ctx, cfg.finetune_epochs, cfg.finetune_lr)
                    chosen = [(n, module.get_submodule(n)) for n, _ in chosen]
                    row["finetune_epochs"] = cfg.finetune_epochs
                    row["finetune_train_loss"] = ft.get("train_loss")
                    row.update(
                        {f"{q}_after_finetune": v for q, v in U.quality(module, eval_ds, names, reference).items()}
                    )
                row["seconds"] = round(time.perf_counter() - t0, 3)
                step_rows.append(row)
        finally:
            ctx.progress.finish(key)
        if not chosen:
            notes.append("no layer matched the selection (include/exclude, output layer kept): nothing pruned")
        notes.extend(U.speed_warnings(cfg.method, str(getattr(ctx, "device", "cpu")), False))
        metrics = self._torch_metrics(module, pruned, shapes, params_before)
        if gradual:
            metrics["schedule"] = {"steps": cfg.steps, "kind": cfg.schedule, "quality_on": eval_desc}
            metrics["per_step"] = step_rows
        # masks keep every tensor's shape, so a dense runtime does the same MACs; both are measured
        # (before: on the input module, after: on the pruned one), never one copied to the other, on
        # the masks baked into plain weights: Torch-Pruning's counter misses parametrized layers
        from optimize.export import finalized_module

        args = PT.example_args(model, ctx)
        metrics["macs_before"] = U.torch_macs(finalized_module(model.module), args)
        metrics["macs_after"] = U.torch_macs(finalized_module(module), args)
        ctx.log.info("prune: %s, %d layer(s), sparsity of selected weights %.3f",
                     cfg.method, len(pruned), metrics["selected_sparsity"])
        return PassResult(model.replace(module=module), metrics=metrics, notes=notes)

    def _torch_metrics(
        self, module: Any, pruned: set[str],
        shapes: dict[str, tuple[int, ...]], params_before: int, extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cfg = self.config
        layers = PT.torch_layers(module)
        entries = []
        for n, m in layers:
            if n in pruned:
                w = m.weight.detach()
                zeros = int(w.numel() - w.count_nonzero().item())
                entry = _layer_entry(n, shapes[n], tuple(w.shape), zeros, int(w.numel()))
                if extra and n in extra:
                    entry.update(extra[n])
                entries.append(entry)
        params_after = sum(p.numel() for p in module.parameters())
        metrics: dict[str, Any] = {"method": cfg.method, "target_sparsity": cfg.sparsity}
        if cfg.method == "magnitude":
            metrics["scope"] = cfg.scope
        if cfg.method == "nm":
            metrics["pattern"] = f"{cfg.n}:{cfg.m}"
        metrics.update(_torch_sparsity_metrics(layers, pruned))
        metrics.update(
            params_before=int(params_before),
            params_after=int(params_after),
            params_nonzero_after=int(sum(int(p.count_nonzero().item()) for p in PT.effective_params(module))),
            layers_pruned=len(entries),
            layers=entries,
        )
        return metrics

    # ---- torch: structured, through Torch-Pruning (passes/prune_structured.py) ------------

    def _run_structured(self, model: Any, ctx: Any) -> PassResult:
        from passes.prune_structured import run_structured

        return run_structured(self, model, ctx)

    # ---- ONNX: rewrite weight tensors in place -------------------------------------------

    def _run_onnx(self, model: Any, ctx: Any) -> PassResult:
        from pathlib import Path

        from onnx import TensorProto, numpy_helper

        from optimize import onnx_io
        from optimize.errors import PassError
        from optimize.inspect_onnx import iter_weight_uses, weight_stats

        cfg = self.config
        if cfg.method == "structured":  # check() rejects this at plan time
            raise PassError(self.name, "structured pruning needs a torch model; the model is ONNX at this point")
        # Memory stays bounded by the largest tensor (models over 2 GB: tests/test_large_model.py):
        # the proto is read without its external data, each weight is read, pruned and written on
        # its own, and untouched external tensors are copied file-to-file by the writer.
        src_dir = Path(model.onnx_path).parent
        proto = onnx_io.load(model.onnx_path, load_external_data=False)
        stats_before = weight_stats(model.onnx_path)
        uses = list(iter_weight_uses(proto))
        by_name: dict[str, list[Any]] = {}
        for u in uses:
            by_name.setdefault(u.key, []).append(u)
        out_weights = _onnx_output_weights(proto, uses) if cfg.keep_output_layer else set()

        notes: list[str] = []
        embeddings, non_float, kept_out = [], [], []
        chosen: dict[str, list[Any]] = {}
        for name, us in by_name.items():
            names = [name, us[0].name, *(u.node.name for u in us if u.node.name)]
            if any(u.node.op_type in _EMBEDDING_OPS for u in us) and not (cfg.include and PT.matches(names, cfg.include)):
                embeddings.append(name)
                continue
            if not PT.selected(cfg, names):
                continue
            if name in out_weights:
                kept_out.append(name)
                continue
            dtype = TensorProto.DataType.Name(us[0].tensor.data_type)
            if dtype not in _ONNX_FLOAT:
                non_float.append(f"{name} ({dtype.lower()})")
                continue
            chosen[name] = us

        def read(n: str) -> np.ndarray:
            return onnx_io.tensor_array(chosen[n][0].tensor, src_dir)

        key = f"{getattr(ctx, 'step_index', 0)}-prune"
        ctx.progress.start(key, f"prune ({cfg.method}, ONNX)", len(chosen))
        global_cut = _GlobalCut(chosen, read, cfg.sparsity) if cfg.method == "magnitude" and cfg.scope == "global" else None
        no_layout, not_divisible = [], []
        entries_by_name: dict[str, dict[str, Any]] = {}

        def pruned(n: str) -> np.ndarray | None:
            """The pruned array for weight `n` (None when N:M does not apply to it)."""
            us = chosen[n]
            arr = read(n)
            if global_cut is not None:
                keep = global_cut.keep(arr)
            elif cfg.method == "magnitude":
                keep = _magnitude_keep({n: arr}, cfg.sparsity, "layer")[n]
            else:
                axes = next(
                    (ax for u in us if u.node.op_type not in _EMBEDDING_OPS
                     for ax in [_onnx_in_axes(u, arr.ndim)] if ax is not None),
                    None,
                )
                if axes is None:
                    no_layout.append(n)
                    return None
                keep = _nm_keep(arr, axes, cfg.n, cfg.m)
                if keep is None:
                    not_divisible.append(n)
                    return None
            new = np.where(keep, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype, copy=False)
            del keep
            zeros = int(new.size - np.count_nonzero(new))
            entries_by_name[n] = _layer_entry(n, arr.shape, new.shape, zeros, int(new.size))
            ctx.progress.advance(key)
            return new

        def raw_of(n: str) -> Any:
            def produce() -> bytes:
                new = pruned(n)
                if new is None:  # unchanged: the original bytes
                    return onnx_io.tensor_array(chosen[n][0].tensor, src_dir).tobytes()
                return numpy_helper.from_array(new).raw_data
            return produce

        replace: dict[Any, Any] = {}
        try:
            for n, us in chosen.items():
                t = us[0].tensor
                if onnx_io.uses_external(t):
                    replace[onnx_io.external_key(t)] = raw_of(n)
                else:
                    new = pruned(n)
                    if new is not None:
                        t.CopyFrom(numpy_helper.from_array(new, t.name))
            path = onnx_io.save_streaming(proto, ctx.step_dir(self.name) / "model.onnx", src_dir, replace)
        finally:
            ctx.progress.finish(key)
        keeps = {n: True for n in chosen if n in entries_by_name}
        entries = [entries_by_name[n] for n in chosen if n in entries_by_name]
        if no_layout:
            notes.append(f"N:M skipped {len(no_layout)} weight(s) whose input axis is unknown: {PT.short_list(no_layout)}")
        if not_divisible:
            notes.append(
                f"N:M skipped {len(not_divisible)} weight(s) whose input dimension is not divisible by "
                f"{cfg.m}: {PT.short_list(not_divisible)}"
            )
        stats = weight_stats(path)
        dense = [t for t in stats.tensors if t.op_type not in _EMBEDDING_OPS]
        tot = sum(t.count for t in dense)
        zero = tot - sum(t.nonzero for t in dense)
        sel = [t for t in stats.tensors if t.name in keeps]
        sel_tot = sum(t.count for t in sel)
        sel_zero = sel_tot - sum(t.nonzero for t in sel)

        if kept_out:
            notes.append(f"output layer kept whole: {PT.short_list(kept_out)}")
        if embeddings:
            notes.append(
                f"embedding table(s) not pruned (add an include pattern to prune them): {PT.short_list(embeddings)}"
            )
        if non_float:
            notes.append(f"non-float weights skipped (already quantized): {PT.short_list(non_float)}")
        if not keeps:
            notes.append("no weight matched the selection: nothing pruned")
        notes.append(_NO_SPEEDUP)
        if cfg.method == "nm":
            notes.append(_NM_GPU)

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
        ctx.log.info("prune: %s on ONNX, %d weight(s), sparsity of selected weights %.3f",
                     cfg.method, len(entries), metrics["selected_sparsity"])
        return PassResult(model.replace(onnx_path=path), metrics=metrics, notes=notes)


