"""Structured pruning of torch models through Torch-Pruning's dependency graph: whole conv
channels, linear neurons, attention heads and FFN neurons, consistent across residual adds,
concatenations, group/depthwise convs and normalization layers.

What this module adds to the library: the ignored layers (the model's output layer, include /
exclude globs, and on transformers the residual-stream writers), per-layer ratios from globs,
attention-head bookkeeping (passes/prune/transformer.py), Taylor importance from data (gradients
of a loss on `data.calibration`/`data.train` samples), a gradual schedule with fine-tuning between
steps, and the per-layer report (shapes, params removed, MACs).
"""

from __future__ import annotations

import fnmatch
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimize.pass_api import PassResult
from passes.prune import torch_common as PT
from passes.prune import util as U
from passes.prune.config import PruneConfig


def _torch_importance(cfg: Any) -> Any:
    import torch_pruning as tp

    if cfg.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    if cfg.importance == "fisher":
        from passes.prune.fisher import FisherImportance

        return FisherImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if cfg.importance == "l1" else 2)


def _taylor_grads(module: Any, ctx: Any, names: list[str], samples: int, task: str) -> str:
    """Accumulate gradients of a loss over up to `samples` data samples into `.grad` (what
    Taylor importance reads). Loss: cross-entropy against the labels when the data has class ids;
    else cross-entropy against the model's own top-1 (classification); else the mean squared
    output. Returns a description of what was used."""
    import torch
    import torch.nn.functional as F

    from passes.prune.torch_common import tensor_leaves

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


def _fisher(job: _Job, pruner: Any) -> str:
    """Fisher scores of the current module on data samples, handed to the pruner's importance."""
    from optimize.errors import PassError
    from passes.prune.fisher import fisher_scores

    ds = job.ctx.data("calibration")
    if ds is None:
        raise PassError(job.name, "importance: fisher needs data (data.calibration or data.train)")
    ds = ds.take(job.cfg.importance_samples)
    keys = job.input_names if job.input_names and all(k in ds.inputs for k in job.input_names) else list(ds.inputs)
    pruner.importance.scores = fisher_scores(job.module, ds, keys, job.attention, job.task, getattr(job.ctx, "seed", 0))
    return f"fisher (output change under channel/head masks, {len(ds)} samples)"


def _refit(job: _Job) -> dict[str, Any]:
    """Least-squares refit of the layers whose inputs were pruned (passes/prune/refit.py)."""
    from optimize.errors import PassError
    from passes.prune.refit import input_pruned_layers, refit

    ds = job.ctx.data("calibration")
    if ds is None:
        raise PassError(job.name, "refit needs data (data.calibration or data.train)")
    ds = ds.take(job.cfg.refit_samples)
    keys = job.input_names if job.input_names and all(k in ds.inputs for k in job.input_names) else list(ds.inputs)
    rows = refit(job.module, _refit_reference(job), input_pruned_layers(job.module, job.shapes), ds, keys, job.kept_outputs)
    done = [r for r in rows if "skipped" not in r]
    if not done and rows and not any("refit: no layer" in n for n in job.notes):
        job.notes.append(f"refit: no layer could be refit ({rows[0]['name']}: {rows[0]['skipped']})")
    return {
        "layers": len(done), "skipped": [{"name": r["name"], "reason": r["skipped"]} for r in rows if "skipped" in r],
        "samples": len(ds),
        "rel_error_before_mean": round(float(np.mean([r["rel_error_before"] for r in done])), 6) if done else None,
        "rel_error_after_mean": round(float(np.mean([r["rel_error_after"] for r in done])), 6) if done else None,
    }


def _refit_reference(job: _Job) -> Any:
    """The unpruned model in the pruned one's form (attention split as in `_start`), made once."""
    if job.refit_reference is None:
        from optimize.export import copy_module
        from passes.prune import transformer as T

        job.refit_reference = job.model.module
        if job.converted_attention:
            job.refit_reference = copy_module(job.model.module)
            T.convert_attention(job.refit_reference)
    return job.refit_reference


def _track_kept_outputs(job: _Job, group: Any) -> None:
    """Record which of each Linear's original outputs survive this group's removal (refit solves
    a layer whose outputs were pruned against those)."""
    from torch import nn

    names = {id(m): n for n, m in job.layers}
    for dep, idxs in group:
        mod = dep.target.module
        if isinstance(mod, nn.Linear) and getattr(dep.handler, "__name__", "") == "prune_out_channels" and id(mod) in names:
            kept = job.kept_outputs.get(names[id(mod)], list(range(mod.out_features)))
            gone = {int(i) for i in idxs}
            job.kept_outputs[names[id(mod)]] = [k for j, k in enumerate(kept) if j not in gone]


def _param_counts(module: Any) -> dict[str, int]:
    """Parameter count held directly by each module (weight, bias, norm affine), by module name."""
    out = {}
    for name, sub in module.named_modules():
        n = sum(p.numel() for p in sub.parameters(recurse=False))
        if n:
            out[name] = int(n)
    return out


@dataclass
class _Job:
    """One structured-pruning run: the module being pruned and what every step needs."""

    cfg: PruneConfig
    name: str  # the pass's name, for errors
    ctx: Any
    model: Any
    module: Any
    args: tuple[Any, ...]
    task: str
    input_names: list[str]
    notes: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    attention: list[Any] = field(default_factory=list)
    layers: list[tuple[str, Any]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    params_before: int = 0
    ref_shapes: list[tuple[int, ...]] = field(default_factory=list)
    was_training: bool = False
    fractions: list[float] = field(default_factory=list)
    quality_data: tuple[Any, str, Any] = (None, "", None)  # eval data, its description, reference outputs
    importance_desc: str = ""
    converted_attention: bool = False
    kept_outputs: dict[str, list[int]] = field(default_factory=dict)  # refit: a Linear's original outputs still kept
    refit_reference: Any = None


def run_structured(cfg: PruneConfig, name: str, model: Any, ctx: Any, reference: Any = None) -> PassResult:
    """`reference`: the model each step's quality is measured against (default `model`; the model
    before whole blocks were dropped)."""
    job = _start(cfg, name, model, ctx)
    counts_before = _param_counts(job.module)
    macs_before = U.torch_macs(job.module, job.args)
    pruner_options = _pruner_options(job)
    job.ref_shapes = _reference_shapes(job)
    job.fractions = [0.0, *U.schedule(1.0, cfg.steps, cfg.schedule)]  # fractions of the target after each step
    # per-step quality: data.eval (or random inputs) against the unpruned model
    eval_ds, eval_desc = U.eval_inputs(ctx, model.inputs)
    job.quality_data = (eval_ds, eval_desc, U.torch_outputs((reference or model).module, eval_ds, job.input_names))
    job.importance_desc = cfg.importance
    step_rows = _prune_steps(job, pruner_options)
    counts_after = _param_counts(job.module)
    _restore_masks(job)
    metrics, pruned = _metrics(job, counts_before, counts_after, macs_before, step_rows)
    if not pruned:
        job.notes.append("structured pruning removed nothing (every layer ignored, or no prunable group)")
    job.notes.extend(U.speed_warnings("structured", getattr(ctx, "device", "cpu"), bool(pruned)))
    ctx.log.info("prune: structured, %d layer(s) resized, params %d → %d",
                 len(pruned), metrics["params_before"], metrics["params_after"])
    return PassResult(model.replace(module=job.module), metrics=metrics, notes=job.notes)


def _start(cfg: PruneConfig, name: str, model: Any, ctx: Any) -> _Job:
    """A copy of the module, ready to trace: masks baked in, packed attention split."""
    from optimize.errors import PassError
    from optimize.export import copy_module
    from passes.prune import transformer as T

    module = copy_module(model.module)
    args = PT.example_args(model.replace(module=module), ctx)
    if args is None:
        raise PassError(name, "structured pruning traces the model: declare model.inputs (name, shape, dtype)")
    task = getattr(getattr(getattr(ctx, "config", None), "model", None), "task", "classification")
    job = _Job(cfg, name, ctx, model, module, args, task, [s.name for s in model.inputs])
    job.params_before = sum(p.numel() for p in module.parameters())
    job.masked = _bake_masks(module, name)
    # Attention: packed nn.MultiheadAttention → separate q/k/v so heads can go.
    converted = T.convert_attention(module)
    job.converted_attention = bool(converted)
    if converted:
        job.notes.append(
            f"nn.MultiheadAttention replaced by SplitHeadAttention (same weights, separate q/k/v) in "
            f"{PT.short_list(converted)} so heads can be removed"
        )
    job.attention = T.find_attention(module)
    job.layers = PT.torch_layers(module)
    job.shapes = {n: tuple(m.weight.shape) for n, m in job.layers}
    return job


def _bake_masks(module: Any, name: str) -> list[str]:
    """Masks from an earlier prune are baked into the weights for tracing (and put back after,
    `_restore_masks`); any other reparametrization (simulated quantization) cannot follow a change
    of shape. Returns the names of the modules that were masked."""
    from torch.nn.utils import parametrize

    from optimize.errors import PassError

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
    return masked


def _restore_masks(job: _Job) -> None:
    """Keep earlier sparsity through later training: the baked masks, as masks again."""
    import torch

    for sub_name in job.masked:
        sub = job.module.get_submodule(sub_name)
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor):
            PT.apply_mask(sub, (w.detach() != 0).cpu().numpy())


def _pruner_options(job: _Job) -> dict[str, Any]:
    """Torch-Pruning's ignored layers (output layer, residual-stream writers, include/exclude),
    per-layer ratios and attention heads."""
    from optimize.errors import PassError
    from passes.prune import transformer as T

    cfg, layers = job.cfg, job.layers
    out_layers, why = PT.torch_output_layers(job.module, layers, job.args)
    if out_layers:
        job.notes.append(f"output layer's outputs kept: {PT.short_list(sorted(out_layers))} ({why})")
        if not cfg.keep_output_layer:
            job.notes.append("keep_output_layer is false, but structured pruning never removes the model's output features")
    writers: list[str] = []
    if job.attention and cfg.keep_hidden_size:
        try:
            writers = T.residual_writers(job.module, job.args, layers)
        except Exception as exc:
            raise PassError(
                job.name, f"Torch-Pruning could not build the dependency graph of this model: {type(exc).__name__}: {exc}"
            ) from None
        if writers:
            job.notes.append(
                f"hidden size kept: {len(writers)} residual-stream writer(s) not pruned "
                f"({PT.short_list(writers, 4)}); heads and FFN neurons are removed"
            )
    # Heads are removed by passes/prune/heads.py; Torch-Pruning leaves q / k / v alone.
    qkv = {id(m) for a in job.attention for m in (a.q, a.k, a.v)}
    ignored = [
        m for n, m in layers
        if n in out_layers or n in writers or id(m) in qkv or not PT.selected(cfg, [n, f"{n}.weight"])
    ]
    ratio_dict = {}
    for n, m in layers:
        for pattern, ratio in cfg.layer_sparsity.items():
            if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(f"{n}.weight", pattern):
                ratio_dict[m] = ratio
                break
    return {"ignored_layers": ignored, "pruning_ratio_dict": ratio_dict or None}


def _forward_shapes(job: _Job) -> list[tuple[int, ...]]:
    import torch

    with torch.no_grad():
        job.module.eval()
        return [tuple(t.shape) for t in PT.tensor_leaves(job.module(*job.args))]


def _reference_shapes(job: _Job) -> list[tuple[int, ...]]:
    from optimize.errors import PassError

    job.was_training = job.module.training
    try:
        ref_shapes = _forward_shapes(job)
    except Exception as exc:
        raise PassError(
            job.name, f"the model does not run on example inputs from model.inputs: {type(exc).__name__}: {exc}"
        ) from None
    job.module.train(job.was_training)
    return ref_shapes


def _make_pruner(job: _Job, options: dict[str, Any]) -> Any:
    import torch_pruning as tp

    from optimize.errors import PassError

    cfg = job.cfg

    def scheduler(target: float, n_steps: int) -> list[float]:
        return [target * f for f in job.fractions]

    try:
        return tp.pruner.MetaPruner(
            job.module, job.args, importance=_torch_importance(cfg), pruning_ratio=cfg.sparsity,
            pruning_ratio_dict=options["pruning_ratio_dict"], max_pruning_ratio=cfg.max_ratio,
            global_pruning=cfg.scope == "global", iterative_steps=cfg.steps,
            iterative_pruning_ratio_scheduler=scheduler, ignored_layers=options["ignored_layers"], round_to=cfg.round_to,
        )
    except Exception as exc:
        raise PassError(
            job.name, f"Torch-Pruning could not build the dependency graph of this model: {type(exc).__name__}: {exc}"
        ) from None


def _prune_steps(job: _Job, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step of the schedule; Torch-Pruning's warnings go to the debug log."""
    step_rows: list[dict[str, Any]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = _make_pruner(job, options)
        for k in range(job.cfg.steps):
            t0 = time.perf_counter()
            row = _prune_step(job, pruner, k)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            step_rows.append(row)
    for w in caught:
        job.ctx.log.debug("torch-pruning: %s", w.message)
    return step_rows


def _prune_step(job: _Job, pruner: Any, k: int) -> dict[str, Any]:
    from passes.prune import transformer as T

    cfg = job.cfg
    if cfg.importance == "taylor":
        job.importance_desc = "taylor (" + _taylor_grads(job.module, job.ctx, job.input_names, cfg.importance_samples, job.task) + ")"
    elif cfg.importance == "fisher":
        job.importance_desc = _fisher(job, pruner)
    _remove_heads(job, pruner, k)
    _remove_groups(job, pruner)
    job.module.zero_grad(set_to_none=True)
    heads = T.update_head_counts(job.attention)
    _check_still_runs(job)
    refit_rows = _refit(job) if cfg.refit else None
    now = sum(p.numel() for p in job.module.parameters())
    row: dict[str, Any] = {
        "step": k + 1,
        "target_sparsity": round(cfg.sparsity * job.fractions[k + 1], 6),
        "params": int(now),
        "params_removed": round(1 - now / job.params_before, 6) if job.params_before else 0.0,
    }
    if heads:
        row["heads"] = sum(h["heads_after"] for h in heads)
    if refit_rows is not None:
        row["refit"] = refit_rows
    eval_ds, _, reference = job.quality_data
    row.update({f"{key}_after_prune": v for key, v in U.quality(job.module, eval_ds, job.input_names, reference).items()})
    if k < cfg.steps - 1 and cfg.finetune_epochs > 0:
        from passes.prune.finetune import finetune

        trained, ft = finetune(job.module, job.model.replace(module=job.module), job.ctx, cfg.finetune_epochs, cfg.finetune_lr)
        job.module.load_state_dict(trained.state_dict())
        row["finetune_epochs"] = cfg.finetune_epochs
        row["finetune_train_loss"] = ft.get("train_loss")
        row.update({f"{key}_after_finetune": v for key, v in U.quality(job.module, eval_ds, job.input_names, reference).items()})
    return row


def _remove_heads(job: _Job, pruner: Any, k: int) -> None:
    """This step's share of head_sparsity, ranked per module or across modules (cfg.scope)."""
    from optimize.errors import PassError
    from passes.prune import heads as H

    cfg = job.cfg
    chosen_layers = {id(m) for n, m in job.layers if PT.selected(cfg, [n, f"{n}.weight"])}  # include / exclude
    attention = [a for a in job.attention if id(a.q) in chosen_layers]
    if not attention or not cfg.head_sparsity:
        return
    try:
        scores = H.head_scores(pruner.DG, pruner.importance, attention)
        chosen = H.plan(scores, [a.heads for a in attention], cfg.head_sparsity * job.fractions[k + 1], cfg.scope, cfg.max_ratio)
        H.remove(pruner.DG, attention, chosen, lambda g: _track_kept_outputs(job, g) if cfg.refit else None)
    except Exception as exc:
        raise PassError(job.name, f"removing attention heads failed: {type(exc).__name__}: {exc}") from None


def _remove_groups(job: _Job, pruner: Any) -> None:
    """One Torch-Pruning step: rank the groups, remove the chosen channels of each."""
    from optimize.errors import PassError

    try:
        for group in pruner.step(interactive=True):
            root = group[0].dep.target.module
            layer = next((n for n, m in job.layers if m is root), type(root).__name__)
            try:
                if job.cfg.refit:
                    _track_kept_outputs(job, group)
                group.prune()
            except Exception as exc:
                raise PassError(
                    job.name, f"Torch-Pruning failed on layer '{layer}': {type(exc).__name__}: {exc}"
                ) from None
    except PassError:
        raise
    except Exception as exc:
        raise PassError(job.name, f"Torch-Pruning failed while ranking groups: {type(exc).__name__}: {exc}") from None


def _check_still_runs(job: _Job) -> None:
    """The pruned model still runs on the example inputs, with the same output shapes."""
    from optimize.errors import PassError

    try:
        new_shapes = _forward_shapes(job)
    except Exception as exc:
        changed = [n for n, m in PT.torch_layers(job.module) if tuple(m.weight.shape) != job.shapes.get(n)]
        raise PassError(
            job.name,
            f"the pruned model no longer runs ({type(exc).__name__}: {exc}); resized layers: "
            f"{PT.short_list(changed)}; exclude (prune.exclude) the layer the error names, or, on a "
            "residual/attention model, the layers that write the residual stream (attention output "
            "projections, FFN output layers) so the hidden size is kept",
        ) from None
    job.module.train(job.was_training)
    if new_shapes != job.ref_shapes:
        raise PassError(job.name, f"structured pruning changed the model's output shapes {job.ref_shapes} → {new_shapes}")


def _metrics(
    job: _Job, counts_before: dict[str, int], counts_after: dict[str, int], macs_before: int | None,
    step_rows: list[dict[str, Any]],
) -> tuple[dict[str, Any], set[str]]:
    """(metrics, names of the resized layers): per-layer shapes and parameters, MACs, heads, schedule."""
    from passes.prune import transformer as T

    cfg, module, shapes = job.cfg, job.module, job.shapes
    after = PT.torch_layers(module)
    pruned = {n for n, m in after if n in shapes and tuple(m.weight.shape) != shapes[n]}
    extra = {
        n: {"removed_fraction": round(1 - m.weight.numel() / int(np.prod(shapes[n])), 6)}
        for n, m in after
        if n in pruned
    }
    metrics = PT.torch_metrics(cfg, module, pruned, shapes, job.params_before, extra)
    metrics["importance"] = job.importance_desc
    _param_holder_entries(metrics, module, counts_before, counts_after)
    if cfg.round_to:
        metrics["round_to"] = cfg.round_to
    before, now = metrics["params_before"], metrics["params_after"]
    metrics["params_removed"] = round(1 - now / before, 6) if before else 0.0
    macs_after = U.torch_macs(module, job.args)
    metrics["macs_before"] = macs_before
    metrics["macs_after"] = macs_after
    metrics["macs_reduction"] = round(macs_before / macs_after, 4) if macs_before and macs_after else None
    metrics["macs_batch"] = int(job.args[0].shape[0]) if job.args and hasattr(job.args[0], "shape") else None
    if job.attention:
        metrics["attention_heads"] = T.update_head_counts(job.attention)
    _, eval_desc, _ = job.quality_data
    if cfg.steps > 1 or cfg.finetune_epochs:
        metrics["schedule"] = {"steps": cfg.steps, "kind": cfg.schedule, "quality_on": eval_desc}
    metrics["per_step"] = step_rows
    metrics["quality_on"] = eval_desc
    return metrics, pruned


def _param_holder_entries(
    metrics: dict[str, Any], module: Any, counts_before: dict[str, int], counts_after: dict[str, int]
) -> None:
    """Parameters before/after on each resized layer's entry, and entries for the normalization
    layers and other parameter holders resized with their group."""
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
