"""Structured pruning of torch models through Torch-Pruning's dependency graph: whole conv
channels, linear neurons, attention heads and FFN neurons, consistent across residual adds,
concatenations, group/depthwise convs and normalization layers.

What this module adds to the library: the ignored layers (the model's output layer, include /
exclude globs, and on transformers the residual-stream writers), per-layer ratios from globs,
attention-head bookkeeping (passes/prune_transformer.py), Taylor importance from data (gradients
of a loss on `data.calibration`/`data.train` samples), a gradual schedule with fine-tuning between
steps, and the per-layer report (shapes, params removed, MACs).
"""

from __future__ import annotations

import fnmatch
import time
import warnings
from typing import Any

import numpy as np

from optimize.pass_api import PassResult


def _torch_importance(cfg: Any) -> Any:
    import torch_pruning as tp

    if cfg.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if cfg.importance == "l1" else 2)


def _taylor_grads(module: Any, ctx: Any, names: list[str], samples: int, task: str) -> str:
    """Accumulate gradients of a loss over up to `samples` data samples into `.grad` (what
    Taylor importance reads). Loss: cross-entropy against the labels when the data has class ids;
    else cross-entropy against the model's own top-1 (classification); else the mean squared
    output. Returns a description of what was used."""
    import torch
    import torch.nn.functional as F

    from passes.prune_torch import tensor_leaves

    ds = ctx.data("calibration")
    if ds is None:
        from optimize.errors import PassError

        raise PassError("prune", "importance: taylor needs data (data.calibration or data.train)")
    ds = ds.take(samples)
    keys = names if names and all(k in ds.inputs for k in names) else list(ds.inputs)
    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.zero_grad(set_to_none=True)
    was_training = module.training
    module.eval()  # BN/dropout in inference mode: the importance of the model as it will run
    labels_ok = ds.labels is not None and ds.labels.ndim == 1 and np.issubdtype(ds.labels.dtype, np.integer)
    used = ""
    try:
        for start in range(0, len(ds), 32):
            xs = [torch.from_numpy(np.ascontiguousarray(ds.inputs[k][start : start + 32])).to(dev) for k in keys]
            out = tensor_leaves(module(*xs))[0].float()
            if task == "classification" and out.dim() == 2 and labels_ok:
                y = torch.from_numpy(ds.labels[start : start + 32]).to(dev)
                loss, used = F.cross_entropy(out, y), "cross-entropy against data labels"
            elif task == "classification" and out.dim() >= 2:
                flat = out.reshape(-1, out.shape[-1])
                loss, used = F.cross_entropy(flat, flat.argmax(-1).detach()), "cross-entropy against the model's own top-1"
            else:
                loss, used = out.pow(2).mean(), "mean squared output"
            loss.backward()
    finally:
        module.train(was_training)
    return f"{used}, {len(ds)} samples"


def _param_counts(module: Any) -> dict[str, int]:
    """Parameter count held directly by each module (weight, bias, norm affine), by module name."""
    out = {}
    for name, sub in module.named_modules():
        n = sum(p.numel() for p in sub.parameters(recurse=False))
        if n:
            out[name] = int(n)
    return out


def run_structured(pass_obj: Any, model: Any, ctx: Any) -> PassResult:
    import torch
    import torch_pruning as tp
    from torch.nn.utils import parametrize

    from optimize.errors import PassError
    from optimize.export import copy_module
    from passes import prune_torch as PT
    from passes import prune_transformer as T
    from passes import prune_util as U

    cfg = pass_obj.config
    name = pass_obj.name
    module = copy_module(model.module)
    params_before = sum(p.numel() for p in module.parameters())
    args = PT.example_args(model.replace(module=module), ctx)
    if args is None:
        raise PassError(name, "structured pruning traces the model: declare model.inputs (name, shape, dtype)")
    notes: list[str] = []
    task = getattr(getattr(getattr(ctx, "config", None), "model", None), "task", "classification")
    input_names = [s.name for s in model.inputs]

    # Masks from an earlier prune are baked into the weights for tracing and put back after;
    # any other reparametrization (simulated quantization) cannot follow a change of shape.
    mask_cls = PT.weight_mask_class()
    masked = []
    for sub_name, sub in module.named_modules():
        if parametrize.is_parametrized(sub):
            for tname, plist in sub.parametrizations.items():
                other = [type(p).__name__ for p in plist if not isinstance(p, mask_cls)]
                if other:
                    raise PassError(
                        name,
                        f"'{sub_name}.{tname}' carries a training-time reparametrization ({', '.join(other)}) "
                        "that structured pruning cannot resize; put structured pruning before quantize",
                    )
            masked.append(sub_name)
    for sub_name in masked:
        sub = module.get_submodule(sub_name)
        for tname in list(sub.parametrizations.keys()):
            parametrize.remove_parametrizations(sub, tname, leave_parametrized=True)

    # Attention: packed nn.MultiheadAttention → separate q/k/v so heads can go.
    converted = T.convert_attention(module)
    if converted:
        notes.append(
            f"nn.MultiheadAttention replaced by SplitHeadAttention (same weights, separate q/k/v) in "
            f"{PT.short_list(converted)} so heads can be removed"
        )
    attention = T.find_attention(module)

    layers = PT.torch_layers(module)
    shapes = {n: tuple(m.weight.shape) for n, m in layers}
    counts_before = _param_counts(module)
    macs_before = U.torch_macs(module, args)
    out_layers, why = PT.torch_output_layers(module, layers, args)
    if out_layers:
        notes.append(f"output layer's outputs kept: {PT.short_list(sorted(out_layers))} ({why})")
        if not cfg.keep_output_layer:
            notes.append("keep_output_layer is false, but structured pruning never removes the model's output features")
    writers: list[str] = []
    if attention and cfg.keep_hidden_size:
        try:
            writers = T.residual_writers(module, args, layers)
        except Exception as exc:
            raise PassError(
                name, f"Torch-Pruning could not build the dependency graph of this model: {type(exc).__name__}: {exc}"
            ) from None
        if writers:
            notes.append(
                f"hidden size kept: {len(writers)} residual-stream writer(s) not pruned "
                f"({PT.short_list(writers, 4)}); heads and FFN neurons are removed"
            )
    ignored = [
        m for n, m in layers
        if n in out_layers or n in writers or not PT.selected(cfg, [n, f"{n}.weight"])
    ]
    ratio_dict = {}
    for n, m in layers:
        for pattern, ratio in cfg.layer_sparsity.items():
            if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(f"{n}.weight", pattern):
                ratio_dict[m] = ratio
                break
    num_heads: dict[Any, int] = {}
    for a in attention:
        num_heads.update({a.q: a.heads, a.k: a.heads, a.v: a.heads})

    def forward_shapes() -> list[tuple[int, ...]]:
        with torch.no_grad():
            module.eval()
            return [tuple(t.shape) for t in PT.tensor_leaves(module(*args))]

    was_training = module.training
    try:
        ref_shapes = forward_shapes()
    except Exception as exc:
        raise PassError(name, f"the model does not run on example inputs from model.inputs: {type(exc).__name__}: {exc}") from None
    module.train(was_training)

    steps = cfg.steps
    sched = U.schedule(1.0, steps, cfg.schedule)  # fractions of the target after each step
    fractions = [0.0, *sched]

    def scheduler(target: float, n_steps: int) -> list[float]:
        return [target * f for f in fractions]

    # per-step quality: data.eval (or random inputs) against the unpruned model
    eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
    reference = U.torch_outputs(model.module, eval_ds, input_names)
    importance_desc = cfg.importance
    step_rows: list[dict[str, Any]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pruner = tp.pruner.MetaPruner(
                module, args, importance=_torch_importance(cfg), pruning_ratio=cfg.sparsity,
                pruning_ratio_dict=ratio_dict or None, max_pruning_ratio=cfg.max_ratio,
                global_pruning=cfg.scope == "global", iterative_steps=steps,
                iterative_pruning_ratio_scheduler=scheduler, ignored_layers=ignored, round_to=cfg.round_to,
                num_heads=num_heads, prune_num_heads=bool(num_heads) and cfg.head_sparsity > 0,
                prune_head_dims=False, head_pruning_ratio=cfg.head_sparsity if num_heads else 0.0,
            )
        except Exception as exc:
            raise PassError(
                name, f"Torch-Pruning could not build the dependency graph of this model: {type(exc).__name__}: {exc}"
            ) from None
        for k in range(steps):
            t0 = time.perf_counter()
            if cfg.importance == "taylor":
                importance_desc = "taylor (" + _taylor_grads(module, ctx, input_names, cfg.importance_samples, task) + ")"
            try:
                for group in pruner.step(interactive=True):
                    root = group[0].dep.target.module
                    layer = next((n for n, m in layers if m is root), type(root).__name__)
                    try:
                        group.prune()
                    except Exception as exc:
                        raise PassError(
                            name, f"Torch-Pruning failed on layer '{layer}': {type(exc).__name__}: {exc}"
                        ) from None
            except PassError:
                raise
            except Exception as exc:
                raise PassError(name, f"Torch-Pruning failed while ranking groups: {type(exc).__name__}: {exc}") from None
            module.zero_grad(set_to_none=True)
            heads = T.update_head_counts(attention)
            try:
                new_shapes = forward_shapes()
            except Exception as exc:
                changed = [n for n, m in PT.torch_layers(module) if tuple(m.weight.shape) != shapes.get(n)]
                raise PassError(
                    name,
                    f"the pruned model no longer runs ({type(exc).__name__}: {exc}); resized layers: "
                    f"{PT.short_list(changed)}; exclude (prune.exclude) the layer the error names, or, on a "
                    "residual/attention model, the layers that write the residual stream (attention output "
                    "projections, FFN output layers) so the hidden size is kept",
                ) from None
            module.train(was_training)
            if new_shapes != ref_shapes:
                raise PassError(name, f"structured pruning changed the model's output shapes {ref_shapes} → {new_shapes}")
            now = sum(p.numel() for p in module.parameters())
            row: dict[str, Any] = {
                "step": k + 1,
                "target_sparsity": round(cfg.sparsity * fractions[k + 1], 6),
                "params": int(now),
                "params_removed": round(1 - now / params_before, 6) if params_before else 0.0,
            }
            if heads:
                row["heads"] = sum(h["heads_after"] for h in heads)
            row.update({f"{key}_after_prune": v for key, v in U.quality(module, eval_ds, input_names, reference).items()})
            if k < steps - 1 and cfg.finetune_epochs > 0:
                trained, ft = U.finetune(module, model.replace(module=module), ctx, cfg.finetune_epochs, cfg.finetune_lr)
                module.load_state_dict(trained.state_dict())
                row["finetune_epochs"] = cfg.finetune_epochs
                row["finetune_train_loss"] = ft.get("train_loss")
                row.update({f"{key}_after_finetune": v for key, v in U.quality(module, eval_ds, input_names, reference).items()})
            row["seconds"] = round(time.perf_counter() - t0, 3)
            step_rows.append(row)
    for w in caught:
        ctx.log.debug("torch-pruning: %s", w.message)

    counts_after = _param_counts(module)
    for sub_name in masked:  # keep earlier sparsity through later training
        sub = module.get_submodule(sub_name)
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor):
            PT.apply_mask(sub, (w.detach() != 0).cpu().numpy())

    after = PT.torch_layers(module)
    pruned = {n for n, m in after if n in shapes and tuple(m.weight.shape) != shapes[n]}
    extra = {
        n: {"removed_fraction": round(1 - m.weight.numel() / int(np.prod(shapes[n])), 6)}
        for n, m in after
        if n in pruned
    }
    metrics = pass_obj._torch_metrics(module, pruned, shapes, params_before, extra)
    metrics["importance"] = importance_desc
    by_name = {e["name"]: e for e in metrics["layers"]}
    for mod_name, n_before in counts_before.items():
        n_after = counts_after.get(mod_name, 0)
        if n_after == n_before and mod_name not in by_name:
            continue
        entry = by_name.get(mod_name)
        if entry is None:  # a normalization layer or other parameter holder resized with its group
            sub = module.get_submodule(mod_name)
            entry = {"name": mod_name, "kind": type(sub).__name__}
            metrics["layers"].append(entry)
        entry.update(params_before=n_before, params_after=n_after, params_removed=n_before - n_after)
    if cfg.round_to:
        metrics["round_to"] = cfg.round_to
    before, now = metrics["params_before"], metrics["params_after"]
    metrics["params_removed"] = round(1 - now / before, 6) if before else 0.0
    macs_after = U.torch_macs(module, args)
    metrics["macs_before"] = macs_before
    metrics["macs_after"] = macs_after
    metrics["macs_reduction"] = round(macs_before / macs_after, 4) if macs_before and macs_after else None
    metrics["macs_batch"] = int(args[0].shape[0]) if args and hasattr(args[0], "shape") else None
    if attention:
        metrics["attention_heads"] = T.update_head_counts(attention)
    if steps > 1 or cfg.finetune_epochs:
        metrics["schedule"] = {"steps": steps, "kind": cfg.schedule, "quality_on": eval_desc}
    metrics["per_step"] = step_rows
    metrics["quality_on"] = eval_desc
    if not pruned:
        notes.append("structured pruning removed nothing (every layer ignored, or no prunable group)")
    notes.extend(U.speed_warnings("structured", getattr(ctx, "device", "cpu"), bool(pruned)))
    ctx.log.info("prune: structured, %d layer(s) resized, params %d → %d", len(pruned), before, now)
    return PassResult(model.replace(module=module), metrics=metrics, notes=notes)
